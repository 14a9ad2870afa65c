//! The plugin author's test kit: runs a [`Store`] in-process, with no library
//! build and no server, against a scripted HTTP handler, a settable clock and
//! in-memory secrets. It enforces what the real host enforces (allowed
//! origins, answers delivered later and never re-entrantly, exactly one
//! completion per call), so a store that passes here behaves the same loaded.
//!
//! See the crate documentation for a complete example.

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;

use crate::origin::Origin;
use crate::runtime::{Runtime, lock, panicked};
use crate::{
    Code, HostServices, HttpCallback, HttpRequest, HttpResponse, PluginError, Store, TimerCallback, abi, proto,
};

type Handler = dyn Fn(&HttpRequest) -> Result<Answer, Code> + Send + Sync;

/// What the kit's HTTP handler answers: a response, delivered at once or,
/// like a slow store's, after a delay on the kit's clock. Other calls'
/// answers and timers due sooner are delivered first.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    response: HttpResponse,
    delay: Duration,
}

impl Answer {
    /// `response`, delivered after `delay`.
    pub fn after(response: HttpResponse, delay: Duration) -> Self {
        Answer { response, delay }
    }
}

impl From<HttpResponse> for Answer {
    fn from(response: HttpResponse) -> Self {
        Answer { response, delay: Duration::ZERO }
    }
}

/// Builds a [`Kit`].
pub struct KitBuilder {
    config_json: String,
    store_id: String,
    secrets: HashMap<String, Vec<u8>>,
    extra_origins: Vec<String>,
    handler: Arc<Handler>,
    fail_first: (usize, Code),
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
        self.extra_origins.push(origin.to_owned());
        self
    }

    /// Answers every HTTP request the store sends, with an [`HttpResponse`]
    /// or an [`Answer`].
    pub fn http<A: Into<Answer>>(self, handler: impl Fn(&HttpRequest) -> A + Send + Sync + 'static) -> Self {
        self.http_or_fail(move |request| Ok(handler(request)))
    }

    /// Answers every HTTP request, or fails it with a host code (for example
    /// `Code::Unavailable` for an unreachable store).
    pub fn http_or_fail<A: Into<Answer>>(
        mut self,
        handler: impl Fn(&HttpRequest) -> Result<A, Code> + Send + Sync + 'static,
    ) -> Self {
        self.handler = Arc::new(move |request: &HttpRequest| handler(request).map(Into::into));
        self
    }

    /// Fails the first `requests` HTTP requests at the host with `code` (for
    /// example `Code::DeadlineExceeded`, a timeout) before the handler sees
    /// them, to test a store's retries. [`Kit::requests`] lists them too.
    pub fn fail_first(mut self, requests: usize, code: Code) -> Self {
        self.fail_first = (requests, code);
        self
    }

    /// Sets the clock.
    pub fn now_unix_millis(mut self, now: i64) -> Self {
        self.now_unix_millis = now;
        self
    }

    /// Creates the store as the host would. A panic in [`Store::new`] is
    /// caught and returned as `INTERNAL` with reason `PLUGIN_PANICKED`, as the
    /// host reports it.
    pub fn build<S: Store>(self) -> Result<Kit<S>, PluginError> {
        // Parsed as the host parses them: an origin the host would refuse
        // fails here too.
        let origins = S::info()
            .allowed_origins
            .iter()
            .chain(&self.extra_origins)
            .map(|text| {
                Origin::parse(text)
                    .map_err(|problem| PluginError::new(Code::Internal, format!("allowed origin {problem}")))
            })
            .collect::<Result<Vec<Origin>, _>>()?;
        let host = Arc::new(KitHost {
            handler: self.handler,
            failures_left: AtomicUsize::new(self.fail_first.0),
            failure: self.fail_first.1,
            secrets: self.secrets,
            origins,
            now: AtomicI64::new(self.now_unix_millis),
            queue: Mutex::default(),
            next_seq: AtomicU64::new(0),
            completions: Mutex::default(),
            requests: Mutex::default(),
            logs: Mutex::default(),
        });
        let config = proto::PluginConfig { store_id: self.store_id, config_json: self.config_json };
        let runtime = catch_unwind(AssertUnwindSafe(|| Runtime::<S>::new(&config, host.clone())))
            .unwrap_or_else(|panic| Err(panicked(&*panic)))?;
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
        handler: Arc::new(|request: &HttpRequest| -> Result<Answer, Code> {
            panic!("the store sent {} {} but the kit has no http handler", request.method(), request.url())
        }),
        fail_first: (0, Code::Unavailable),
        now_unix_millis: 1_767_225_600_000, // 2026-01-01T00:00:00Z
    }
}

