#![allow(clippy::unwrap_used)]

//! The store against the Huawei emulator, in-process through the kit.

use std::sync::Arc;

use base64::Engine as _;
use iapd_emulators::Fault;
use iapd_emulators::huawei::{Huawei as Emulator, Purchase};
use iapd_sdk_plugin::kit::{self, Kit};
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use serde_json::{Value, json};

use crate::Huawei;

const PACKAGE: &str = "com.example.game";
const APP_ID: &str = "101486545";
const APP_SECRET: &str = "hw-demo-app-secret-6c1f";
const CONNECT_KEY: &str = "hw-demo-connect-key-93ab";
/// 2026-06-01T00:00:00Z: after every demo purchase and cancellation.
const NOW: i64 = 1_780_272_000_000;
const PUBLIC_KEY: &str = include_str!("../../../tests/fixtures/huawei/iap-public-key.txt");
const GERMANY_ORDERS: &str = "https://orders-dre.iap.cloud.huawei.eu";

struct Setup {
    emulator: Arc<Emulator>,
    kit: Kit<Huawei>,
}

fn config() -> Value {
    json!({
        "packages": [PACKAGE],
        "client_id": APP_ID,
        "public_key": PUBLIC_KEY.trim(),
        "site": "germany",
        "connect_api_client_id": "hw-connect-demo",
        "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 40},
    })
}

fn with(changes: Value) -> Value {
    let mut config = config();
    for (key, value) in changes.as_object().unwrap() {
        config[key] = value.clone();
    }
    config
}

fn setup_with(config: Value, secrets: &[(&str, &str)]) -> Setup {
    let emulator = Arc::new(Emulator::with_default_state());
    emulator.set_clock(NOW);
    let mut builder = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config.to_string())
        .http(iapd_emulators::kit_handler(emulator.clone()));
    for (name, value) in secrets {
        builder = builder.secret(name, *value);
    }
    Setup { emulator, kit: builder.build::<Huawei>().unwrap() }
}

const SECRETS: &[(&str, &str)] = &[("client_secret", APP_SECRET), ("connect_api_key", CONNECT_KEY)];

fn setup() -> Setup {
    setup_with(config(), SECRETS)
}

fn proof(token: &str, parameters: &[(&str, &str)]) -> Option<proto::Proof> {
    Some(proto::Proof {
        kind: Some(proto::proof::Kind::PurchaseToken(token.to_owned())),
        store_parameters: parameters.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
    })
}

fn request(product: &str, token: &str, parameters: &[(&str, &str)]) -> proto::VerifyRequest {
    proto::VerifyRequest {
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: proof(token, parameters),
        user_id: String::new(),
    }
}

fn verify(setup: &Setup, product: &str, token: &str) -> Result<proto::VerifyResponse, PluginError> {
    setup.kit.verify(request(product, token, &[]))
}

fn verify_with(
    setup: &Setup,
    product: &str,
    token: &str,
    parameters: &[(&str, &str)],
) -> Result<proto::VerifyResponse, PluginError> {
    setup.kit.verify(request(product, token, parameters))
}

fn consume(setup: &Setup, product: &str, token: &str, parameters: &[(&str, &str)]) -> Result<bool, PluginError> {
    setup
        .kit
        .consume(proto::ConsumeRequest {
            app_id: PACKAGE.into(),
            product_id: product.into(),
            proof: proof(token, parameters),
        })
        .map(|answer| answer.already_consumed)
}

fn acknowledge(setup: &Setup, product: &str, token: &str, parameters: &[(&str, &str)]) -> Result<bool, PluginError> {
    setup
        .kit
        .acknowledge(proto::AcknowledgeRequest {
            app_id: PACKAGE.into(),
            product_id: product.into(),
            proof: proof(token, parameters),
            developer_payload: String::new(),
        })
        .map(|answer| answer.already_acknowledged)
}

/// A purchase of the demo app: `data` over a paid consumable's defaults.
fn add(setup: &Setup, token: &str, data: Value, extra: Value) {
    let mut fields = json!({
        "applicationId": 101486545, "packageName": PACKAGE, "productId": "coins_100", "kind": 0,
        "purchaseState": 0, "consumptionState": 0, "confirmed": 0, "purchaseTime": 1_767_225_600_000i64,
        "orderId": format!("order-{token}"),
    });
    for (key, value) in data.as_object().unwrap() {
        fields[key] = value.clone();
    }
    let mut purchase = json!({"purchaseToken": token, "data": fields});
    for (key, value) in extra.as_object().unwrap() {
        purchase[key] = value.clone();
    }
    setup.emulator.add_purchase(serde_json::from_value::<Purchase>(purchase).unwrap());
}

