#![allow(clippy::unwrap_used)]

//! The store against the Amazon RVS emulator, in-process through the kit.

use std::sync::Arc;

use iapd_emulators::Fault;
use iapd_emulators::amazon::{Amazon as Emulator, ErrorBodies, Receipt};
use iapd_sdk_plugin::kit::{self, Kit};
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use serde_json::json;

use crate::Amazon;

const ORIGIN: &str = "http://amazon.test";
const PACKAGE: &str = "com.example.game";
/// 2026-01-01T00:00:00Z, when the demo receipts were bought.
const NOW: i64 = 1_767_225_600_000;
const DAY: i64 = 86_400_000;
/// The demo receipts' user, and another.
const USER: &str = "l3HL7XppEMhrOGDnur9-ulvqomrSg6qyODKmah76lJU=";
const OTHER_USER: &str = "io9oFdzmCSMuKk_pp9pYccoIHRfc6kSAAYaNo51xZrg=";
/// The test-only shared secret the emulator's default state accepts.
const SECRET: &str = include_str!("../../../tests/fixtures/amazon/shared-secret");

struct Setup {
    emulator: Arc<Emulator>,
    kit: Kit<Amazon>,
}

fn config() -> serde_json::Value {
    json!({
        "packages": [PACKAGE],
        "api_root": ORIGIN,
        "catalog": [
            {"product_id": "coins_100", "kind": "consumable", "title": "100 coins", "currency": "USD", "price_micros": 990_000},
            {"product_id": "remove_ads", "kind": "non_consumable", "title": "Remove ads"},
            {"product_id": "vip_monthly", "kind": "subscription", "title": "VIP"},
        ],
        "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 40},
    })
}

fn setup_with(config: serde_json::Value, secret: &str) -> Setup {
    let emulator = Arc::new(Emulator::with_default_state());
    emulator.set_clock(NOW);
    let kit = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config.to_string())
        .secret("shared_secret", secret)
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        .build::<Amazon>()
        .unwrap();
    Setup { emulator, kit }
}

fn setup() -> Setup {
    setup_with(config(), SECRET)
}

fn sandbox() -> Setup {
    let mut config = config();
    config["environment"] = json!("sandbox");
    // The RVS Cloud Sandbox takes any non-empty secret.
    setup_with(config, "any-sandbox-secret")
}

fn proof(receipt_id: &str, parameters: &[(&str, &str)]) -> Option<proto::Proof> {
    Some(proto::Proof {
        kind: Some(proto::proof::Kind::Receipt(receipt_id.to_owned())),
        store_parameters: parameters.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
    })
}

fn request(product: &str, receipt_id: &str, user: &str) -> proto::VerifyRequest {
    proto::VerifyRequest {
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: proof(receipt_id, &[("user_id", user)]),
        user_id: String::new(),
    }
}

fn verify(setup: &Setup, product: &str, receipt_id: &str) -> Result<proto::VerifyResponse, PluginError> {
    setup.kit.verify(request(product, receipt_id, USER))
}

/// A receipt of the demo user, with `fields` over a valid consumable's.
fn receipt(receipt_id: &str, fields: serde_json::Value) -> Receipt {
    let mut value = json!({
        "receiptId": receipt_id, "userId": USER, "productId": "coins_100", "productType": "CONSUMABLE",
        "purchaseDate": NOW - DAY,
    });
    value.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    serde_json::from_value(value).unwrap()
}

/// Moves the kit's and the emulator's clocks together.
fn advance(setup: &Setup, millis: i64) {
    setup.kit.advance_clock(millis);
    setup.emulator.set_clock(setup.kit.now_unix_millis());
}

/// Whether `text` holds the secret, raw or as it travels in a URL.
fn leaks_secret(text: &str) -> bool {
    text.contains(SECRET) || text.contains(&SECRET.replace('/', "%2F")) || text.contains(&SECRET.replace('/', "%2f"))
}

#[test]
fn the_fixture_secret_has_a_url_form_of_its_own() {
    // The leak checks look for both forms; they differ only if it has a `/`.
    assert!(SECRET.starts_with("2:") && SECRET.contains('/') && !SECRET.ends_with('\n'), "run make-keys.sh");
}

