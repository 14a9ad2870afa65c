//! The `iapd` command: `serve`, `check-config`, `plugins`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use iapd::config::{Config, Sources};
use iapd::host::{self, PluginHost};

#[derive(Debug, Parser)]
#[command(name = "iapd", version, about = "Verifies in-app purchases for any app store, through store plugins.")]
struct Cli {
    /// The configuration file; the embedded defaults (the sandbox store) when
    /// not given.
    #[arg(long, global = true, env = "IAPD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gRPC server.
    Serve {
        /// The address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Checks the configuration and every plugin it names, then exits.
    CheckConfig,
    /// Lists each configured plugin: ABI version, capabilities, path.
    Plugins,
    /// Applies the ledger's migrations to its database, then exits.
    Migrate,
    /// API keys for tenants.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Mints a new API key: prints the key once, and the lines to add to the
    /// configuration, which hold only its SHA-256.
    New {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// The key's name within the tenant (shown in logs and errors).
        #[arg(long)]
        name: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The whole chain on one line each, never a backtrace: this is
            // for the operator, not a bug report.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let filter = log_filter()?;
    let Cli { config: file, command } = cli;
    let load = || Config::load(&Sources { file: file.clone() }).context("invalid configuration");
    match command {
        // Minting needs no configuration.
        Command::Keys(KeysCommand::New { tenant, name }) => new_key(&tenant, &name),
        Command::Serve { listen } => serve(load()?, listen, filter),
        Command::CheckConfig => with_logs(&load()?, filter, check_config),
        Command::Plugins => with_logs(&load()?, filter, list_plugins),
        Command::Migrate => with_logs(&load()?, filter, migrate),
    }
}

/// Runs a command besides `serve`: it logs, and exports nothing.
fn with_logs(
    config: &Config,
    filter: tracing_subscriber::EnvFilter,
    command: fn(&Config) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let logs_only = iapd::telemetry::TelemetryConfig { otlp_endpoint: None, ..config.telemetry.clone() };
    let _telemetry = iapd::telemetry::init(filter, &logs_only)?;
    command(config)
}

fn new_key(tenant: &str, name: &str) -> anyhow::Result<()> {
    let plain =
        |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    anyhow::ensure!(plain(tenant) && plain(name), "--tenant and --name are made of [A-Za-z0-9_-]");
    let (key, sha256) = iapd::auth::mint_key().map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    println!("api key (shown once; iapd keeps only its hash): {key}");
    println!();
    println!("[tenants.{tenant}.keys.{name}]");
    println!("sha256 = \"{sha256}\"");
    Ok(())
}

/// `IAPD_LOG`'s filter, `info` when it is unset. A filter that does not
/// parse is refused: falling back would hide the logs the operator asked for.
fn log_filter() -> anyhow::Result<tracing_subscriber::EnvFilter> {
    use tracing_subscriber::EnvFilter;
    Ok(match std::env::var("IAPD_LOG") {
        Err(std::env::VarError::NotPresent) => EnvFilter::new("info"),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("IAPD_LOG is not valid UTF-8"),
        Ok(directives) => EnvFilter::builder()
            .parse(&directives)
            // The parser's error repeats its source's text: show it once.
            .map_err(|err| anyhow::anyhow!("IAPD_LOG `{directives}` is not a log filter: {err}"))?,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn serve(
    config: Config,
    listen: Option<std::net::SocketAddr>,
    filter: tracing_subscriber::EnvFilter,
) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        // Inside the runtime: the OTLP exporter's connection lives on it.
        let _telemetry = iapd::telemetry::init(filter, &config.telemetry)?;
        let address = listen.unwrap_or(config.listen);
        let host = Arc::new(PluginHost::start(&config).await.context("cannot start the stores")?);
        let listener =
            tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
        let grace = config.shutdown_grace;
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown_signal().await;
            let _ = stopping_tx.send(());
        };
        // A backstop: the server answers the calls still running when the
        // grace ends and closes its connections; this exits if that hangs.
        let drained_or_grace = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace + std::time::Duration::from_secs(5)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = iapd::serve(listener, config, host, shutdown) => served.context("server failed"),
            () = drained_or_grace => {
                tracing::warn!("connections still open well after the shutdown grace; exiting");
                Ok(())
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn migrate(config: &Config) -> anyhow::Result<()> {
    let settings = config.ledger.as_ref().context("the ledger is off (ledger.enabled = false): nothing to migrate")?;
    let ledger = runtime()?.block_on(iapd::ledger::Ledger::open(settings, true))?;
    println!("ledger at {}: migrations applied", ledger.url());
    Ok(())
}

/// Starts every store as `serve` would (so plugins check their own
/// settings), without listening.
fn check_config(config: &Config) -> anyhow::Result<()> {
    iapd::check_listener(config, config.listen)?;
    let host = runtime()?.block_on(PluginHost::start(config)).context("cannot start the stores")?;
    for store in host.stores() {
        let descriptor = &store.meta().descriptor;
        println!("store `{}`: ok ({} {})", store.id(), descriptor.name.as_deref().unwrap_or("?"), descriptor.version);
    }
    println!("configuration ok: {} store(s), listening on {}", config.stores.len(), config.listen);
    Ok(())
}

fn list_plugins(config: &Config) -> anyhow::Result<()> {
    let mut failed = false;
    for (id, store) in &config.stores {
        match host::inspect(&store.plugin_path) {
            Ok(meta) => {
                let d = &meta.descriptor;
                println!("{id}");
                println!("  plugin:       {} {}", d.name.as_deref().unwrap_or("?"), d.version);
                println!(
                    "  abi:          {}.{} (needs host >= {}.{})",
                    d.abi_major, d.abi_minor, d.abi_major, d.min_host_minor
                );
                println!("  capabilities: {}", capability_names(d.capabilities).join(", "));
                println!("  proofs:       {}", meta.info.proof_kinds.join(", "));
                println!("  calls:        {}", call_dispatch(d.flags, store.inline_calls));
                println!("  build:        {}", d.build_info);
                println!("  path:         {}", meta.path.display());
            }
            Err(err) => {
                failed = true;
                println!("{id}\n  refused: {err}");
            }
        }
    }
    anyhow::ensure!(!failed, "some plugins were refused");
    Ok(())
}

/// Where the store's calls start, as `serve` would decide it.
fn call_dispatch(flags: u16, inline_calls: bool) -> &'static str {
    let nonblocking = flags & iapd_sdk_plugin::abi::FLAG_NONBLOCKING_CALL != 0;
    match (nonblocking, inline_calls) {
        (true, true) => "inline, on the server's threads (the plugin declares a non-blocking call)",
        (true, false) => "on plugin threads (the plugin declares a non-blocking call; `inline_calls` is off)",
        (false, true) => {
            "refused by `serve`: `inline_calls` is on, but the plugin does not declare a non-blocking call"
        }
        (false, false) => "on plugin threads",
    }
}

fn capability_names(bits: u64) -> Vec<&'static str> {
    use iapd_sdk_plugin::abi::*;
    [(CAP_VERIFY, "verify"), (CAP_ACKNOWLEDGE, "acknowledge"), (CAP_CONSUME, "consume"), (CAP_LIST_ITEMS, "list_items")]
        .into_iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| name)
        .collect()
}
