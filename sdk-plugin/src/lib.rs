//! Write iapd store plugins in safe Rust.
//!
//! A store plugin is a `cdylib` that iapd loads at run time through a stable C
//! ABI (`include/iapd_plugin.h`, ABI v1). This crate hides that ABI: implement
//! [`Store`] with async methods, call [`export_store!`] once, and mark your
//! crate `#![forbid(unsafe_code)]`.
//!
//! ```
//! #![forbid(unsafe_code)]
//! use iapd_sdk_plugin::prelude::*;
//! use iapd_sdk_plugin::proto::{self, Verdict};
//!
//! struct MyStore;
//!
//! impl Store for MyStore {
//!     const NAME: &'static CStr = c"my_store";
//!     const CAPABILITIES: u64 = CAP_VERIFY;
//!     type Config = serde_json::Value;
//!
//!     fn info() -> proto::PluginInfo {
//!         proto::PluginInfo {
//!             allowed_origins: vec!["https://store.example".into()],
//!             ..Default::default()
//!         }
//!     }
//!
//!     fn new(_config: Self::Config, _init: &InitContext) -> Result<Self, PluginError> {
//!         Ok(MyStore)
//!     }
//!
//!     async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
//!         let url = format!("https://store.example/purchases/{}", request.product_id);
//!         let answer = cx.http(HttpRequest::get(url)).await?;
//!         let verdict = if answer.status() == 404 { Verdict::NotFound } else { Verdict::Valid };
//!         Ok(proto::VerifyResponse { verdict: verdict.into(), ..Default::default() })
//!     }
//! }
//!
//! export_store!(MyStore);
//!
//! // The kit runs it in-process, with scripted store answers:
//! let kit = iapd_sdk_plugin::kit::builder().http(|_| HttpResponse::new(404, "")).build::<MyStore>()?;
//! let answer = kit.verify(proto::VerifyRequest { product_id: "coins".into(), ..Default::default() })?;
//! assert_eq!(answer.verdict(), Verdict::NotFound);
//! assert_eq!(kit.requests()[0].url(), "https://store.example/purchases/coins");
//! # Ok::<(), PluginError>(())
//! ```
//!
//! Plugins own no runtime, no sockets and no TLS: the host performs HTTP
//! ([`Ctx::http`]) for them, only to origins the plugin's [`proto::PluginInfo`]
//! or the operator's configuration allow, and timers ([`Ctx::sleep`]). Plugin
//! code must never block a thread: wait through these futures. Panics are
//! caught at every entry point and become an INTERNAL error for that call.
//!
//! Test a store with [`kit`], which runs it in-process against scripted HTTP
//! answers, without building the library.
//!
//! Stability: the ABI is versioned separately from this crate (see
//! [`abi::ABI_MAJOR`], [`abi::ABI_MINOR`]); a plugin built with any 1.x SDK
//! loads in any host of ABI major 1 whose minor is at least the SDK's.

pub mod abi;
pub mod catalog;
pub mod checks;
mod error;
#[allow(unsafe_code)]
#[doc(hidden)]
pub mod ffi;
mod http;
pub mod kit;
pub mod origin;
pub mod region;
pub mod retry;
mod runtime;
pub mod sync;

use std::ffi::CStr;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use error::{Code, PluginError};
pub use http::{HttpRequest, HttpResponse, path_segment, path_segment_pchar};

/// The plugin contract messages (`proto/iapd/plugin/v1/plugin.proto`).
#[allow(missing_docs, unreachable_pub, missing_debug_implementations)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/iapd.plugin.v1.rs"));
}

pub use log;
pub use serde;

/// What a plugin author usually imports.
pub mod prelude {
    pub use crate::abi::{CAP_ACKNOWLEDGE, CAP_CONSUME, CAP_LIST_ITEMS, CAP_VERIFY};
    pub use crate::{Code, Ctx, HttpRequest, HttpResponse, InitContext, PluginError, Store, export_store};
    pub use std::ffi::CStr;
}