impl<S: Store> Kit<S> {
    /// Calls Verify.
    pub fn verify(&self, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        self.call(abi::method::VERIFY, &request)
    }

    /// Calls Verify once per request, all at the same time: every call starts
    /// before any HTTP answer or timer is delivered, as when the requests
    /// arrive together while the store is still answering. The answers come
    /// in the requests' order.
    pub fn verify_concurrently(
        &self,
        requests: &[proto::VerifyRequest],
    ) -> Vec<Result<proto::VerifyResponse, PluginError>> {
        self.calls(abi::method::VERIFY, requests)
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

    /// The kit's clock, in milliseconds since the Unix epoch: what
    /// [`Ctx::now_unix_millis`](crate::Ctx::now_unix_millis) answers the store.
    /// It starts at 2026-01-01T00:00:00Z unless
    /// [`KitBuilder::now_unix_millis`] set it, and moves with
    /// [`advance_clock`](Kit::advance_clock) and with every timer the store
    /// waits on.
    pub fn now_unix_millis(&self) -> i64 {
        self.host.now.load(Ordering::SeqCst)
    }

    fn call<Req: Message, Resp: Message + Default>(&self, method: &str, request: &Req) -> Result<Resp, PluginError> {
        let mut answers = self.calls(method, std::slice::from_ref(request));
        answers.pop().expect("one call, one answer")
    }

    /// Starts a call per request, then delivers what the host was asked for,
    /// soonest due first, until every call has completed.
    fn calls<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        requests: &[Req],
    ) -> Vec<Result<Resp, PluginError>> {
        let mut calls: Vec<(u64, Option<Result<Resp, PluginError>>)> = requests
            .iter()
            .map(|request| {
                let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
                let started = self.runtime.start_call(call_id, method, &request.encode_to_vec());
                (call_id, started.err().map(Err))
            })
            .collect();
        loop {
            for (call_id, answer) in calls.iter_mut().filter(|(_, answer)| answer.is_none()) {
                if let Some((status, payload)) = lock(&self.host.completions).remove(call_id) {
                    *answer = Some(decode_answer(status, &payload));
                }
            }
            if calls.iter().all(|(_, answer)| answer.is_some()) {
                assert_eq!(self.runtime.calls_in_flight(), 0, "a completed call was not forgotten");
                return calls.into_iter().filter_map(|(_, answer)| answer).collect();
            }
            let Some((due, pending)) = self.host.next_due() else {
                panic!("call {method} never completed and waits on nothing the host was asked for");
            };
            self.host.now.fetch_max(due, Ordering::SeqCst);
            match pending {
                Pending::Http(done, request) => {
                    let failing = self
                        .host
                        .failures_left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
                        .is_ok();
                    let answer = if failing { Err(self.host.failure) } else { (self.host.handler)(&request) };
                    match answer {
                        Ok(Answer { response, delay }) if delay.is_zero() => {
                            done(abi::status::OK, &response.into_proto().encode_to_vec())
                        }
                        Ok(Answer { response, delay }) => self.host.schedule(delay, Pending::Answer(done, response)),
                        Err(code) => done(code.to_status(), &[]),
                    }
                }
                Pending::Answer(done, response) => done(abi::status::OK, &response.into_proto().encode_to_vec()),
                Pending::Timer(done) => done(abi::status::OK),
            }
        }
    }
}

fn decode_answer<Resp: Message + Default>(status: abi::Status, payload: &[u8]) -> Result<Resp, PluginError> {
    if status == abi::status::OK {
        Ok(Resp::decode(payload)?)
    } else {
        Err(PluginError::from_proto(status, proto::PluginError::decode(payload)?))
    }
}

/// What the host was asked for, due at a time on the kit's clock.
enum Pending {
    /// A request sent, for the handler to answer.
    Http(HttpCallback, HttpRequest),
    /// The handler's answer, held back for its delay.
    Answer(HttpCallback, HttpResponse),
    Timer(TimerCallback),
}