fn assert_error(err: &PluginError, code: Code, reason: &str) {
    assert_eq!((err.code(), err.reason()), (code, reason), "{err}");
}

#[test]
fn every_order_verdict_and_every_field() {
    let setup = setup();
    let answer = verify(&setup, "coins_100", "hw-purchased").unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!(purchase.state(), PurchaseState::Purchased);
    assert_eq!(
        (purchase.order_id.as_str(), purchase.transaction_id.as_str()),
        ("HW20260101000001", "WX20260101000001")
    );
    assert_eq!(purchase.purchase_time_unix_millis, 1_767_225_601_000);
    assert_eq!((purchase.kind(), purchase.environment()), (ProductKind::Consumable, Environment::Production));
    assert_eq!(purchase.consumption_state(), ConsumptionState::NotConsumed);
    assert_eq!(purchase.acknowledgement_state(), AcknowledgementState::NotAcknowledged);
    assert_eq!((purchase.developer_payload.as_str(), purchase.region_code.as_str()), ("order-1", "DE"));
    assert_eq!((purchase.quantity, purchase.expiry_time_unix_millis), (1, 0));
    let raw: Value = serde_json::from_str(&purchase.raw_store_response).unwrap();
    assert_eq!(raw["responseCode"], "0", "huawei's own answer is kept");
    assert!(raw["purchaseTokenData"].is_string(), "the signed data is a json string");

    let consumed = verify(&setup, "coins_100", "hw-consumed").unwrap().purchase.unwrap();
    assert_eq!(
        (consumed.consumption_state(), consumed.acknowledgement_state()),
        (ConsumptionState::Consumed, AcknowledgementState::Acknowledged)
    );
    let ads = verify(&setup, "remove_ads", "hw-remove-ads").unwrap().purchase.unwrap();
    assert_eq!((ads.kind(), ads.consumption_state()), (ProductKind::NonConsumable, ConsumptionState::NotApplicable));

    for (product, token, verdict, reason) in [
        ("coins_100", "hw-canceled", Verdict::Canceled, "purchaseState 1"),
        ("coins_100", "hw-refunded", Verdict::Refunded, "purchaseState 2"),
        ("coins_500", "hw-pending", Verdict::Pending, "not paid"),
        ("coins_100", "hw-sandbox", Verdict::Invalid, "sandbox purchase"),
        ("coins_100", "hw-forged", Verdict::Invalid, "does not verify with the app's public key"),
        ("coins_100", "hw-other-app", Verdict::Invalid, "package com.example.other"),
        ("coins_100", "made-up-token", Verdict::NotFound, "result code 12"),
        ("coins_500", "hw-old", Verdict::NotFound, "superseded"),
        ("coins_500", "hw-purchased", Verdict::NotFound, "result code 8"),
    ] {
        let answer = verify(&setup, product, token).unwrap();
        assert_eq!(answer.verdict(), verdict, "{token}: {}", answer.verdict_reason);
        assert!(answer.verdict_reason.contains(reason), "{token}: {}", answer.verdict_reason);
    }

    add(&setup, "hw-other-app-id", json!({"applicationId": "999"}), json!({}));
    // The emulator scopes tokens to their app: another app's purchase is unknown to this one.
    assert_eq!(verify(&setup, "coins_100", "hw-other-app-id").unwrap().verdict(), Verdict::NotFound);
    add(&setup, "hw-odd-state", json!({"purchaseState": 7}), json!({}));
    assert_error(&verify(&setup, "coins_100", "hw-odd-state").unwrap_err(), Code::Internal, "MALFORMED_RESPONSE");
    add(&setup, "hw-strings", json!({"purchaseState": "0", "kind": "0", "price": "99", "quantity": "1"}), json!({}));
    assert_eq!(verify(&setup, "coins_100", "hw-strings").unwrap().verdict(), Verdict::Valid, "numeric strings read");
}

#[test]
fn sandbox_purchases_are_refused_unless_allowed() {
    let setup = setup_with(with(json!({"allow_sandbox": true})), SECRETS);
    let answer = verify(&setup, "coins_100", "hw-sandbox").unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid);
    assert_eq!(answer.purchase.unwrap().environment(), Environment::Sandbox, "purchaseType 0 is the sandbox");
}

