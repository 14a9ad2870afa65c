//! The server as a library, as tests and embedders use it: `serve` takes a
//! listener (port 0 here) and a shutdown future.

use std::sync::Arc;
use std::time::Duration;

use iapd::config::{Config, Sources};
use iapd::host::PluginHost;
use iapd::pb::{self, purchase_service_client::PurchaseServiceClient};

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
