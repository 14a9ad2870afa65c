//! Stores under trouble: one store stuck at its bulkhead while another keeps
//! answering, and health saying which is degraded; a failing store's circuit
//! opening, failing fast with RetryInfo, and a probe closing it.

use std::time::{Duration, Instant};

use iapd::pb;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::support::{Sandbox, Server, built_plugin, error_info, unique, verify};

fn two_stores(slow_settings: &str) -> (Sandbox, Server) {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    let config = sandbox.write_config(&format!(
        "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n\n[stores.troubled]\nplugin = \"iapd_plugin_sandbox\"\n{slow_settings}\n"
    ));
    let server = Server::start(Some(&config), &[]);
    (sandbox, server)
}

async fn health_of(server: &Server, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.expect("connect");
    let mut health = HealthClient::new(channel);
    let answer = health.check(HealthCheckRequest { service: service.to_owned() }).await.expect("health check");
    answer.into_inner().status()
}

/// Waits until `service` reports `expected`; false after 5 s.
async fn health_becomes(server: &Server, service: &str, expected: ServingStatus) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if health_of(server, service).await == expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_store_stuck_at_its_bulkhead_leaves_the_others_answering_and_health_names_it() {
    let (_sandbox, server) = two_stores("max_in_flight = 8");
    let client = server.client().await;
    let stuck: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.verify(verify("troubled", "coins_100", &unique("slow-4000"))).await })
        })
        .collect();
    assert!(
        health_becomes(&server, "iapd.v1.PurchaseService/troubled", ServingStatus::NotServing).await,
        "the full store's health"
    );
    let shed = client.clone().verify(verify("troubled", "coins_100", &unique("purchased"))).await.unwrap_err();
    assert_eq!(error_info(&shed), Some(("STORE_OVERLOADED".to_owned(), "iapd".to_owned())), "{shed:?}");
    // The other store answers every call while the first is full.
    let answers: Vec<_> = (0..200)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.verify(verify("sandbox", "coins_100", &unique("purchased"))).await })
        })
        .collect();
    for answer in answers {
        let answer = answer.await.unwrap().expect("the other store answers");
        assert_eq!(answer.into_inner().verdict(), pb::Verdict::Valid);
    }
    assert_eq!(health_of(&server, "iapd.v1.PurchaseService/sandbox").await, ServingStatus::Serving);
    assert_eq!(health_of(&server, "").await, ServingStatus::Serving, "the server serves");
    for call in stuck {
        call.await.unwrap().expect("the stuck calls finish");
    }
    assert!(health_becomes(&server, "iapd.v1.PurchaseService/troubled", ServingStatus::Serving).await);
    assert!(server.logs().contains("store degraded"), "{}", server.logs());
}

#[tokio::test]
async fn a_failing_store_fails_fast_until_a_probe_is_answered() {
    let (_sandbox, server) = two_stores(
        "[stores.troubled.circuit_breaker]\nfailures = 5\nfailure_ratio = 0.5\nwindow_ms = 60000\nopen_ms = 1500\n",
    );
    let mut client = server.client().await;
    for _ in 0..5 {
        let failed = client.verify(verify("troubled", "coins_100", &unique("error-unavailable"))).await.unwrap_err();
        assert_eq!(failed.code(), Code::Unavailable);
        assert_ne!(error_info(&failed).unwrap().0, "STORE_CIRCUIT_OPEN", "the store's own error, until the threshold");
    }
    // Open: even a good purchase fails fast, saying when to retry, and the
    // other store is untouched.
    let open = client.verify(verify("troubled", "coins_100", &unique("purchased"))).await.unwrap_err();
    assert_eq!(open.code(), Code::Unavailable, "{open:?}");
    assert_eq!(error_info(&open), Some(("STORE_CIRCUIT_OPEN".to_owned(), "iapd".to_owned())));
    let retry = open.get_details_retry_info().and_then(|info| info.retry_delay).expect("RetryInfo");
    assert!(retry > Duration::ZERO && retry <= Duration::from_millis(1500), "{retry:?}");
    assert!(open.message().contains("5 of its last 5 calls failed"), "{}", open.message());
    client.verify(verify("sandbox", "coins_100", &unique("purchased"))).await.expect("the other store");
    assert!(health_becomes(&server, "iapd.v1.PurchaseService/troubled", ServingStatus::NotServing).await);
    assert_eq!(health_of(&server, "iapd.v1.PurchaseService/sandbox").await, ServingStatus::Serving);
    // After the pause, a failing probe opens it again ...
    tokio::time::sleep(retry + Duration::from_millis(100)).await;
    let probe = client.verify(verify("troubled", "coins_100", &unique("error-unavailable"))).await.unwrap_err();
    assert_ne!(error_info(&probe).unwrap().0, "STORE_CIRCUIT_OPEN", "the probe reached the store");
    let again = client.verify(verify("troubled", "coins_100", &unique("purchased"))).await.unwrap_err();
    assert_eq!(error_info(&again).unwrap().0, "STORE_CIRCUIT_OPEN");
    // ... and an answered one closes it.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let answered = client.verify(verify("troubled", "coins_100", &unique("purchased"))).await.expect("the probe");
    assert_eq!(answered.into_inner().verdict(), pb::Verdict::Valid);
    client.verify(verify("troubled", "coins_100", &unique("purchased"))).await.expect("closed again");
    assert!(health_becomes(&server, "iapd.v1.PurchaseService/troubled", ServingStatus::Serving).await);
    let logs = server.logs();
    assert!(logs.contains("circuit opened") && logs.contains("circuit closed"), "{logs}");
}

