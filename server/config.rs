//! Configuration: one TOML file (or the embedded defaults) plus `IAPD_*`
//! environment overrides (`IAPD_SERVER__LISTEN=0.0.0.0:50051` sets
//! `server.listen`). Loading has two stages: a raw serde form that refuses
//! unknown keys, then validation into [`Config`], which resolves plugin paths
//! and secrets. Every error names the key and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The embedded defaults.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// A configuration problem: the key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    /// The dotted key, such as `stores.sandbox.plugin`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { key: key.into(), reason: reason.into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    plugins: RawPlugins,
    #[serde(default)]
    stores: BTreeMap<String, RawStore>,
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    rate_limits: RawRateLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimits {
    redis_url: Option<String>,
    key_prefix: String,
}

impl Default for RawRateLimits {
    fn default() -> Self {
        RawRateLimits { redis_url: None, key_prefix: "iapd".to_owned() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests: u32,
    window_ms: u64,
}

/// Where store quotas are counted, from `rate_limits.*`.
#[derive(Clone, Default)]
pub struct RateLimitsConfig {
    /// Redis, to count with the other replicas; each replica alone when `None`.
    pub redis_url: Option<String>,
    /// The prefix of the Redis keys.
    pub key_prefix: String,
}

impl fmt::Debug for RateLimitsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("RateLimitsConfig")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "[set]"))
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTelemetry {
    otlp_endpoint: Option<String>,
    service_name: String,
    export_interval_ms: u64,
    trace_sample_ratio: f64,
    log_format: crate::telemetry::LogFormat,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        let defaults = crate::telemetry::TelemetryConfig::default();
        RawTelemetry {
            otlp_endpoint: None,
            service_name: defaults.service_name,
            export_interval_ms: defaults.export_interval.as_millis() as u64,
            trace_sample_ratio: defaults.trace_sample_ratio,
            log_format: defaults.log_format,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    mode: Option<AuthMode>,
}

/// Whether callers must say who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every call but health needs a tenant's API key or client certificate.
    Keys,
    /// Anyone who reaches the port may call anything.
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    apps: Vec<String>,
    #[serde(default)]
    keys: BTreeMap<String, RawKey>,
    #[serde(default)]
    clients: BTreeMap<String, RawClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    sha256: String,
    #[serde(default)]
    revoked: bool,
    stores: Option<Vec<String>>,
    apps: Option<Vec<String>>,
    rpcs: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    subject: String,
    stores: Option<Vec<String>>,
    apps: Option<Vec<String>>,
    rpcs: Option<Vec<String>>,
}

/// Who may call, from `auth.*` and `tenants.*`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// As written; `None` decides by the address served (see [`AuthConfig::mode_for`]).
    pub mode: Option<AuthMode>,
    /// The tenants, by name.
    pub tenants: BTreeMap<String, TenantConfig>,
}

impl AuthConfig {
    /// The mode for a server on `address`: as configured; else keys when a
    /// tenant is configured, off on a loopback address without tenants, and
    /// an error anywhere else, where anyone on the network could call.
    pub fn mode_for(&self, address: SocketAddr) -> Result<AuthMode, ConfigError> {
        match self.mode {
            Some(AuthMode::Keys) if self.tenants.is_empty() => Err(ConfigError::new(
                "auth.mode",
                "is `keys`, but no tenant is configured: add [tenants.<name>] with keys (see `iapd keys new`)",
            )),
            Some(mode) => Ok(mode),
            None if !self.tenants.is_empty() => Ok(AuthMode::Keys),
            None if address.ip().is_loopback() => Ok(AuthMode::Off),
            None => Err(ConfigError::new(
                "auth.mode",
                format!(
                    "is not set and the server listens on {address}, which is not a loopback address: configure \
                     [tenants.<name>] with API keys, or set auth.mode = \"off\" to let anyone who reaches the port call"
                ),
            )),
        }
    }
}

/// One tenant: the apps it owns and the credentials that act for it.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// The app ids this tenant owns; no other tenant may name them.
    pub apps: std::collections::BTreeSet<String>,
    /// API keys by name.
    pub keys: BTreeMap<String, KeyConfig>,
    /// Client certificates by name (mutual TLS).
    pub clients: BTreeMap<String, ClientConfig>,
}

/// An API key: only its hash is known.
#[derive(Clone)]
pub struct KeyConfig {
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// A revoked key is refused as such.
    pub revoked: bool,
    /// What it may reach.
    pub scope: Scope,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig").field("revoked", &self.revoked).field("scope", &self.scope).finish_non_exhaustive()
    }
}

/// A client certificate, known by a name it carries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// A DNS name in the certificate's subject alternative names, or its
    /// subject's common name.
    pub subject: String,
    /// What it may reach.
    pub scope: Scope,
}

