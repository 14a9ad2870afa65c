#![allow(clippy::unwrap_used)]

//! The store against the App Store emulator, in-process through the kit.

use std::sync::Arc;

use iapd_emulators::Fault;
use iapd_emulators::app_store::{AppStore as Emulator, ChainOptions, SigningChain};
use iapd_sdk_plugin::kit::{self, Kit};
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict};
use serde_json::{Value, json};

use crate::AppStore;

const ORIGIN: &str = "http://apple.test";
const BUNDLE: &str = "com.example.ios";
/// 2026-03-01, after the default state's expired subscription.
const NOW: i64 = 1_772_323_200_000;
const PRIVATE_KEY: &str = include_str!("../../../tests/fixtures/app-store/SubscriptionKey_EMULATOR01.p8");
const ACCOUNT: &str = "7e3fb20b-4cdb-47cc-936d-99d65f608138";

struct Setup {
    emulator: Arc<Emulator>,
    kit: Kit<AppStore>,
}

fn config(emulator: &Emulator) -> Value {
    json!({
        "packages": [BUNDLE],
        "trusted_roots": [emulator.root_pem()],
        "issuer_id": "57246542-96fe-1a63-e053-0824d011072a",
        "key_id": "EMULATOR01",
        "api_root": ORIGIN,
        "sandbox_api_root": format!("{ORIGIN}/sandbox"),
        "receipt_url": format!("{ORIGIN}/verifyReceipt"),
        "sandbox_receipt_url": format!("{ORIGIN}/sandbox/verifyReceipt"),
        "catalog": [
            {"product_id": "coins_100", "kind": "consumable", "title": "100 coins", "currency": "USD", "price_micros": 990_000},
            {"product_id": "remove_ads", "kind": "non_consumable", "title": "Remove ads"},
            {"product_id": "premium_monthly", "kind": "subscription"},
        ],
        "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 40},
    })
}

fn setup_with(edit: impl FnOnce(&mut Value)) -> Setup {
    let emulator = Arc::new(Emulator::with_default_state());
    emulator.set_clock(NOW);
    let mut config = config(&emulator);
    edit(&mut config);
    let kit = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config.to_string())
        .secret("private_key", PRIVATE_KEY)
        .secret("shared_secret", "demo-shared-secret")
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        .build::<AppStore>()
        .unwrap();
    Setup { emulator, kit }
}

fn setup() -> Setup {
    setup_with(|_| {})
}

fn proof(kind: proto::proof::Kind) -> Option<proto::Proof> {
    Some(proto::Proof { kind: Some(kind), store_parameters: Default::default() })
}

fn request(product: &str, kind: proto::proof::Kind) -> proto::VerifyRequest {
    proto::VerifyRequest {
        app_id: BUNDLE.into(),
        product_id: product.into(),
        proof: proof(kind),
        user_id: String::new(),
    }
}

fn signed(jws: String) -> proto::proof::Kind {
    proto::proof::Kind::SignedTransaction(jws)
}

fn transaction(product: &str, environment: &str) -> Value {
    json!({
        "transactionId": "2000000000000099",
        "originalTransactionId": "2000000000000099",
        "bundleId": BUNDLE,
        "productId": product,
        "purchaseDate": NOW - 60_000,
        "quantity": 1,
        "type": "Consumable",
        "inAppOwnershipType": "PURCHASED",
        "environment": environment,
        "storefront": "USA",
        "signedDate": NOW,
    })
}

#[test]
fn a_signed_transaction_is_verified_offline() {
    let setup = setup();
    let jws = setup.emulator.signed_transaction("2000000000000001").unwrap();
    let answer = setup.kit.verify(request("coins_100", signed(jws))).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!(purchase.state(), PurchaseState::Purchased);
    assert_eq!(purchase.transaction_id, "2000000000000001");
    assert_eq!(purchase.kind(), ProductKind::Consumable);
    assert_eq!(purchase.environment(), Environment::Production);
    assert_eq!(purchase.consumption_state(), ConsumptionState::NotApplicable);
    assert_eq!(purchase.purchase_time_unix_millis, 1_767_225_600_000);
    assert_eq!(purchase.region_code, "US", "apple's storefront USA, as alpha-2");
    assert!(purchase.raw_store_response.contains("\"storefront\":\"USA\""), "{}", purchase.raw_store_response);
    assert_eq!(purchase.account_binding, ACCOUNT);
    assert!(purchase.raw_store_response.contains("\"signedDate\""));
    assert!(setup.kit.requests().is_empty(), "offline: nothing is sent");
}

