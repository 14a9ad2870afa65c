//! The Microsoft Store plugin loaded by the real `iapd` binary, talking HTTP
//! to the Microsoft Store emulator with the config of
//! `tests/fixtures/microsoft-store`, and the README's Microsoft Store
//! walkthrough run as written.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use iapd::pb::{self, Verdict};
use iapd_emulators::microsoft_store::{KeyKind, MicrosoftStore};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::support::{Sandbox, Server, built_plugin, error_info, list_product_ids, root, run_iapd};

const STORE: &str = "microsoft-store";
const APP: &str = "9NBLGGH4R315";
const ACCOUNT: &str = "demo-account";
const SECRET: &str = "demo-client-secret";

/// The emulator on a free port and iapd configured as
/// `tests/fixtures/microsoft-store/iapd.toml` says, pointed at that port.
struct MicrosoftEnv {
    emulator: Arc<MicrosoftStore>,
    running: iapd_emulators::Running,
    server: Server,
    config: PathBuf,
    _sandbox: Sandbox,
}

fn start() -> MicrosoftEnv {
    let emulator = Arc::new(MicrosoftStore::with_default_state());
    let running = iapd_emulators::spawn(emulator.clone()).unwrap();
    let sandbox = Sandbox::new();
    sandbox.add_plugin(
        &built_plugin("iapd-plugin-microsoft-store"),
        &libloading::library_filename("iapd_plugin_microsoft_store").to_string_lossy(),
    );
    let stores = std::fs::read_to_string(root().join("tests/fixtures/microsoft-store/iapd.toml"))
        .unwrap()
        .replace("127.0.0.1:8101", &running.address.to_string());
    let config = sandbox.write_config(&stores);
    // Every target at debug, so the secret scan reads all the server would log.
    let server = Server::start(Some(&config), &[("IAPD_LOG", "debug")]);
    MicrosoftEnv { emulator, running, server, config, _sandbox: sandbox }
}

fn proof(key: &str, parameters: &[(&str, &str)]) -> Option<pb::PurchaseProof> {
    let store_parameters: HashMap<String, String> =
        parameters.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    Some(pb::PurchaseProof {
        proof: Some(pb::purchase_proof::Proof::PurchaseToken(key.to_owned())),
        store_parameters: store_parameters.into_iter().collect(),
    })
}

fn verify(product: &str, key: &str, parameters: &[(&str, &str)], user: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: STORE.into(),
        app_id: APP.into(),
        product_id: product.into(),
        proof: proof(key, parameters),
        user_id: user.into(),
    }
}

fn consume(product: &str, key: &str, parameters: &[(&str, &str)]) -> pb::ConsumeRequest {
    pb::ConsumeRequest {
        store: STORE.into(),
        app_id: APP.into(),
        product_id: product.into(),
        proof: proof(key, parameters),
    }
}

