//! The plugin author's test kit: runs a [`Store`] in-process, with no library
//! build and no server, against a scripted HTTP handler, a settable clock and
//! in-memory secrets. It enforces what the real host enforces (allowed
//! origins, answers delivered later and never re-entrantly, exactly one
//! completion per call), so a store that passes here behaves the same loaded.
//!
//! See the crate documentation for a complete example.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;

use crate::runtime::{Runtime, lock};
use crate::{
    Code, HostServices, HttpCallback, HttpRequest, HttpResponse, PluginError, Store, TimerCallback, abi, proto,
};

type Handler = dyn Fn(&HttpRequest) -> Result<HttpResponse, Code> + Send + Sync;

/// Builds a [`Kit`].
pub struct KitBuilder {
    config_json: String,
    store_id: String,
    secrets: HashMap<String, Vec<u8>>,
    extra_origins: Vec<String>,
    handler: Arc<Handler>,
    now_unix_millis: i64,
}

impl fmt::Debug for KitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KitBuilder").field("store_id", &self.store_id).finish_non_exhaustive()
    }
}

impl KitBuilder {
    /// The store's configuration, as the server would pass it.
    pub fn config_json(mut self, json: impl Into<String>) -> Self {
        self.config_json = json.into();
        self
    }

    /// A secret the store can read.
    pub fn secret(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.secrets.insert(name.to_owned(), value.into());
        self
    }

    /// An origin allowed besides those of the plugin's `PluginInfo`, as an
    /// operator would add one for an emulator.
    pub fn allow_origin(mut self, origin: &str) -> Self {
        self.extra_origins.push(origin.trim_end_matches('/').to_owned());
        self
    }

    /// Answers every HTTP request the store sends.
    pub fn http(self, handler: impl Fn(&HttpRequest) -> HttpResponse + Send + Sync + 'static) -> Self {
        self.http_or_fail(move |request| Ok(handler(request)))
    }

    /// Answers every HTTP request, or fails it with a host code (for example
    /// `Code::Unavailable` for an unreachable store).
    pub fn http_or_fail(
        mut self,
        handler: impl Fn(&HttpRequest) -> Result<HttpResponse, Code> + Send + Sync + 'static,
    ) -> Self {
        self.handler = Arc::new(handler);
        self
    }

    /// Sets the clock.
    pub fn now_unix_millis(mut self, now: i64) -> Self {
        self.now_unix_millis = now;
        self
    }

    /// Creates the store as the host would.
    pub fn build<S: Store>(self) -> Result<Kit<S>, PluginError> {
        let mut origins = S::info().allowed_origins;
        origins.extend(self.extra_origins);
        let host = Arc::new(KitHost {
            handler: self.handler,
            secrets: self.secrets,
            origins,
            now: AtomicI64::new(self.now_unix_millis),
            queue: Mutex::default(),
            completions: Mutex::default(),
            requests: Mutex::default(),
            logs: Mutex::default(),
        });
        let config = proto::PluginConfig { store_id: self.store_id, config_json: self.config_json };
        let runtime = Runtime::<S>::new(&config, host.clone())?;
        Ok(Kit { runtime, host, next_call_id: AtomicU64::new(1) })
    }
}

/// A store under test.
pub struct Kit<S: Store> {
    runtime: Runtime<S>,
    host: Arc<KitHost>,
    next_call_id: AtomicU64,
}

impl<S: Store> fmt::Debug for Kit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kit").finish_non_exhaustive()
    }
}

/// Starts building a kit.
pub fn builder() -> KitBuilder {
    KitBuilder {
        config_json: String::new(),
        store_id: "test".to_owned(),
        secrets: HashMap::new(),
        extra_origins: Vec::new(),
        handler: Arc::new(|request: &HttpRequest| {
            panic!("the store sent {} {} but the kit has no http handler", request.method(), request.url())
        }),
        now_unix_millis: 1_767_225_600_000, // 2026-01-01T00:00:00Z
    }
}

impl<S: Store> Kit<S> {
    /// Calls Verify.
    pub fn verify(&self, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        self.call(abi::method::VERIFY, &request)
    }

    /// Calls Acknowledge.
    pub fn acknowledge(&self, request: proto::AcknowledgeRequest) -> Result<proto::AcknowledgeResponse, PluginError> {
        self.call(abi::method::ACKNOWLEDGE, &request)
    }