#[test]
fn every_demo_receipt_becomes_its_verdict() {
    let setup = setup();
    // (product asked, receipt, verdict, kind, state, consumption, acknowledgement)
    use AcknowledgementState as Ack;
    use ConsumptionState as Consumption;
    let table = [
        (
            "coins_100",
            "amzn-coins=:3:11",
            Verdict::Valid,
            ProductKind::Consumable,
            PurchaseState::Purchased,
            Consumption::NotConsumed,
            Ack::NotAcknowledged,
        ),
        (
            "remove_ads",
            "amzn/remove-ads=",
            Verdict::Valid,
            ProductKind::NonConsumable,
            PurchaseState::Purchased,
            Consumption::NotApplicable,
            Ack::NotAcknowledged,
        ),
        (
            "coins_500",
            "amzn-fulfilled=:3:12",
            Verdict::Valid,
            ProductKind::Consumable,
            PurchaseState::Purchased,
            Consumption::Consumed,
            Ack::Acknowledged,
        ),
        (
            "coins_100",
            "amzn-refunded=:1:1",
            Verdict::Refunded,
            ProductKind::Consumable,
            PurchaseState::Refunded,
            Consumption::NotConsumed,
            Ack::NotAcknowledged,
        ),
        (
            "vip_monthly",
            "amzn-vip=:2:1",
            Verdict::Valid,
            ProductKind::Subscription,
            PurchaseState::Purchased,
            Consumption::NotApplicable,
            Ack::NotAcknowledged,
        ),
        (
            "vip_monthly_1m",
            "amzn-vip=:2:1",
            Verdict::Valid,
            ProductKind::Subscription,
            PurchaseState::Purchased,
            Consumption::NotApplicable,
            Ack::NotAcknowledged,
        ),
        (
            "vip_monthly",
            "amzn-vip-ended=",
            Verdict::Expired,
            ProductKind::Subscription,
            PurchaseState::Purchased,
            Consumption::NotApplicable,
            Ack::NotAcknowledged,
        ),
        (
            "coins_100",
            "amzn-test=",
            Verdict::Invalid,
            ProductKind::Consumable,
            PurchaseState::Purchased,
            Consumption::NotConsumed,
            Ack::NotAcknowledged,
        ),
        (
            "coins_500",
            "amzn-coins=:3:11",
            Verdict::Invalid,
            ProductKind::Consumable,
            PurchaseState::Purchased,
            Consumption::NotConsumed,
            Ack::NotAcknowledged,
        ),
    ];
    for (product, receipt_id, verdict, kind, state, consumption, acknowledgement) in table {
        let answer = verify(&setup, product, receipt_id).unwrap();
        assert_eq!(answer.verdict(), verdict, "{receipt_id} as {product}: {}", answer.verdict_reason);
        let purchase = answer.purchase.unwrap();
        assert_eq!(
            (purchase.kind(), purchase.state(), purchase.consumption_state(), purchase.acknowledgement_state()),
            (kind, state, consumption, acknowledgement),
            "{receipt_id}"
        );
        assert_eq!((purchase.transaction_id.as_str(), purchase.account_binding.as_str()), (receipt_id, USER));
        assert_eq!(purchase.quantity, 1, "{receipt_id}: a null quantity is one unit");
        let raw: serde_json::Value = serde_json::from_str(&purchase.raw_store_response).unwrap();
        assert_eq!(raw["receiptId"], receipt_id, "the store's own answer is kept");
    }

    let coins = verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap().purchase.unwrap();
    assert_eq!((coins.purchase_time_unix_millis, coins.expiry_time_unix_millis), (NOW, 0));
    assert_eq!((coins.environment(), coins.region_code.as_str()), (Environment::Production, "US"));
    let ads = verify(&setup, "remove_ads", "amzn/remove-ads=").unwrap().purchase.unwrap();
    assert_eq!(ads.region_code, "DE");
    let vip = verify(&setup, "vip_monthly", "amzn-vip=:2:1").unwrap().purchase.unwrap();
    assert_eq!(vip.expiry_time_unix_millis, NOW + 30 * DAY, "an auto-renewing subscription lasts to its renewal");

    let reason = |product: &str, receipt_id: &str| verify(&setup, product, receipt_id).unwrap().verdict_reason;
    assert!(reason("coins_100", "amzn-refunded=:1:1").contains("cancelled by the customer (cancelReason 1)"));
    assert!(reason("vip_monthly", "amzn-vip-ended=").contains("the subscription ended at 1738368000000"));
    assert!(reason("coins_100", "amzn-test=").contains("a test transaction (testTransaction)"));
    assert_eq!(reason("coins_500", "amzn-coins=:3:11"), "the receipt is for product \"coins_100\", not \"coins_500\"");

    // RVS's status answers: no body to judge, no purchase.
    for (user, product, receipt_id, verdict, why) in [
        (USER, "coins_100", "never-sold", Verdict::NotFound, "no such receipt id"),
        (OTHER_USER, "coins_100", "amzn-coins=:3:11", Verdict::UserMismatch, "belongs to another user"),
        (USER, "remove_ads", "amzn-revoked=", Verdict::Refunded, "no longer valid"),
    ] {
        let answer = setup.kit.verify(request(product, receipt_id, user)).unwrap();
        assert_eq!(answer.verdict(), verdict, "{receipt_id}");
        assert!(answer.verdict_reason.contains(why), "{receipt_id}: {}", answer.verdict_reason);
        assert!(answer.purchase.is_none());
    }
}