#[tokio::test]
async fn verify_consume_and_catalog_through_iapd_with_no_secret_in_the_logs() {
    let env = start();
    let mut client = env.server.client().await;
    let key = env.emulator.key(ACCOUNT, "user-42", KeyKind::Collections);
    let purchase_key = env.emulator.key(ACCOUNT, "user-42", KeyKind::Purchase);

    let answer = client.verify(verify("9NBLGGH42CFD", &key, &[], "user-42")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!((purchase.store.as_str(), purchase.order_id.as_str()), (STORE, "0b6e1c3a-1f2d-4e5b-8a9c-0d1e2f3a4b01"));
    assert_eq!(
        (purchase.kind(), purchase.environment()),
        (pb::ProductKind::NonConsumable, pb::Environment::Production)
    );
    assert_eq!(purchase.account_binding, "user-42");
    for (product, user, verdict) in [
        ("9NBLGGH42CFD", "user-7", Verdict::UserMismatch),
        ("9NNEVERSOLD1", "", Verdict::NotFound),
        ("9NREFUNDED01", "", Verdict::Refunded),
        ("9NOLDPASS001", "", Verdict::Expired),
        ("9NBANNED0001", "", Verdict::Invalid),
    ] {
        let answer = client.verify(verify(product, &key, &[], user)).await.unwrap().into_inner();
        assert_eq!(answer.verdict(), verdict, "{product}: {}", answer.verdict_reason);
    }
    let pass =
        client.verify(verify("9NVIPPASS001", &key, &[("purchase_key", &purchase_key)], "")).await.unwrap().into_inner();
    assert_eq!(pass.verdict(), Verdict::Valid);
    assert_eq!(pass.purchase.unwrap().expiry_time.unwrap().seconds, 1_893_715_200, "the recurrence's grace end");
    assert_eq!(env.emulator.count("recurrences.query"), 1);

    assert!(!client.consume(consume("9NCOINS00100", &key, &[])).await.unwrap().into_inner().already_consumed);
    assert!(client.consume(consume("9NCOINS00100", &key, &[])).await.unwrap().into_inner().already_consumed);
    assert_eq!(env.emulator.item(ACCOUNT, "9NCOINS00100").unwrap()["quantity"], 0);
    let gems = [("tracking_id", "1b3afaa8-2c4d-4e5f-8a9b-0c1d2e3f4a5b"), ("quantity", "2")];
    client.consume(consume("9NGEMS000500", &key, &gems)).await.unwrap();
    client.consume(consume("9NGEMS000500", &key, &gems)).await.unwrap();
    assert_eq!(env.emulator.item(ACCOUNT, "9NGEMS000500").unwrap()["quantity"], 3, "one consume of 2, replayed");

    // Errors carry the store's ErrorInfo.
    let too_many = [("tracking_id", "2b3afaa8-2c4d-4e5f-8a9b-0c1d2e3f4a5b"), ("quantity", "9")];
    let status = client.consume(consume("9NGEMS000500", &key, &too_many)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("InsufficientBalance", STORE));
    assert!(info.metadata.contains_key("ms_correlation_id"), "{:?}", info.metadata);
    let status = client
        .verify(verify("9NBLGGH42CFD", &key, &[("collections_root", "http://169.254.169.254")], ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_info(&status), Some(("UNKNOWN_STORE_PARAMETER".into(), STORE.into())));
    let status = client
        .acknowledge(pb::AcknowledgeRequest {
            store: STORE.into(),
            app_id: APP.into(),
            product_id: "9NBLGGH42CFD".into(),
            proof: proof(&key, &[]),
            developer_payload: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "microsoft has no acknowledge: {status:?}");
    assert_eq!(error_info(&status), Some(("OPERATION_NOT_SUPPORTED".into(), "iapd".into())));
    let mut other = verify("9NBLGGH42CFD", &key, &[], "");
    other.app_id = "9NOTHERAPP01".into();
    let status = client.verify(other).await.unwrap_err();
    assert_eq!(error_info(&status), Some(("PACKAGE_NOT_ALLOWED".into(), STORE.into())));

    let ids = list_product_ids(&mut client, STORE, APP, 3).await;
    assert_eq!(ids, ["9NBLGGH42CFD", "9NCOINS00100", "9NGEMS000500", "9NVIPPASS001"]);
    let stores = client.list_stores(pb::ListStoresRequest {}).await.unwrap().into_inner().stores;
    let store = stores.iter().find(|store| store.id == STORE).expect("ListStores shows the store");
    assert_eq!((store.plugin_name.as_str(), store.display_name.as_str()), ("microsoft_store", "Microsoft Store"));
    assert_eq!(store.proof_kinds, ["purchase_token"]);
    let capabilities: Vec<pb::Capability> =
        store.capabilities.iter().map(|c| pb::Capability::try_from(*c).unwrap()).collect();
    assert_eq!(capabilities, [pb::Capability::Verify, pb::Capability::Consume, pb::Capability::ListItems]);
    assert_eq!(env.emulator.count("token"), 1, "one entra token served every call");

    // No secret of the run in anything the server logged: the client secret,
    // the entra tokens, the users' store id keys.
    let logs = env.server.logs();
    assert!(logs.contains("microsoft consumed 9NGEMS000500"), "the plugin's debug lines are in the scan:\n{logs}");
    let mut secrets = env.emulator.live_tokens();
    assert!(!secrets.is_empty());
    secrets.extend([SECRET.to_owned(), key.clone(), purchase_key.clone()]);
    for secret in &secrets {
        // A secret's tail is as telling as all of it.
        let tail = &secret[secret.len().saturating_sub(24)..];
        assert!(!logs.contains(tail), "a secret reached the logs:\n{logs}");
    }
}

#[test]
fn iapd_plugins_shows_the_store() {
    let env = start();
    let (ok, stdout, stderr) = run_iapd(&["--config", env.config.to_str().unwrap(), "plugins"], &[]);
    assert!(ok, "{stderr}");
    for expected in ["microsoft_store", "verify, consume, list_items", "libiapd_plugin_microsoft_store"] {
        assert!(stdout.contains(expected), "`{expected}` missing:\n{stdout}");
    }
    let (ok, _, stderr) = run_iapd(&["--config", env.config.to_str().unwrap(), "check-config"], &[]);
    assert!(ok, "{stderr}");
}

#[test]
fn the_readme_walkthrough_works_against_the_emulator() {
    let env = start();
    let lines = crate::grpcurl::readme_lines(|line| {
        (line.starts_with("grpcurl ") && line.contains("localhost:50061"))
            || (line.starts_with("curl ") && line.contains("127.0.0.1:8101"))
    });
    assert!(lines.len() >= 12, "the README lost its Microsoft Store walkthrough: {lines:?}");
    let outputs = crate::grpcurl::run_all(&lines, |line| {
        line.replace("localhost:50061", &env.server.address.to_string())
            .replace("127.0.0.1:8101", &env.running.address.to_string())
    });
    let all = outputs.join("\n");
    for expected in [
        "\"verdict\": \"VERDICT_VALID\"",
        "\"verdict\": \"VERDICT_USER_MISMATCH\"",
        "\"verdict\": \"VERDICT_NOT_FOUND\"",
        "\"verdict\": \"VERDICT_REFUNDED\"",
        "\"alreadyConsumed\": true",
        "\"productId\": \"9NCOINS00100\"",
        "\"domain\":\"microsoft-store\"",
        "\"reason\":\"NOT_CONSUMABLE\"",
        "\"reason\":\"UNKNOWN_STORE_PARAMETER\"",
        "\"reason\":\"OPERATION_NOT_SUPPORTED\"",
    ] {
        assert!(all.contains(expected), "`{expected}` missing from the walkthrough's output:\n{all}");
    }
    let stats: serde_json::Value = serde_json::from_str(outputs.last().unwrap()).unwrap();
    assert!(stats["requests"]["collections.query"].as_u64().unwrap() >= 8, "{stats}");
    assert_eq!(env.emulator.item(ACCOUNT, "9NCOINS00100").unwrap()["quantity"], 0, "the walkthrough consumed it");
    assert_eq!(env.emulator.count("token"), 1);
}