/// What one credential may reach: `None` is everything (of its tenant's, for apps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Store ids.
    pub stores: Option<std::collections::BTreeSet<String>>,
    /// App ids, all of them the tenant's.
    pub apps: Option<std::collections::BTreeSet<String>>,
    /// RPC names, such as `Verify`.
    pub rpcs: Option<std::collections::BTreeSet<String>>,
}

/// The RPCs that read and change nothing, which `rpcs = ["read_only"]` names.
pub const READ_ONLY_RPCS: [&str; 5] = ["GetEntitlements", "ListPurchases", "WatchEvents", "ListItems", "ListStores"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLedger {
    enabled: bool,
    url: Option<String>,
    data_dir: PathBuf,
    max_connections: u32,
    migrate_on_start: bool,
    final_state_freshness_ms: u64,
    acknowledgement_window_ms: u64,
    apps: BTreeMap<String, RawLedgerApp>,
}

impl Default for RawLedger {
    fn default() -> Self {
        RawLedger {
            enabled: true,
            url: None,
            data_dir: PathBuf::from("iapd-data"),
            max_connections: 16,
            migrate_on_start: true,
            final_state_freshness_ms: 86_400_000,
            // Google Play refunds a purchase not acknowledged within 3 days.
            acknowledgement_window_ms: 3 * 86_400_000,
            apps: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedgerApp {
    #[serde(default)]
    claims: ClaimPolicy,
    #[serde(default)]
    entitlements: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    acknowledge: AcknowledgeMode,
    /// How long before the deadline `before_deadline` acknowledges.
    #[serde(default = "default_acknowledge_margin_ms")]
    acknowledge_margin_ms: u64,
}

fn default_acknowledge_margin_ms() -> u64 {
    86_400_000
}

/// Who acknowledges an app's purchases at their store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcknowledgeMode {
    /// The backend, through Acknowledge or Consume (the default).
    #[default]
    Manual,
    /// iapd, right after a valid Verify.
    AfterVerify,
    /// iapd, `acknowledge_margin_ms` before the deadline, unless the backend
    /// did it first.
    BeforeDeadline,
}

/// An app's acknowledgement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcknowledgePolicy {
    /// Who acknowledges.
    pub mode: AcknowledgeMode,
    /// For `BeforeDeadline`: how long before the deadline.
    pub margin: Duration,
}

/// What a Verify by another user does to a purchase someone owns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimPolicy {
    /// The verdict is VERDICT_CLAIMED_BY_OTHER_USER (the default).
    #[default]
    Reject,
    /// The purchase moves to the new user.
    Transfer,
    /// Both users hold it.
    Share,
}

/// The ledger's settings, from `ledger.*`.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// The database URL; the embedded SQLite file when `None`.
    pub url: Option<String>,
    /// Where the embedded SQLite file lives.
    pub data_dir: PathBuf,
    /// Connections to PostgreSQL at once.
    pub max_connections: u32,
    /// Whether `serve` applies the migrations at start-up.
    pub migrate_on_start: bool,
    /// How long a purchase in a final state is answered from the ledger
    /// after the store last answered for it; zero asks the store always.
    pub final_state_freshness: Duration,
    /// The claims policy per app id.
    pub claims: BTreeMap<String, ClaimPolicy>,
    /// How long after a purchase a store's acknowledgement is due, for the
    /// purchases a store reports not acknowledged.
    pub acknowledgement_window: Duration,
    /// The acknowledgement policy per app id; `Manual` when absent.
    pub acknowledge: BTreeMap<String, AcknowledgePolicy>,
    /// Per app id, each entitlement's name and the products that grant it:
    /// exact product ids, or a prefix ending in `*`.
    pub entitlements: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: SocketAddr,
    max_concurrent_requests: usize,
    default_timeout_ms: u64,
    max_timeout_ms: u64,
    max_message_bytes: usize,
    shutdown_grace_ms: u64,
    max_connections: usize,
    max_streams_per_connection: u32,
    max_pending_resets: usize,
    idle_timeout_ms: u64,
    keepalive_interval_ms: u64,
    keepalive_timeout_ms: u64,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_certificates: ClientCertificates,
    #[serde(default = "default_tls_reload_interval_ms")]
    reload_interval_ms: u64,
}

fn default_tls_reload_interval_ms() -> u64 {
    10_000
}

/// With `client_ca_file`: whether every client must present a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertificates {
    /// A connection without a valid client certificate is refused.
    #[default]
    Required,
    /// A client may connect without one (and then needs an API key).
    Optional,
}

