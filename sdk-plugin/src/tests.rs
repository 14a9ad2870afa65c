//! The executor's contract: every started call completes exactly once, on
//! whichever thread wakes it, including after cancel and after a panic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;

use crate::runtime::{Runtime, lock};
use crate::{Code, Ctx, HostServices, HttpCallback, InitContext, PluginError, Store, TimerCallback, abi, proto};

type Completions = HashMap<u64, Vec<(abi::Status, Vec<u8>)>>;

/// A host that parks HTTP answers until the test releases them, from any
/// thread, and records completions.
#[derive(Default)]
struct ParkingHost {
    parked: Mutex<Vec<HttpCallback>>,
    completions: Mutex<Completions>,
}

impl ParkingHost {
    fn release_all(&self, status: abi::Status) {
        let parked: Vec<HttpCallback> = lock(&self.parked).drain(..).collect();
        let body = proto::HttpResponse { status: 200, ..Default::default() }.encode_to_vec();
        for done in parked {
            done(status, &body);
        }
    }

    fn completions_of(&self, call_id: u64) -> Vec<(abi::Status, Vec<u8>)> {
        lock(&self.completions).get(&call_id).cloned().unwrap_or_default()
    }
}

impl HostServices for ParkingHost {
    fn log_max_level(&self) -> u32 {
        0
    }
    fn log(&self, _: u32, _: &str, _: &str, _: u64) {}
    fn now_unix_millis(&self) -> i64 {
        0
    }
    fn secret(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn http_send(&self, _call_id: u64, _request: &[u8], done: HttpCallback) -> abi::Status {
        lock(&self.parked).push(done);
        abi::status::OK
    }
    fn timer_start(&self, _: u64, _: u64, _: TimerCallback) -> abi::Status {
        abi::status::UNIMPLEMENTED
    }
    fn complete(&self, call_id: u64, status: abi::Status, payload: &[u8]) {
        lock(&self.completions).entry(call_id).or_default().push((status, payload.to_vec()));
    }
}

/// Verify: "http" awaits one parked request; "twice" awaits two in turn;
/// "panic-later" panics after its request is answered; "self-wake" wakes
/// itself from inside its own poll before finishing.
struct TestStore;

impl Store for TestStore {
    const NAME: &'static std::ffi::CStr = c"test";
    const CAPABILITIES: u64 = abi::CAP_VERIFY;
    type Config = serde_json::Value;

    fn info() -> proto::PluginInfo {
        proto::PluginInfo::default()
    }

    fn new(_: Self::Config, _: &InitContext) -> Result<Self, PluginError> {
        Ok(TestStore)
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        match request.product_id.as_str() {
            "http" => {
                cx.http(crate::HttpRequest::get("https://x.example/")).await?;
            }
            "twice" => {
                cx.http(crate::HttpRequest::get("https://x.example/1")).await?;
                cx.http(crate::HttpRequest::get("https://x.example/2")).await?;
            }
            "panic-later" => {
                cx.http(crate::HttpRequest::get("https://x.example/")).await?;
                panic!("boom after await");
            }
            "self-wake" => SelfWake(false).await,
            _ => {}
        }
        Ok(proto::VerifyResponse { verdict: proto::Verdict::Valid.into(), ..Default::default() })
    }
}

struct SelfWake(bool);

impl std::future::Future for SelfWake {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref(); // a wake during the poll must not be lost
        std::task::Poll::Pending
    }
}

fn runtime() -> (Runtime<TestStore>, Arc<ParkingHost>) {
    let host = Arc::new(ParkingHost::default());
    let config = proto::PluginConfig { store_id: "t".into(), config_json: String::new() };
    (Runtime::new(&config, host.clone()).unwrap(), host)
}

fn start(runtime: &Runtime<TestStore>, call_id: u64, product: &str) {
    let request = proto::VerifyRequest { product_id: product.into(), ..Default::default() };
    runtime.start_call(call_id, abi::method::VERIFY, &request.encode_to_vec()).unwrap();
}

#[test]
fn methods_left_empty_are_named_from_the_capabilities() {
    assert_eq!(crate::described::<TestStore>().methods, [abi::method::VERIFY]);
}

#[test]
fn a_call_completes_once_after_its_answers_arrive() {
    let (runtime, host) = runtime();
    start(&runtime, 1, "twice");
    assert!(host.completions_of(1).is_empty());
    host.release_all(abi::status::OK);
    assert!(host.completions_of(1).is_empty(), "waits for the second request");
    host.release_all(abi::status::OK);
    let completions = host.completions_of(1);
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].0, abi::status::OK);
    assert_eq!(runtime.calls_in_flight(), 0);
}

#[test]
fn a_wake_during_the_poll_is_not_lost() {
    let (runtime, host) = runtime();
    start(&runtime, 7, "self-wake");
    assert_eq!(host.completions_of(7).len(), 1);
}

