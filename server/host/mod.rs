//! The plugin host: loads store plugins through ABI v1 and calls them.
//!
//! Plugin code runs on a few threads per store (`pool`), and returns as soon
//! as it has asked the host for I/O, so no thread waits while a store
//! answers. The one exception is opt-in: a store configured with
//! `inline_calls` whose plugin declares a non-blocking `call` has its calls
//! started on the runtime thread that received them, under a time budget.

mod breaker;
mod context;
#[allow(unsafe_code)]
mod ffi;
pub mod load;
mod pool;
mod quota;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iapd_sdk_plugin::abi::{self, status};
use iapd_sdk_plugin::proto;
use prost::Message;
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use breaker::BreakerSettings;
use breaker::{Breaker, Outcome};
pub use context::HostCounters;
use context::{ContextSettings, HostContext};
pub use load::{DescriptorInfo, LoadError};
pub use quota::RateLimit;

use crate::config::{Config, Origin, StoreConfig};

/// How long a plugin may take to create its instance.
const INSTANCE_NEW_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest an inline `call` may hold a runtime thread. An overrun means
/// the plugin broke its non-blocking promise, or the thread was preempted
/// (a busy machine does that now and then, so one overrun is not proof).
const INLINE_CALL_BUDGET: Duration = Duration::from_millis(5);
/// This many overruns within `INLINE_STRIKE_WINDOW` move a store's calls to
/// its plugin threads for good: two wake-ups per call, never a stalled
/// runtime.
const INLINE_STRIKES: usize = 3;
const INLINE_STRIKE_WINDOW: Duration = Duration::from_secs(60);

/// How long before its deadline a call stops waiting for its store's quota,
/// so that it is answered RESOURCE_EXHAUSTED in time.
const QUOTA_MARGIN: Duration = Duration::from_millis(50);

/// What `iapd plugins` shows about a plugin file, without starting it.
#[derive(Debug, Clone)]
pub struct PluginMeta {
    /// The file.
    pub path: PathBuf,
    /// The descriptor's values.
    pub descriptor: DescriptorInfo,
    /// What `describe` returned.
    pub info: proto::PluginInfo,
}

/// Checks a plugin file and reads its metadata, without creating an
/// instance. Loads the library (never unloaded) if its symbols check out.
pub fn inspect(path: &Path) -> Result<PluginMeta, LoadError> {
    open_checked(path).map(|(meta, _)| meta)
}

fn open_checked(path: &Path) -> Result<(PluginMeta, ffi::Descriptor), LoadError> {
    load::check_modes(path)?;
    load::check_symbols(path)?;
    let (descriptor, info) = ffi::open(path)?;
    load::check_descriptor(path, &info)?;
    let describe_error = |problem: String| LoadError::Descriptor {
        path: path.to_owned(),
        plugin: format!(" ({})", info.name.clone().unwrap_or_default()),
        problem,
    };
    let encoded =
        descriptor.describe().map_err(|code| describe_error(format!("describe failed with status {code}")))?;
    let plugin_info = proto::PluginInfo::decode(encoded.as_slice())
        .map_err(|err| describe_error(format!("describe returned malformed PluginInfo: {err}")))?;
    Ok((PluginMeta { path: path.to_owned(), descriptor: info, info: plugin_info }, descriptor))
}

/// Every configured store, started.
#[derive(Debug)]
pub struct PluginHost {
    stores: BTreeMap<String, Arc<StorePlugin>>,
}

impl PluginHost {
    /// Loads and starts every store in `config`. Any refusal stops start-up;
    /// all refusals are reported together.
    pub async fn start(config: &Config) -> Result<PluginHost, StartError> {
        // One TLS stack for every store; a second call finds it installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            // A redirect could leave the store's allowed origins.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            // A small request written in pieces must not wait for the
            // store's delayed ACK (Nagle): that costs 40 ms a call.
            .tcp_nodelay(true)
            .build()
            .map_err(|err| StartError(vec![format!("cannot build the http client: {err}")]))?;
        // One Redis client for every store's shared quota; it connects when
        // first needed.
        let redis = match &config.rate_limits.redis_url {
            Some(url) => Some(redis::Client::open(url.as_str()).map_err(|err| {
                StartError(vec![format!("rate_limits.redis_url: not a redis url ({:?})", err.kind())])
            })?),
            None => None,
        };
        let shared = redis.as_ref().map(|client| (client, config.rate_limits.key_prefix.as_str()));
        let mut stores = BTreeMap::new();
        let mut errors = Vec::new();
        for (id, store) in &config.stores {
            match StorePlugin::start(id, store, http.clone(), shared).await {
                Ok(plugin) => {
                    stores.insert(id.clone(), Arc::new(plugin));
                }
                Err(err) => errors.push(format!("store `{id}`: {err}")),
            }
        }
        if errors.is_empty() { Ok(PluginHost { stores }) } else { Err(StartError(errors)) }
    }