#[test]
fn signatures_are_checked_with_the_algorithm_the_answer_names() {
    let setup = setup();
    // A purchase whose client chose PSS: the answer says so, and verifies.
    let answer = verify(&setup, "coins_500", "hw-pss").unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let raw: Value = serde_json::from_str(&answer.purchase.unwrap().raw_store_response).unwrap();
    assert_eq!(raw["signatureAlgorithm"], "SHA256WithRSA/PSS");
    assert_eq!(
        setup.kit.requests().last().unwrap().header_value("HW-IAP-APPINFO"),
        None,
        "pss is not asked by default"
    );

    // A PSS signature over other bytes than those served does not verify.
    add(
        &setup,
        "hw-mislabelled",
        json!({}),
        json!({"signatureAlgorithm": "SHA256WithRSA/PSS", "forgedSignature": true}),
    );
    let answer = verify(&setup, "coins_100", "hw-mislabelled").unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert!(answer.verdict_reason.contains("SHA256WithRSA/PSS signature does not verify"), "{}", answer.verdict_reason);

    add(&setup, "hw-sha512", json!({}), json!({"signatureAlgorithm": "SHA512WithRSA"}));
    let err = verify(&setup, "coins_100", "hw-sha512").unwrap_err();
    assert_error(&err, Code::Internal, "MALFORMED_RESPONSE");
    assert!(err.message().contains("SHA512WithRSA"), "{err}");

    let pss = setup_with(with(json!({"request_pss": true})), SECRETS);
    let answer = verify(&pss, "coins_100", "hw-purchased").unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let raw: Value = serde_json::from_str(&answer.purchase.unwrap().raw_store_response).unwrap();
    assert_eq!(raw["signatureAlgorithm"], "SHA256WithRSA/PSS", "the emulator signed with pss as asked");
    assert_eq!(
        pss.kit.requests().last().unwrap().header_value("HW-IAP-APPINFO"),
        Some(r#"{"signatureAlgorithm":"SHA256WithRSA/PSS"}"#)
    );
}

#[test]
fn subscriptions_are_verified_at_the_subscription_service() {
    let setup = setup();
    let sub = |token: &str, id: &str| verify_with(&setup, "vip_monthly", token, &[("subscription_id", id)]);
    let answer = sub("hw-vip", "sub-20").unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!(purchase.kind(), ProductKind::Subscription);
    assert_eq!(purchase.expiry_time_unix_millis, 4_102_444_800_000);
    assert_eq!(purchase.acknowledgement_state(), AcknowledgementState::NotApplicable);
    assert_eq!(
        setup.kit.requests().last().unwrap().url(),
        "https://subscr-dre.iap.cloud.huawei.eu/sub/applications/v2/purchases/get"
    );
    let expired = sub("hw-vip-expired", "sub-21").unwrap();
    assert_eq!(expired.verdict(), Verdict::Expired, "{}", expired.verdict_reason);
    let revoked = sub("hw-vip-revoked", "sub-22").unwrap();
    assert_eq!(revoked.verdict(), Verdict::Refunded, "{}", revoked.verdict_reason);
    assert_eq!(revoked.purchase.unwrap().state(), PurchaseState::Refunded);
    assert_eq!(sub("hw-vip", "sub-other").unwrap().verdict(), Verdict::NotFound);

    // A token sent to the other service is the caller's mistake: "6" rights invalid, not retried.
    let err = verify(&setup, "vip_monthly", "hw-vip").unwrap_err();
    assert_error(&err, Code::InvalidArgument, "RIGHTS_INVALID");
    assert_eq!(err.metadata()["response_code"], "6");
    assert_eq!(setup.emulator.count("verify"), 1, "rights invalid is not retried");
    assert_error(&sub("hw-purchased", "sub-1").unwrap_err(), Code::InvalidArgument, "RIGHTS_INVALID");
}

#[test]
fn result_codes_become_verdicts_or_documented_errors() {
    let setup = setup();
    let verify_hit = |code: &str| {
        setup.emulator.inject(Fault::answering("verify", 200, code));
        verify(&setup, "coins_100", "hw-purchased")
    };
    let err = verify_hit("5").unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "IAP_APP_IAP_NOT_ACTIVATED");
    assert_eq!((err.metadata()["response_code"].as_str(), err.http_status()), ("5", 200));
    let answer = verify_hit("11").unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert!(answer.verdict_reason.contains("result code 11"), "{}", answer.verdict_reason);
    assert_eq!(verify_hit("8").unwrap().verdict(), Verdict::NotFound);
    assert_eq!(verify_hit("12").unwrap().verdict(), Verdict::NotFound);
    assert_error(
        &verify_hit("9").unwrap_err(),
        Code::FailedPrecondition,
        "IAP_RESPONSE_RESULT_ITEM_CONSUMED_OR_ACKNED",
    );
    let err = verify_hit("1001880005").unwrap_err();
    assert_error(&err, Code::Unknown, "UNKNOWN_RESPONSE_CODE");
    assert_eq!(err.metadata()["response_code"], "1001880005");

    // "6" is Huawei's transient critical error: retried, then UNAVAILABLE.
    let before = setup.emulator.count("verify");
    assert_eq!(verify_hit("6").unwrap().verdict(), Verdict::Valid, "one 6 is retried away");
    assert_eq!(setup.emulator.count("verify") - before, 2);
    setup.emulator.inject(Fault { times: 4, ..Fault::answering("verify", 200, "6") });
    let err = verify(&setup, "coins_100", "hw-purchased").unwrap_err();
    assert_error(&err, Code::Unavailable, "IAP_RESPONSE_RESULT_ERROR");
    assert!(err.is_retryable());
}