/// Every way a signed transaction can be wrong, each refused with its own reason.
#[test]
fn a_flawed_signed_transaction_is_invalid_with_the_exact_reason() {
    let setup = setup();
    let good = setup.emulator.sign(&transaction("coins_100", "Production"));
    let foreign = SigningChain::generate();
    let no_leaf_marker = SigningChain::with_options(&ChainOptions { leaf_marker: false, ..ChainOptions::default() });
    let no_intermediate_marker =
        SigningChain::with_options(&ChainOptions { intermediate_marker: false, ..ChainOptions::default() });
    // The leaf expired in 2025, before the transaction was signed.
    let expired = SigningChain::with_options(&ChainOptions {
        leaf_validity: (1_577_836_800, 1_735_689_600),
        ..ChainOptions::default()
    });
    let mut other_bundle = transaction("coins_100", "Production");
    other_bundle["bundleId"] = json!("com.example.other");
    let tampered = {
        let other = setup.emulator.sign(&transaction("coins_500", "Production"));
        let parts: Vec<&str> = good.split('.').collect();
        let other_payload = other.split('.').nth(1).unwrap();
        format!("{}.{other_payload}.{}", parts[0], parts[2])
    };
    let hs256 = {
        let parts: Vec<&str> = good.split('.').collect();
        let header = base64_url(&json!({"alg": "HS256", "x5c": []}).to_string());
        format!("{header}.{}.{}", parts[1], parts[2])
    };
    let two_certificates = {
        let chain = setup.emulator_chain_x5c();
        setup
            .emulator
            .sign_with_header(&json!({"alg": "ES256", "x5c": &chain[..2]}), &transaction("coins_100", "Production"))
    };
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        ("wrong bundle id", setup.emulator.sign(&other_bundle), None, "bundle \"com.example.other\""),
        ("unknown root", foreign.sign(&transaction("coins_100", "Production")), None, "CHAIN_UNTRUSTED"),
        (
            "missing leaf marker",
            no_leaf_marker.sign(&transaction("coins_100", "Production")),
            Some(no_leaf_marker.root_pem()),
            "leaf certificate lacks apple's marker extension 1.2.840.113635.100.6.11.1",
        ),
        (
            "missing intermediate marker",
            no_intermediate_marker.sign(&transaction("coins_100", "Production")),
            Some(no_intermediate_marker.root_pem()),
            "intermediate certificate lacks apple's marker extension 1.2.840.113635.100.6.2.1",
        ),
        (
            "expired leaf",
            expired.sign(&transaction("coins_100", "Production")),
            Some(expired.root_pem()),
            "the leaf certificate is not valid at the signed date",
        ),
        ("tampered payload", tampered, None, "SIGNATURE_INVALID"),
        ("alg other than es256", hs256, None, "header alg is \"HS256\""),
        ("truncated jws", good[..good.rfind('.').unwrap()].to_owned(), None, "expected three dot-separated parts"),
        ("truncated signature", good[..good.len() - 10].to_owned(), None, "SIGNATURE_INVALID"),
        ("two certificates", two_certificates, None, "holds 2 certificates"),
        (
            "sandbox in production",
            setup.emulator.sign(&transaction("coins_100", "Sandbox")),
            None,
            "a sandbox purchase, refused in production",
        ),
        ("xcode data", setup.emulator.sign(&transaction("coins_100", "Xcode")), None, "\"Xcode\" cannot be trusted"),
        ("another product", good.clone(), None, "product \"coins_100\", not \"coins_500\""),
    ];
    for (case, jws, root, expected) in cases {
        let setup = match root {
            Some(root) => setup_with(|config| config["trusted_roots"] = json!([root])),
            None => setup_with(|config| config["trusted_roots"] = json!([setup.emulator.root_pem()])),
        };
        let product = if case == "another product" { "coins_500" } else { "coins_100" };
        let answer = setup.kit.verify(request(product, signed(jws))).unwrap();
        assert_eq!(answer.verdict(), Verdict::Invalid, "{case}: {}", answer.verdict_reason);
        assert!(answer.verdict_reason.contains(expected), "{case}: {:?} lacks {expected:?}", answer.verdict_reason);
    }
}

