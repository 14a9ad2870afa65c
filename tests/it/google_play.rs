//! The Google Play plugin loaded by the real `iapd` binary, talking HTTP to
//! the Google Play emulator; the emulator driven by Google's own Python
//! client; and the README's Google Play walkthrough run as written.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use iapd::pb::{self, Verdict};
use iapd_emulators::Fault;
use iapd_emulators::google_play::GooglePlay;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{Sandbox, Server, built_plugin, error_info, list_product_ids, root, token, tool};

const PACKAGE: &str = "com.example.game";

/// The emulator on a free port and iapd configured as
/// `tests/fixtures/google-play/iapd.toml` says, pointed at that port.
struct PlayEnv {
    emulator: Arc<GooglePlay>,
    running: iapd_emulators::Running,
    server: Server,
    key_file: PathBuf,
    _sandbox: Sandbox,
}

fn start() -> PlayEnv {
    let configured = configured("");
    let server = Server::start(Some(&configured.config), &[]);
    PlayEnv {
        emulator: configured.emulator,
        running: configured.running,
        server,
        key_file: configured.key_file,
        _sandbox: configured.sandbox,
    }
}

/// The emulator on a free port, and a config (with `rest` appended) for the
/// Google Play store pointed at it.
pub(crate) struct Configured {
    pub(crate) emulator: Arc<GooglePlay>,
    pub(crate) running: iapd_emulators::Running,
    pub(crate) sandbox: Sandbox,
    pub(crate) config: PathBuf,
    pub(crate) key_file: PathBuf,
}

pub(crate) fn configured(rest: &str) -> Configured {
    let fixtures = root().join("tests/fixtures/google-play");
    let key = std::fs::read_to_string(fixtures.join("service-account.json")).unwrap();
    let emulator = Arc::new(GooglePlay::with_default_state());
    emulator.add_service_account(&key).unwrap();
    let running = iapd_emulators::spawn(emulator.clone()).unwrap();
    let address = running.address.to_string();

    let sandbox = Sandbox::new();
    sandbox.add_plugin(
        &built_plugin("iapd-plugin-google-play"),
        &libloading::library_filename("iapd_plugin_google_play").to_string_lossy(),
    );
    let key_file = sandbox.dir.path().join("service-account.json");
    std::fs::write(&key_file, key.replace("127.0.0.1:8095", &address)).unwrap();
    let stores = std::fs::read_to_string(fixtures.join("iapd.toml"))
        .unwrap()
        .replace("127.0.0.1:8095", &address)
        .replace("tests/fixtures/google-play/service-account.json", &key_file.display().to_string());
    let config = sandbox.write_config(&format!("{stores}{rest}"));
    Configured { emulator, running, sandbox, config, key_file }
}

fn verify(product: &str, purchase_token: &str, user: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: "google-play".into(),
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: token(purchase_token),
        user_id: user.into(),
    }
}

