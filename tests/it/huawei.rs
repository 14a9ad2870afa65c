//! The Huawei plugin loaded by the real `iapd` binary, talking HTTP to the
//! Huawei emulator with the config of `tests/fixtures/huawei`, and the
//! README's Huawei walkthrough run as written.

use std::sync::Arc;

use iapd::pb::{self, Verdict};
use iapd_emulators::huawei::Huawei;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{Sandbox, Server, built_plugin, error_info, list_product_ids, root, run_iapd};

const PACKAGE: &str = "com.example.game";
const APP_SECRET: &str = "hw-demo-app-secret-6c1f";
const CONNECT_KEY: &str = "hw-demo-connect-key-93ab";

/// The emulator on a free port and iapd configured as
/// `tests/fixtures/huawei/iapd.toml` says, pointed at that port.
struct HuaweiEnv {
    emulator: Arc<Huawei>,
    running: iapd_emulators::Running,
    server: Server,
    sandbox: Sandbox,
}

fn config_for(running: &iapd_emulators::Running) -> String {
    std::fs::read_to_string(root().join("tests/fixtures/huawei/iapd.toml"))
        .unwrap()
        .replace("127.0.0.1:8103", &running.address.to_string())
}

fn start(envs: &[(&str, &str)]) -> HuaweiEnv {
    let emulator = Arc::new(Huawei::with_default_state());
    let running = iapd_emulators::spawn(emulator.clone()).unwrap();
    let sandbox = Sandbox::new();
    sandbox.add_plugin(
        &built_plugin("iapd-plugin-huawei"),
        &libloading::library_filename("iapd_plugin_huawei").to_string_lossy(),
    );
    let server = Server::start(Some(&sandbox.write_config(&config_for(&running))), envs);
    HuaweiEnv { emulator, running, server, sandbox }
}

fn proof(token: &str, parameters: &[(&str, &str)]) -> Option<pb::PurchaseProof> {
    Some(pb::PurchaseProof {
        proof: Some(pb::purchase_proof::Proof::PurchaseToken(token.to_owned())),
        store_parameters: parameters.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
    })
}

fn verify(product: &str, token: &str, parameters: &[(&str, &str)]) -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: "huawei".into(),
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: proof(token, parameters),
        user_id: String::new(),
    }
}

fn consume(product: &str, token: &str) -> pb::ConsumeRequest {
    pb::ConsumeRequest {
        store: "huawei".into(),
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: proof(token, &[]),
    }
}

#[tokio::test]
async fn verify_acknowledge_consume_and_catalog_through_iapd() {
    let env = start(&[]);
    let mut client = env.server.client().await;

    let answer = client.verify(verify("coins_100", "hw-purchased", &[])).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!((purchase.store.as_str(), purchase.order_id.as_str()), ("huawei", "HW20260101000001"));
    assert_eq!(purchase.purchase_time.unwrap().seconds, 1_767_225_601);
    assert_eq!((purchase.kind(), purchase.environment()), (pb::ProductKind::Consumable, pb::Environment::Production));
    assert_eq!(purchase.region_code, "DE");
    for (product, token, parameters, verdict) in [
        ("coins_100", "never-sold", &[][..], Verdict::NotFound),
        ("coins_100", "hw-sandbox", &[], Verdict::Invalid),
        ("coins_100", "hw-forged", &[], Verdict::Invalid),
        ("coins_500", "hw-pss", &[], Verdict::Valid),
        ("coins_500", "hw-charged-back", &[], Verdict::Refunded),
        ("coins_100", "hw-apptouch", &[("account_flag", "1")], Verdict::Valid),
        ("vip_monthly", "hw-vip", &[("subscription_id", "sub-20")], Verdict::Valid),
        ("vip_monthly", "hw-vip-expired", &[("subscription_id", "sub-21")], Verdict::Expired),
    ] {
        let answer = client.verify(verify(product, token, parameters)).await.unwrap().into_inner();
        assert_eq!(answer.verdict(), verdict, "{token}: {}", answer.verdict_reason);
    }

    let acknowledge = pb::AcknowledgeRequest {
        store: "huawei".into(),
        app_id: PACKAGE.into(),
        product_id: "remove_ads".into(),
        proof: proof("hw-remove-ads", &[]),
        developer_payload: String::new(),
    };
    assert!(!client.acknowledge(acknowledge.clone()).await.unwrap().into_inner().already_acknowledged);
    assert!(client.acknowledge(acknowledge).await.unwrap().into_inner().already_acknowledged);
    assert!(!client.consume(consume("coins_100", "hw-purchased")).await.unwrap().into_inner().already_consumed);
    assert!(client.consume(consume("coins_100", "hw-purchased")).await.unwrap().into_inner().already_consumed);
    assert_eq!(env.emulator.purchase("hw-purchased").unwrap()["consumptionState"], 1);
    assert_eq!(env.emulator.count("confirm"), 2, "one confirm each; the repeats read first");

    let status = client.consume(consume("remove_ads", "hw-remove-ads")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_info(&status), Some(("WRONG_PRODUCT_TYPE".into(), "huawei".into())));
    let status = client.consume(consume("coins_100", "never-sold")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("IAP_RECORD_NOT_EXIST", "huawei"));
    assert_eq!(info.metadata["response_code"], "12", "huawei's result code reaches the caller");
    let status = client.verify(verify("vip_monthly", "hw-vip", &[])).await.unwrap_err();
    assert_eq!((status.code(), error_info(&status).unwrap().0.as_str()), (Code::InvalidArgument, "RIGHTS_INVALID"));
    let status = client
        .verify(verify("coins_100", "hw-purchased", &[("order_url", "http://169.254.169.254/")]))
        .await
        .unwrap_err();
    assert_eq!(error_info(&status), Some(("UNKNOWN_STORE_PARAMETER".into(), "huawei".into())));

    let ids = list_product_ids(&mut client, "huawei", PACKAGE, 2).await;
    assert_eq!(ids, ["coins_100", "coins_500", "remove_ads", "level_pack", "vip_monthly"]);
    assert_eq!(env.emulator.count("token"), 1, "one app-level token served every call");
    assert_eq!(env.emulator.count("connect.token"), 1);

    let stores = client.list_stores(pb::ListStoresRequest::default()).await.unwrap().into_inner().stores;
    let huawei = stores.iter().find(|store| store.id == "huawei").unwrap();
    assert_eq!(huawei.display_name, "Huawei AppGallery");
    assert_eq!(huawei.proof_kinds, ["purchase_token"]);
    assert_eq!(
        huawei.capabilities().collect::<Vec<_>>(),
        [pb::Capability::Verify, pb::Capability::Acknowledge, pb::Capability::Consume, pb::Capability::ListItems]
    );
    let config = env.sandbox.dir.path().join("iapd.toml");
    let (ok, stdout, stderr) = run_iapd(&["--config", config.to_str().unwrap(), "plugins"], &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("huawei") && stdout.contains("verify, acknowledge, consume, list_items"), "{stdout}");
}

