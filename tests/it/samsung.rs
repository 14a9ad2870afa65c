//! The Samsung plugin loaded by the real `iapd` binary, talking HTTP to the
//! Samsung emulator with the config of `tests/fixtures/samsung`, and the
//! README's Samsung walkthrough run as written.

use std::collections::HashMap;
use std::sync::Arc;

use iapd::pb::{self, Verdict};
use iapd_emulators::samsung::Samsung;
use tonic::Code;

use crate::support::{Sandbox, Server, built_plugin, error_info, list_product_ids, root, tool};

const PACKAGE: &str = "com.example.galaxy";
const TICKET: &str = "2bf8fe4fdef1dae29974e5400c106bfced6a650793efa3ce68a79e026481193d";
const TICKET_PARAMS: [(&str, &str); 5] = [
    ("param1", "abe87f635bf41aae0178b5384cbc09c1083026e93e44bd0efd69e66a9cc2ace6"),
    ("param2", "d49e3385783366868999e17bae3410597c0b6bcf69a92cd74cab17454cf9d4d6"),
    ("param3", "af8050beb9c0f63c773fb86f7218bb6cbd6cf78a5cdff281c2e22a229f9a1485"),
    ("param4", "1"),
    ("param5", "I20131115RU00001243"),
];

/// The emulator on a free port and iapd configured as
/// `tests/fixtures/samsung/iapd.toml` says, pointed at that port.
struct SamsungEnv {
    emulator: Arc<Samsung>,
    running: iapd_emulators::Running,
    server: Server,
    _sandbox: Sandbox,
}

fn start() -> SamsungEnv {
    let emulator = Arc::new(Samsung::with_default_state());
    let running = iapd_emulators::spawn(emulator.clone()).unwrap();
    let sandbox = Sandbox::new();
    sandbox.add_plugin(
        &built_plugin("iapd-plugin-samsung"),
        &libloading::library_filename("iapd_plugin_samsung").to_string_lossy(),
    );
    let key = root().join("tests/fixtures/samsung/service-account.pem");
    let stores = std::fs::read_to_string(root().join("tests/fixtures/samsung/iapd.toml"))
        .unwrap()
        .replace("127.0.0.1:8097", &running.address.to_string())
        .replace("tests/fixtures/samsung/service-account.pem", &key.display().to_string());
    let server = Server::start(Some(&sandbox.write_config(&stores)), &[]);
    SamsungEnv { emulator, running, server, _sandbox: sandbox }
}

fn proof(purchase_id: &str, params: &[(&str, &str)]) -> Option<pb::PurchaseProof> {
    let store_parameters: HashMap<String, String> =
        params.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
    Some(pb::PurchaseProof {
        proof: Some(pb::purchase_proof::Proof::PurchaseId(purchase_id.to_owned())),
        store_parameters: store_parameters.into_iter().collect(),
    })
}

fn verify(product: &str, purchase_id: &str, user: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: "samsung".into(),
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: proof(purchase_id, &[]),
        user_id: user.into(),
    }
}