impl Setup {
    fn emulator_chain_x5c(&self) -> Vec<String> {
        let jws = self.emulator.sign(&json!({}));
        let header = jws.split('.').next().unwrap();
        let header: Value = serde_json::from_slice(&base64_url_decode(header)).unwrap();
        serde_json::from_value(header["x5c"].clone()).unwrap()
    }
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn base64_url_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).unwrap()
}

#[test]
fn the_sandbox_is_accepted_when_allowed_and_by_a_sandbox_store() {
    for edit in [json!({"allow_sandbox": true}), json!({"environment": "sandbox"})] {
        let setup = setup_with(|config| {
            for (key, value) in edit.as_object().unwrap() {
                config[key] = value.clone();
            }
        });
        let jws = setup.emulator.sign(&transaction("coins_100", "Sandbox"));
        let answer = setup.kit.verify(request("coins_100", signed(jws))).unwrap();
        assert_eq!(answer.verdict(), Verdict::Valid, "{edit}: {}", answer.verdict_reason);
        assert_eq!(answer.purchase.unwrap().environment(), Environment::Sandbox);
    }
    let sandbox_store = setup_with(|config| config["environment"] = json!("sandbox"));
    let jws = sandbox_store.emulator.sign(&transaction("coins_100", "Production"));
    let answer = sandbox_store.kit.verify(request("coins_100", signed(jws))).unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert!(answer.verdict_reason.contains("a production purchase"), "{}", answer.verdict_reason);
}

#[test]
fn revocation_expiry_and_account_binding_decide_the_verdict() {
    let setup = setup();
    let verdict = |id: &str, product: &str, user: &str| {
        let jws = setup.emulator.signed_transaction(id).unwrap();
        let mut request = request(product, signed(jws));
        request.user_id = user.into();
        setup.kit.verify(request).unwrap()
    };
    let refunded = verdict("2000000000000003", "coins_100", "");
    assert_eq!(refunded.verdict(), Verdict::Refunded);
    assert!(refunded.verdict_reason.contains("revocationReason 0"), "{}", refunded.verdict_reason);
    assert_eq!(refunded.purchase.unwrap().state(), PurchaseState::Refunded);

    let expired = verdict("2000000000000005", "premium_monthly", "");
    assert_eq!(expired.verdict(), Verdict::Expired, "{}", expired.verdict_reason);
    assert_eq!(expired.purchase.unwrap().kind(), ProductKind::Subscription);
    assert_eq!(verdict("2000000000000006", "premium_monthly", "").verdict(), Verdict::Valid);

    assert_eq!(verdict("2000000000000001", "coins_100", &ACCOUNT.to_uppercase()).verdict(), Verdict::Valid);
    let other_user = verdict("2000000000000001", "coins_100", "0f0f0f0f-0000-4000-8000-000000000000");
    assert_eq!(other_user.verdict(), Verdict::UserMismatch);
    assert!(other_user.verdict_reason.contains(ACCOUNT), "{}", other_user.verdict_reason);
}

#[test]
fn a_cached_chain_is_still_checked_against_each_signed_date() {
    let chain = SigningChain::with_options(&ChainOptions {
        leaf_validity: (1_577_836_800, 1_798_761_600), // to 2027-01-01
        ..ChainOptions::default()
    });
    let setup = setup_with(|config| config["trusted_roots"] = json!([chain.root_pem()]));
    let first = setup.kit.verify(request("coins_100", signed(chain.sign(&transaction("coins_100", "Production")))));
    assert_eq!(first.unwrap().verdict(), Verdict::Valid);
    let mut later = transaction("coins_100", "Production");
    later["signedDate"] = json!(1_830_297_600_000i64); // 2028-01-01, after the leaf expired
    let answer = setup.kit.verify(request("coins_100", signed(chain.sign(&later)))).unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert!(answer.verdict_reason.contains("CERTIFICATE_NOT_VALID"), "{}", answer.verdict_reason);
}