    /// The store with this id.
    pub fn store(&self, id: &str) -> Option<&Arc<StorePlugin>> {
        self.stores.get(id)
    }

    /// Every store, by id.
    pub fn stores(&self) -> impl Iterator<Item = &Arc<StorePlugin>> {
        self.stores.values()
    }

    /// The store ids, sorted.
    pub fn store_ids(&self) -> Vec<String> {
        self.stores.keys().cloned().collect()
    }
}

/// Why the host could not start: one line per refused store.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct StartError(pub Vec<String>);

/// One started store.
pub struct StorePlugin {
    id: String,
    meta: PluginMeta,
    instance: ffi::InstanceHandle,
    context: Arc<HostContext>,
    in_flight: Semaphore,
    max_in_flight: usize,
    breaker: Breaker,
    quota: Option<quota::Quota>,
    /// Calls start on the calling runtime thread (see `INLINE_CALL_BUDGET`).
    inline_calls: AtomicBool,
    /// When the latest inline overruns happened, oldest first.
    inline_strikes: std::sync::Mutex<std::collections::VecDeque<Instant>>,
}

impl std::fmt::Debug for StorePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePlugin").field("id", &self.id).field("path", &self.meta.path).finish_non_exhaustive()
    }
}

static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(1);

impl StorePlugin {
    async fn start(
        id: &str,
        store: &StoreConfig,
        http: reqwest::Client,
        redis: Option<(&redis::Client, &str)>,
    ) -> Result<StorePlugin, LoadError> {
        let path = store.plugin_path.clone();
        // Loading runs library initializers: keep it off the runtime workers.
        let (meta, descriptor) = tokio::task::spawn_blocking(move || open_checked(&path)).await.map_err(|err| {
            LoadError::Open { path: store.plugin_path.clone(), reason: format!("loader thread failed: {err}") }
        })??;
        if store.inline_calls && meta.descriptor.flags & abi::FLAG_NONBLOCKING_CALL == 0 {
            return Err(LoadError::Descriptor {
                path: meta.path.clone(),
                plugin: String::new(),
                problem: format!(
                    "`stores.{id}.inline_calls` is true, but the plugin does not declare a non-blocking call (flag NONBLOCKING_CALL missing: found flags {:#06x})",
                    meta.descriptor.flags
                ),
            });
        }
        load::check_secrets(id, store.secrets.keys(), &meta.info.secrets)?;

        let mut origins = Vec::new();
        for text in &meta.info.allowed_origins {
            let origin = Origin::parse(text).map_err(|problem| LoadError::Descriptor {
                path: meta.path.clone(),
                plugin: String::new(),
                problem: format!("PluginInfo.allowed_origins: {problem}"),
            })?;
            origins.push(origin);
        }
        origins.extend(store.allowed_origins.iter().cloned());
        let threads = pool::PluginThreads::start(id, store.plugin_threads).map_err(|err| LoadError::Open {
            path: meta.path.clone(),
            reason: format!("cannot start the plugin threads: {err}"),
        })?;
        let quota = match store.rate_limit {
            Some(limit) => Some(quota::Quota::new(id, limit, redis).map_err(|err| LoadError::Open {
                path: meta.path.clone(),
                reason: format!("cannot set up the rate limit's redis connection: {:?}", err.kind()),
            })?),
            None => None,
        };
        let context = Arc::new(HostContext::new(ContextSettings {
            store_id: id.to_owned(),
            origins,
            secrets: store.secrets.iter().map(|(name, value)| (name.clone(), value.clone())).collect(),
            http,
            http_timeout: store.http_timeout,
            runtime: tokio::runtime::Handle::current(),
            threads,
        }));
        let config =
            proto::PluginConfig { store_id: id.to_owned(), config_json: store.config_json.clone() }.encode_to_vec();
        let name = meta.descriptor.name.clone().unwrap_or_default();
        let init_error = |message: String| LoadError::Init { path: meta.path.clone(), name: name.clone(), message };
        let init_context = context.clone();
        let started = tokio::time::timeout(
            INSTANCE_NEW_TIMEOUT,
            tokio::task::spawn_blocking(move || descriptor.instance_new(init_context, &config)),
        )
        .await
        .map_err(|_| init_error(format!("instance_new did not return within {INSTANCE_NEW_TIMEOUT:?}")))?
        .map_err(|err| init_error(format!("instance_new thread failed: {err}")))?;
        let instance = started.map_err(|(code, error)| {
            let message = proto::PluginError::decode(error.as_slice())
                .map(|err| err.message)
                .unwrap_or_else(|_| "no error message".to_owned());
            init_error(format!("{} (status {code})", context.redact(&message)))
        })?;
        Ok(StorePlugin {
            id: id.to_owned(),
            meta,
            instance,
            context,
            in_flight: Semaphore::new(store.max_in_flight),
            max_in_flight: store.max_in_flight,
            breaker: Breaker::new(id, store.circuit_breaker),
            quota,
            inline_calls: AtomicBool::new(store.inline_calls),
            inline_strikes: std::sync::Mutex::default(),
        })
    }