/// A store adapter. One value serves every call of one configured store; its
/// methods run concurrently from several host threads.
pub trait Store: Sized + Send + Sync + 'static {
    /// The plugin's name: `[a-z0-9_-]+`.
    const NAME: &'static CStr;
    /// The operations served, as `CAP_*` bits; must match the methods
    /// implemented below.
    const CAPABILITIES: u64;
    /// Set to `true` only if every method, up to its first `.await` on the
    /// host (an HTTP request or a timer), takes microseconds and never blocks.
    /// The host may then start this store's calls on its own I/O threads
    /// instead of handing them to plugin threads, which saves two thread
    /// wake-ups per call; it matters for stores that answer from memory. A
    /// call that overruns makes the host stop doing so for the store.
    const NONBLOCKING_CALL: bool = false;
    /// The store's `[stores.<id>.config]` table, deserialized from JSON.
    type Config: serde::de::DeserializeOwned;

    /// Metadata for the host: display name, methods, allowed origins,
    /// secrets, proof kinds. `methods` may be left empty: the SDK fills it
    /// from [`Store::CAPABILITIES`].
    fn info() -> proto::PluginInfo;

    /// Builds the store from its configuration. Runs once per configured
    /// store, at server start-up.
    fn new(config: Self::Config, init: &InitContext) -> Result<Self, PluginError>;

    /// Verifies a purchase. Business outcomes are verdicts; an error means the
    /// plugin could not decide.
    fn verify(
        &self,
        cx: &Ctx,
        request: proto::VerifyRequest,
    ) -> impl Future<Output = Result<proto::VerifyResponse, PluginError>> + Send;

    /// Acknowledges a purchase. The default says the store has no such
    /// operation.
    fn acknowledge(
        &self,
        _cx: &Ctx,
        _request: proto::AcknowledgeRequest,
    ) -> impl Future<Output = Result<proto::AcknowledgeResponse, PluginError>> + Send {
        async { Err(PluginError::unimplemented("this store has no acknowledge operation")) }
    }

    /// Consumes a purchase. The default says the store has no such operation.
    fn consume(
        &self,
        _cx: &Ctx,
        _request: proto::ConsumeRequest,
    ) -> impl Future<Output = Result<proto::ConsumeResponse, PluginError>> + Send {
        async { Err(PluginError::unimplemented("this store has no consume operation")) }
    }

    /// Lists the catalog. The default says the store has no catalog.
    fn list_items(
        &self,
        _cx: &Ctx,
        _request: proto::ListItemsRequest,
    ) -> impl Future<Output = Result<proto::ListItemsResponse, PluginError>> + Send {
        async { Err(PluginError::unimplemented("this store has no catalog")) }
    }
}

/// What the plugin tells the host about itself: [`Store::info`], with the
/// methods named by the capabilities unless the store listed them.
pub(crate) fn described<S: Store>() -> proto::PluginInfo {
    let mut info = S::info();
    if info.methods.is_empty() {
        info.methods = [
            (abi::CAP_VERIFY, abi::method::VERIFY),
            (abi::CAP_ACKNOWLEDGE, abi::method::ACKNOWLEDGE),
            (abi::CAP_CONSUME, abi::method::CONSUME),
            (abi::CAP_LIST_ITEMS, abi::method::LIST_ITEMS),
        ]
        .into_iter()
        .filter(|(capability, _)| S::CAPABILITIES & capability != 0)
        .map(|(_, method)| method.to_owned())
        .collect();
    }
    info
}