#[test]
fn a_transaction_id_is_looked_up_in_production_then_the_sandbox() {
    let setup = setup();
    let id = |id: &str| proto::proof::Kind::TransactionId(id.into());
    let answer = setup.kit.verify(request("coins_100", id("2000000000000001"))).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    assert_eq!(answer.purchase.unwrap().transaction_id, "2000000000000001");
    let first = &setup.kit.requests()[0];
    assert!(first.header_value("authorization").unwrap().starts_with("Bearer "), "a jwt is sent");

    // Without allow_sandbox the sandbox is not asked: its answer could not be accepted.
    let answer = setup.kit.verify(request("coins_100", id("2000000000000004"))).unwrap();
    assert_eq!(answer.verdict(), Verdict::NotFound, "{}", answer.verdict_reason);
    assert_eq!(setup.emulator.count("sandbox.transactions.get"), 0);

    let allowing = setup_with(|config| config["allow_sandbox"] = json!(true));
    let answer = allowing.kit.verify(request("coins_100", id("2000000000000004"))).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    assert_eq!(answer.purchase.unwrap().environment(), Environment::Sandbox);
    assert_eq!(
        (allowing.emulator.count("transactions.get"), allowing.emulator.count("sandbox.transactions.get")),
        (1, 1)
    );
    let unknown = allowing.kit.verify(request("coins_100", id("2999999999999999"))).unwrap();
    assert_eq!(unknown.verdict(), Verdict::NotFound);
    assert!(unknown.verdict_reason.contains("production and the sandbox"), "{}", unknown.verdict_reason);

    let malformed = setup.kit.verify(request("coins_100", id("not-a-number"))).unwrap_err();
    assert_eq!((malformed.code(), malformed.reason()), (Code::InvalidArgument, "4000006"));
}

#[test]
fn the_api_token_is_reused_refreshed_after_a_401_and_faults_are_retried() {
    let setup = setup();
    let id = proto::proof::Kind::TransactionId("2000000000000002".into());
    setup.kit.verify(request("remove_ads", id.clone())).unwrap();
    setup.kit.verify(request("remove_ads", id.clone())).unwrap();
    let tokens: Vec<String> =
        setup.kit.requests().iter().map(|request| request.header_value("authorization").unwrap().to_owned()).collect();
    assert_eq!(tokens[0], tokens[1], "one jwt for both calls");

    setup.emulator.inject(Fault::answering("transactions.get", 401, ""));
    assert_eq!(setup.kit.verify(request("remove_ads", id.clone())).unwrap().verdict(), Verdict::Valid);

    let mut busy = Fault::answering("transactions.get", 429, "4290000");
    busy.retry_after_secs = Some(0);
    setup.emulator.inject(busy);
    setup.emulator.inject(Fault::answering("transactions.get", 500, "5000001"));
    let before = setup.emulator.count("transactions.get");
    assert_eq!(setup.kit.verify(request("remove_ads", id.clone())).unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("transactions.get") - before, 3, "two faults, then the answer");

    let mut down = Fault::answering("transactions.get", 503, "");
    down.times = 10;
    setup.emulator.inject(down);
    let err = setup.kit.verify(request("remove_ads", id)).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.is_retryable());
}

#[test]
fn a_bad_api_key_is_unauthenticated_not_a_verdict() {
    let other_key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgevZzL1gdAFr88hb2\nOF/2NxApJCzGCEDdfSp6VQO30hyhRANCAAQRWz+jn65BtOMvdyHKcvjBeBSDZH2r\n1RTwjmYSi9R/zpBnuQ4EiMnCqfMPWiZqB4QdbAd0E7oH50VpuZ1P087G\n-----END PRIVATE KEY-----\n";
    let emulator = Arc::new(Emulator::with_default_state());
    emulator.set_clock(NOW);
    let kit = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config(&emulator).to_string())
        .secret("private_key", other_key)
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        .build::<AppStore>()
        .unwrap();
    let err =
        kit.verify(request("coins_100", proto::proof::Kind::TransactionId("2000000000000001".into()))).unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(emulator.count("transactions.get"), 2, "one retry with a fresh token");
}