#[test]
fn cancel_date_and_cancel_reason_are_the_verdict() {
    let setup = setup();
    for (reason, says) in [
        (Some(0), "not known yet (cancelReason 0)"),
        (Some(1), "cancelled by the customer (cancelReason 1)"),
        (Some(2), "cancelled by amazon, or by its customer service"),
        (Some(3), "internal to amazon (cancelReason 3)"),
        (Some(9), "cancelReason 9"),
        (None, "no cancelReason given"),
    ] {
        for product_type in ["CONSUMABLE", "ENTITLED"] {
            let id = format!("cancelled-{product_type}-{reason:?}");
            let fields = json!({"productType": product_type, "cancelDate": NOW - 1_000, "cancelReason": reason});
            setup.emulator.add_receipt(receipt(&id, fields));
            let answer = verify(&setup, "coins_100", &id).unwrap();
            assert_eq!(answer.verdict(), Verdict::Refunded, "{id}");
            assert_eq!(answer.purchase.unwrap().state(), PurchaseState::Refunded);
            assert!(answer.verdict_reason.contains(says), "{id}: {}", answer.verdict_reason);
        }
    }
    // A subscription lasts to its cancelDate, and has ended after it.
    let subscription = |id: &str, cancel_date: i64, reason: i64| {
        let fields = json!({
            "productId": "vip_monthly", "productType": "SUBSCRIPTION", "cancelDate": cancel_date,
            "cancelReason": reason, "term": "1 Month", "termSku": "vip_monthly_1m",
        });
        setup.emulator.add_receipt(receipt(id, fields));
        verify(&setup, "vip_monthly", id).unwrap()
    };
    let running = subscription("sub-to-end", NOW + DAY, 1);
    assert_eq!(running.verdict(), Verdict::Valid, "{}", running.verdict_reason);
    assert_eq!(running.purchase.unwrap().expiry_time_unix_millis, NOW + DAY);
    let replaced = subscription("sub-replaced", NOW - 1, 4);
    assert_eq!(replaced.verdict(), Verdict::Expired);
    assert!(replaced.verdict_reason.contains("replaced by a new subscription"), "{}", replaced.verdict_reason);
    assert!(replaced.verdict_reason.contains("verify the new receipt"));
}