    /// The store id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The plugin's file, descriptor and info.
    pub fn meta(&self) -> &PluginMeta {
        &self.meta
    }

    /// Whether the plugin declared a capability bit.
    pub fn supports(&self, capability: u64) -> bool {
        self.meta.descriptor.capabilities & capability != 0
    }

    /// The host's counters for this store.
    pub fn counters(&self) -> &HostCounters {
        &self.context.counters
    }

    /// Calls registered and not yet completed.
    pub fn calls_in_flight(&self) -> usize {
        self.context.calls_in_flight()
    }

    /// Whether calls start on the calling thread: configured, and no call
    /// has overrun the budget yet.
    pub fn calls_inline(&self) -> bool {
        self.inline_calls.load(Ordering::Relaxed)
    }

    /// Calls `method` and waits for its completion until `deadline`.
    pub async fn call(&self, method: &'static str, request: Vec<u8>, deadline: Instant) -> Result<Vec<u8>, CallError> {
        let dispatch = if self.calls_inline() { Dispatch::Inline { budgeted: true } } else { Dispatch::PluginThreads };
        self.call_with(dispatch, method, request, deadline).await
    }

    /// Like [`StorePlugin::call`], but runs the plugin's `call` entry point on
    /// the current thread, so a benchmark can separate the ABI's own cost
    /// from the hop to the plugin threads. Never built into the server.
    #[cfg(feature = "bench-internals")]
    #[doc(hidden)]
    pub async fn call_on_current_thread(
        &self,
        method: &'static str,
        request: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        self.call_with(Dispatch::Inline { budgeted: false }, method, request, deadline).await
    }

    async fn call_with(
        &self,
        dispatch: Dispatch,
        method: &'static str,
        request: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        // Before the bulkhead: a call that fails fast takes no slot.
        let pass = self.breaker.pass()?;
        let _permit = self.in_flight.try_acquire().map_err(|_| CallError::Overloaded { limit: self.max_in_flight })?;
        let call_id = NEXT_CALL_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!(
            "plugin_call",
            store = %self.id,
            method,
            call_id,
            rate_limit_wait_ms = tracing::field::Empty
        );
        if let Some(quota) = &self.quota {
            // Told before the deadline, with time to spare for the answer.
            let waited = quota.take(deadline.checked_sub(QUOTA_MARGIN).unwrap_or(deadline)).await;
            // Labelled only when there is something to record.
            let store = || [opentelemetry::KeyValue::new("store", self.id.clone())];
            let metrics = &crate::telemetry::METRICS;
            match waited {
                Ok(waited) if waited.is_zero() => {}
                Ok(waited) => {
                    span.record("rate_limit_wait_ms", waited.as_millis() as u64);
                    metrics.rate_limit_wait.record(waited.as_secs_f64(), &store());
                }
                Err(retry_after) => {
                    metrics.rate_limited.add(1, &store());
                    return Err(CallError::RateLimited { retry_after, limit: quota.limit() });
                }
            }
        }
        let result = self.call_inner(dispatch, call_id, method, request, deadline).instrument(span).await;
        self.breaker.record(pass, Outcome::of(&result));
        result
    }