#[test]
fn legacy_receipts_pick_the_latest_transaction_and_fall_back_to_the_sandbox() {
    let setup = setup_with(|config| config["allow_sandbox"] = json!(true));
    let receipt =
        |data: &str, product: &str| setup.kit.verify(request(product, proto::proof::Kind::Receipt(data.into())));
    let answer = receipt("ZW11bGF0b3ItcmVjZWlwdC1wcm9kdWN0aW9u", "coins_100").unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!(purchase.transaction_id, "1000000000000002", "the latest of two");
    assert_eq!(purchase.kind(), ProductKind::Consumable, "from the configured catalog");
    let sent: Value = serde_json::from_slice(setup.kit.requests()[0].body_bytes()).unwrap();
    assert_eq!(sent["password"], "demo-shared-secret");

    let sandbox = receipt("ZW11bGF0b3ItcmVjZWlwdC1zYW5kYm94", "coins_100").unwrap();
    assert_eq!(sandbox.verdict(), Verdict::Valid, "{}", sandbox.verdict_reason);
    assert_eq!(sandbox.purchase.unwrap().environment(), Environment::Sandbox);
    assert_eq!(setup.emulator.count("sandbox.verifyReceipt"), 1, "asked again after 21007");

    let refunded = receipt("ZW11bGF0b3ItcmVjZWlwdC1yZWZ1bmRlZA==", "coins_100").unwrap();
    assert_eq!(refunded.verdict(), Verdict::Refunded);
    assert!(refunded.verdict_reason.contains("issue in the app"), "{}", refunded.verdict_reason);
    assert_eq!(receipt("ZW11bGF0b3ItcmVjZWlwdC1wcm9kdWN0aW9u", "vip").unwrap().verdict(), Verdict::NotFound);
    assert_eq!(receipt("ZW11bGF0b3ItcmVjZWlwdC1hY2NvdW50LWdvbmU=", "coins_100").unwrap().verdict(), Verdict::NotFound);
    let forged = receipt("Zm9yZ2Vk", "coins_100").unwrap();
    assert_eq!(forged.verdict(), Verdict::Invalid);
    assert!(forged.verdict_reason.contains("status 21003"), "{}", forged.verdict_reason);
    assert_eq!(receipt("not base64!", "coins_100").unwrap().verdict(), Verdict::Invalid);

    let before = setup.emulator.count("verifyReceipt");
    let busy = receipt("ZW11bGF0b3ItcmVjZWlwdC1idXN5", "coins_100").unwrap_err();
    assert_eq!((busy.code(), busy.reason()), (Code::Unavailable, "21005"));
    assert_eq!(setup.emulator.count("verifyReceipt") - before, 4, "retried as max_attempts says");

    let production_only = setup_with(|_| {});
    let refused = production_only
        .kit
        .verify(request("coins_100", proto::proof::Kind::Receipt("ZW11bGF0b3ItcmVjZWlwdC1zYW5kYm94".into())))
        .unwrap();
    assert_eq!(refused.verdict(), Verdict::Invalid);
    assert!(refused.verdict_reason.contains("21007"), "{}", refused.verdict_reason);
    assert_eq!(production_only.emulator.count("sandbox.verifyReceipt"), 0);
}

#[test]
fn malformed_json_from_apple_is_malformed_response() {
    let setup = setup();
    let id = || request("remove_ads", proto::proof::Kind::TransactionId("2000000000000002".into()));
    let receipt = || request("coins_100", proto::proof::Kind::Receipt("ZW11bGF0b3ItcmVjZWlwdC1wcm9kdWN0aW9u".into()));
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("transactions.get", 200, "") });
    let transaction = setup.kit.verify(id()).unwrap_err();
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("verifyReceipt", 200, "") });
    let verify_receipt = setup.kit.verify(receipt()).unwrap_err();
    for (what, expected, err) in [
        ("transactions.get", "TransactionInfo", transaction),
        ("verifyReceipt", "VerifyReceiptResponse", verify_receipt),
    ] {
        assert_eq!(
            (err.code(), err.reason(), err.http_status()),
            (Code::Internal, "MALFORMED_RESPONSE", 200),
            "{what}: {err}"
        );
        assert!(err.message().contains(&format!("malformed json: expected {expected}")), "{what}: {err}");
    }
    // Not Apple's answer at all (a wrong `receipt_url`) is another matter.
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("verifyReceipt", 404, "") });
    let err = setup.kit.verify(receipt()).unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Internal, "UNEXPECTED_RESPONSE", 404), "{err}");
    // The faults caused them: the same calls succeed now.
    assert_eq!(setup.kit.verify(id()).unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.kit.verify(receipt()).unwrap().verdict(), Verdict::Valid);
}