#[test]
fn a_subscription_renews_under_one_receipt_and_ends_with_its_term_once_turned_off() {
    let setup = setup();
    let expiry = |setup: &Setup| {
        let answer = verify(setup, "vip_monthly", "amzn-vip=:2:1").unwrap();
        (answer.verdict(), answer.purchase.unwrap().expiry_time_unix_millis)
    };
    assert_eq!(expiry(&setup), (Verdict::Valid, NOW + 30 * DAY));
    advance(&setup, 45 * DAY);
    assert_eq!(expiry(&setup), (Verdict::Valid, NOW + 60 * DAY), "renewed: the same receipt, a later renewal");
    assert!(setup.emulator.turn_off_auto_renew("amzn-vip=:2:1"));
    assert_eq!(expiry(&setup), (Verdict::Valid, NOW + 60 * DAY), "paid to the end of the term");
    let raw = setup.emulator.receipt("amzn-vip=:2:1").unwrap();
    assert_eq!((raw["autoRenewing"].clone(), raw["renewalDate"].clone()), (json!(false), json!(null)));
    advance(&setup, 16 * DAY);
    assert_eq!(expiry(&setup), (Verdict::Expired, NOW + 60 * DAY));

    // In a grace period, the subscription lasts through it.
    let fields = json!({
        "productId": "vip_monthly", "productType": "SUBSCRIPTION", "autoRenewing": true,
        "renewalDate": NOW - DAY, "gracePeriodEndDate": NOW + 60 * DAY,
    });
    setup.emulator.add_receipt(receipt("sub-in-grace", fields));
    let answer = verify(&setup, "vip_monthly", "sub-in-grace").unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid);
    assert_eq!(answer.purchase.unwrap().expiry_time_unix_millis, NOW + 60 * DAY);
}

#[test]
fn fulfillment_the_app_reported_is_the_acknowledgement_and_consumption() {
    let setup = setup();
    assert!(setup.emulator.fulfill("amzn-coins=:3:11", "FULFILLED"));
    let purchase = verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap().purchase.unwrap();
    assert_eq!(
        (purchase.consumption_state(), purchase.acknowledgement_state()),
        (ConsumptionState::Consumed, AcknowledgementState::Acknowledged)
    );
    // A result other than FULFILLED makes amazon cancel and refund.
    for result in ["UNAVAILABLE", "EXISTING_PURCHASE", "NOT_ELIGIBLE"] {
        let id = format!("unfulfilled-{result}");
        setup.emulator.add_receipt(receipt(&id, json!({})));
        assert!(setup.emulator.fulfill(&id, result));
        let answer = verify(&setup, "coins_100", &id).unwrap();
        assert_eq!(answer.verdict(), Verdict::Refunded, "{result}");
        assert_eq!(answer.purchase.unwrap().acknowledgement_state(), AcknowledgementState::NotAcknowledged);
    }
}

#[test]
fn test_transactions_are_the_test_environment() {
    let mut config = config();
    config["allow_test_purchases"] = json!(true);
    let allowed = setup_with(config, SECRET);
    let answer = verify(&allowed, "coins_100", "amzn-test=").unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    assert_eq!(answer.purchase.unwrap().environment(), Environment::Test);

    // A Live App Testing purchase is a test too.
    let refused = setup();
    for setup in [&allowed, &refused] {
        setup.emulator.add_receipt(receipt("lat=", json!({"betaProduct": true})));
    }
    assert_eq!(verify(&allowed, "coins_100", "lat=").unwrap().purchase.unwrap().environment(), Environment::Test);
    let answer = verify(&refused, "coins_100", "lat=").unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert!(answer.verdict_reason.contains("live app testing purchase (betaProduct)"), "{}", answer.verdict_reason);
    assert!(answer.verdict_reason.contains("`allow_test_purchases`"));
}

#[test]
fn the_sandbox_store_asks_the_rvs_cloud_sandbox_with_any_secret() {
    let sandboxed = sandbox();
    let setup = &sandboxed;
    let tester = "q1YqVbJSyjH28DGPKChw9c0o-tester-vip";
    // The sandbox names the term sku after the parent sku.
    for product in ["vip_monthly", "vip_monthly_term"] {
        let answer = verify(setup, product, tester).unwrap();
        assert_eq!(answer.verdict(), Verdict::Valid, "{product}: {}", answer.verdict_reason);
        let purchase = answer.purchase.unwrap();
        assert_eq!(purchase.environment(), Environment::Test, "sandbox receipts are test transactions");
        assert_eq!(purchase.expiry_time_unix_millis, NOW + 300_000, "an accelerated 5-minute term");
    }
    assert_eq!(
        setup.kit.requests()[0].url(),
        format!(
            "{ORIGIN}/sandbox/version/1.0/verifyReceiptId/developer/any-sandbox-secret/user/{USER}/receiptId/{tester}"
        )
    );
    assert_eq!((setup.emulator.count("sandbox.verifyReceiptId"), setup.emulator.count("verifyReceiptId")), (2, 0));
    // Production receipts are not the sandbox's, and App Tester receipts not production's.
    assert_eq!(verify(setup, "coins_100", "amzn-coins=:3:11").unwrap().verdict(), Verdict::NotFound);
    assert_eq!(verify(&self::setup(), "vip_monthly", tester).unwrap().verdict(), Verdict::NotFound);
}