fn play_verify(token: &str, timeout: Duration) -> tonic::Request<pb::VerifyRequest> {
    let mut request = tonic::Request::new(pb::VerifyRequest {
        store: "google-play".into(),
        app_id: "com.example.game".into(),
        product_id: "coins_100".into(),
        proof: crate::support::token(token),
        user_id: "user-42".into(),
    });
    request.set_timeout(timeout);
    request
}

#[tokio::test]
async fn two_replicas_on_one_redis_stay_under_the_stores_quota() {
    let prefix = unique("iapd-test");
    let quota = format!(
        "\n[stores.google-play.rate_limit]\nrequests = 4\nwindow_ms = 1000\n\n\
         [rate_limits]\nredis_url = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n"
    );
    let configured = crate::google_play::configured(&quota);
    // A purchase per call, so that each call is one request to the store:
    // counted alone, each replica would send 4 a window, 8 together.
    let tokens: Vec<String> = (0..12).map(|index| format!("gp-quota-{index}")).collect();
    for token in &tokens {
        configured.emulator.add_purchase(iapd_emulators::google_play::SeedPurchase {
            package_name: "com.example.game".into(),
            product_id: "coins_100".into(),
            purchase_token: token.clone(),
            fields: serde_json::json!({"purchaseTimeMillis": "1767225600000", "purchaseState": 0,
                "consumptionState": 0, "acknowledgementState": 0, "orderId": format!("GPA.{token}"),
                "regionCode": "US", "obfuscatedExternalAccountId": "user-42"})
            .as_object()
            .cloned()
            .unwrap(),
        });
    }
    configured.emulator.set_quota(4, Duration::from_secs(1));
    let replicas = [Server::start(Some(&configured.config), &[]), Server::start(Some(&configured.config), &[])];
    let mut calls = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        let mut client = replicas[index % 2].client().await;
        let token = token.clone();
        calls.push(tokio::spawn(async move { client.verify(play_verify(&token, Duration::from_secs(20))).await }));
    }
    // Over the quota, the calls wait for room: all are answered.
    for call in calls {
        let answer = call.await.unwrap().expect("a call that waited for the quota");
        assert_eq!(answer.into_inner().verdict(), pb::Verdict::Valid);
    }
    let (most, refused) = configured.emulator.quota_use();
    assert!(most <= 4 && most > 0, "at most 4 requests a window reached the store from both: {most}");
    assert_eq!(configured.emulator.count("products.get"), 12, "one request per call");
    assert_eq!(refused, 0, "the store never had to refuse one for its quota");
    // Calls that cannot wait long enough are told when to come back.
    let client = replicas[0].client().await;
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.verify(play_verify("gp-purchased", Duration::from_millis(300))).await })
        })
        .collect();
    let mut exhausted = 0;
    for call in burst {
        if let Err(status) = call.await.unwrap() {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}\n{}", replicas[0].logs());
            assert_eq!(error_info(&status), Some(("STORE_QUOTA_EXHAUSTED".to_owned(), "iapd".to_owned())));
            let retry = status.get_details_retry_info().and_then(|info| info.retry_delay).expect("RetryInfo");
            assert!(retry <= Duration::from_secs(1), "{retry:?}");
            exhausted += 1;
        }
    }
    assert!(exhausted > 0, "12 calls within 300 ms on a quota of 4 a second");
    assert_eq!(configured.emulator.quota_use().1, 0, "still none refused by the store");
}

#[tokio::test]
async fn without_redis_a_replica_counts_its_quota_alone() {
    let configured = crate::google_play::configured(
        "\n[stores.google-play.rate_limit]\nrequests = 100\nwindow_ms = 1000\n\n\
         [rate_limits]\nredis_url = \"redis://127.0.0.1:1\"\n",
    );
    let server = Server::start(Some(&configured.config), &[]);
    let mut client = server.client().await;
    let answer = client.verify(play_verify("gp-purchased", Duration::from_secs(10))).await.expect("verify");
    assert_eq!(answer.into_inner().verdict(), pb::Verdict::Valid);
    assert!(server.wait_for_log("redis cannot be reached"), "{}", server.logs());
}