#[tokio::test]
async fn verify_acknowledge_consume_and_catalog_through_iapd() {
    let env = start();
    let mut client = env.server.client().await;

    let answer = client.verify(verify("coins_100", "sg-purchased", "")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!((purchase.store.as_str(), purchase.order_id.as_str()), ("samsung", "S20260101US00000001"));
    assert_eq!(purchase.purchase_time.unwrap().seconds, 1_767_225_600);
    assert_eq!((purchase.kind(), purchase.environment()), (pb::ProductKind::Consumable, pb::Environment::Production));
    assert_eq!(purchase.consumption_state(), pb::ConsumptionState::NotConsumed);
    let faked = client.verify(verify("coins_100", "never-sold", "")).await.unwrap().into_inner();
    assert_eq!(faked.verdict(), Verdict::NotFound);
    let test = client.verify(verify("coins_100", "sg-test", "")).await.unwrap().into_inner();
    assert_eq!(test.verdict(), Verdict::Invalid, "test purchases are refused by default");
    let canceled = client.verify(verify("coins_100", "sg-canceled", "")).await.unwrap().into_inner();
    assert_eq!(canceled.verdict(), Verdict::Canceled);
    let mismatch = client.verify(verify("coins_500", "sg-bound", "user-7")).await.unwrap().into_inner();
    assert_eq!(mismatch.verdict(), Verdict::UserMismatch);

    let tizen = |params: &[(&str, &str)]| pb::VerifyRequest {
        store: "samsung".into(),
        app_id: "100000031234".into(),
        product_id: "000000000072".into(),
        proof: proof(TICKET, params),
        user_id: String::new(),
    };
    let answer = client.verify(tizen(&TICKET_PARAMS)).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    assert_eq!(answer.purchase.unwrap().transaction_id, "TPMTID20131115RU00001243");
    let mut forged = TICKET_PARAMS;
    forged[1].1 = "00";
    assert_eq!(client.verify(tizen(&forged)).await.unwrap().into_inner().verdict(), Verdict::NotFound);
    let mut redirected = TICKET_PARAMS.to_vec();
    redirected.push(("verify_url", "http://169.254.169.254/"));
    let status = client.verify(tizen(&redirected)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_info(&status), Some(("UNKNOWN_STORE_PARAMETER".into(), "samsung".into())));

    let acknowledge = pb::AcknowledgeRequest {
        store: "samsung".into(),
        app_id: PACKAGE.into(),
        product_id: "remove_ads".into(),
        proof: proof("sg-remove-ads", &[]),
        developer_payload: String::new(),
    };
    assert!(!client.acknowledge(acknowledge.clone()).await.unwrap().into_inner().already_acknowledged);
    assert!(client.acknowledge(acknowledge).await.unwrap().into_inner().already_acknowledged);
    let consume = |purchase_id: &str| pb::ConsumeRequest {
        store: "samsung".into(),
        app_id: PACKAGE.into(),
        product_id: "coins_100".into(),
        proof: proof(purchase_id, &[]),
    };
    assert!(!client.consume(consume("sg-purchased")).await.unwrap().into_inner().already_consumed);
    assert!(client.consume(consume("sg-purchased")).await.unwrap().into_inner().already_consumed);
    assert_eq!(env.emulator.receipt("sg-purchased").unwrap()["consumeYN"], "Y");
    let status = client.consume(consume("sg-remove-ads")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_info(&status), Some(("WRONG_PRODUCT_TYPE".into(), "samsung".into())));
    let status = client.consume(consume("never-sold")).await.unwrap_err();
    assert_eq!((status.code(), error_info(&status).unwrap().0.as_str()), (Code::NotFound, "ORDER_NOT_FOUND"));

    let ids = list_product_ids(&mut client, "samsung", PACKAGE, 3).await;
    assert_eq!(
        ids,
        [
            "coins_100",
            "remove_ads",
            "coins_500",
            "level_pack",
            "coins_1000",
            "theme_dark",
            "starter_bundle",
            "mystery",
            "vip_monthly"
        ]
    );
    assert_eq!(env.emulator.count("token"), 1, "one access token served every call");

    let mut other = verify("coins_100", "sg-purchased", "");
    other.app_id = "com.other.app".into();
    let status = client.verify(other).await.unwrap_err();
    assert_eq!(error_info(&status), Some(("PACKAGE_NOT_ALLOWED".into(), "samsung".into())));
}

#[test]
fn the_readme_walkthrough_works_against_the_emulator() {
    let env = start();
    let lines = crate::grpcurl::readme_lines(|line| {
        (line.starts_with("grpcurl ") && line.contains("localhost:50054"))
            || (line.starts_with("curl ") && line.contains("127.0.0.1:8097"))
    });
    assert!(lines.len() >= 8, "the README lost its Samsung walkthrough: {lines:?}");
    let outputs = crate::grpcurl::run_all(&lines, |line| {
        line.replace("localhost:50054", &env.server.address.to_string())
            .replace("127.0.0.1:8097", &env.running.address.to_string())
    });
    let all = outputs.join("\n");
    for expected in [
        "\"verdict\": \"VERDICT_VALID\"",
        "\"verdict\": \"VERDICT_NOT_FOUND\"",
        "\"verdict\": \"VERDICT_INVALID\"",
        "\"alreadyConsumed\": true",
        "\"productId\": \"vip_monthly\"",
        "\"domain\":\"samsung\"",
        "\"reason\":\"WRONG_PRODUCT_TYPE\"",
        "\"reason\":\"UNKNOWN_STORE_PARAMETER\"",
    ] {
        assert!(all.contains(expected), "`{expected}` missing from the walkthrough's output:\n{all}");
    }
    let stats: serde_json::Value = serde_json::from_str(outputs.last().unwrap()).unwrap();
    assert!(stats["requests"]["receipt"].as_u64().unwrap() >= 4, "{stats}");
    assert_eq!(env.emulator.count("token"), 1);
}

#[tokio::test]
async fn both_sides_of_a_verify_send_small_writes_at_once() {
    // With Nagle's algorithm on either connection, the last small write of a
    // request or response waits for the peer's delayed ACK: 40 ms a call.
    // The options are read off the running server's own sockets.
    let env = start();
    let mut client = env.server.client().await;
    let answer = client.verify(verify("coins_100", "sg-purchased", "")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid);
    let output = std::process::Command::new(tool("python"))
        .arg(root().join("tests/fixtures/python/tcp_options.py"))
        .arg(env.server.pid().to_string())
        .output()
        .expect("run python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let connections: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let port = |address: &serde_json::Value| address[1].as_u64().unwrap();
    let accepted: Vec<_> =
        connections.iter().filter(|c| port(&c["local"]) == u64::from(env.server.address.port())).collect();
    let to_store: Vec<_> =
        connections.iter().filter(|c| port(&c["peer"]) == u64::from(env.running.address.port())).collect();
    assert!(!accepted.is_empty() && !to_store.is_empty(), "both connections are open: {connections:?}");
    for connection in accepted.iter().chain(&to_store) {
        assert_eq!(connection["nodelay"], true, "TCP_NODELAY: {connection}");
    }
}