#[test]
fn store_parameters_are_an_allowlist_and_nothing_else_reaches_huawei() {
    let setup = setup();
    let err =
        verify_with(&setup, "coins_100", "hw-purchased", &[("order_host", "http://169.254.169.254")]).unwrap_err();
    assert_error(&err, Code::InvalidArgument, "UNKNOWN_STORE_PARAMETER");
    let err = verify_with(&setup, "coins_100", "hw-purchased", &[("account_flag", "2")]).unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_STORE_PARAMETER");
    let err = verify_with(&setup, "vip_monthly", "hw-vip", &[("subscription_id", "")]).unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_STORE_PARAMETER");
    let mut other = request("coins_100", "hw-purchased", &[]);
    other.app_id = "com.other.app".into();
    assert_error(&setup.kit.verify(other).unwrap_err(), Code::PermissionDenied, "PACKAGE_NOT_ALLOWED");
    let mut receipt = request("coins_100", "hw-purchased", &[]);
    receipt.proof = Some(proto::Proof { kind: Some(proto::proof::Kind::Receipt("x".into())), ..Default::default() });
    assert_error(&setup.kit.verify(receipt).unwrap_err(), Code::InvalidArgument, "UNSUPPORTED_PROOF");
    assert!(setup.kit.requests().is_empty(), "no request for a refused proof");
}

#[test]
fn the_site_and_the_account_flag_choose_the_hosts() {
    let setup = setup();
    verify(&setup, "coins_100", "hw-purchased").unwrap();
    let urls: Vec<String> = setup.kit.requests().iter().map(|request| request.url().to_owned()).collect();
    assert_eq!(
        urls,
        [
            "https://oauth-login.cloud.huawei.com/oauth2/v3/token",
            &format!("{GERMANY_ORDERS}/applications/purchases/tokens/verify")
        ]
    );
    // The AppTouch purchase is known only on the AppTouch host.
    assert_eq!(verify(&setup, "coins_100", "hw-apptouch").unwrap().verdict(), Verdict::NotFound);
    let answer = verify_with(&setup, "coins_100", "hw-apptouch", &[("account_flag", "1")]).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    assert_eq!(answer.purchase.unwrap().region_code, "RU");
    assert_eq!(
        setup.kit.requests().last().unwrap().url(),
        "https://orders-at-dre.iap.cloud.huawei.eu/applications/purchases/tokens/verify"
    );
    for (site, host) in [
        ("china", "https://orders-drcn.iap.cloud.huawei.com.cn"),
        ("singapore", "https://orders-dra.iap.cloud.huawei.asia"),
        ("russia", "https://orders-drru.iap.cloud.huawei.ru"),
    ] {
        let setup = setup_with(with(json!({"site": site})), SECRETS);
        assert_eq!(verify(&setup, "coins_100", "hw-purchased").unwrap().verdict(), Verdict::Valid);
        assert!(setup.kit.requests().last().unwrap().url().starts_with(host), "{site}");
    }
}