/// Host services; implemented over the C ABI and by the test kit.
pub(crate) trait HostServices: Send + Sync {
    fn log_max_level(&self) -> u32;
    fn log(&self, level: u32, target: &str, message: &str, call_id: u64);
    fn now_unix_millis(&self) -> i64;
    fn secret(&self, name: &str) -> Option<Vec<u8>>;
    /// `OK` means `done` is called exactly once, later; otherwise never.
    fn http_send(&self, call_id: u64, request: &[u8], done: HttpCallback) -> abi::Status;
    /// `OK` means `done` is called exactly once, later; otherwise never.
    fn timer_start(&self, call_id: u64, delay_millis: u64, done: TimerCallback) -> abi::Status;
    fn complete(&self, call_id: u64, status: abi::Status, payload: &[u8]);
}

pub(crate) type HttpCallback = Box<dyn FnOnce(abi::Status, &[u8]) + Send>;
pub(crate) type TimerCallback = Box<dyn FnOnce(abi::Status) + Send>;

/// What [`Store::new`] can use: the store id and the host's secrets and log.
pub struct InitContext {
    store_id: String,
    host: Arc<dyn HostServices>,
}

impl InitContext {
    /// The id the operator gave this store in the configuration.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// A secret the operator configured for this store.
    pub fn secret(&self, name: &str) -> Result<Secret, PluginError> {
        secret(&*self.host, name)
    }

    /// The host's clock (frozen in some tests).
    pub fn now_unix_millis(&self) -> i64 {
        self.host.now_unix_millis()
    }
}

impl fmt::Debug for InitContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitContext").field("store_id", &self.store_id).finish_non_exhaustive()
    }
}

/// The context of one call: host services tied to the call's id, so the host
/// can bound HTTP by the call's deadline and attribute logs.
#[derive(Clone)]
pub struct Ctx {
    pub(crate) call_id: u64,
    pub(crate) host: Arc<dyn HostServices>,
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("call_id", &self.call_id).finish_non_exhaustive()
    }
}

impl Ctx {
    /// The host's id for this call.
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// Sends an HTTP request through the host. Any HTTP status is an `Ok`
    /// answer; `Err` means there was no answer (origin not allowed, timeout,
    /// connection failure), with the host's code.
    pub fn http(&self, request: HttpRequest) -> impl Future<Output = Result<HttpResponse, PluginError>> + Send {
        http::send(self.clone(), request)
    }

    /// Waits `delay` without blocking a thread.
    pub fn sleep(&self, delay: Duration) -> impl Future<Output = Result<(), PluginError>> + Send {
        http::sleep(self.clone(), delay)
    }

    /// The host's clock, in milliseconds since the Unix epoch.
    pub fn now_unix_millis(&self) -> i64 {
        self.host.now_unix_millis()
    }

    /// A secret the operator configured for this store.
    pub fn secret(&self, name: &str) -> Result<Secret, PluginError> {
        secret(&*self.host, name)
    }

    /// Logs a message attributed to this call.
    pub fn log(&self, level: log::Level, message: &str) {
        let level = level as u32;
        if level <= self.host.log_max_level() {
            self.host.log(level, "plugin", message, self.call_id);
        }
    }
}

fn secret(host: &dyn HostServices, name: &str) -> Result<Secret, PluginError> {
    host.secret(name)
        .map(Secret)
        .ok_or_else(|| PluginError::failed_precondition(format!("secret `{name}` is not configured for this store")))
}

/// A secret value. Its `Debug` never shows the value, and the bytes are
/// overwritten when it is dropped.
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as UTF-8.
    pub fn expose_str(&self) -> Result<&str, PluginError> {
        std::str::from_utf8(&self.0).map_err(|_| PluginError::failed_precondition("secret is not valid utf-8"))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|byte| *byte = 0);
        std::hint::black_box(&self.0);
    }
}

/// The build information every descriptor carries.
pub const BUILD_INFO: &str = concat!(
    "iapd-sdk-plugin ",
    env!("CARGO_PKG_VERSION"),
    "; ",
    env!("IAPD_SDK_RUSTC"),
    "; ",
    env!("IAPD_SDK_TARGET"),
    "\0"
);

#[cfg(test)]
mod tests;