#[test]
fn the_secret_and_the_ids_each_travel_as_one_path_segment() {
    let setup = setup();
    // `=` and `:` stay raw as in amazon's examples; `/` and what would end
    // the path are encoded, and the emulator decodes after splitting.
    let odd = "odd/receipt?#% ;,é=:1";
    setup.emulator.add_receipt(receipt(odd, json!({"userId": "user/with spaces="})));
    let answer = setup.kit.verify(request("coins_100", odd, "user/with spaces=")).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    assert_eq!(verify(&setup, "remove_ads", "amzn/remove-ads=").unwrap().verdict(), Verdict::Valid);
    let urls: Vec<String> = setup.kit.requests().iter().map(|request| request.url().to_owned()).collect();
    let developer = format!("{ORIGIN}/version/1.0/verifyReceiptId/developer/{}", SECRET.replace('/', "%2F"));
    assert_eq!(
        urls,
        [
            format!("{developer}/user/user%2Fwith%20spaces=/receiptId/odd%2Freceipt%3F%23%25%20%3B%2C%C3%A9=:1"),
            format!("{developer}/user/{USER}/receiptId/amzn%2Fremove-ads="),
        ]
    );
    assert_eq!(setup.kit.requests()[0].method(), "GET");
    assert!(setup.kit.requests()[0].body_bytes().is_empty());
}

#[test]
fn rvs_errors_are_read_by_status_whatever_the_body() {
    for shape in [ErrorBodies::Message, ErrorBodies::Code] {
        let setup = setup();
        setup.emulator.set_error_bodies(shape);
        assert_eq!(verify(&setup, "coins_100", "never-sold").unwrap().verdict(), Verdict::NotFound, "{shape:?}");
        let mismatch = setup.kit.verify(request("coins_100", "amzn-coins=:3:11", OTHER_USER)).unwrap();
        assert_eq!(mismatch.verdict(), Verdict::UserMismatch, "{shape:?}");
        assert_eq!(verify(&setup, "remove_ads", "amzn-revoked=").unwrap().verdict(), Verdict::Refunded);
        let wrong = setup_with(config(), "2:not-the/secret");
        wrong.emulator.set_error_bodies(shape);
        let err = verify(&wrong, "coins_100", "amzn-coins=:3:11").unwrap_err();
        assert_eq!(
            (err.code(), err.reason(), err.http_status()),
            (Code::Unauthenticated, "INVALID_SHARED_SECRET", 496),
            "{shape:?}"
        );
        assert!(err.message().contains("`stores.test.secrets.shared_secret`"), "{err}");
        assert!(!err.message().contains("not-the"), "the secret is never quoted: {err}");
        assert!(!err.is_retryable());
    }

    // A body that is not json at all: the status still decides.
    let setup = setup();
    for (status, expected) in [(400, Verdict::NotFound), (497, Verdict::UserMismatch), (410, Verdict::Refunded)] {
        setup.emulator.inject(Fault { malformed: true, ..Fault::answering("verifyReceiptId", status, "") });
        assert_eq!(verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap().verdict(), expected, "{status}");
    }
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("verifyReceiptId", 496, "") });
    assert_eq!(verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap_err().reason(), "INVALID_SHARED_SECRET");
    // Statuses RVS does not document (498 and 499 were the legacy API's).
    for status in [404, 401, 498, 499] {
        setup.emulator.inject(Fault::answering("verifyReceiptId", status, "Not here"));
        let err = verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap_err();
        assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Internal, "UNEXPECTED_RESPONSE", status));
        assert!(err.message().contains("\"Not here\""), "amazon's message is context: {err}");
        assert!(err.message().contains("`stores.test.config.api_root`"), "{err}");
    }
    assert_eq!(setup.emulator.count("verifyReceiptId"), 8, "none of these is retried");
}