/// TLS for the listener, from `server.tls.*`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Its private key, PEM.
    pub key_file: PathBuf,
    /// The certificate authorities client certificates must chain to (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required, with `client_ca_file`.
    pub client_certificates: ClientCertificates,
    /// How often the files are checked for a change; zero never.
    pub reload_interval: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            // Above each store's own limit (`max_in_flight`), so that one slow
            // store fills its own bulkhead and leaves room for the others.
            max_concurrent_requests: 8192,
            default_timeout_ms: 30_000,
            max_timeout_ms: 120_000,
            max_message_bytes: 2 * 1024 * 1024,
            shutdown_grace_ms: 30_000,
            max_connections: 10_000,
            // A connection's share: well under max_concurrent_requests.
            max_streams_per_connection: 128,
            max_pending_resets: 4096,
            idle_timeout_ms: 300_000,
            keepalive_interval_ms: 60_000,
            keepalive_timeout_ms: 20_000,
            tls: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPlugins {
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    plugin: String,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_http_timeout_ms")]
    http_timeout_ms: u64,
    #[serde(default = "default_plugin_threads")]
    plugin_threads: usize,
    #[serde(default)]
    inline_calls: bool,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretSource>,
    #[serde(default)]
    circuit_breaker: RawBreaker,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBreaker {
    failures: u32,
    failure_ratio: f64,
    window_ms: u64,
    open_ms: u64,
}

impl Default for RawBreaker {
    fn default() -> Self {
        let defaults = crate::host::BreakerSettings::default();
        RawBreaker {
            failures: defaults.failures,
            failure_ratio: defaults.failure_ratio,
            window_ms: defaults.window.as_millis() as u64,
            open_ms: defaults.open_for.as_millis() as u64,
        }
    }
}

fn default_max_in_flight() -> usize {
    2048
}

fn default_http_timeout_ms() -> u64 {
    10_000
}

fn default_plugin_threads() -> usize {
    2
}

/// Where a secret's value comes from: a table with exactly one of `env`,
/// `file` or `value`. Values never appear in logs or errors, so neither
/// `Debug` nor the deserializer's errors show what was written.
#[derive(Clone)]
pub enum SecretSource {
    /// An environment variable's value.
    Env(String),
    /// A file's contents.
    File(PathBuf),
    /// The value itself (for local development only).
    Value(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => f.debug_tuple("Env").field(var).finish(),
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
            SecretSource::Value(_) => f.write_str("Value([redacted])"),
        }
    }
}

const SECRET_SOURCES: &[&str] = &["env", "file", "value"];

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SourceVisitor)
    }
}

/// Refuses the scalars serde would otherwise describe with their value: a
/// string written where a source table belongs is most likely the secret.
macro_rules! refuse_scalars_unseen {
    ($($method:ident($type:ty) => $found:literal),* $(,)?) => {
        $(
            fn $method<E: serde::de::Error>(self, _: $type) -> Result<Self::Value, E> {
                Err(E::custom(format_args!("invalid type: found {}, expected {}", $found, Expecting(&self))))
            }
        )*
    };
}

/// Formats a visitor's `expecting`.
struct Expecting<'a, V>(&'a V);

impl<'de, V: serde::de::Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

struct SourceVisitor;

impl<'de> serde::de::Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table with one of `env`, `file` or `value`, such as { env = \"VAR\" }")
    }

    refuse_scalars_unseen! {
        visit_bool(bool) => "a boolean",
        visit_i64(i64) => "an integer",
        visit_i128(i128) => "an integer",
        visit_u64(u64) => "an integer",
        visit_u128(u128) => "an integer",
        visit_f64(f64) => "a float",
        visit_char(char) => "a string",
        visit_str(&str) => "a string",
        visit_bytes(&[u8]) => "bytes",
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        let mut source = None;
        let mut first = String::new();
        while let Some(name) = map.next_key::<String>()? {
            let kind = match name.as_str() {
                "env" => SecretSource::Env,
                "file" => |text: String| SecretSource::File(PathBuf::from(text)),
                "value" => SecretSource::Value,
                _ => return Err(serde::de::Error::unknown_field(&name, SECRET_SOURCES)),
            };
            // Two sources would leave one silently unused.
            if source.is_some() {
                return Err(serde::de::Error::custom(format_args!(
                    "has two sources, `{first}` and `{name}`: give exactly one of `env`, `file` or `value`"
                )));
            }
            source = Some(kind(map.next_value::<SecretText>()?.0));
            first = name;
        }
        source.ok_or_else(|| serde::de::Error::custom("is empty: give exactly one of `env`, `file` or `value`"))
    }
}