struct KitHost {
    handler: Arc<Handler>,
    /// HTTP requests still to fail with `failure` (see `fail_first`).
    failures_left: AtomicUsize,
    failure: Code,
    secrets: HashMap<String, Vec<u8>>,
    origins: Vec<Origin>,
    now: AtomicI64,
    /// (due unix millis, order of asking, what): delivered soonest first,
    /// in the order asked when due together.
    queue: Mutex<Vec<(i64, u64, Pending)>>,
    next_seq: AtomicU64,
    completions: Mutex<HashMap<u64, (abi::Status, Vec<u8>)>>,
    requests: Mutex<Vec<HttpRequest>>,
    logs: Mutex<Vec<(u32, String)>>,
}

impl KitHost {
    fn schedule(&self, delay: Duration, pending: Pending) {
        let delay = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let due = self.now.load(Ordering::SeqCst).saturating_add(delay);
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        lock(&self.queue).push((due, seq, pending));
    }

    fn next_due(&self) -> Option<(i64, Pending)> {
        let mut queue = lock(&self.queue);
        let soonest = queue.iter().enumerate().min_by_key(|(_, (due, seq, _))| (*due, *seq)).map(|(index, _)| index)?;
        let (due, _, pending) = queue.swap_remove(soonest);
        Some((due, pending))
    }
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
        if !Origin::allows(&self.origins, request.url()) {
            return abi::status::PERMISSION_DENIED;
        }
        lock(&self.requests).push(request.clone());
        self.schedule(Duration::ZERO, Pending::Http(done, request));
        abi::status::OK
    }

    fn timer_start(&self, _call_id: u64, delay_millis: u64, done: TimerCallback) -> abi::Status {
        self.schedule(Duration::from_millis(delay_millis), Pending::Timer(done));
        abi::status::OK
    }

    fn complete(&self, call_id: u64, status: abi::Status, payload: &[u8]) {
        let previous = lock(&self.completions).insert(call_id, (status, payload.to_vec()));
        assert!(previous.is_none(), "call {call_id} completed twice");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::builder;
    use crate::{Code, Ctx, HttpRequest, HttpResponse, InitContext, PluginError, Store, abi, proto};

    /// Declares origins with and without a trailing `/`; Verify fetches the
    /// URL in `product_id` ("sleep-<millis>" waits instead). Its config can
    /// make `new` panic: `{"panic": "str"}` with a `&str` payload,
    /// `{"panic": "string"}` with a `String` one.
    struct OriginStore;

    impl Store for OriginStore {
        const NAME: &'static std::ffi::CStr = c"origin_test";
        const CAPABILITIES: u64 = abi::CAP_VERIFY;
        type Config = serde_json::Value;

        fn info() -> proto::PluginInfo {
            proto::PluginInfo {
                allowed_origins: vec!["https://store.example/".into(), "https://api.example:8443".into()],
                ..Default::default()
            }
        }

        fn new(config: Self::Config, _init: &InitContext) -> Result<Self, PluginError> {
            match config.get("panic").and_then(serde_json::Value::as_str) {
                Some("str") => panic!("the store cannot start"),
                Some(other) => panic!("the store cannot start: {other}"),
                None => Ok(OriginStore),
            }
        }

        async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
            if let Some(millis) = request.product_id.strip_prefix("sleep-") {
                let millis = millis.parse().map_err(|_| PluginError::invalid_argument("sleep needs millis"))?;
                cx.sleep(Duration::from_millis(millis)).await?;
            } else {
                cx.http(HttpRequest::get(request.product_id)).await?;
            }
            Ok(proto::VerifyResponse::default())
        }
    }

    fn fetch(kit: &super::Kit<OriginStore>, url: &str) -> Result<proto::VerifyResponse, PluginError> {
        kit.verify(proto::VerifyRequest { product_id: url.to_owned(), ..Default::default() })
    }

    #[test]
    fn fail_first_fails_that_many_requests_at_the_host_then_answers() {
        let kit = builder()
            .http(|_| HttpResponse::new(200, ""))
            .fail_first(2, Code::Unavailable)
            .build::<OriginStore>()
            .expect("build");
        for attempt in 1..=2 {
            let error = fetch(&kit, "https://store.example/p").expect_err("fails at the host");
            assert_eq!(error.code(), Code::Unavailable, "attempt {attempt}");
        }
        fetch(&kit, "https://store.example/p").expect("the third request reaches the handler");
        assert_eq!(kit.requests().len(), 3, "failed requests are listed too");
    }

    #[test]
    fn origins_are_checked_by_the_hosts_rule() {
        let kit = builder()
            .allow_origin("http://127.0.0.1:9000/")
            .http(|_| HttpResponse::new(200, ""))
            .build::<OriginStore>()
            .expect("build");
        let allowed = [
            "https://store.example",
            "https://store.example/",
            "https://store.example/purchases/1",
            "https://store.example?x=1",
            "https://api.example:8443/v1",
            "http://127.0.0.1:9000/emulator",
            // The host compares scheme, host and port, not text: the default
            // port written out and a host's case are the same origin.
            "https://store.example:443/purchases/1",
            "https://STORE.example/purchases/1",
        ];
        for url in allowed {
            fetch(&kit, url).unwrap_or_else(|err| panic!("{url}: {err}"));
        }
        let urls: Vec<String> = kit.requests().iter().map(|request| request.url().to_owned()).collect();
        assert_eq!(urls, allowed);
        for url in [
            "https://store.example.evil/purchases",
            "https://store.examplex",
            "http://store.example/purchases",
            "https://api.example/v1",
            "http://127.0.0.1:90001/",
        ] {
            let err = fetch(&kit, url).expect_err(url);
            assert_eq!((err.code(), err.reason()), (Code::PermissionDenied, "ORIGIN_NOT_ALLOWED"), "{url}: {err}");
        }
        assert_eq!(kit.requests().len(), allowed.len(), "refused requests are never sent");
        // An origin the host would refuse to load is refused here too.
        let err = builder().allow_origin("https://store.example/v1").build::<OriginStore>().expect_err("a path");
        assert!(err.message().contains("no path, query or user"), "{err}");
    }

    #[test]
    fn a_panic_in_new_is_an_internal_plugin_panicked_error() {
        for (setting, detail) in [("str", "the store cannot start"), ("string", "the store cannot start: string")] {
            let err = builder()
                .config_json(format!(r#"{{"panic": "{setting}"}}"#))
                .build::<OriginStore>()
                .expect_err("a panicking store does not build");
            assert_eq!((err.code(), err.reason()), (Code::Internal, "PLUGIN_PANICKED"), "{err}");
            assert_eq!(err.message(), format!("plugin panicked: {detail}"));
        }
        // The same builder settings without the panic build fine.
        builder().config_json(r#"{"panic": null}"#).build::<OriginStore>().expect("build");
    }

    #[test]
    fn concurrent_calls_all_start_before_any_answer_and_slow_answers_come_last() {
        let kit = builder()
            .http(|request: &HttpRequest| {
                let delay = if request.url().ends_with("/slow") { 2_000 } else { 0 };
                super::Answer::after(HttpResponse::new(200, ""), Duration::from_millis(delay))
            })
            .build::<OriginStore>()
            .expect("build");
        let request = |url: &str| proto::VerifyRequest { product_id: url.to_owned(), ..Default::default() };
        let started = kit.now_unix_millis();
        let answers = kit.verify_concurrently(&[
            request("https://store.example/slow"),
            request("sleep-500"),
            request("https://store.example/fast"),
        ]);
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(kit.now_unix_millis() - started, 2_000, "the slow answer came 2 s later on the kit's clock");
        let urls: Vec<String> = kit.requests().iter().map(|request| request.url().to_owned()).collect();
        assert_eq!(urls, ["https://store.example/slow", "https://store.example/fast"]);
    }

    #[test]
    fn the_kit_shows_its_clock() {
        let kit = builder().build::<OriginStore>().expect("build");
        assert_eq!(kit.now_unix_millis(), 1_767_225_600_000, "2026-01-01T00:00:00Z by default");
        let kit = builder().now_unix_millis(1_000).build::<OriginStore>().expect("build");
        assert_eq!(kit.now_unix_millis(), 1_000);
        kit.advance_clock(500);
        assert_eq!(kit.now_unix_millis(), 1_500);
        // A timer the store waits on moves the clock, with no real wait.
        fetch(&kit, "sleep-60000").expect("sleep");
        assert_eq!(kit.now_unix_millis(), 61_500);
    }
}