    /// Calls Consume.
    pub fn consume(&self, request: proto::ConsumeRequest) -> Result<proto::ConsumeResponse, PluginError> {
        self.call(abi::method::CONSUME, &request)
    }

    /// Calls ListItems.
    pub fn list_items(&self, request: proto::ListItemsRequest) -> Result<proto::ListItemsResponse, PluginError> {
        self.call(abi::method::LIST_ITEMS, &request)
    }

    /// Every HTTP request the store sent, in order.
    pub fn requests(&self) -> Vec<HttpRequest> {
        lock(&self.host.requests).clone()
    }

    /// Every log line the store wrote, as `(level, message)`.
    pub fn logs(&self) -> Vec<(u32, String)> {
        lock(&self.host.logs).clone()
    }

    /// Moves the clock.
    pub fn advance_clock(&self, millis: i64) {
        self.host.now.fetch_add(millis, Ordering::SeqCst);
    }

    fn call<Req: Message, Resp: Message + Default>(&self, method: &str, request: &Req) -> Result<Resp, PluginError> {
        let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        self.runtime.start_call(call_id, method, &request.encode_to_vec())?;
        loop {
            if let Some((status, payload)) = lock(&self.host.completions).remove(&call_id) {
                assert_eq!(self.runtime.calls_in_flight(), 0, "a completed call was not forgotten");
                return if status == abi::status::OK {
                    Ok(Resp::decode(payload.as_slice())?)
                } else {
                    Err(PluginError::from_proto(status, proto::PluginError::decode(payload.as_slice())?))
                };
            }
            let next = lock(&self.host.queue).pop_front();
            match next {
                Some(Pending::Http(done, request)) => {
                    let answer = (self.host.handler)(&request);
                    match answer {
                        Ok(response) => done(abi::status::OK, &response.into_proto().encode_to_vec()),
                        Err(code) => done(code.to_status(), &[]),
                    }
                }
                Some(Pending::Timer(done, delay)) => {
                    self.host.now.fetch_add(i64::try_from(delay).unwrap_or(i64::MAX), Ordering::SeqCst);
                    done(abi::status::OK)
                }
                None => panic!("call {method} never completed and waits on nothing the host was asked for"),
            }
        }
    }
}

enum Pending {
    Http(HttpCallback, HttpRequest),
    Timer(TimerCallback, u64),
}

struct KitHost {
    handler: Arc<Handler>,
    secrets: HashMap<String, Vec<u8>>,
    origins: Vec<String>,
    now: AtomicI64,
    queue: Mutex<VecDeque<Pending>>,
    completions: Mutex<HashMap<u64, (abi::Status, Vec<u8>)>>,
    requests: Mutex<Vec<HttpRequest>>,
    logs: Mutex<Vec<(u32, String)>>,
}

impl HostServices for KitHost {
    fn log_max_level(&self) -> u32 {
        5
    }

    fn log(&self, level: u32, _target: &str, message: &str, _call_id: u64) {
        lock(&self.logs).push((level, message.to_owned()));
    }

    fn now_unix_millis(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn secret(&self, name: &str) -> Option<Vec<u8>> {
        self.secrets.get(name).cloned()
    }

    fn http_send(&self, _call_id: u64, request: &[u8], done: HttpCallback) -> abi::Status {
        let Ok(request) = proto::HttpRequest::decode(request) else {
            return abi::status::INVALID_ARGUMENT;
        };
        let request = HttpRequest::from_proto(request);
        let allowed = self.origins.iter().any(|origin| {
            request.url() == origin
                || request.url().strip_prefix(origin.as_str()).is_some_and(|rest| rest.starts_with(['/', '?']))
        });
        if !allowed {
            return abi::status::PERMISSION_DENIED;
        }
        lock(&self.requests).push(request.clone());
        lock(&self.queue).push_back(Pending::Http(done, request));
        abi::status::OK
    }

    fn timer_start(&self, _call_id: u64, delay_millis: u64, done: TimerCallback) -> abi::Status {
        lock(&self.queue).push_back(Pending::Timer(done, delay_millis));
        abi::status::OK
    }

    fn complete(&self, call_id: u64, status: abi::Status, payload: &[u8]) {
        let previous = lock(&self.completions).insert(call_id, (status, payload.to_vec()));
        assert!(previous.is_none(), "call {call_id} completed twice");
    }
}
