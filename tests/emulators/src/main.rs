//! `iapd-emulator`: runs a store emulator on its own, so a plugin (or iapd
//! with it) can be tried without the store.
//!
//! ```text
//! iapd-emulator google-play --listen 127.0.0.1:8095
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use iapd_emulators::google_play::{self, GooglePlay};

/// The test-only key every Google Play emulator trusts unless told otherwise
/// (made by `tests/fixtures/google-play/make-keys.sh`).
const FIXTURE_KEY: &str = include_str!("../../fixtures/google-play/service-account.json");

#[derive(Parser)]
#[command(name = "iapd-emulator", about = "Store API emulators for trying iapd's store plugins")]
struct Cli {
    #[command(subcommand)]
    store: Store,
}

#[derive(Subcommand)]
enum Store {
    /// The Google Play Developer API (Android Publisher v3) and its OAuth token endpoint.
    GooglePlay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8095")]
        listen: SocketAddr,
        /// A state file (apps, catalogs, purchases); the built-in demo state if absent.
        #[arg(long)]
        state: Option<PathBuf>,
        /// A service-account JSON key to trust (repeatable); the test fixture key if absent.
        #[arg(long = "service-account")]
        service_accounts: Vec<PathBuf>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let Store::GooglePlay { listen, state, service_accounts } = Cli::parse().store;
    let state = match state {
        Some(path) => std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
        None => google_play::DEFAULT_STATE.to_owned(),
    };
    let seed = serde_json::from_str(&state).context("state file is not a google play emulator state")?;
    let emulator = GooglePlay::new(seed);
    let keys = if service_accounts.is_empty() {
        vec![FIXTURE_KEY.to_owned()]
    } else {
        service_accounts
            .iter()
            .map(|path| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display())))
            .collect::<anyhow::Result<_>>()?
    };
    for key in &keys {
        emulator.add_service_account(key).map_err(anyhow::Error::msg)?;
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("google play emulator listening on http://{}", listener.local_addr()?);
    iapd_emulators::serve(listener, Arc::new(emulator), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