#[test]
fn answers_iapd_cannot_read_are_malformed_response() {
    let setup = setup();
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("verifyReceiptId", 200, "") });
    let err = verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Internal, "MALFORMED_RESPONSE", 200));
    setup.emulator.add_receipt(receipt("odd-type", json!({"productType": "BUNDLE"})));
    let err = verify(&setup, "coins_100", "odd-type").unwrap_err();
    assert_eq!(err.reason(), "MALFORMED_RESPONSE");
    assert!(err.message().contains("productType \"BUNDLE\""), "{err}");

    // RVS's dates are numbers: a string where a number belongs is not guessed at.
    let mut body = setup.emulator.receipt("amzn-coins=:3:11").unwrap();
    body["purchaseDate"] = json!(NOW.to_string());
    let kit = kit::builder()
        .config_json(config().to_string())
        .secret("shared_secret", SECRET)
        .allow_origin(ORIGIN)
        .http(move |_| HttpResponse::new(200, body.to_string()))
        .build::<Amazon>()
        .unwrap();
    let err = kit.verify(request("coins_100", "amzn-coins=:3:11", USER)).unwrap_err();
    assert_eq!(err.reason(), "MALFORMED_RESPONSE");
    assert!(err.message().contains("expected Receipt"), "{err}");
}

#[test]
fn throttling_failures_and_timeouts_are_retried() {
    let setup = setup();
    setup.emulator.inject(Fault { retry_after_secs: Some(1), ..Fault::answering("verifyReceiptId", 429, "") });
    let before = setup.kit.now_unix_millis();
    assert_eq!(verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.kit.now_unix_millis() - before, 1_000, "Retry-After honoured");
    assert_eq!(setup.emulator.count("verifyReceiptId"), 2);

    setup.emulator.inject(Fault { times: 2, ..Fault::answering("verifyReceiptId", 503, "") });
    assert_eq!(verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("verifyReceiptId"), 5);

    setup.emulator.inject(Fault { times: 4, ..Fault::answering("verifyReceiptId", 500, "") });
    let err = verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Unavailable, "UPSTREAM_ERROR", 500));
    assert!(err.is_retryable());
    assert!(err.message().contains("\"Internal server error\""), "{err}");
    assert_eq!(setup.emulator.count("verifyReceiptId"), 9, "four attempts");

    setup.emulator.inject(Fault {
        times: 4,
        retry_after_secs: Some(1),
        ..Fault::answering("verifyReceiptId", 429, "")
    });
    let err = verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::ResourceExhausted, "THROTTLED"));
    assert_eq!(err.retry_after_delay(), Some(std::time::Duration::from_secs(1)));

    // A Retry-After past `max_retry_after_ms` goes to the caller at once.
    setup.emulator.inject(Fault { retry_after_secs: Some(60), ..Fault::answering("verifyReceiptId", 429, "") });
    let err = verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap_err();
    assert_eq!(err.retry_after_delay(), Some(std::time::Duration::from_secs(60)));
    assert_eq!(setup.emulator.count("verifyReceiptId"), 14);

    // The first attempt times out at the host; the second answers.
    let emulator = Arc::new(Emulator::with_default_state());
    let kit = kit::builder()
        .config_json(config().to_string())
        .secret("shared_secret", SECRET)
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        .fail_first(1, Code::DeadlineExceeded)
        .build::<Amazon>()
        .unwrap();
    assert_eq!(kit.verify(request("coins_100", "amzn-coins=:3:11", USER)).unwrap().verdict(), Verdict::Valid);
    assert_eq!(kit.requests().len(), 2);

    // Every attempt timing out, or RVS unreachable: the host's error, after the retries.
    for (code, reason) in [(Code::DeadlineExceeded, "UPSTREAM_TIMEOUT"), (Code::Unavailable, "UPSTREAM_UNREACHABLE")] {
        let kit = kit::builder()
            .config_json(config().to_string())
            .secret("shared_secret", SECRET)
            .allow_origin(ORIGIN)
            .fail_first(4, code)
            .build::<Amazon>()
            .unwrap();
        let err = kit.verify(request("coins_100", "amzn-coins=:3:11", USER)).unwrap_err();
        assert_eq!((err.code(), err.reason()), (code, reason), "{err}");
        assert_eq!(kit.requests().len(), 4, "{reason}: four attempts");
    }
}

