//! The Amazon plugin loaded by the real `iapd` binary, talking HTTP to the
//! Amazon RVS emulator with the config of `tests/fixtures/amazon`; a scan of
//! the server's logs for the shared secret, which travels in every URL; and
//! the README's Amazon walkthrough run as written.

use std::sync::Arc;

use iapd::pb::purchase_service_client::PurchaseServiceClient;
use iapd::pb::{self, Verdict};
use iapd_emulators::Fault;
use iapd_emulators::amazon::Amazon;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Sandbox, Server, built_plugin, error_info, list_product_ids, root, run_iapd};

const PACKAGE: &str = "com.example.game";
const USER: &str = "l3HL7XppEMhrOGDnur9-ulvqomrSg6qyODKmah76lJU=";
const OTHER_USER: &str = "io9oFdzmCSMuKk_pp9pYccoIHRfc6kSAAYaNo51xZrg=";
const TESTER_RECEIPT: &str = "q1YqVbJSyjH28DGPKChw9c0o-tester-vip";

/// The emulator on a free port and iapd configured as
/// `tests/fixtures/amazon/iapd.toml` says, pointed at that port, with
/// `extra` stores appended.
struct AmazonEnv {
    emulator: Arc<Amazon>,
    running: iapd_emulators::Running,
    server: Server,
    config: std::path::PathBuf,
    _sandbox: Sandbox,
}

fn start(extra: &str, envs: &[(&str, &str)]) -> AmazonEnv {
    let emulator = Arc::new(Amazon::with_default_state());
    let running = iapd_emulators::spawn(emulator.clone()).unwrap();
    let sandbox = Sandbox::new();
    sandbox.add_plugin(
        &built_plugin("iapd-plugin-amazon"),
        &libloading::library_filename("iapd_plugin_amazon").to_string_lossy(),
    );
    let secret = root().join("tests/fixtures/amazon/shared-secret");
    let stores = std::fs::read_to_string(root().join("tests/fixtures/amazon/iapd.toml"))
        .unwrap()
        .replace("127.0.0.1:8102", &running.address.to_string())
        .replace("tests/fixtures/amazon/shared-secret", &secret.display().to_string());
    let config = sandbox.write_config(&format!("{stores}\n{extra}"));
    let server = Server::start(Some(&config), envs);
    AmazonEnv { emulator, running, server, config, _sandbox: sandbox }
}

/// The test-only shared secret, as configured and in each form it could
/// take in a URL.
fn secret_forms() -> Vec<String> {
    let secret = std::fs::read_to_string(root().join("tests/fixtures/amazon/shared-secret")).unwrap();
    assert!(secret.contains('/') && secret.contains('+'), "make-keys.sh makes a secret whose url forms differ");
    let every_byte_encoded = |lower: bool| {
        let encoded: String = secret
            .bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
                _ if lower => format!("%{byte:02x}"),
                _ => format!("%{byte:02X}"),
            })
            .collect();
        encoded
    };
    vec![
        secret.clone(),
        secret.replace('/', "%2F"),
        secret.replace('/', "%2f"),
        every_byte_encoded(false),
        every_byte_encoded(true),
        // The part after Amazon's `2:` prefix on its own.
        secret.trim_start_matches("2:").to_owned(),
    ]
}

fn assert_no_secret(text: &str, what: &str) {
    for form in secret_forms() {
        assert!(!text.contains(&form), "the shared secret ({form}) leaked into {what}:\n{text}");
    }
}

fn receipt(receipt_id: &str, user: &str) -> Option<pb::PurchaseProof> {
    Some(pb::PurchaseProof {
        proof: Some(pb::purchase_proof::Proof::Receipt(receipt_id.to_owned())),
        store_parameters: [("user_id".to_owned(), user.to_owned())].into_iter().collect(),
    })
}

fn verify(store: &str, product: &str, receipt_id: &str, user: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: store.into(),
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: receipt(receipt_id, user),
        user_id: String::new(),
    }
}