#[test]
fn concurrent_identical_lookups_share_one_request_and_each_caller_is_judged_alone() {
    let setup = setup_with(|config| config["allow_sandbox"] = json!(true));
    // Get Transaction Info: the first answers slowly, so all twenty calls
    // overlap it. The transaction is bound to ACCOUNT: callers who say
    // another user get USER_MISMATCH from the same one answer.
    setup.emulator.inject(Fault { operation: Some("transactions.get".into()), delay_ms: 2_000, ..Fault::default() });
    let other_user = "00000000-0000-4000-8000-000000000000";
    let requests: Vec<proto::VerifyRequest> = (0..20)
        .map(|caller| proto::VerifyRequest {
            user_id: if caller % 2 == 0 { ACCOUNT.into() } else { other_user.into() },
            ..request("coins_100", proto::proof::Kind::TransactionId("2000000000000001".into()))
        })
        .collect();
    let started = setup.kit.now_unix_millis();
    for (caller, answer) in setup.kit.verify_concurrently(&requests).into_iter().enumerate() {
        let expected = if caller % 2 == 0 { Verdict::Valid } else { Verdict::UserMismatch };
        assert_eq!(answer.unwrap().verdict(), expected, "caller {caller}");
    }
    assert_eq!(setup.emulator.count("transactions.get"), 1, "20 identical Verifies, 1 request");
    assert!(setup.kit.now_unix_millis() - started >= 2_000, "all waited for the one slow answer");

    // A sandbox transaction: one production 4040010, one sandbox answer, for all.
    let sandbox = request("coins_100", proto::proof::Kind::TransactionId("2000000000000004".into()));
    for answer in setup.kit.verify_concurrently(&vec![sandbox; 20]) {
        assert_eq!(answer.unwrap().verdict(), Verdict::Valid);
    }
    assert_eq!((setup.emulator.count("transactions.get"), setup.emulator.count("sandbox.transactions.get")), (2, 1));

    // verifyReceipt, likewise; the product is judged per caller.
    setup.emulator.inject(Fault { operation: Some("verifyReceipt".into()), delay_ms: 2_000, ..Fault::default() });
    let receipts: Vec<proto::VerifyRequest> = (0..20)
        .map(|caller| {
            let product = if caller % 2 == 0 { "coins_100" } else { "vip" };
            request(product, proto::proof::Kind::Receipt("ZW11bGF0b3ItcmVjZWlwdC1wcm9kdWN0aW9u".into()))
        })
        .collect();
    for (caller, answer) in setup.kit.verify_concurrently(&receipts).into_iter().enumerate() {
        let expected = if caller % 2 == 0 { Verdict::Valid } else { Verdict::NotFound };
        assert_eq!(answer.unwrap().verdict(), expected, "caller {caller}");
    }
    assert_eq!(setup.emulator.count("verifyReceipt"), 1, "20 identical receipts, 1 verifyReceipt");

    // A signed transaction is verified offline: nothing to share.
    let jws = setup.emulator.signed_transaction("2000000000000001").unwrap();
    let before = setup.kit.requests().len();
    for answer in setup.kit.verify_concurrently(&vec![request("coins_100", signed(jws)); 5]) {
        assert_eq!(answer.unwrap().verdict(), Verdict::Valid);
    }
    assert_eq!(setup.kit.requests().len(), before);
}

#[test]
fn a_wrong_shared_secret_is_a_configuration_error() {
    let emulator = Arc::new(Emulator::with_default_state());
    let kit = kit::builder()
        .config_json(config(&emulator).to_string())
        .secret("private_key", PRIVATE_KEY)
        .secret("shared_secret", "stale")
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        .build::<AppStore>()
        .unwrap();
    let err = kit
        .verify(request("coins_100", proto::proof::Kind::Receipt("ZW11bGF0b3ItcmVjZWlwdC1wcm9kdWN0aW9u".into())))
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "21004"));
    assert!(!err.message().contains("stale"), "the secret stays out of errors");
}