#[test]
fn concurrent_identical_verifies_share_one_request() {
    let setup = setup();
    // The first lookup answers slowly: all twenty calls overlap it.
    setup.emulator.inject(Fault { operation: Some("verifyReceiptId".into()), delay_ms: 2_000, ..Fault::default() });
    let started = setup.kit.now_unix_millis();
    let answers = setup.kit.verify_concurrently(&vec![request("coins_100", "amzn-coins=:3:11", USER); 20]);
    assert_eq!(answers.len(), 20);
    assert!(answers.into_iter().all(|answer| answer.unwrap().verdict() == Verdict::Valid));
    assert_eq!(setup.emulator.count("verifyReceiptId"), 1, "20 identical verifies, 1 request to rvs");
    assert!(setup.kit.now_unix_millis() - started >= 2_000, "all waited for the one slow answer");

    // The product is judged per caller, on a shared answer; another user is another request.
    setup.emulator.inject(Fault { operation: Some("verifyReceiptId".into()), delay_ms: 500, ..Fault::default() });
    let answers = setup.kit.verify_concurrently(&[
        request("coins_100", "amzn-coins=:3:11", USER),
        request("coins_500", "amzn-coins=:3:11", USER),
        request("coins_100", "amzn-coins=:3:11", OTHER_USER),
    ]);
    let verdicts: Vec<Verdict> = answers.into_iter().map(|answer| answer.unwrap().verdict()).collect();
    assert_eq!(verdicts, [Verdict::Valid, Verdict::Invalid, Verdict::UserMismatch]);
    assert_eq!(setup.emulator.count("verifyReceiptId"), 3);
    // Once answered, nothing is cached.
    verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap();
    assert_eq!(setup.emulator.count("verifyReceiptId"), 4);
}

#[test]
fn the_proof_is_a_receipt_with_only_the_user_id_as_store_parameter() {
    let setup = setup();
    let ask = |proof: Option<proto::Proof>, app_id: &str| {
        setup.kit.verify(proto::VerifyRequest {
            app_id: app_id.into(),
            product_id: "coins_100".into(),
            proof,
            user_id: String::new(),
        })
    };
    let cases = [
        (
            proof("amzn-coins=:3:11", &[]),
            PACKAGE,
            Code::InvalidArgument,
            "MISSING_STORE_PARAMETER",
            "`user_id` is missing",
        ),
        (
            proof("amzn-coins=:3:11", &[("user_id", "")]),
            PACKAGE,
            Code::InvalidArgument,
            "MISSING_STORE_PARAMETER",
            "getUserId()",
        ),
        (
            proof("amzn-coins=:3:11", &[("user_id", USER), ("rvs_url", "http://169.254.169.254/")]),
            PACKAGE,
            Code::InvalidArgument,
            "UNKNOWN_STORE_PARAMETER",
            "`rvs_url` is not accepted; only `user_id`",
        ),
        (proof("", &[("user_id", USER)]), PACKAGE, Code::InvalidArgument, "UNSUPPORTED_PROOF", "a `receipt`"),
        (
            Some(proto::Proof {
                kind: Some(proto::proof::Kind::PurchaseToken("amzn-coins=:3:11".into())),
                ..Default::default()
            }),
            PACKAGE,
            Code::InvalidArgument,
            "UNSUPPORTED_PROOF",
            "`store_parameters.user_id`",
        ),
        (None, PACKAGE, Code::InvalidArgument, "UNSUPPORTED_PROOF", "a `receipt`"),
        (
            proof("amzn-coins=:3:11", &[("user_id", USER)]),
            "com.other.app",
            Code::PermissionDenied,
            "PACKAGE_NOT_ALLOWED",
            "com.other.app",
        ),
    ];
    for (proof, app_id, code, reason, says) in cases {
        let err = ask(proof, app_id).unwrap_err();
        assert_eq!((err.code(), err.reason()), (code, reason), "{err}");
        assert!(err.message().contains(says), "{err}");
    }
    assert!(setup.kit.requests().is_empty(), "nothing is asked of amazon for a request iapd refuses");
}