/// The text of a source (a variable name, a path or the value), refused
/// without echoing it when it is not a string.
struct SecretText(String);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> serde::de::Visitor<'de> for TextVisitor {
    type Value = SecretText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    refuse_scalars_unseen! {
        visit_bool(bool) => "a boolean",
        visit_i64(i64) => "an integer",
        visit_i128(i128) => "an integer",
        visit_u64(u64) => "an integer",
        visit_u128(u128) => "an integer",
        visit_f64(f64) => "a float",
        visit_bytes(&[u8]) => "bytes",
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SecretText, E> {
        Ok(SecretText(text.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, text: String) -> Result<SecretText, E> {
        Ok(SecretText(text))
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the server listens.
    pub listen: SocketAddr,
    /// RPCs in flight at once, across stores; more are shed.
    pub max_concurrent_requests: usize,
    /// The deadline of a call whose client set none.
    pub default_timeout: Duration,
    /// The longest deadline honoured.
    pub max_timeout: Duration,
    /// The largest request accepted, in bytes.
    pub max_message_bytes: usize,
    /// How long shutdown waits for calls in flight.
    pub shutdown_grace: Duration,
    /// What each connection may hold.
    pub connections: ConnectionLimits,
    /// The folder plugins load from.
    pub plugins_dir: PathBuf,
    /// The stores, by id.
    pub stores: BTreeMap<String, StoreConfig>,
    /// The ledger; `None` when `ledger.enabled` is false.
    pub ledger: Option<LedgerConfig>,
    /// Who may call.
    pub auth: AuthConfig,
    /// TLS for the listener; plaintext when `None`.
    pub tls: Option<TlsConfig>,
    /// Logs, traces and metrics.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Where store quotas are counted.
    pub rate_limits: RateLimitsConfig,
}

/// The limits on connections, from `server.*`.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Streams a client may reset before the server has taken them, on one
    /// connection, before the connection is closed (HTTP/2 rapid-reset
    /// protection).
    pub max_pending_resets: usize,
    /// A connection without a call for this long is closed (GOAWAY).
    pub idle_timeout: Duration,
    /// How often an HTTP/2 PING checks that the peer is still there.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

/// One configured store.
#[derive(Clone)]
pub struct StoreConfig {
    /// The plugin file, inside the plugins folder.
    pub plugin_path: PathBuf,
    /// Origins the plugin may call besides those it declares.
    pub allowed_origins: Vec<Origin>,
    /// Calls in flight at once for this store; more are refused.
    pub max_in_flight: usize,
    /// The HTTP timeout when the plugin sets none.
    pub http_timeout: Duration,
    /// Threads that run this store's plugin code.
    pub plugin_threads: usize,
    /// Start calls on the runtime's threads instead of the plugin threads
    /// (only for plugins that declare a non-blocking `call`).
    pub inline_calls: bool,
    /// The plugin's own settings, as JSON.
    pub config_json: String,
    /// Resolved secret values by name.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// When the store's circuit opens.
    pub circuit_breaker: crate::host::BreakerSettings,
    /// The store's request quota; none when `None`.
    pub rate_limit: Option<crate::host::RateLimit>,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("plugin_path", &self.plugin_path)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_in_flight", &self.max_in_flight)
            .field("http_timeout", &self.http_timeout)
            .field("plugin_threads", &self.plugin_threads)
            .field("inline_calls", &self.inline_calls)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("rate_limit", &self.rate_limit)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A scheme, host and port an HTTP request may go to: the SDK's, so the host
/// and a plugin's kit tests apply one rule.
pub use iapd_sdk_plugin::origin::Origin;

/// Where configuration comes from, besides `IAPD_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A TOML file; the embedded defaults when `None`.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Loads and validates the configuration.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let base = match &sources.file {
            Some(path) => {
                // Opened here so that an unreadable file is refused as such;
                // figment reads it again and names it in its errors.
                std::fs::File::open(path)
                    .map_err(|err| ConfigError::new("--config", format!("cannot read `{}`: {err}", path.display())))?;
                Toml::file_exact(path)
            }
            None => Toml::string(DEFAULTS),
        };
        // IAPD_CONFIG and IAPD_LOG belong to the command line, not to the
        // configuration tree.
        let env = Env::prefixed("IAPD_").filter(|key| key != "config" && key != "log").split("__");
        let figment = Figment::from(base).merge(env);
        let raw: RawConfig = figment.extract().map_err(figment_error)?;
        Config::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let server = raw.server;
        if server.max_concurrent_requests == 0 {
            return Err(ConfigError::new("server.max_concurrent_requests", "must be at least 1"));
        }
        if server.default_timeout_ms == 0 || server.default_timeout_ms > server.max_timeout_ms {
            return Err(ConfigError::new(
                "server.default_timeout_ms",
                format!("must be between 1 and server.max_timeout_ms ({})", server.max_timeout_ms),
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&server.max_message_bytes) {
            return Err(ConfigError::new("server.max_message_bytes", "must be between 1 KiB and 64 MiB"));
        }
        let at_least_one = [
            ("server.max_connections", server.max_connections as u64),
            ("server.max_streams_per_connection", u64::from(server.max_streams_per_connection)),
            ("server.max_pending_resets", server.max_pending_resets as u64),
            ("server.idle_timeout_ms", server.idle_timeout_ms),
            ("server.keepalive_interval_ms", server.keepalive_interval_ms),
            ("server.keepalive_timeout_ms", server.keepalive_timeout_ms),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::new(*key, "must be at least 1"));
        }
        let plugins_dir = match raw.plugins.dir {
            Some(dir) => dir,
            None => default_plugins_dir().map_err(|reason| ConfigError::new("plugins.dir", reason))?,
        };
        let plugins_dir = plugins_dir.canonicalize().map_err(|err| {
            ConfigError::new("plugins.dir", format!("folder `{}` cannot be used: {err}", plugins_dir.display()))
        })?;
        if raw.stores.is_empty() {
            return Err(ConfigError::new("stores", "no store is configured"));
        }
        let mut stores = BTreeMap::new();
        for (id, store) in raw.stores {
            let key = format!("stores.{id}");
            if !valid_store_id(&id) {
                return Err(ConfigError::new(key, "a store id is 1-64 of [a-z0-9_-], starting with a letter or digit"));
            }
            stores.insert(id, validate_store(&key, store, &plugins_dir)?);
        }
        Ok(Config {
            listen: server.listen,
            max_concurrent_requests: server.max_concurrent_requests,
            default_timeout: Duration::from_millis(server.default_timeout_ms),
            max_timeout: Duration::from_millis(server.max_timeout_ms),
            max_message_bytes: server.max_message_bytes,
            shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
            connections: ConnectionLimits {
                max_connections: server.max_connections,
                max_streams_per_connection: server.max_streams_per_connection,
                max_pending_resets: server.max_pending_resets,
                idle_timeout: Duration::from_millis(server.idle_timeout_ms),
                keepalive_interval: Duration::from_millis(server.keepalive_interval_ms),
                keepalive_timeout: Duration::from_millis(server.keepalive_timeout_ms),
            },
            plugins_dir,
            auth: validate_auth(raw.auth, raw.tenants, &stores)?,
            telemetry: validate_telemetry(raw.telemetry)?,
            rate_limits: validate_rate_limits(raw.rate_limits)?,
            tls: server.tls.map(|tls| TlsConfig {
                cert_file: tls.cert_file,
                key_file: tls.key_file,
                client_ca_file: tls.client_ca_file,
                client_certificates: tls.client_certificates,
                reload_interval: Duration::from_millis(tls.reload_interval_ms),
            }),
            stores,
            ledger: validate_ledger(raw.ledger)?,
        })
    }
}

fn validate_auth(
    auth: RawAuth,
    raw_tenants: BTreeMap<String, RawTenant>,
    stores: &BTreeMap<String, StoreConfig>,
) -> Result<AuthConfig, ConfigError> {
    use std::collections::BTreeSet;
    let rpcs = crate::rpc_names();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let mut hashes: BTreeMap<[u8; 32], String> = BTreeMap::new();
    let mut subjects: BTreeMap<String, String> = BTreeMap::new();
    let mut tenants = BTreeMap::new();
    for (name, tenant) in raw_tenants {
        let key = format!("tenants.{name}");
        if !valid_store_id(&name) {
            return Err(ConfigError::new(key, "a tenant name is 1-64 of [a-z0-9_-], starting with a letter or digit"));
        }
        if tenant.apps.is_empty() {
            return Err(ConfigError::new(format!("{key}.apps"), "names no app: a tenant owns at least one app id"));
        }
        let mut apps = BTreeSet::new();
        for app in tenant.apps {
            if app.is_empty() || app.len() > 256 {
                return Err(ConfigError::new(format!("{key}.apps"), "an app id is 1 to 256 bytes"));
            }
            // Tenants are isolated by their apps: one shared would let each
            // see the other's purchases.
            if let Some(other) = owners.insert(app.clone(), name.clone()) {
                return Err(ConfigError::new(
                    format!("{key}.apps"),
                    format!("app `{app}` is also tenant `{other}`'s: an app belongs to one tenant"),
                ));
            }
            apps.insert(app);
        }
        let scope =
            |key: &str, stores_in: Option<Vec<String>>, apps_in: Option<Vec<String>>, rpcs_in: Option<Vec<String>>| {
                if let Some(unknown) = stores_in.iter().flatten().find(|store| !stores.contains_key(*store)) {
                    return Err(ConfigError::new(
                        format!("{key}.stores"),
                        format!("`{unknown}` is not a configured store"),
                    ));
                }
                if let Some(foreign) = apps_in.iter().flatten().find(|app| !apps.contains(*app)) {
                    return Err(ConfigError::new(
                        format!("{key}.apps"),
                        format!("`{foreign}` is not one of the tenant's apps ({key} can reach only those)"),
                    ));
                }
                let mut names = BTreeSet::new();
                for rpc in rpcs_in.iter().flatten() {
                    if rpc == "read_only" {
                        names.extend(READ_ONLY_RPCS.iter().map(|name| (*name).to_owned()));
                    } else if rpcs.iter().any(|known| known == rpc) {
                        names.insert(rpc.clone());
                    } else {
                        return Err(ConfigError::new(
                            format!("{key}.rpcs"),
                            format!(
                                "`{rpc}` is not an RPC of iapd.v1.PurchaseService (nor `read_only`): {}",
                                rpcs.join(", ")
                            ),
                        ));
                    }
                }
                Ok(Scope {
                    stores: stores_in.map(|list| list.into_iter().collect()),
                    apps: apps_in.map(|list| list.into_iter().collect()),
                    rpcs: rpcs_in.map(|_| names),
                })
            };
        let mut keys = BTreeMap::new();
        for (key_name, raw) in tenant.keys {
            let key = format!("{key}.keys.{key_name}");
            let sha256 = parse_sha256(&raw.sha256).ok_or_else(|| {
                ConfigError::new(format!("{key}.sha256"), "must be 64 hex digits, the SHA-256 `iapd keys new` printed")
            })?;
            if let Some(other) = hashes.insert(sha256, key.clone()) {
                return Err(ConfigError::new(
                    format!("{key}.sha256"),
                    format!("is also `{other}`'s: one key, one name"),
                ));
            }
            let scope = scope(&key, raw.stores, raw.apps, raw.rpcs)?;
            keys.insert(key_name, KeyConfig { sha256, revoked: raw.revoked, scope });
        }
        let mut clients = BTreeMap::new();
        for (client_name, raw) in tenant.clients {
            let key = format!("{key}.clients.{client_name}");
            if raw.subject.is_empty() || raw.subject.len() > 253 {
                return Err(ConfigError::new(format!("{key}.subject"), "a certificate name is 1 to 253 bytes"));
            }
            if let Some(other) = subjects.insert(raw.subject.to_ascii_lowercase(), key.clone()) {
                return Err(ConfigError::new(format!("{key}.subject"), format!("is also `{other}`'s")));
            }
            let scope = scope(&key, raw.stores, raw.apps, raw.rpcs)?;
            clients.insert(client_name, ClientConfig { subject: raw.subject.to_ascii_lowercase(), scope });
        }
        tenants.insert(name, TenantConfig { apps, keys, clients });
    }
    Ok(AuthConfig { mode: auth.mode, tenants })
}

fn validate_rate_limits(raw: RawRateLimits) -> Result<RateLimitsConfig, ConfigError> {
    let redis_url = raw.redis_url.filter(|url| !url.is_empty());
    if let Some(url) = &redis_url
        && !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://"))
    {
        // Not echoed: a URL may hold a password.
        return Err(ConfigError::new("rate_limits.redis_url", "must start with redis://, rediss:// or redis+unix://"));
    }
    if raw.key_prefix.is_empty() || raw.key_prefix.contains(char::is_whitespace) {
        return Err(ConfigError::new("rate_limits.key_prefix", "must be a word without spaces"));
    }
    Ok(RateLimitsConfig { redis_url, key_prefix: raw.key_prefix })
}

fn validate_telemetry(raw: RawTelemetry) -> Result<crate::telemetry::TelemetryConfig, ConfigError> {
    let endpoint = raw.otlp_endpoint.filter(|endpoint| !endpoint.is_empty());
    if let Some(endpoint) = &endpoint {
        let url = reqwest::Url::parse(endpoint)
            .map_err(|err| ConfigError::new("telemetry.otlp_endpoint", format!("`{endpoint}` is not a URL: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::new("telemetry.otlp_endpoint", "an OTLP/gRPC collector, http(s)://host:port"));
        }
    }
    if raw.export_interval_ms == 0 {
        return Err(ConfigError::new("telemetry.export_interval_ms", "must be at least 1"));
    }
    if raw.service_name.is_empty() {
        return Err(ConfigError::new("telemetry.service_name", "must not be empty"));
    }
    if !(0.0..=1.0).contains(&raw.trace_sample_ratio) {
        return Err(ConfigError::new("telemetry.trace_sample_ratio", "must be between 0 and 1"));
    }
    Ok(crate::telemetry::TelemetryConfig {
        otlp_endpoint: endpoint,
        service_name: raw.service_name,
        export_interval: Duration::from_millis(raw.export_interval_ms),
        trace_sample_ratio: raw.trace_sample_ratio,
        log_format: raw.log_format,
    })
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(text.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(hash)
}

fn validate_entitlements(
    apps: BTreeMap<String, RawLedgerApp>,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<String>>>, ConfigError> {
    let mut all = BTreeMap::new();
    for (app, settings) in apps {
        for (name, products) in &settings.entitlements {
            let key = format!("ledger.apps.{app}.entitlements.{name}");
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !valid_name {
                return Err(ConfigError::new(key, "an entitlement name is 1-64 of [A-Za-z0-9_.-]"));
            }
            if products.is_empty() {
                return Err(ConfigError::new(key, "names no product: give product ids, or prefixes ending in `*`"));
            }
            if let Some(bad) =
                products.iter().find(|product| product.is_empty() || product[..product.len() - 1].contains('*'))
            {
                return Err(ConfigError::new(
                    key,
                    format!("`{bad}`: a product id, or a prefix with `*` only at its end"),
                ));
            }
        }
        if !settings.entitlements.is_empty() {
            all.insert(app, settings.entitlements);
        }
    }
    Ok(all)
}

fn validate_acknowledge(
    apps: &BTreeMap<String, RawLedgerApp>,
    window_ms: u64,
) -> Result<BTreeMap<String, AcknowledgePolicy>, ConfigError> {
    let mut policies = BTreeMap::new();
    for (app, settings) in apps {
        if settings.acknowledge_margin_ms >= window_ms {
            return Err(ConfigError::new(
                format!("ledger.apps.{app}.acknowledge_margin_ms"),
                format!("must be below ledger.acknowledgement_window_ms ({window_ms})"),
            ));
        }
        if settings.acknowledge != AcknowledgeMode::Manual {
            let margin = Duration::from_millis(settings.acknowledge_margin_ms);
            policies.insert(app.clone(), AcknowledgePolicy { mode: settings.acknowledge, margin });
        }
    }
    Ok(policies)
}

fn validate_ledger(raw: RawLedger) -> Result<Option<LedgerConfig>, ConfigError> {
    if !raw.enabled {
        return Ok(None);
    }
    if raw.max_connections == 0 {
        return Err(ConfigError::new("ledger.max_connections", "must be at least 1"));
    }
    if let Some(url) = &raw.url
        && !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        return Err(ConfigError::new("ledger.url", "must start with sqlite: or postgres://"));
    }
    Ok(Some(LedgerConfig {
        url: raw.url.filter(|url| !url.is_empty()),
        data_dir: raw.data_dir,
        max_connections: raw.max_connections,
        migrate_on_start: raw.migrate_on_start,
        final_state_freshness: Duration::from_millis(raw.final_state_freshness_ms),
        claims: raw.apps.iter().map(|(app, settings)| (app.clone(), settings.claims)).collect(),
        acknowledgement_window: Duration::from_millis(raw.acknowledgement_window_ms),
        acknowledge: validate_acknowledge(&raw.apps, raw.acknowledgement_window_ms)?,
        entitlements: validate_entitlements(raw.apps)?,
    }))
}

fn validate_store(key: &str, store: RawStore, plugins_dir: &Path) -> Result<StoreConfig, ConfigError> {
    let plugin_path = resolve_plugin(plugins_dir, &store.plugin)
        .map_err(|reason| ConfigError::new(format!("{key}.plugin"), reason))?;
    let allowed_origins = store
        .allowed_origins
        .iter()
        .enumerate()
        .map(|(index, text)| {
            Origin::parse(text).map_err(|reason| ConfigError::new(format!("{key}.allowed_origins[{index}]"), reason))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if store.max_in_flight == 0 {
        return Err(ConfigError::new(format!("{key}.max_in_flight"), "must be at least 1"));
    }
    if !(1..=64).contains(&store.plugin_threads) {
        return Err(ConfigError::new(format!("{key}.plugin_threads"), "must be between 1 and 64"));
    }
    if store.http_timeout_ms == 0 {
        return Err(ConfigError::new(format!("{key}.http_timeout_ms"), "must be at least 1"));
    }
    let breaker = &store.circuit_breaker;
    if !(breaker.failure_ratio > 0.0 && breaker.failure_ratio <= 1.0) {
        return Err(ConfigError::new(format!("{key}.circuit_breaker.failure_ratio"), "must be above 0 and at most 1"));
    }
    if breaker.window_ms == 0 || breaker.open_ms == 0 {
        let which = if breaker.window_ms == 0 { "window_ms" } else { "open_ms" };
        return Err(ConfigError::new(format!("{key}.circuit_breaker.{which}"), "must be at least 1"));
    }
    let rate_limit = match store.rate_limit {
        Some(limit) if limit.requests == 0 || limit.window_ms == 0 => {
            let which = if limit.requests == 0 { "requests" } else { "window_ms" };
            return Err(ConfigError::new(format!("{key}.rate_limit.{which}"), "must be at least 1"));
        }
        Some(limit) => {
            Some(crate::host::RateLimit { requests: limit.requests, window: Duration::from_millis(limit.window_ms) })
        }
        None => None,
    };
    let circuit_breaker = crate::host::BreakerSettings {
        failures: breaker.failures,
        failure_ratio: breaker.failure_ratio,
        window: Duration::from_millis(breaker.window_ms),
        open_for: Duration::from_millis(breaker.open_ms),
    };
    let mut secrets = BTreeMap::new();
    for (name, source) in store.secrets {
        let secret_key = format!("{key}.secrets.{name}");
        let value = match source {
            SecretSource::Env(var) => std::env::var_os(&var)
                .map(|value| value.into_encoded_bytes())
                .ok_or_else(|| ConfigError::new(&secret_key, format!("environment variable `{var}` is not set")))?,
            SecretSource::File(path) => std::fs::read(&path)
                .map_err(|err| ConfigError::new(&secret_key, format!("cannot read `{}`: {err}", path.display())))?,
            SecretSource::Value(value) => value.into_bytes(),
        };
        secrets.insert(name, value);
    }
    Ok(StoreConfig {
        plugin_path,
        allowed_origins,
        max_in_flight: store.max_in_flight,
        http_timeout: Duration::from_millis(store.http_timeout_ms),
        plugin_threads: store.plugin_threads,
        inline_calls: store.inline_calls,
        config_json: store.config.map(|value| value.to_string()).unwrap_or_default(),
        secrets,
        circuit_breaker,
        rate_limit,
    })
}

/// Resolves a plugin name to a file that must be inside `dir`: a bare name
/// gets the platform's library prefix and suffix (`libX.so`).
pub fn resolve_plugin(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(format!("`{name}` must be a file name inside the plugins folder `{}`", dir.display()));
    }
    let file = if Path::new(name).extension().is_some() {
        PathBuf::from(name)
    } else {
        PathBuf::from(libloading::library_filename(name))
    };
    let path = dir.join(&file);
    let real = path.canonicalize().map_err(|err| format!("plugin file `{}` cannot be used: {err}", path.display()))?;
    if real.parent() != Some(dir) {
        return Err(format!(
            "plugin file `{}` resolves outside the plugins folder `{}`",
            path.display(),
            dir.display()
        ));
    }
    if !real.is_file() {
        return Err(format!("plugin path `{}` is not a file", path.display()));
    }
    Ok(real)
}

fn default_plugins_dir() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|err| format!("not set, and the executable's folder is unknown: {err}"))?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| "not set, and the executable has no folder".to_owned())
}

fn valid_store_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

fn figment_error(err: figment::Error) -> ConfigError {
    let key = if err.path.is_empty() { "(top level)".to_owned() } else { err.path.join(".") };
    let source = match err.metadata.as_ref() {
        Some(meta) => match &meta.source {
            Some(figment::Source::File(path)) => format!(" (in `{}`)", path.display()),
            // The only TOML string is the embedded defaults.
            _ if meta.name.starts_with(Toml::NAME) => " (in the embedded defaults)".to_owned(),
            _ => format!(" (from {})", meta.name),
        },
        None => String::new(),
    };
    let under_secrets = err.path.len() >= 3 && err.path[0] == "stores" && err.path[2] == "secrets";
    let reason = if under_secrets { without_values(&err.kind) } else { without_excerpt(&err.kind.to_string()) };
    ConfigError::new(key, format!("{reason}{source}"))
}

/// An error under `secrets` without the value serde found: a value in the
/// wrong place there is most likely the secret itself.
fn without_values(kind: &figment::error::Kind) -> String {
    use figment::error::{Actual, Kind};
    let shape = |actual: &Actual| match actual {
        Actual::Bool(_) => "a boolean".to_owned(),
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer".to_owned(),
        Actual::Float(_) => "a float".to_owned(),
        Actual::Char(_) | Actual::Str(_) => "a string".to_owned(),
        Actual::Bytes(_) => "bytes".to_owned(),
        Actual::Other(_) => "a value".to_owned(),
        other => other.to_string(),
    };
    match kind {
        Kind::InvalidType(actual, expected) => format!("invalid type: found {}, expected {expected}", shape(actual)),
        Kind::InvalidValue(actual, expected) => format!("invalid value: found {}, expected {expected}", shape(actual)),
        Kind::UnknownVariant(_, expected) => format!("unknown variant, expected one of {}", expected.join(", ")),
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "integer out of range".to_owned(),
        Kind::Unsupported(actual) => format!("unsupported type {}", shape(actual)),
        Kind::UnsupportedKey(actual, needed) => format!("unsupported key type {}, need {needed}", shape(actual)),
        other => other.to_string(),
    }
}

/// A TOML syntax error with its position and reason, but not the excerpt
/// of the file it quotes, which may be a secret's line.
fn without_excerpt(message: &str) -> String {
    let is_excerpt =
        |line: &str| line.trim_start().trim_start_matches(|c: char| c.is_ascii_digit()).trim_start().starts_with('|');
    let lines: Vec<&str> = message.lines().filter(|line| !line.trim().is_empty() && !is_excerpt(line)).collect();
    lines.join(": ")
}