    /// Why the store cannot take calls now, if it cannot: its circuit is
    /// open, or its bulkhead is full.
    pub fn degraded(&self) -> Option<&'static str> {
        if self.breaker.is_open() {
            Some("its circuit is open: the store is failing")
        } else if self.in_flight.available_permits() == 0 {
            Some("it has max_in_flight calls in flight")
        } else {
            None
        }
    }

    async fn call_inner(
        &self,
        dispatch: Dispatch,
        call_id: u64,
        method: &'static str,
        request: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        let completion = self.context.register(call_id, deadline);
        // If this future is dropped (the client went away) or times out, the
        // guard forgets the call and asks the plugin to cancel it.
        let mut guard = CancelOnDrop { instance: self.instance, context: self.context.clone(), call_id, armed: true };
        let (instance, context) = (self.instance, self.context.clone());
        let start = move || {
            let started = instance.call(call_id, method, &request);
            if started != status::OK {
                context.refuse(call_id, started);
            }
        };
        match dispatch {
            // Plugin code is unknown code: by default it never runs on a
            // runtime thread.
            Dispatch::PluginThreads => self.context.run_plugin_code(start),
            Dispatch::Inline { budgeted: false } => start(),
            Dispatch::Inline { budgeted: true } => {
                let started = Instant::now();
                start();
                self.check_inline_budget(method, started.elapsed());
            }
        }
        let completion = match tokio::time::timeout_at(deadline.into(), completion).await {
            Ok(Ok(completion)) => completion,
            Ok(Err(_)) => return Err(CallError::Internal("the call was dropped without a completion".to_owned())),
            Err(_) => return Err(CallError::DeadlineExceeded),
        };
        guard.armed = false;
        if completion.refused {
            return Err(CallError::Refused { status: completion.status });
        }
        if completion.status == status::OK {
            return Ok(completion.payload);
        }
        let mut error = proto::PluginError::decode(completion.payload.as_slice()).unwrap_or_else(|err| {
            proto::PluginError { message: format!("plugin sent a malformed PluginError: {err}"), ..Default::default() }
        });
        error.message = self.context.redact(&error.message);
        Err(CallError::Failed { status: completion.status, error: Box::new(error) })
    }

    /// Counts an inline call over its budget; the `INLINE_STRIKES`th within
    /// the window moves the store to its plugin threads.
    fn check_inline_budget(&self, method: &str, took: Duration) {
        if took <= INLINE_CALL_BUDGET {
            return;
        }
        self.context.counters.inline_overruns.fetch_add(1, Ordering::Relaxed);
        let took_us = took.as_micros() as u64;
        let budget_us = INLINE_CALL_BUDGET.as_micros() as u64;
        let strikes = {
            let mut strikes = self.inline_strikes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            strikes.retain(|at| now.duration_since(*at) < INLINE_STRIKE_WINDOW);
            strikes.push_back(now);
            strikes.len()
        };
        if strikes < INLINE_STRIKES {
            tracing::warn!(store = %self.id, method, took_us, budget_us, strikes, "an inline plugin call held a runtime thread past its budget");
        } else if self.inline_calls.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                store = %self.id,
                method,
                took_us,
                budget_us,
                strikes,
                "inline plugin calls overran their budget {INLINE_STRIKES} times within {}s: this store's calls go to its plugin threads from now on",
                INLINE_STRIKE_WINDOW.as_secs()
            );
        }
    }
}

/// Where the plugin's `call` entry point runs.
#[derive(Debug, Clone, Copy)]
enum Dispatch {
    /// On the store's plugin threads (the default).
    PluginThreads,
    /// On the calling thread; `budgeted` watches the time it takes.
    Inline { budgeted: bool },
}

/// Forgets a call and cancels it in the plugin unless disarmed.
struct CancelOnDrop {
    instance: ffi::InstanceHandle,
    context: Arc<HostContext>,
    call_id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.context.unregister(self.call_id);
        let (instance, call_id) = (self.instance, self.call_id);
        self.context.run_plugin_code(move || instance.cancel(call_id));
    }
}

/// Why a plugin call produced no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The plugin refused the call synchronously (unknown method, malformed
    /// request, or a panic before it accepted).
    Refused {
        /// The plugin's status.
        status: abi::Status,
    },
    /// The plugin completed the call with an error.
    Failed {
        /// The plugin's status.
        status: abi::Status,
        /// Its error details (boxed: errors are the rare path).
        error: Box<proto::PluginError>,
    },
    /// The call's deadline passed first.
    DeadlineExceeded,
    /// The store has as many calls in flight as it may.
    Overloaded {
        /// Its limit.
        limit: usize,
    },
    /// The store's quota had no room before the call's deadline.
    RateLimited {
        /// When the next window begins.
        retry_after: Duration,
        /// The quota.
        limit: RateLimit,
    },
    /// The store's circuit is open: it has been failing, and calls fail fast.
    CircuitOpen {
        /// When a probe may go through.
        retry_after: Duration,
        /// The failures that opened it.
        failures: u32,
        /// Of this many calls.
        calls: u32,
    },
    /// The host failed.
    Internal(String),
}