#[tokio::test]
async fn every_rpc_through_iapd_against_the_emulator() {
    let env = start();
    let mut client = env.server.client().await;

    let answer = client.verify(verify("coins_100", "gp-purchased", "user-42")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!(
        (purchase.store.as_str(), purchase.order_id.as_str(), purchase.quantity),
        ("google-play", "GPA.3301-2201-0001-00001", 2)
    );
    assert_eq!(purchase.kind(), pb::ProductKind::Consumable);
    assert_eq!(purchase.purchase_time.unwrap().seconds, 1_767_225_600);
    let mismatch = client.verify(verify("coins_100", "gp-purchased", "user-7")).await.unwrap().into_inner();
    assert_eq!(mismatch.verdict(), Verdict::UserMismatch);
    let pending = client.verify(verify("coins_100", "gp-pending", "")).await.unwrap().into_inner();
    assert_eq!(pending.verdict(), Verdict::Pending);
    let faked = client.verify(verify("coins_100", "never-sold", "")).await.unwrap().into_inner();
    assert_eq!(faked.verdict(), Verdict::NotFound);

    let acknowledge = pb::AcknowledgeRequest {
        store: "google-play".into(),
        app_id: PACKAGE.into(),
        product_id: "remove_ads".into(),
        proof: token("gp-remove-ads"),
        developer_payload: "grant-1".into(),
    };
    assert!(!client.acknowledge(acknowledge.clone()).await.unwrap().into_inner().already_acknowledged);
    assert!(client.acknowledge(acknowledge).await.unwrap().into_inner().already_acknowledged);
    let consume = pb::ConsumeRequest {
        store: "google-play".into(),
        app_id: PACKAGE.into(),
        product_id: "coins_100".into(),
        proof: token("gp-purchased"),
    };
    assert!(!client.consume(consume.clone()).await.unwrap().into_inner().already_consumed);
    assert!(client.consume(consume).await.unwrap().into_inner().already_consumed);
    assert_eq!(env.emulator.purchase("gp-purchased").unwrap()["consumptionState"], 1);

    let ids = list_product_ids(&mut client, "google-play", PACKAGE, 2).await;
    assert_eq!(ids, ["coins_100", "remove_ads", "level_pack", "vip"]);
    assert_eq!(env.emulator.count("token"), 1, "one access token served every call");
}

#[tokio::test]
async fn store_errors_reach_the_caller_with_googles_reason_and_retry_info() {
    let env = start();
    let mut client = env.server.client().await;
    let mut other_app = verify("coins_100", "gp-purchased", "");
    other_app.app_id = "com.other.app".into();
    let status = client.verify(other_app).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(error_info(&status), Some(("PACKAGE_NOT_ALLOWED".into(), "google-play".into())));

    env.emulator.inject(Fault {
        operation: Some("products.get".into()),
        status: Some(403),
        reason: Some("userInsufficientPermission".into()),
        ..Fault::default()
    });
    let status = client.verify(verify("coins_100", "gp-purchased", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(error_info(&status), Some(("userInsufficientPermission".into(), "google-play".into())));

    env.emulator.inject(Fault {
        operation: Some("products.get".into()),
        status: Some(429),
        retry_after_secs: Some(30),
        ..Fault::default()
    });
    let status = client.verify(verify("coins_100", "gp-purchased", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_info(&status), Some(("rateLimitExceeded".into(), "google-play".into())));
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(30)));
}

#[tokio::test]
async fn a_slow_store_ends_at_the_callers_deadline() {
    let env = start();
    let mut client = env.server.client().await;
    env.emulator.inject(Fault { operation: Some("products.get".into()), delay_ms: 5_000, ..Fault::default() });
    let mut request = tonic::Request::new(verify("coins_100", "gp-purchased", ""));
    request.set_timeout(Duration::from_millis(800));
    let started = std::time::Instant::now();
    let status = client.verify(request).await.unwrap_err();
    crate::support::assert_deadline_ended(&status, started, Duration::from_millis(800));
    // The next call, with time to spare, gets its answer.
    let answer = client.verify(verify("coins_100", "gp-purchased", "")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid);
}

#[tokio::test]
async fn identical_concurrent_verifies_share_one_upstream_call() {
    let env = start();
    let client = env.server.client().await;
    // The first lookup answers slowly, so all hundred calls overlap it even
    // on a loaded machine.
    env.emulator.inject(Fault { operation: Some("products.get".into()), delay_ms: 2_000, ..Fault::default() });
    let calls = (0..100).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move { client.verify(verify("coins_100", "gp-purchased", "")).await })
    });
    let answers = futures_join(calls).await;
    for answer in answers {
        assert_eq!(answer.unwrap().into_inner().verdict(), Verdict::Valid);
    }
    assert_eq!(env.emulator.count("products.get"), 1, "100 identical Verifies, 1 GET");
    assert_eq!(env.emulator.count("token"), 1, "and 1 token request");

    // Once answered, the next Verify asks Google again: nothing is cached.
    let mut client = client;
    client.verify(verify("coins_100", "gp-purchased", "")).await.unwrap();
    assert_eq!(env.emulator.count("products.get"), 2);
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await.unwrap());
    }
    results
}