#[test]
fn acknowledge_finishes_the_transaction_and_consume_is_not_offered() {
    let setup = setup();
    let acknowledge = |kind: proto::proof::Kind| {
        setup.kit.acknowledge(proto::AcknowledgeRequest {
            app_id: BUNDLE.into(),
            product_id: "remove_ads".into(),
            proof: proof(kind),
            developer_payload: String::new(),
        })
    };
    acknowledge(proto::proof::Kind::TransactionId("2000000000000002".into())).unwrap();
    assert!(setup.emulator.finished("2000000000000002"));
    let jws = setup.emulator.signed_transaction("2000000000000001").unwrap();
    acknowledge(signed(jws)).unwrap();
    assert!(setup.emulator.finished("2000000000000001"));
    let forged = acknowledge(signed(SigningChain::generate().sign(&transaction("remove_ads", "Production"))));
    assert_eq!(forged.unwrap_err().code(), Code::FailedPrecondition);
    let unknown = acknowledge(proto::proof::Kind::TransactionId("2999999999999999".into())).unwrap_err();
    assert_eq!((unknown.code(), unknown.reason()), (Code::NotFound, "4040010"));

    assert_eq!(AppStore::CAPABILITIES & CAP_CONSUME, 0, "apple has no server-side consume");
}

#[test]
fn the_catalog_comes_from_the_config() {
    let setup = setup();
    let page = setup
        .kit
        .list_items(proto::ListItemsRequest {
            app_id: BUNDLE.into(),
            kind: ProductKind::Subscription.into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].product_id, "premium_monthly");
    assert!(setup.kit.requests().is_empty());
}

#[test]
fn configuration_errors_name_the_key() {
    let emulator = Emulator::with_default_state();
    let build = |edit: &dyn Fn(&mut Value)| {
        let mut config = config(&emulator);
        edit(&mut config);
        kit::builder()
            .config_json(config.to_string())
            .secret("private_key", PRIVATE_KEY)
            .build::<AppStore>()
            .unwrap_err()
    };
    let err = build(&|config| config["trusted_roots"] = json!(["not a pem"]));
    assert!(err.message().contains("trusted_roots") && err.message().contains("entry 0"), "{}", err.message());
    let err = build(&|config| {
        config.as_object_mut().unwrap().remove("key_id");
    });
    assert!(err.message().contains("key_id"), "{}", err.message());
    let err = kit::builder()
        .config_json(config(&emulator).to_string())
        .secret("private_key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        .build::<AppStore>()
        .unwrap_err();
    assert!(err.message().contains("private_key") && !err.message().contains("AAAA"), "{}", err.message());
}

/// Apple's real production chain (the certificates every App Store JWS of
/// 2021–2023 carried) verifies against the shipped Apple Root CA - G3 at a
/// date inside the leaf's validity, and not after it.
#[test]
fn apples_own_chain_verifies_against_the_shipped_root() {
    let fixture = include_str!("../../../tests/fixtures/app-store/apple-production-chain.txt");
    let mut x5c: Vec<String> = fixture.lines().map(str::to_owned).collect();
    let root = crate::jws::pem_certificate(crate::jws::APPLE_ROOT_CA_G3_PEM).unwrap();
    x5c.push({
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(root)
    });
    let verifier = crate::jws::Verifier::new(&[crate::jws::APPLE_ROOT_CA_G3_PEM.to_owned()]).unwrap();
    verifier.trusted_chain(&x5c, 1_681_312_846_000).unwrap();
    let err = verifier.trusted_chain(&x5c, 1_700_000_000_000).unwrap_err();
    assert_eq!(err.code(), "CERTIFICATE_NOT_VALID", "{err}");
    let test_root = Emulator::with_default_state().root_pem();
    let other = crate::jws::Verifier::new(&[test_root]).unwrap();
    assert_eq!(other.trusted_chain(&x5c, 1_681_312_846_000).unwrap_err().code(), "CHAIN_UNTRUSTED");
}