#[test]
fn cancel_completes_once_and_a_late_answer_is_harmless() {
    let (runtime, host) = runtime();
    start(&runtime, 2, "http");
    runtime.cancel(2);
    runtime.cancel(2);
    host.release_all(abi::status::OK); // the answer arrives after cancel
    let completions = host.completions_of(2);
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].0, abi::status::CANCELLED);
    assert_eq!(runtime.calls_in_flight(), 0);
}

#[test]
fn a_panic_after_an_await_completes_the_call_as_internal() {
    let (runtime, host) = runtime();
    start(&runtime, 3, "panic-later");
    host.release_all(abi::status::OK);
    let completions = host.completions_of(3);
    assert_eq!(completions.len(), 1);
    let error = PluginError::from_proto(completions[0].0, proto::PluginError::decode(&*completions[0].1).unwrap());
    assert_eq!(error.code(), Code::Internal);
    assert_eq!(error.reason(), "PLUGIN_PANICKED");
    assert!(error.message().contains("boom after await"));
}

#[test]
fn a_failed_host_request_becomes_the_calls_error() {
    let (runtime, host) = runtime();
    start(&runtime, 4, "http");
    host.release_all(abi::status::UNAVAILABLE);
    let completions = host.completions_of(4);
    assert_eq!(completions[0].0, abi::status::UNAVAILABLE);
}

#[test]
fn unknown_methods_and_malformed_requests_are_refused_synchronously() {
    let (runtime, host) = runtime();
    let refused = runtime.start_call(5, "iapd.plugin.v1.Store/Nope", &[]).unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented);
    let refused = runtime.start_call(6, abi::method::VERIFY, &[0xff, 0xff, 0xff]).unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(host.completions_of(5).is_empty() && host.completions_of(6).is_empty(), "no completion follows a refusal");
}

#[test]
fn many_calls_woken_from_many_threads_each_complete_exactly_once() {
    const CALLS: u64 = 400;
    let (runtime, host) = runtime();
    for call_id in 1..=CALLS {
        start(&runtime, call_id, "twice");
    }
    let released = Arc::new(AtomicUsize::new(0));
    for _round in 0..2 {
        let parked: Vec<HttpCallback> = lock(&host.parked).drain(..).collect();
        let chunks: Vec<Vec<HttpCallback>> = {
            let mut chunks: Vec<Vec<HttpCallback>> = (0..8).map(|_| Vec::new()).collect();
            for (index, done) in parked.into_iter().enumerate() {
                chunks[index % 8].push(done);
            }
            chunks
        };
        let threads: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let released = released.clone();
                std::thread::spawn(move || {
                    let body = proto::HttpResponse { status: 200, ..Default::default() }.encode_to_vec();
                    for done in chunk {
                        done(abi::status::OK, &body);
                        released.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|thread| thread.join().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(released.load(Ordering::Relaxed), 2 * CALLS as usize);
    for call_id in 1..=CALLS {
        assert_eq!(host.completions_of(call_id).len(), 1, "call {call_id}");
    }
    assert_eq!(runtime.calls_in_flight(), 0);
}

/// A store with a nested config, to see how its errors name the field.
struct ConfigStore;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // deserialized, never read
struct NestedConfig {
    packages: Vec<String>,
    #[serde(default)]
    retry: crate::retry::Retry,
}

impl Store for ConfigStore {
    const NAME: &'static std::ffi::CStr = c"config_test";
    const CAPABILITIES: u64 = abi::CAP_VERIFY;
    type Config = NestedConfig;

    fn info() -> proto::PluginInfo {
        proto::PluginInfo::default()
    }

    fn new(_: Self::Config, _: &InitContext) -> Result<Self, PluginError> {
        Ok(ConfigStore)
    }

    async fn verify(&self, _: &Ctx, _: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        Err(PluginError::unimplemented("not called"))
    }
}

#[test]
fn config_errors_name_the_field_by_its_key_not_a_json_position() {
    let cases = [
        (
            r#"{"packages": [], "retry": {"max_attempts": "x"}}"#,
            "config key `stores.test.config.retry.max_attempts`: invalid type: string \"x\", expected usize",
        ),
        (r#"{"packages": ["a", 5]}"#, "config key `stores.test.config.packages[1]`: invalid type: integer `5`"),
        (
            r#"{"packages": [], "retry": {"tries": 1}}"#,
            "config key `stores.test.config.retry.tries`: unknown field `tries`",
        ),
        ("", "config key `stores.test.config`: missing field `packages`"),
    ];
    for (json, expected) in cases {
        let err = crate::kit::builder().config_json(json).build::<ConfigStore>().unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(expected), "`{expected}` expected for {json}, got: {err}");
        assert!(!err.message().contains("line"), "a position in the JSON: {err}");
    }
}