#[test]
fn amazon_has_no_server_acknowledge_or_consume() {
    assert_eq!(Amazon::CAPABILITIES, CAP_VERIFY | CAP_LIST_ITEMS);
    let setup = setup();
    let err = setup
        .kit
        .acknowledge(proto::AcknowledgeRequest {
            app_id: PACKAGE.into(),
            product_id: "remove_ads".into(),
            proof: proof("amzn/remove-ads=", &[("user_id", USER)]),
            developer_payload: String::new(),
        })
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    let err = setup
        .kit
        .consume(proto::ConsumeRequest {
            app_id: PACKAGE.into(),
            product_id: "coins_100".into(),
            proof: proof("amzn-coins=:3:11", &[("user_id", USER)]),
        })
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(setup.kit.requests().is_empty());
}

#[test]
fn the_catalog_comes_from_the_config() {
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
    let second = page(ProductKind::Unspecified, 2, &first.next_page_token).unwrap();
    let ids: Vec<String> =
        [first.items, second.items.clone()].concat().into_iter().map(|item| item.product_id).collect();
    assert_eq!(ids, ["coins_100", "remove_ads", "vip_monthly"]);
    assert!(second.next_page_token.is_empty());
    let coins = &page(ProductKind::Consumable, 0, "").unwrap().items[0];
    assert_eq!((coins.price_currency_code.as_str(), coins.price_amount_micros), ("USD", 990_000));
    let err = setup
        .kit
        .list_items(proto::ListItemsRequest { app_id: "com.other.app".into(), ..Default::default() })
        .unwrap_err();
    assert_eq!(err.reason(), "PACKAGE_NOT_ALLOWED");
    assert!(setup.kit.requests().is_empty(), "amazon has no catalog api: nothing is sent");
}

#[test]
fn configuration_errors_name_the_key_and_never_the_secret() {
    let fails = |config: serde_json::Value, secret: Option<&str>| {
        let mut builder = kit::builder().config_json(config.to_string());
        if let Some(secret) = secret {
            builder = builder.secret("shared_secret", secret);
        }
        builder.build::<Amazon>().unwrap_err()
    };
    let err = fails(config(), Some(" \n"));
    assert!(err.message().contains("`stores.test.secrets.shared_secret` is empty"), "{err}");
    let err = fails(config(), None);
    assert!(err.message().contains("secret `shared_secret` is not configured"), "{err}");
    let mut wrong = config();
    wrong["environment"] = json!("staging");
    let err = fails(wrong, Some(SECRET));
    assert!(err.message().contains("`stores.test.config.environment`"), "{err}");
    assert!(err.message().contains("unknown variant `staging`"), "{err}");
    let err = fails(json!({"packages": []}), Some(SECRET));
    assert!(err.message().contains("`stores.test.config.packages`"), "{err}");
    let mut query = config();
    query["api_root"] = json!("https://appstore-sdk.amazon.com/?x=1");
    assert!(fails(query, Some(SECRET)).message().contains("`stores.test.config.api_root`"));
    // A secret file's final newline is not part of the secret.
    let setup = setup_with(config(), &format!("{SECRET}\n"));
    assert_eq!(verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap().verdict(), Verdict::Valid);
}

#[test]
fn nothing_the_plugin_writes_holds_the_secret() {
    let setup = setup();
    let wrong = setup_with(config(), &SECRET.replace("2:", "2:x"));
    let mut written = Vec::new();
    for (setup, product, receipt_id) in [
        (&setup, "coins_100", "amzn-coins=:3:11"),
        (&setup, "coins_500", "amzn-coins=:3:11"),
        (&setup, "coins_100", "never-sold"),
        (&setup, "coins_100", "amzn-refunded=:1:1"),
        (&wrong, "coins_100", "amzn-coins=:3:11"),
    ] {
        match verify(setup, product, receipt_id) {
            Ok(answer) => {
                written.push(answer.verdict_reason);
                written.extend(answer.purchase.map(|purchase| purchase.raw_store_response));
            }
            Err(err) => written.push(err.message().to_owned()),
        }
    }
    setup.emulator.inject(Fault { times: 4, ..Fault::answering("verifyReceiptId", 503, "") });
    written.push(verify(&setup, "coins_100", "amzn-coins=:3:11").unwrap_err().message().to_owned());
    for kit_logs in [setup.kit.logs(), wrong.kit.logs()] {
        written.extend(kit_logs.into_iter().map(|(_, line)| line));
    }
    assert!(written.iter().any(|text| text.contains("retrying")), "the retries were logged: {written:?}");
    for text in &written {
        assert!(!leaks_secret(text), "the secret leaked: {text}");
    }
}
