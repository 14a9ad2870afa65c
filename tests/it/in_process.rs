//! The server as a library, as tests and embedders use it: `serve` takes a
//! listener (port 0 here) and a shutdown future.

use std::sync::Arc;
use std::time::Duration;

use iapd::config::{Config, Sources};
use iapd::host::PluginHost;
use iapd::pb::{self, purchase_service_client::PurchaseServiceClient};
use prost::Message;

use crate::support::{Sandbox, built_plugin, unique, verify};

#[tokio::test]
async fn serve_runs_on_port_zero_and_stops_on_its_shutdown_future() {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    let path = sandbox.write_config("[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n");
    let config = Config::load(&Sources { file: Some(path) }).unwrap();
    let host = Arc::new(PluginHost::start(&config).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(iapd::serve(listener, config, host.clone(), async {
        let _ = stopped.await;
    }));

    let mut client = PurchaseServiceClient::connect(format!("http://{address}")).await.unwrap();
    let answer = client.verify(verify("sandbox", "coins_100", &unique("purchased"))).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), pb::Verdict::Valid);

    // A call cut off by its deadline leaves no state behind in the host.
    let mut request = tonic::Request::new(verify("sandbox", "coins_100", &unique("slow-3000")));
    request.set_timeout(Duration::from_millis(100));
    assert!(client.verify(request).await.is_err());
    let store = host.store("sandbox").unwrap();
    assert_eq!(store.calls_in_flight(), 0, "the timed-out call was forgotten");
    // The plugin still completes it (its timer ends just after the deadline):
    // that late completion reaches no caller and is counted.
    let counters = store.counters();
    let started = std::time::Instant::now();
    while counters.stray_completions.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the late completion never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counters.stray_completions.load(std::sync::atomic::Ordering::Relaxed), 1);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}

/// The name of the thread that ran a faulty-plugin call.
async fn call_thread(host: &PluginHost) -> String {
    let store = host.store("faulty").unwrap();
    let request = plugin_request("thread", &[]);
    let answer = store.call(METHOD_VERIFY, request, deadline()).await.unwrap();
    iapd_sdk_plugin::proto::VerifyResponse::decode(answer.as_slice()).unwrap().verdict_reason
}

fn plugin_request(product: &str, parameters: &[(&str, &str)]) -> Vec<u8> {
    iapd_sdk_plugin::proto::VerifyRequest {
        app_id: "com.example".into(),
        product_id: product.into(),
        proof: Some(iapd_sdk_plugin::proto::Proof {
            kind: Some(iapd_sdk_plugin::proto::proof::Kind::PurchaseToken("t".into())),
            store_parameters: parameters.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }),
        user_id: String::new(),
    }
    .encode_to_vec()
}

const METHOD_VERIFY: &str = iapd_sdk_plugin::abi::method::VERIFY;

fn deadline() -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(5)
}

async fn faulty_host(inline_calls: bool) -> PluginHost {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-test-plugin-faulty"), "libfaulty.so");
    let path = sandbox.write_config(&format!(
        "[stores.faulty]\nplugin = \"libfaulty.so\"\nplugin_threads = 1\ninline_calls = {inline_calls}\n"
    ));
    let config = Config::load(&Sources { file: Some(path) }).unwrap();
    PluginHost::start(&config).await.unwrap()
}

#[tokio::test]
async fn plugin_code_runs_on_plugin_threads_unless_the_store_calls_inline() {
    let threaded = faulty_host(false).await;
    assert!(!threaded.store("faulty").unwrap().calls_inline());
    assert_eq!(call_thread(&threaded).await, "plugin-faulty-0");

    let inline = faulty_host(true).await;
    let store = inline.store("faulty").unwrap();
    assert!(store.calls_inline());
    let caller = std::fs::read_to_string("/proc/thread-self/comm").unwrap().trim_end().to_owned();
    assert_eq!(call_thread(&inline).await, caller, "an inline call runs on the calling thread");
}

#[tokio::test]
async fn an_inline_call_that_blocks_sends_the_store_back_to_its_plugin_threads() {
    let host = faulty_host(true).await;
    let store = host.store("faulty").unwrap();
    let caller = std::fs::read_to_string("/proc/thread-self/comm").unwrap().trim_end().to_owned();
    // The plugin declared a non-blocking call and breaks the promise: each
    // of these calls holds the calling thread for 20 ms, past the budget.
    // Two overruns could be a busy machine preempting the thread; the third
    // within a minute settles it.
    for strike in 1..=3 {
        let answer = store.call(METHOD_VERIFY, plugin_request("block", &[("millis", "20")]), deadline()).await.unwrap();
        let answer = iapd_sdk_plugin::proto::VerifyResponse::decode(answer.as_slice()).unwrap();
        assert_eq!(answer.verdict_reason, "blocked 20 ms", "an overrunning call is still answered");
        assert_eq!(store.counters().inline_overruns.load(std::sync::atomic::Ordering::Relaxed), strike);
        if strike < 3 {
            assert!(store.calls_inline(), "strike {strike} alone does not move the store");
            assert_eq!(call_thread(&host).await, caller);
        }
    }
    assert!(!store.calls_inline(), "the store no longer calls inline");
    assert_eq!(call_thread(&host).await, "plugin-faulty-0");
}

#[tokio::test]
async fn inline_calls_needs_a_plugin_that_declares_a_nonblocking_call() {
    let sandbox = Sandbox::new();
    sandbox.compile_c_plugin("echo_store.c", "libecho_c.so");
    let path = sandbox.write_config("[stores.echo]\nplugin = \"libecho_c.so\"\ninline_calls = true\n");
    let config = Config::load(&Sources { file: Some(path) }).unwrap();
    let error = PluginHost::start(&config).await.unwrap_err().to_string();
    assert!(error.contains("`stores.echo.inline_calls` is true"), "{error}");
    assert!(error.contains("flag NONBLOCKING_CALL missing"), "{error}");
    assert!(error.contains("libecho_c.so"), "{error}");
}