async fn ask(
    client: &mut PurchaseServiceClient<Channel>,
    request: pb::VerifyRequest,
) -> Result<pb::VerifyResponse, tonic::Status> {
    client.verify(request).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn verify_and_catalog_through_iapd_and_no_acknowledge_or_consume() {
    let env = start("", &[]);
    let mut client = env.server.client().await;

    let valid = ask(&mut client, verify("amazon", "coins_100", "amzn-coins=:3:11", USER)).await.unwrap();
    assert_eq!(valid.verdict(), Verdict::Valid, "{}", valid.verdict_reason);
    let purchase = valid.purchase.unwrap();
    assert_eq!((purchase.store.as_str(), purchase.transaction_id.as_str()), ("amazon", "amzn-coins=:3:11"));
    assert_eq!(purchase.purchase_time.unwrap().seconds, 1_767_225_600);
    assert_eq!((purchase.kind(), purchase.environment()), (pb::ProductKind::Consumable, pb::Environment::Production));
    assert_eq!((purchase.region_code.as_str(), purchase.account_binding.as_str()), ("US", USER));
    let subscription = ask(&mut client, verify("amazon", "vip_monthly", "amzn-vip=:2:1", USER)).await.unwrap();
    assert_eq!(subscription.verdict(), Verdict::Valid);
    assert!(subscription.purchase.unwrap().expiry_time.is_some(), "an auto-renewing subscription runs to its renewal");
    // A receipt id with a `/`, encoded as one path segment.
    let entitlement = ask(&mut client, verify("amazon", "remove_ads", "amzn/remove-ads=", USER)).await.unwrap();
    assert_eq!(entitlement.verdict(), Verdict::Valid);

    for (product, receipt_id, user, verdict) in [
        ("coins_100", "amzn-made-up=", USER, Verdict::NotFound),
        ("coins_100", "amzn-coins=:3:11", OTHER_USER, Verdict::UserMismatch),
        ("coins_100", "amzn-refunded=:1:1", USER, Verdict::Refunded),
        ("remove_ads", "amzn-revoked=", USER, Verdict::Refunded),
        ("vip_monthly", "amzn-vip-ended=", USER, Verdict::Expired),
        ("coins_100", "amzn-test=", USER, Verdict::Invalid),
        ("coins_500", "amzn-coins=:3:11", USER, Verdict::Invalid),
    ] {
        let answer = ask(&mut client, verify("amazon", product, receipt_id, user)).await.unwrap();
        assert_eq!(answer.verdict(), verdict, "{receipt_id}: {}", answer.verdict_reason);
    }
    let tester = ask(&mut client, verify("amazon-sandbox", "vip_monthly", TESTER_RECEIPT, USER)).await.unwrap();
    assert_eq!(tester.verdict(), Verdict::Valid, "{}", tester.verdict_reason);
    assert_eq!(tester.purchase.unwrap().environment(), pb::Environment::Test);
    assert_eq!(env.emulator.count("sandbox.verifyReceiptId"), 1);

    // Amazon's refusal of the secret: an error with its ErrorInfo.
    env.emulator.inject(Fault::answering("verifyReceiptId", 496, ""));
    let status = ask(&mut client, verify("amazon", "coins_100", "amzn-coins=:3:11", USER)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(error_info(&status), Some(("INVALID_SHARED_SECRET".into(), "amazon".into())));
    assert!(status.message().contains("`stores.amazon.secrets.shared_secret`"), "{status:?}");
    let mut redirected = verify("amazon", "coins_100", "amzn-coins=:3:11", USER);
    redirected.proof.as_mut().unwrap().store_parameters.insert("rvs_url".into(), "http://169.254.169.254/".into());
    let status = ask(&mut client, redirected).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_info(&status), Some(("UNKNOWN_STORE_PARAMETER".into(), "amazon".into())));

    let status = client
        .acknowledge(pb::AcknowledgeRequest {
            store: "amazon".into(),
            app_id: PACKAGE.into(),
            product_id: "remove_ads".into(),
            proof: receipt("amzn/remove-ads=", USER),
            developer_payload: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "amazon has no server-side acknowledge: {status:?}");
    assert_eq!(error_info(&status).unwrap().0, "OPERATION_NOT_SUPPORTED");
    let status = client
        .consume(pb::ConsumeRequest {
            store: "amazon".into(),
            app_id: PACKAGE.into(),
            product_id: "coins_100".into(),
            proof: receipt("amzn-coins=:3:11", USER),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "amazon has no server-side consume: {status:?}");
    assert_eq!(error_info(&status).unwrap().0, "OPERATION_NOT_SUPPORTED");

    let ids = list_product_ids(&mut client, "amazon", PACKAGE, 3).await;
    assert_eq!(ids, ["coins_100", "coins_500", "remove_ads", "vip_monthly"]);

    let stores = client.list_stores(pb::ListStoresRequest::default()).await.unwrap().into_inner().stores;
    for id in ["amazon", "amazon-sandbox"] {
        let store = stores.iter().find(|store| store.id == id).unwrap_or_else(|| panic!("{id} in {stores:?}"));
        assert_eq!((store.display_name.as_str(), store.plugin_name.as_str()), ("Amazon Appstore", "amazon"));
        assert_eq!(store.capabilities().collect::<Vec<_>>(), [pb::Capability::Verify, pb::Capability::ListItems]);
        assert_eq!(store.proof_kinds, ["receipt"]);
    }
    let (ok, stdout, stderr) = run_iapd(&["--config", env.config.to_str().unwrap(), "plugins"], &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("amazon") && stdout.contains("verify, list_items"), "{stdout}");
    assert_no_secret(&env.server.logs(), "the server's logs");
}

#[tokio::test]
async fn the_shared_secret_never_reaches_the_logs_or_an_error() {
    // A store whose RVS is down: its errors carry the url of the request.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let extra = format!(
        "[stores.amazon-down]\nplugin = \"iapd_plugin_amazon\"\nallowed_origins = [\"{down}\"]\n\
         [stores.amazon-down.config]\npackages = [\"{PACKAGE}\"]\napi_root = \"{down}\"\n\
         retry = {{ max_attempts = 2, initial_backoff_ms = 10 }}\n\
         [stores.amazon-down.secrets]\nshared_secret = {{ file = \"{}\" }}\n",
        root().join("tests/fixtures/amazon/shared-secret").display()
    );
    // Everything logged, at every level, by every crate; a short http
    // timeout so that a slow answer makes the plugin log its retry.
    let env = start(&extra, &[("IAPD_LOG", "trace"), ("IAPD_STORES__AMAZON__HTTP_TIMEOUT_MS", "300")]);
    let mut client = env.server.client().await;

    env.emulator.inject(Fault { operation: Some("verifyReceiptId".into()), delay_ms: 2_000, ..Fault::default() });
    let answer = client.verify(verify("amazon", "coins_100", "amzn-coins=:3:11", USER)).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid, "the retry after the timeout answered");
    assert!(
        env.server.wait_for_log("retrying"),
        "the plugin logs its retry, with the url of the request that timed out:\n{}",
        env.server.logs()
    );
    assert!(env.server.logs().contains("/developer/[redacted]/user/"), "{}", env.server.logs());

    let status = client.verify(verify("amazon-down", "coins_100", "amzn-coins=:3:11", USER)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("/developer/[redacted]/user/"), "{status:?}");
    assert_no_secret(status.message(), "the error message");

    for (product, receipt_id) in [("coins_100", "amzn-made-up="), ("coins_100", "amzn-refunded=:1:1")] {
        let answer = client.verify(verify("amazon", product, receipt_id, USER)).await.unwrap().into_inner();
        assert_no_secret(&format!("{answer:?}"), "an answer");
    }
    env.emulator.inject(Fault::answering("verifyReceiptId", 496, ""));
    let status = client.verify(verify("amazon", "coins_100", "amzn-coins=:3:11", USER)).await.unwrap_err();
    assert_no_secret(&format!("{status:?}"), "the 496 error");
    assert!(env.server.wait_for_log("rpc failed code=Unauthenticated"), "{}", env.server.logs());

    drop(client);
    env.server.terminate();
    assert!(env.server.wait_for_log("shutting down"), "{}", env.server.logs());
    let logs = env.server.logs();
    assert!(logs.contains("TRACE"), "the scan covers trace logging:\n{logs}");
    assert_no_secret(&logs, "the server's logs");
}

#[test]
fn the_readme_walkthrough_works_against_the_emulator() {
    let env = start("", &[]);
    let lines = crate::grpcurl::readme_lines(|line| {
        (line.starts_with("grpcurl ") && line.contains("localhost:50058"))
            || (line.starts_with("curl ") && line.contains("127.0.0.1:8102"))
    });
    assert!(lines.len() >= 10, "the README lost its Amazon walkthrough: {lines:?}");
    let outputs = crate::grpcurl::run_all(&lines, |line| {
        line.replace("localhost:50058", &env.server.address.to_string())
            .replace("127.0.0.1:8102", &env.running.address.to_string())
    });
    let all = outputs.join("\n");
    for expected in [
        "\"verdict\": \"VERDICT_VALID\"",
        "\"verdict\": \"VERDICT_NOT_FOUND\"",
        "\"verdict\": \"VERDICT_USER_MISMATCH\"",
        "\"verdict\": \"VERDICT_REFUNDED\"",
        "\"verdict\": \"VERDICT_INVALID\"",
        "\"environment\": \"ENVIRONMENT_TEST\"",
        "\"productId\": \"vip_monthly\"",
        "\"domain\":\"amazon\"",
        "\"reason\":\"UNKNOWN_STORE_PARAMETER\"",
        "\"reason\":\"OPERATION_NOT_SUPPORTED\"",
        "\"reason\":\"INVALID_SHARED_SECRET\"",
    ] {
        assert!(all.contains(expected), "`{expected}` missing from the walkthrough's output:\n{all}");
    }
    let stats: serde_json::Value = serde_json::from_str(outputs.last().unwrap()).unwrap();
    assert!(stats["requests"]["verifyReceiptId"].as_u64().unwrap() >= 8, "{stats}");
    assert!(stats["requests"]["sandbox.verifyReceiptId"].as_u64().unwrap() >= 1, "{stats}");
    assert_no_secret(&all, "the walkthrough's output");
    assert_no_secret(&env.server.logs(), "the server's logs");
}