#[tokio::test]
async fn googles_python_client_gets_the_same_answers_from_the_emulator() {
    let env = start();
    let output = Command::new(tool("python"))
        .arg(root().join("tests/fixtures/python/google_play_client.py"))
        .arg(env.running.url())
        .arg(&env.key_file)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "Google's client refused the emulator (tests/run.sh installs google-api-python-client):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    // iapd's plugin and Google's client read the same purchase the same way.
    let mut client = env.server.client().await;
    let answer = client.verify(verify("coins_100", "gp-purchased", "")).await.unwrap().into_inner();
    let raw: serde_json::Value = serde_json::from_str(&answer.purchase.unwrap().raw_store_response).unwrap();
    assert_eq!(raw, python["get_purchased"]);
    assert_eq!(python["get_pending"]["purchaseState"], 2);
    assert_eq!(python["get_acknowledged"]["acknowledgementState"], 1);
    assert_eq!(python["get_acknowledged"]["developerPayload"], "from-python");
    let acknowledged = client.verify(verify("remove_ads", "gp-remove-ads", "")).await.unwrap().into_inner();
    assert_eq!(acknowledged.purchase.unwrap().developer_payload, "from-python", "state is shared by both clients");
    assert_eq!(python["not_found"]["status"], 404);
    assert_eq!(python["not_found"]["reason"], "notFound");
    let faked = client.verify(verify("coins_100", "never-sold", "")).await.unwrap().into_inner();
    assert_eq!(faked.verdict(), Verdict::NotFound);

    let listed = client
        .list_items(pb::ListItemsRequest {
            store: "google-play".into(),
            app_id: PACKAGE.into(),
            kind: pb::ProductKind::Subscription.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = listed.items.into_iter().map(|item| item.product_id).collect();
    assert_eq!(serde_json::json!(ids), python["subscription_ids"]);
    assert_eq!(python["one_time_product_ids"], serde_json::json!(["coins_100", "remove_ads", "level_pack"]));
}

#[test]
fn the_readme_walkthrough_works_against_the_emulator() {
    let env = start();
    let lines = crate::grpcurl::readme_lines(|line| {
        (line.starts_with("grpcurl ") && line.contains("localhost:50052"))
            || (line.starts_with("curl ") && line.contains("127.0.0.1:8095"))
    });
    assert!(lines.len() >= 10, "the README lost its Google Play walkthrough: {lines:?}");
    let outputs = crate::grpcurl::run_all(&lines, |line| {
        line.replace("localhost:50052", &env.server.address.to_string())
            .replace("127.0.0.1:8095", &env.running.address.to_string())
    });
    let all = outputs.join("\n");
    for expected in [
        "\"verdict\": \"VERDICT_VALID\"",
        "\"verdict\": \"VERDICT_NOT_FOUND\"",
        "\"alreadyConsumed\": true",
        "\"productId\": \"vip\"",
        "\"domain\":\"google-play\"",
        "\"reason\":\"invalidPurchaseState\"",
        "\"reason\":\"PACKAGE_NOT_ALLOWED\"",
    ] {
        assert!(all.contains(expected), "`{expected}` missing from the walkthrough's output:\n{all}");
    }
    let stats: serde_json::Value = serde_json::from_str(outputs.last().unwrap()).unwrap();
    assert!(stats["requests"]["products.get"].as_u64().unwrap() >= 4, "{stats}");
    assert_eq!(env.emulator.count("token"), 1);
}

#[test]
fn the_readme_emulator_controls_work_as_written() {
    let running = iapd_emulators::spawn(Arc::new(GooglePlay::with_default_state())).unwrap();
    let lines = crate::grpcurl::readme_lines(|line| line.starts_with("curl ") && line.contains("localhost:8095"));
    assert_eq!(lines.len(), 3, "the README lost its emulator controls: {lines:?}");
    let outputs = crate::grpcurl::run_all(&lines, |line| line.replace("localhost:8095", &running.address.to_string()));
    let stats: serde_json::Value = serde_json::from_str(outputs.last().unwrap()).unwrap();
    assert_eq!(stats["quota"], serde_json::json!({"mostInAWindow": 0, "refused": 0}), "{stats}");
    assert!(stats["requests"].is_object(), "{stats}");
}