#[test]
fn the_access_token_is_cached_sent_as_appat_basic_and_refreshed_once_after_a_401() {
    let setup = setup();
    for _ in 0..3 {
        verify(&setup, "coins_100", "hw-purchased").unwrap();
    }
    assert_eq!(setup.emulator.count("token"), 1, "one token for every call");
    let requests = setup.kit.requests();
    let form = String::from_utf8(requests[0].body_bytes().to_vec()).unwrap();
    assert_eq!(form, format!("grant_type=client_credentials&client_id={APP_ID}&client_secret={APP_SECRET}"));
    let token = &setup.emulator.issued_tokens()[0];
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("APPAT:{token}")));
    assert_eq!(requests[1].header_value("authorization"), Some(expected.as_str()));
    assert_eq!(iapd_emulators::huawei::authorization(token), expected);

    setup.kit.advance_clock(3_600_000);
    setup.emulator.set_clock(setup.kit.now_unix_millis());
    verify(&setup, "coins_100", "hw-purchased").unwrap();
    assert_eq!(setup.emulator.count("token"), 2, "refreshed before it expired");

    setup.emulator.revoke_tokens();
    assert_eq!(verify(&setup, "coins_100", "hw-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("token"), 3, "one refresh after the 401");
    setup.emulator.inject(Fault { times: 2, ..Fault::answering("verify", 401, "6") });
    let err = verify(&setup, "coins_100", "hw-purchased").unwrap_err();
    assert_error(&err, Code::Unauthenticated, "ACCESS_TOKEN_REFUSED");
    assert_eq!(setup.emulator.count("token"), 4, "a refused fresh token is not refreshed again");

    let wrong = setup_with(config(), &[("client_secret", "not-the-app-secret"), ("connect_api_key", CONNECT_KEY)]);
    let err = verify(&wrong, "coins_100", "hw-purchased").unwrap_err();
    assert_error(&err, Code::Unauthenticated, "TOKEN_REFUSED");
    assert_eq!((err.metadata()["error"].as_str(), err.metadata()["sub_error"].as_str()), ("1101", "12304"));
    assert!(!err.message().contains("not-the-app-secret"), "{err}");
    let unknown = setup_with(with(json!({"client_id": "100000001"})), SECRETS);
    let err = verify(&unknown, "coins_100", "hw-purchased").unwrap_err();
    assert_eq!(err.metadata()["sub_error"], "20003", "{err}");
    assert_eq!(unknown.emulator.count("verify"), 0, "nothing is asked without a token");
}

#[test]
fn transient_failures_are_retried_with_retry_after() {
    let setup = setup();
    setup.emulator.inject(Fault { times: 2, ..Fault::answering("verify", 503, "") });
    assert_eq!(verify(&setup, "coins_100", "hw-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("verify"), 3);

    setup.emulator.inject(Fault { retry_after_secs: Some(1), ..Fault::answering("verify", 429, "") });
    let before = setup.kit.now_unix_millis();
    verify(&setup, "coins_100", "hw-purchased").unwrap();
    assert_eq!(setup.kit.now_unix_millis() - before, 1_000, "Retry-After honoured");

    setup.emulator.inject(Fault { times: 4, ..Fault::answering("verify", 500, "") });
    let err = verify(&setup, "coins_100", "hw-purchased").unwrap_err();
    assert_error(&err, Code::Unavailable, "UPSTREAM_ERROR");
    assert_eq!(err.http_status(), 500);

    setup.emulator.inject(Fault { retry_after_secs: Some(60), ..Fault::answering("verify", 429, "") });
    let err = verify(&setup, "coins_100", "hw-purchased").unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "a long Retry-After goes to the caller");
    assert_eq!(err.retry_after_delay(), Some(std::time::Duration::from_secs(60)));

    let fresh = setup_with(config(), SECRETS);
    fresh.emulator.inject(Fault::answering("token", 503, "oauth:1101/0"));
    assert_eq!(verify(&fresh, "coins_100", "hw-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!(fresh.emulator.count("token"), 2, "the token endpoint's flow control is retried");

    let emulator = Arc::new(Emulator::with_default_state());
    let kit = kit::builder()
        .config_json(config().to_string())
        .secret("client_secret", APP_SECRET)
        .secret("connect_api_key", CONNECT_KEY)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        .fail_first(2, Code::DeadlineExceeded)
        .build::<Huawei>()
        .unwrap();
    assert_eq!(kit.verify(request("coins_100", "hw-purchased", &[])).unwrap().verdict(), Verdict::Valid);
    assert_eq!(kit.requests().len(), 4, "two timed-out attempts, then the token and the verify");
}

#[test]
fn answers_that_are_not_huaweis_shape_are_malformed_or_unexpected() {
    let setup = setup();
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("verify", 200, "") });
    let err = verify(&setup, "coins_100", "hw-purchased").unwrap_err();
    assert_error(&err, Code::Internal, "MALFORMED_RESPONSE");
    assert!(err.message().contains("expected Envelope"), "{err}");
    setup.emulator.inject(Fault::answering("verify", 404, ""));
    assert_error(&verify(&setup, "coins_100", "hw-purchased").unwrap_err(), Code::Internal, "UNEXPECTED_RESPONSE");
    let fresh = setup_with(config(), SECRETS);
    fresh.emulator.inject(Fault { malformed: true, ..Fault::answering("token", 200, "") });
    let err = verify(&fresh, "coins_100", "hw-purchased").unwrap_err();
    assert_error(&err, Code::Internal, "MALFORMED_RESPONSE");
    assert!(err.message().contains("expected TokenResponse"), "{err}");
}

#[test]
fn consume_and_acknowledge_confirm_once_and_say_when_it_was_done() {
    let setup = setup();
    assert!(!consume(&setup, "coins_100", "hw-purchased", &[]).unwrap());
    assert_eq!(setup.emulator.purchase("hw-purchased").unwrap()["consumptionState"], 1);
    assert!(consume(&setup, "coins_100", "hw-purchased", &[]).unwrap(), "read first: consumed already");
    assert_eq!(setup.emulator.count("confirm"), 1);
    assert!(consume(&setup, "coins_100", "hw-consumed", &[]).unwrap());
    assert_eq!(setup.emulator.count("confirm"), 1, "nothing to confirm");

    assert!(!acknowledge(&setup, "remove_ads", "hw-remove-ads", &[]).unwrap());
    assert_eq!(setup.emulator.purchase("hw-remove-ads").unwrap()["confirmed"], 1);
    assert!(acknowledge(&setup, "remove_ads", "hw-remove-ads", &[]).unwrap());
    assert!(
        acknowledge(&setup, "vip_monthly", "hw-vip", &[("subscription_id", "sub-20")]).unwrap(),
        "huawei confirms subscriptions itself"
    );
    assert_eq!(setup.emulator.count("confirm"), 2);

    // Confirmed by someone else between the read and the write: "9" is done already.
    add(&setup, "hw-raced", json!({}), json!({}));
    setup.emulator.inject(Fault::answering("confirm", 200, "9"));
    assert!(consume(&setup, "coins_100", "hw-raced", &[]).unwrap());

    let wrong_kind = [
        consume(&setup, "remove_ads", "hw-remove-ads", &[]).unwrap_err(),
        consume(&setup, "vip_monthly", "hw-vip", &[("subscription_id", "sub-20")]).unwrap_err(),
        acknowledge(&setup, "coins_500", "hw-pss", &[]).unwrap_err(),
    ];
    for err in wrong_kind {
        assert_error(&err, Code::FailedPrecondition, "WRONG_PRODUCT_TYPE");
    }
    assert_error(
        &consume(&setup, "coins_100", "hw-refunded", &[]).unwrap_err(),
        Code::FailedPrecondition,
        "PURCHASE_REFUNDED",
    );
    assert_error(
        &consume(&setup, "coins_500", "hw-pending", &[]).unwrap_err(),
        Code::FailedPrecondition,
        "PURCHASE_PENDING",
    );
    assert_error(
        &consume(&setup, "coins_100", "hw-forged", &[]).unwrap_err(),
        Code::FailedPrecondition,
        "INVALID_PURCHASE",
    );
    assert_error(&consume(&setup, "coins_100", "made-up", &[]).unwrap_err(), Code::NotFound, "IAP_RECORD_NOT_EXIST");
    let expired = acknowledge(&setup, "vip_monthly", "hw-vip-expired", &[("subscription_id", "sub-21")]).unwrap_err();
    assert_error(&expired, Code::FailedPrecondition, "PURCHASE_EXPIRED");
    add(&setup, "hw-lost", json!({}), json!({}));
    setup.emulator.inject(Fault::answering("confirm", 200, "8"));
    let err = consume(&setup, "coins_100", "hw-lost", &[]).unwrap_err();
    assert_error(&err, Code::NotFound, "IAP_RESPONSE_RESULT_ITEM_NOT_OWNED");
    add(&setup, "hw-deregistered", json!({}), json!({}));
    setup.emulator.inject(Fault::answering("confirm", 200, "11"));
    let err = consume(&setup, "coins_100", "hw-deregistered", &[]).unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "IAP_USER_ACCOUNT_INVALID");
    assert_eq!(
        setup.kit.requests().last().unwrap().url(),
        format!("{GERMANY_ORDERS}/applications/v2/purchases/confirm")
    );
}

#[test]
fn the_cancelled_list_turns_a_paid_purchase_refunded_across_pages() {
    let setup = setup_with(with(json!({"check_cancelled_list": true})), SECRETS);
    let answer = verify(&setup, "coins_500", "hw-charged-back").unwrap();
    assert_eq!(answer.verdict(), Verdict::Refunded, "{}", answer.verdict_reason);
    assert!(
        answer.verdict_reason.contains("by huawei") && answer.verdict_reason.contains("chargeback"),
        "{}",
        answer.verdict_reason
    );
    assert_eq!(answer.purchase.unwrap().state(), PurchaseState::Refunded);
    let body: Value = serde_json::from_slice(setup.kit.requests().last().unwrap().body_bytes()).unwrap();
    assert_eq!(
        (body["startAt"].as_i64(), body["endAt"].as_i64(), body["type"].as_i64()),
        (Some(1_767_225_609_000), Some(NOW), Some(0))
    );

    // 1000 earlier cancellations push this purchase's row to the second page.
    for n in 0..1000 {
        let row = json!({"cancelled": {"cancelledTime": 1_767_300_000_000i64 + n, "cancelledReason": 1}});
        add(&setup, &format!("hw-cancelled-{n}"), json!({"purchaseState": 1}), row);
    }
    let before = setup.emulator.count("cancelledList");
    assert_eq!(verify(&setup, "coins_500", "hw-charged-back").unwrap().verdict(), Verdict::Refunded);
    assert_eq!(setup.emulator.count("cancelledList") - before, 2, "the continuation token was followed");

    let before = setup.emulator.count("cancelledList");
    assert_eq!(verify(&setup, "coins_100", "hw-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("cancelledList") - before, 2, "every page read, and the purchase is in none");
    verify(&setup, "coins_100", "hw-refunded").unwrap();
    assert_eq!(setup.emulator.count("cancelledList") - before, 2, "a purchase huawei calls refunded is not looked up");

    let unchecked = setup_with(config(), SECRETS);
    assert_eq!(verify(&unchecked, "coins_500", "hw-charged-back").unwrap().verdict(), Verdict::Valid);
    assert_eq!(unchecked.emulator.count("cancelledList"), 0, "off by default");
}

#[test]
fn concurrent_identical_lookups_share_one_request() {
    let setup = setup();
    verify(&setup, "coins_100", "hw-purchased").unwrap();
    setup.emulator.inject(Fault { operation: Some("verify".into()), delay_ms: 2_000, ..Fault::default() });
    let started = setup.kit.now_unix_millis();
    let answers = setup.kit.verify_concurrently(&vec![request("coins_100", "hw-purchased", &[]); 20]);
    assert!(answers.iter().all(|answer| answer.as_ref().unwrap().verdict() == Verdict::Valid), "{answers:?}");
    assert_eq!(setup.emulator.count("verify"), 2, "20 identical verifies, 1 request");
    assert!(setup.kit.now_unix_millis() - started >= 2_000, "all waited for the one slow answer");
    // Another product with the same token is another lookup, and nothing is cached.
    let answers = setup
        .kit
        .verify_concurrently(&[request("coins_500", "hw-purchased", &[]), request("coins_100", "hw-purchased", &[])]);
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(setup.emulator.count("verify"), 4);
}

#[test]
fn the_catalog_is_appgallery_connects_paged_and_filtered() {
    let setup = setup();
    let page = |kind: ProductKind, size: i32, token: &str| {
        setup.kit.list_items(proto::ListItemsRequest {
            app_id: PACKAGE.into(),
            kind: kind.into(),
            page_size: size,
            page_token: token.into(),
        })
    };
    let first = page(ProductKind::Unspecified, 2, "").unwrap();
    let second = page(ProductKind::Unspecified, 99, &first.next_page_token).unwrap();
    let third = page(ProductKind::Unspecified, 2, &second.next_page_token).unwrap();
    let ids: Vec<String> =
        [first.items.clone(), second.items, third.items.clone()].concat().into_iter().map(|i| i.product_id).collect();
    assert_eq!(ids, ["coins_100", "coins_500", "remove_ads", "level_pack", "vip_monthly"]);
    assert!(third.next_page_token.is_empty());
    let coins = &first.items[0];
    assert_eq!(
        (coins.kind(), coins.price_currency_code.as_str(), coins.price_amount_micros),
        (ProductKind::Consumable, "EUR", 990_000)
    );
    assert_eq!(
        (coins.title.as_str(), coins.description.as_str(), coins.active),
        ("100 coins", "A small pile of coins.", true)
    );
    let subscriptions = page(ProductKind::Subscription, 0, "").unwrap();
    assert_eq!(subscriptions.items.len(), 1);
    assert_eq!(subscriptions.items[0].kind(), ProductKind::Subscription);
    let non_consumables = page(ProductKind::NonConsumable, 0, "").unwrap();
    assert_eq!(non_consumables.items.iter().map(|i| i.active).collect::<Vec<_>>(), [true, false]);
    assert_error(&page(ProductKind::Unspecified, 0, "i2").unwrap_err(), Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    let list = setup.kit.requests().into_iter().find(|r| r.url().contains("/product/list")).unwrap();
    assert_eq!(
        list.url(),
        "https://connect-api-dre.cloud.huawei.com/api/pms/product-price-service/v1/manage/product/list"
    );
    assert_eq!((list.header_value("client_id"), list.header_value("appId")), (Some("hw-connect-demo"), Some(APP_ID)));
    assert_eq!(setup.emulator.count("connect.token"), 1);
    assert_eq!(setup.emulator.count("token"), 0, "the catalog has credentials of its own");

    setup.emulator.revoke_tokens();
    page(ProductKind::Unspecified, 0, "").unwrap();
    assert_eq!(setup.emulator.count("connect.token"), 2, "one refresh after the 401");
    setup.emulator.inject(Fault::answering("products.list", 200, "pms:204144641"));
    let err = page(ProductKind::Unspecified, 0, "").unwrap_err();
    assert_error(&err, Code::Unknown, "204144641");
    setup.emulator.inject(Fault::answering("products.list", 403, "pms:403"));
    assert_error(&page(ProductKind::Unspecified, 0, "").unwrap_err(), Code::PermissionDenied, "403");

    let refused = setup_with(config(), &[("client_secret", APP_SECRET), ("connect_api_key", "stolen-key")]);
    let err =
        refused.kit.list_items(proto::ListItemsRequest { app_id: PACKAGE.into(), ..Default::default() }).unwrap_err();
    assert_error(&err, Code::Unauthenticated, "CONNECT_TOKEN_REFUSED");
    assert!(!err.message().contains("stolen-key"), "{err}");

    let mut without = config();
    without.as_object_mut().unwrap().remove("connect_api_client_id");
    let plain = setup_with(without, &[("client_secret", APP_SECRET)]);
    let err =
        plain.kit.list_items(proto::ListItemsRequest { app_id: PACKAGE.into(), ..Default::default() }).unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "CONNECT_API_NOT_CONFIGURED");
    assert!(plain.kit.requests().is_empty());
}

#[test]
fn configuration_errors_name_the_key() {
    let fails = |config: Value, secrets: &[(&str, &str)]| {
        let mut builder = kit::builder().config_json(config.to_string());
        for (name, value) in secrets {
            builder = builder.secret(name, *value);
        }
        builder.build::<Huawei>().unwrap_err()
    };
    let err = fails(with(json!({"public_key": "MIIB-not-base64"})), SECRETS);
    assert!(err.message().contains("`stores.test.config.public_key`: the public key is not base64"), "{err}");
    let err = fails(with(json!({"public_key": "AAECAw=="})), SECRETS);
    assert!(err.message().contains("not an x.509 subjectpublickeyinfo"), "{err}");
    let err = fails(with(json!({"client_id": " "})), SECRETS);
    assert!(err.message().contains("`stores.test.config.client_id`"), "{err}");
    let err = fails(with(json!({"site": "mars"})), SECRETS);
    assert!(err.message().contains("unknown variant `mars`"), "{err}");
    let err = fails(with(json!({"packages": []})), SECRETS);
    assert!(err.message().contains("`stores.test.config.packages`"), "{err}");
    let err = fails(config(), &[("client_secret", APP_SECRET)]);
    assert!(err.message().contains("secret `connect_api_key` is not configured"), "{err}");
    let err = fails(config(), &[]);
    assert!(err.message().contains("secret `client_secret` is not configured"), "{err}");
}