#[tokio::test]
async fn no_secret_reaches_the_logs_of_a_run() {
    // Everything at debug, the server's own logs and the HTTP client's too.
    let env = start(&[("IAPD_LOG", "debug")]);
    let mut client = env.server.client().await;
    client.verify(verify("coins_100", "hw-purchased", &[])).await.unwrap();
    env.emulator.revoke_tokens();
    client.verify(verify("coins_100", "hw-forged", &[])).await.unwrap();
    client.consume(consume("coins_100", "never-sold")).await.unwrap_err();
    list_product_ids(&mut client, "huawei", PACKAGE, 0).await;
    env.emulator.inject(iapd_emulators::Fault::answering("verify", 401, "6"));
    env.emulator.inject(iapd_emulators::Fault::answering("verify", 401, "6"));
    client.verify(verify("coins_100", "hw-purchased", &[])).await.unwrap_err();
    // The plugin's own debug lines arrive: the scan reads what the plugin says too.
    assert!(env.server.wait_for_log("new app-level access token for app 101486545"), "{}", env.server.logs());
    assert!(env.server.wait_for_log("signed data was refused"), "{}", env.server.logs());

    let tokens = env.emulator.issued_tokens();
    assert_eq!(
        tokens.len(),
        4,
        "app-level tokens at the start, after the revoke and after the 401, and a catalog token: {tokens:?}"
    );
    let logs = env.server.logs();
    let mut secrets = vec![APP_SECRET.to_owned(), CONNECT_KEY.to_owned()];
    for token in &tokens {
        secrets.push(token.clone());
        let header = iapd_emulators::huawei::authorization(token);
        secrets.push(header.trim_start_matches("Basic ").to_owned());
    }
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "`{secret}` is in the server's logs:\n{logs}");
    }
}

#[test]
fn the_readme_walkthrough_works_against_the_emulator() {
    let env = start(&[]);
    let lines = crate::grpcurl::readme_lines(|line| {
        (line.starts_with("grpcurl ") && line.contains("localhost:50059"))
            || (line.starts_with("curl ") && line.contains("127.0.0.1:8103"))
    });
    assert!(lines.len() >= 10, "the README lost its Huawei walkthrough: {lines:?}");
    let outputs = crate::grpcurl::run_all(&lines, |line| {
        line.replace("localhost:50059", &env.server.address.to_string())
            .replace("127.0.0.1:8103", &env.running.address.to_string())
    });
    let all = outputs.join("\n");
    for expected in [
        "\"verdict\": \"VERDICT_VALID\"",
        "\"verdict\": \"VERDICT_NOT_FOUND\"",
        "\"verdict\": \"VERDICT_INVALID\"",
        "\"verdict\": \"VERDICT_REFUNDED\"",
        "\"environment\": \"ENVIRONMENT_PRODUCTION\"",
        "\"alreadyConsumed\": true",
        "\"productId\": \"vip_monthly\"",
        "\"domain\":\"huawei\"",
        "\"reason\":\"WRONG_PRODUCT_TYPE\"",
        "\"reason\":\"RIGHTS_INVALID\"",
        "\"response_code\":\"6\"",
    ] {
        assert!(all.contains(expected), "`{expected}` missing from the walkthrough's output:\n{all}");
    }
    let stats: serde_json::Value = serde_json::from_str(outputs.last().unwrap()).unwrap();
    assert!(stats["requests"]["verify"].as_u64().unwrap() >= 6, "{stats}");
    assert_eq!(env.emulator.count("token"), 1);
}
