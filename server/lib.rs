//! iapd: a gRPC service that verifies in-app purchases for any app store.
//!
//! Each store is served by a plugin, a dynamic library loaded through the C
//! ABI of `sdk-plugin`. Start reading at [`serve`]; the code map is in
//! ARCHITECTURE.md.

mod acknowledger;
pub mod auth;
mod codec;
pub mod config;
mod convert;
pub mod error;
pub mod host;
mod layers;
pub mod ledger;
mod service;
pub mod telemetry;
mod tls;
mod transport;
mod validate;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use service::{PurchaseApi, store_health_name};

/// The public API's generated code.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("iapd.v1");

    /// The encoded file descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("iapd_descriptor");
}

/// The RPC names of `iapd.v1.PurchaseService` (`Verify`, …), from the API's
/// descriptor set.
pub fn rpc_names() -> Vec<String> {
    use prost::Message;
    // The descriptor set is compiled in: one that does not decode is a build defect.
    let descriptors = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap_or_default();
    descriptors
        .file
        .iter()
        .filter(|file| file.package() == "iapd.v1")
        .flat_map(|file| file.service.iter())
        .filter(|service| service.name() == "PurchaseService")
        .flat_map(|service| service.method.iter().map(|method| method.name().to_owned()))
        .collect()
}

/// Checks what the configuration says of a listener on `address`: whether
/// callers must authenticate there, and that the TLS files load. `serve`
/// does the same before it starts anything.
pub fn check_listener(config: &config::Config, address: std::net::SocketAddr) -> Result<(), config::ConfigError> {
    listener_settings(config, address).map(drop)
}

/// What the configuration says of a listener on `address`: the
/// authentication mode there, and the TLS settings, their files read.
fn listener_settings(
    config: &config::Config,
    address: std::net::SocketAddr,
) -> Result<(config::AuthMode, Option<tls::Tls>), config::ConfigError> {
    let mode = config.auth.mode_for(address)?;
    let tls = config.tls.as_ref().map(tls::Tls::load).transpose()?;
    Ok((mode, tls))
}

/// Serves the API on `listener` until `shutdown` resolves, then stops taking
/// new calls and waits for the ones in flight.
pub async fn serve(
    listener: TcpListener,
    config: config::Config,
    host: Arc<host::PluginHost>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    service::run(listener, config, host, shutdown).await
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be built from the descriptor set.
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's address could not be read.
    #[error("cannot read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    /// The configuration does not fit the address served.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}
