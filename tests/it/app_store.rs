//! The App Store plugin loaded by the real `iapd` binary, talking HTTP to the
//! App Store emulator; and Apple's own Python library checking the emulator.

use std::process::Command;
use std::sync::Arc;

use iapd::pb::{self, Verdict, purchase_proof::Proof};
use iapd_emulators::app_store::AppStore;
use tonic::Code;

use crate::support::{Sandbox, Server, built_plugin, error_info, root, tool};

const BUNDLE: &str = "com.example.ios";

struct Env {
    emulator: Arc<AppStore>,
    running: iapd_emulators::Running,
    _sandbox: Sandbox,
    server: Server,
}

fn start() -> Env {
    let emulator = Arc::new(AppStore::with_default_state());
    let running = iapd_emulators::spawn(emulator.clone()).unwrap();
    let sandbox = Sandbox::new();
    let file = libloading::library_filename("iapd_plugin_app_store");
    sandbox.add_plugin(&built_plugin("iapd-plugin-app-store"), &file.to_string_lossy());
    let url = running.url();
    let key = root().join("tests/fixtures/app-store/SubscriptionKey_EMULATOR01.p8");
    let stores = format!(
        r#"
[stores.apple]
plugin = "iapd_plugin_app_store"
allowed_origins = ["{url}"]

[stores.apple.config]
packages = ["{BUNDLE}"]
allow_sandbox = true
trusted_roots = ['''{root}''']
issuer_id = "57246542-96fe-1a63-e053-0824d011072a"
key_id = "EMULATOR01"
api_root = "{url}"
sandbox_api_root = "{url}/sandbox"
receipt_url = "{url}/verifyReceipt"
sandbox_receipt_url = "{url}/sandbox/verifyReceipt"
catalog = [{{ product_id = "coins_100", kind = "consumable", title = "100 coins", currency = "USD", price_micros = 990000 }}]

[stores.apple.secrets]
private_key = {{ file = "{key}" }}
shared_secret = {{ value = "demo-shared-secret" }}
"#,
        root = emulator.root_pem(),
        key = key.display(),
    );
    let server = Server::start(Some(&sandbox.write_config(&stores)), &[]);
    Env { emulator, running, _sandbox: sandbox, server }
}

fn verify(product: &str, proof: Proof, user_id: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: "apple".into(),
        app_id: BUNDLE.into(),
        product_id: product.into(),
        proof: Some(pb::PurchaseProof { proof: Some(proof), store_parameters: Default::default() }),
        user_id: user_id.into(),
    }
}

#[tokio::test]
async fn every_proof_through_iapd() {
    let env = start();
    let mut client = env.server.client().await;
    let jws = env.emulator.signed_transaction("2000000000000001").unwrap();
    let answer =
        client.verify(verify("coins_100", Proof::SignedTransaction(jws.clone()), "")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    assert_eq!(answer.purchase.unwrap().transaction_id, "2000000000000001");

    let mismatch =
        client.verify(verify("coins_100", Proof::SignedTransaction(jws), "someone-else")).await.unwrap().into_inner();
    assert_eq!(mismatch.verdict(), Verdict::UserMismatch);

    let by_id = client
        .verify(verify("coins_100", Proof::TransactionId("2000000000000004".into()), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.verdict(), Verdict::Valid, "{}", by_id.verdict_reason);
    assert_eq!(by_id.purchase.unwrap().environment(), pb::Environment::Sandbox, "found in the sandbox");

    let receipt = client
        .verify(verify("coins_100", Proof::Receipt("ZW11bGF0b3ItcmVjZWlwdC1zYW5kYm94".into()), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.verdict(), Verdict::Valid, "{}", receipt.verdict_reason);
    assert_eq!(env.emulator.count("sandbox.verifyReceipt"), 1, "21007 sent it to the sandbox");

    let refunded = client
        .verify(verify("coins_100", Proof::TransactionId("2000000000000003".into()), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refunded.verdict(), Verdict::Refunded);

    client
        .acknowledge(pb::AcknowledgeRequest {
            store: "apple".into(),
            app_id: BUNDLE.into(),
            product_id: "remove_ads".into(),
            proof: Some(pb::PurchaseProof {
                proof: Some(Proof::TransactionId("2000000000000002".into())),
                store_parameters: Default::default(),
            }),
            developer_payload: String::new(),
        })
        .await
        .unwrap();
    assert!(env.emulator.finished("2000000000000002"));

    let status = client
        .consume(pb::ConsumeRequest {
            store: "apple".into(),
            app_id: BUNDLE.into(),
            product_id: "coins_100".into(),
            proof: Some(pb::PurchaseProof {
                proof: Some(Proof::TransactionId("2000000000000001".into())),
                store_parameters: Default::default(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "apple has no server-side consume: {status:?}");
    assert_eq!(error_info(&status).unwrap().0, "OPERATION_NOT_SUPPORTED");

    let stores = client.list_stores(pb::ListStoresRequest::default()).await.unwrap().into_inner().stores;
    let apple = stores.iter().find(|store| store.id == "apple").unwrap();
    assert_eq!(apple.proof_kinds, ["signed_transaction", "transaction_id", "receipt"]);
}

#[tokio::test]
async fn apples_python_library_accepts_the_emulator() {
    let env = start();
    let root_file = env._sandbox.plugins_dir().join("emulator-root.pem");
    std::fs::write(&root_file, env.emulator.root_pem()).unwrap();
    let signed: Vec<String> = ["2000000000000001", "2000000000000006"]
        .iter()
        .map(|id| env.emulator.signed_transaction(id).unwrap())
        .collect();
    let output = Command::new(tool("python"))
        .arg(root().join("tests/fixtures/python/app_store_client.py"))
        .arg(env.running.url())
        .arg(&root_file)
        .arg(root().join("plugins/app-store/src/AppleRootCA-G3.pem"))
        .arg(root().join("tests/fixtures/app-store/SubscriptionKey_EMULATOR01.p8"))
        .args(&signed)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "Apple's library refused the emulator (tests/run.sh installs app-store-server-library):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(python["verified"][0]["transactionId"], "2000000000000001");
    assert_eq!(python["verified"][1]["productId"], "premium_monthly");
    assert_eq!(python["api_transaction"]["type"], "Non-Consumable");
    assert_eq!(python["api_not_found"]["errorCode"], 4040010);
    assert_eq!(python["foreign_root"], "VERIFICATION_FAILURE", "a chain to another root: {python}");
    assert_eq!(env.emulator.count("transactions.get"), 2, "the library's own jwt was accepted");
}
