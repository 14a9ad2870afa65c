#![allow(clippy::unwrap_used)]

//! The store against the Google Play emulator, in-process through the SDK's
//! kit: every purchase state and field, every error row of Google's table,
//! acknowledge/consume idempotency, token caching, retries and the catalog.

use std::sync::Arc;
use std::time::Duration;

use iapd_emulators::Fault;
use iapd_emulators::google_play::{GooglePlay as Emulator, SeedPurchase};
use iapd_sdk_plugin::kit::{self, Kit};
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use serde_json::json;

use crate::GooglePlay;

const ORIGIN: &str = "http://play.test";
const PACKAGE: &str = "com.example.game";
const KEY: &str = include_str!("../../../tests/fixtures/google-play/service-account.json");
const UNTRUSTED_KEY: &str = include_str!("../../../tests/fixtures/google-play/untrusted-service-account.json");

struct Setup {
    emulator: Arc<Emulator>,
    kit: Kit<GooglePlay>,
}

fn key_for(key: &str, token_uri: &str) -> String {
    let mut key: serde_json::Value = serde_json::from_str(key).unwrap();
    key["token_uri"] = json!(token_uri);
    key.to_string()
}

fn setup_with(config: serde_json::Value, key: &str) -> Setup {
    let emulator = Arc::new(Emulator::with_default_state());
    emulator.add_service_account(KEY).unwrap();
    let builder = kit::builder()
        .now_unix_millis(1_767_225_600_000)
        .config_json(config.to_string())
        .secret("service_account", key_for(key, &format!("{ORIGIN}/token")))
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()));
    emulator.set_clock(1_767_225_600_000);
    Setup { emulator, kit: builder.build::<GooglePlay>().unwrap() }
}

fn config() -> serde_json::Value {
    json!({
        "packages": [PACKAGE],
        "api_root": ORIGIN,
        "consumable_products": ["coins_100"],
        "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 40},
    })
}

fn setup() -> Setup {
    setup_with(config(), KEY)
}

fn proof(token: &str) -> Option<proto::Proof> {
    Some(proto::Proof { kind: Some(proto::proof::Kind::PurchaseToken(token.to_owned())), ..Default::default() })
}

fn verify_as(setup: &Setup, product: &str, token: &str, user: &str) -> Result<proto::VerifyResponse, PluginError> {
    setup.kit.verify(proto::VerifyRequest {
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: proof(token),
        user_id: user.into(),
    })
}

fn verify(setup: &Setup, product: &str, token: &str) -> Result<proto::VerifyResponse, PluginError> {
    verify_as(setup, product, token, "")
}

fn acknowledge(setup: &Setup, product: &str, token: &str, payload: &str) -> Result<bool, PluginError> {
    setup
        .kit
        .acknowledge(proto::AcknowledgeRequest {
            app_id: PACKAGE.into(),
            product_id: product.into(),
            proof: proof(token),
            developer_payload: payload.into(),
        })
        .map(|answer| answer.already_acknowledged)
}

fn consume(setup: &Setup, product: &str, token: &str) -> Result<bool, PluginError> {
    setup
        .kit
        .consume(proto::ConsumeRequest { app_id: PACKAGE.into(), product_id: product.into(), proof: proof(token) })
        .map(|answer| answer.already_consumed)
}

fn add_purchase(setup: &Setup, token: &str, product: &str, fields: serde_json::Value) {
    let mut purchase = json!({"packageName": PACKAGE, "productId": product, "purchaseToken": token});
    purchase.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    setup.emulator.add_purchase(serde_json::from_value::<SeedPurchase>(purchase).unwrap());
}

#[test]
fn every_purchase_state_is_a_verdict() {
    let setup = setup();
    add_purchase(
        &setup,
        "gp-refunded",
        "coins_100",
        json!({"purchaseState": 0, "quantity": 1, "refundableQuantity": 0}),
    );
    let table = [
        ("gp-purchased", "coins_100", Verdict::Valid, PurchaseState::Purchased),
        ("gp-pending", "coins_100", Verdict::Pending, PurchaseState::Pending),
        ("gp-canceled", "coins_100", Verdict::Canceled, PurchaseState::Canceled),
        ("gp-refunded", "coins_100", Verdict::Refunded, PurchaseState::Refunded),
        ("gp-consumed", "coins_100", Verdict::Valid, PurchaseState::Purchased),
        ("gp-test", "coins_100", Verdict::Valid, PurchaseState::Purchased),
    ];
    for (token, product, verdict, state) in table {
        let answer = verify(&setup, product, token).unwrap();
        assert_eq!(answer.verdict(), verdict, "{token}: {}", answer.verdict_reason);
        assert_eq!(answer.purchase.unwrap().state(), state, "{token}");
    }
    // A token past Google's retention: expired, as a verdict; for a write it is not found.
    setup.emulator.inject(Fault::answering("products.get", 410, "purchaseTokenNoLongerValid"));
    let expired = verify(&setup, "coins_100", "gp-purchased").unwrap();
    assert_eq!(expired.verdict(), Verdict::Expired, "{}", expired.verdict_reason);
    setup.emulator.inject(Fault::answering("products.get", 410, "purchaseTokenNoLongerValid"));
    let err = consume(&setup, "coins_100", "gp-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::NotFound, "purchaseTokenNoLongerValid"));

    let unknown = verify(&setup, "coins_100", "never-sold").unwrap();
    assert_eq!(unknown.verdict(), Verdict::NotFound, "google's 404 is the verdict that a purchase never happened");
    assert!(unknown.verdict_reason.contains("notFound"), "{}", unknown.verdict_reason);
    assert!(unknown.purchase.is_none());
}

#[test]
fn every_product_purchase_field_is_mapped() {
    let setup = setup();
    add_purchase(
        &setup,
        "gp-full",
        "coins_100",
        json!({
            "purchaseTimeMillis": "1767225600123", "purchaseState": 0, "consumptionState": 1,
            "developerPayload": "grant-7", "orderId": "GPA.1234-5678-9012-34567", "acknowledgementState": 1,
            "quantity": 3, "refundableQuantity": 3, "obfuscatedExternalAccountId": "acct-1",
            "obfuscatedExternalProfileId": "profile-1", "regionCode": "JP",
        }),
    );
    let answer = verify(&setup, "coins_100", "gp-full").unwrap();
    let purchase = answer.purchase.unwrap();
    assert_eq!(purchase.purchase_time_unix_millis, 1_767_225_600_123);
    assert_eq!(purchase.consumption_state(), ConsumptionState::Consumed);
    assert_eq!(purchase.acknowledgement_state(), AcknowledgementState::Acknowledged);
    assert_eq!(purchase.developer_payload, "grant-7");
    assert_eq!(purchase.order_id, "GPA.1234-5678-9012-34567");
    assert_eq!(purchase.quantity, 3);
    assert_eq!(purchase.account_binding, "acct-1");
    assert_eq!(purchase.region_code, "JP");
    assert_eq!(purchase.kind(), ProductKind::Consumable);
    assert_eq!(purchase.environment(), Environment::Production);
    let raw: serde_json::Value = serde_json::from_str(&purchase.raw_store_response).unwrap();
    assert_eq!(raw["orderId"], "GPA.1234-5678-9012-34567", "the store's answer is kept for audit");

    // Absent fields: quantity 1, not acknowledged, not consumed; the profile
    // id binds when there is no account id.
    add_purchase(&setup, "gp-sparse", "remove_ads", json!({"purchaseState": 0, "obfuscatedExternalProfileId": "p-9"}));
    let purchase = verify(&setup, "remove_ads", "gp-sparse").unwrap().purchase.unwrap();
    assert_eq!(purchase.quantity, 1);
    assert_eq!(purchase.acknowledgement_state(), AcknowledgementState::NotAcknowledged);
    assert_eq!(purchase.consumption_state(), ConsumptionState::NotConsumed);
    assert_eq!(purchase.kind(), ProductKind::NonConsumable, "not in consumable_products");
    assert_eq!(purchase.account_binding, "p-9");
    assert_eq!(purchase.purchase_time_unix_millis, 0);

    // purchaseType: 0 test, 1 promo, 2 rewarded.
    for (purchase_type, environment, kind) in [
        (0, Environment::Test, ProductKind::NonConsumable),
        (1, Environment::Production, ProductKind::NonConsumable),
        (2, Environment::Production, ProductKind::Consumable),
    ] {
        let token = format!("gp-type-{purchase_type}");
        add_purchase(&setup, &token, "remove_ads", json!({"purchaseState": 0, "purchaseType": purchase_type}));
        let purchase = verify(&setup, "remove_ads", &token).unwrap().purchase.unwrap();
        assert_eq!((purchase.environment(), purchase.kind()), (environment, kind), "purchaseType {purchase_type}");
    }

    // An unknown purchaseState fails closed.
    add_purchase(&setup, "gp-odd", "coins_100", json!({"purchaseState": 7}));
    let err = verify(&setup, "coins_100", "gp-odd").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Internal, "MALFORMED_RESPONSE"), "{err}");
}

#[test]
fn test_purchases_can_be_refused() {
    let mut config = config();
    config["allow_test_purchases"] = json!(false);
    let setup = setup_with(config, KEY);
    let answer = verify(&setup, "coins_100", "gp-test").unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert!(answer.verdict_reason.contains("allow_test_purchases"), "{}", answer.verdict_reason);
    assert_eq!(verify(&setup, "coins_100", "gp-purchased").unwrap().verdict(), Verdict::Valid);
}

#[test]
fn the_account_binding_is_compared_with_the_user() {
    let setup = setup();
    assert_eq!(verify_as(&setup, "coins_100", "gp-purchased", "user-42").unwrap().verdict(), Verdict::Valid);
    let other = verify_as(&setup, "coins_100", "gp-purchased", "user-7").unwrap();
    assert_eq!(other.verdict(), Verdict::UserMismatch);
    assert_eq!(other.purchase.unwrap().account_binding, "user-42");
    // No binding on the purchase: nothing to compare.
    assert_eq!(verify_as(&setup, "remove_ads", "gp-remove-ads", "user-7").unwrap().verdict(), Verdict::Valid);

    let mut config = config();
    config["account_id_hash"] = json!("sha256");
    let setup = setup_with(config, KEY);
    // sha256("user-42"), as `printf user-42 | sha256sum` prints it.
    let hex = "6d894aa3ee802549d7f340e7c1cf0d1c1cb14cd84f768d92ffaa6785337c4997";
    add_purchase(&setup, "gp-hashed", "coins_100", json!({"purchaseState": 0, "obfuscatedExternalAccountId": hex}));
    assert_eq!(verify_as(&setup, "coins_100", "gp-hashed", "user-42").unwrap().verdict(), Verdict::Valid);
    assert_eq!(verify_as(&setup, "coins_100", "gp-hashed", "user-43").unwrap().verdict(), Verdict::UserMismatch);
}

#[test]
fn every_error_row_maps_to_a_documented_code() {
    // (HTTP status, Google's reason, code for Verify) — Google's error table
    // for purchases.products plus the observed variants.
    let table = [
        (400, "invalidPurchaseState", Code::FailedPrecondition),
        (400, "invalidValue", Code::InvalidArgument),
        (400, "invalid", Code::InvalidArgument),
        (400, "productNotOwnedByUser", Code::FailedPrecondition),
        (400, "purchaseTokenMismatch", Code::InvalidArgument),
        (400, "purchaseTokenDoesNotMatchProductId", Code::InvalidArgument),
        (400, "purchaseTokenDoesNotMatchPackageName", Code::InvalidArgument),
        (400, "required", Code::InvalidArgument),
        (400, "unsupportedIabType", Code::FailedPrecondition),
        (403, "userInsufficientPermission", Code::PermissionDenied),
        (404, "applicationNotFound", Code::NotFound),
    ];
    let setup = setup();
    for (status, reason, code) in table {
        setup.emulator.inject(Fault::answering("products.get", status, reason));
        let err = verify(&setup, "coins_100", "gp-purchased").unwrap_err();
        assert_eq!((err.code(), err.reason(), err.http_status()), (code, reason, status), "{reason}: {err}");
        assert!(!err.is_retryable(), "{reason} is not worth retrying");
    }
    // Without a fault the same call succeeds: the faults caused the errors.
    assert_eq!(verify(&setup, "coins_100", "gp-purchased").unwrap().verdict(), Verdict::Valid);

    // The emulator's own answers for real mismatches.
    let err = verify(&setup, "remove_ads", "gp-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "purchaseTokenDoesNotMatchProductId"));
    let err = verify(&setup, "vip", "gp-subscription").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "unsupportedIabType"));
    let err = verify(&setup, "coins_100", "bad token!").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "invalidValue"));
}

#[test]
fn transient_errors_are_retried_and_counted_at_the_store() {
    let setup = setup();
    // 409 once, then success.
    setup.emulator.inject(Fault::answering("products.get", 409, "concurrentUpdate"));
    assert_eq!(verify(&setup, "coins_100", "gp-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("products.get"), 2);

    // 5xx twice, then success.
    setup.emulator.inject(Fault { times: 2, ..Fault::answering("products.get", 503, "") });
    assert_eq!(verify(&setup, "coins_100", "gp-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("products.get"), 5);

    // Always 500: four attempts (the configured default), then UNAVAILABLE.
    setup.emulator.inject(Fault { times: 100, ..Fault::answering("products.get", 500, "backendError") });
    let err = verify(&setup, "coins_100", "gp-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason(), err.is_retryable()), (Code::Unavailable, "backendError", true), "{err}");
    assert_eq!(setup.emulator.count("products.get"), 9);

    // Always 409: ABORTED after the same four attempts.
    let setup = self::setup();
    setup.emulator.inject(Fault { times: 100, ..Fault::answering("products.get", 409, "concurrentUpdate") });
    let before = setup.kit.now_unix_millis();
    let err = verify(&setup, "coins_100", "gp-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Aborted, "concurrentUpdate"), "{err}");
    assert_eq!(setup.emulator.count("products.get"), 4);
    assert!(setup.kit.now_unix_millis() > before, "the retries waited (backoff) on the host's timers");
}

#[test]
fn retry_after_is_honoured_or_handed_to_the_caller() {
    let setup = setup();
    setup
        .emulator
        .inject(Fault { retry_after_secs: Some(2), ..Fault::answering("products.get", 429, "rateLimitExceeded") });
    let before = setup.kit.now_unix_millis();
    assert_eq!(verify(&setup, "coins_100", "gp-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.kit.now_unix_millis() - before, 2_000, "waited exactly what Retry-After asked");
    assert_eq!(setup.emulator.count("products.get"), 2);

    // Longer than max_retry_after_ms (5 s): no wait, the caller gets the delay.
    setup
        .emulator
        .inject(Fault { retry_after_secs: Some(60), ..Fault::answering("products.get", 429, "rateLimitExceeded") });
    let err = verify(&setup, "coins_100", "gp-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::ResourceExhausted, "rateLimitExceeded"), "{err}");
    assert_eq!(err.retry_after_delay(), Some(Duration::from_secs(60)));
    assert_eq!(setup.emulator.count("products.get"), 3);
}

#[test]
fn malformed_and_foreign_answers_are_internal_errors() {
    let setup = setup();
    // Malformed JSON from every API the store parses: the purchase (for
    // Verify, and the read before a Consume), the catalog, the token endpoint.
    let mut errors = Vec::new();
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("products.get", 200, "") });
    errors.push(("products.get", "ProductPurchase", verify(&setup, "coins_100", "gp-purchased").unwrap_err()));
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("products.get", 200, "") });
    errors.push(("consume's read", "ProductPurchase", consume(&setup, "coins_100", "gp-purchased").unwrap_err()));
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("oneTimeProducts.list", 200, "") });
    let listed =
        setup.kit.list_items(proto::ListItemsRequest { app_id: PACKAGE.into(), ..Default::default() }).unwrap_err();
    errors.push(("oneTimeProducts.list", "CatalogListing", listed));
    let fresh = self::setup();
    fresh.emulator.inject(Fault { malformed: true, ..Fault::answering("token", 200, "") });
    errors.push(("token", "TokenResponse", verify(&fresh, "coins_100", "gp-purchased").unwrap_err()));
    for (what, expected, err) in errors {
        assert_eq!(
            (err.code(), err.reason(), err.http_status()),
            (Code::Internal, "MALFORMED_RESPONSE", 200),
            "{what}: {err}"
        );
        assert!(err.message().contains(&format!("malformed json: expected {expected}")), "{what}: {err}");
    }

    // A 404 that is not Google's envelope (a wrong api_root) is no verdict.
    let mut config = config();
    config["api_root"] = json!(format!("{ORIGIN}/wrong"));
    let setup = setup_with(config, KEY);
    let err = verify(&setup, "coins_100", "gp-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Internal, "UNEXPECTED_RESPONSE", 404), "{err}");
}

#[test]
fn acknowledge_and_consume_are_idempotent_for_the_caller() {
    let setup = setup();
    assert!(!acknowledge(&setup, "coins_100", "gp-purchased", "grant-1").unwrap(), "first acknowledge does it");
    assert!(acknowledge(&setup, "coins_100", "gp-purchased", "").unwrap(), "second says it was done");
    let stored = setup.emulator.purchase("gp-purchased").unwrap();
    assert_eq!(
        (stored["acknowledgementState"].clone(), stored["developerPayload"].clone()),
        (json!(1), json!("grant-1"))
    );

    assert!(!consume(&setup, "coins_100", "gp-purchased").unwrap());
    assert!(consume(&setup, "coins_100", "gp-purchased").unwrap());
    assert_eq!(setup.emulator.purchase("gp-purchased").unwrap()["consumptionState"], json!(1));
    let purchase = verify(&setup, "coins_100", "gp-purchased").unwrap().purchase.unwrap();
    assert_eq!(purchase.consumption_state(), ConsumptionState::Consumed);

    // Acknowledging a consumed purchase is Google's invalid-state refusal.
    let err = acknowledge(&setup, "coins_100", "gp-purchased", "").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "invalidPurchaseState"), "{err}");
}

#[test]
fn acknowledge_and_consume_refusals_carry_googles_reason() {
    let setup = setup();
    let table: [(&str, &str, Code, &str); 6] = [
        ("acknowledge", "gp-canceled", Code::FailedPrecondition, "productNotOwnedByUser"),
        ("acknowledge", "gp-pending", Code::FailedPrecondition, "invalidPurchaseState"),
        ("consume", "gp-canceled", Code::FailedPrecondition, "productNotOwnedByUser"),
        ("consume", "gp-pending", Code::FailedPrecondition, "invalidPurchaseState"),
        ("acknowledge", "never-sold", Code::NotFound, "notFound"),
        ("consume", "never-sold", Code::NotFound, "notFound"),
    ];
    for (operation, token, code, reason) in table {
        let err = match operation {
            "acknowledge" => acknowledge(&setup, "coins_100", token, "").unwrap_err(),
            _ => consume(&setup, "coins_100", token).unwrap_err(),
        };
        assert_eq!((err.code(), err.reason()), (code, reason), "{operation} {token}: {err}");
    }
    let err = consume(&setup, "vip", "gp-subscription").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "unsupportedIabType"));

    // A concurrent acknowledge between our read and our write: Google says
    // invalidPurchaseState, a fresh read shows it acknowledged, so it is done.
    setup.emulator.inject(Fault::answering("products.acknowledge", 400, "invalidPurchaseState"));
    add_purchase(&setup, "gp-raced", "remove_ads", json!({"purchaseState": 0, "acknowledgementState": 0}));
    let err = acknowledge(&setup, "remove_ads", "gp-raced", "").unwrap_err();
    assert_eq!(err.reason(), "invalidPurchaseState", "still unacknowledged on re-read: the refusal stands");
}

#[test]
fn one_access_token_serves_many_calls_until_it_expires_or_is_revoked() {
    let setup = setup();
    for _ in 0..5 {
        verify(&setup, "coins_100", "gp-purchased").unwrap();
    }
    assert_eq!(setup.emulator.count("token"), 1, "cached");
    assert_eq!(setup.emulator.count("products.get"), 5);

    // Near expiry (3599 s, refreshed a minute early) a new token is fetched.
    setup.kit.advance_clock(3_540_000);
    setup.emulator.set_clock(setup.kit.now_unix_millis());
    verify(&setup, "coins_100", "gp-purchased").unwrap();
    assert_eq!(setup.emulator.count("token"), 2, "refreshed before expiry");

    // Revoked: one 401, one refresh, and the call still succeeds.
    setup.emulator.revoke_tokens();
    verify(&setup, "coins_100", "gp-purchased").unwrap();
    assert_eq!(setup.emulator.count("token"), 3);
    assert_eq!(setup.emulator.count("products.get"), 8, "one refused, one retried");

    // A 401 even with a fresh token is the store's refusal.
    setup.emulator.inject(Fault { times: 2, ..Fault::answering("products.get", 401, "authError") });
    let err = verify(&setup, "coins_100", "gp-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Unauthenticated, "authError"), "{err}");
    assert_eq!(setup.emulator.count("token"), 4, "exactly one refresh after a 401");
}

#[test]
fn a_401_refreshes_the_token_only_when_google_refused_the_token() {
    // Google's 401 `permissionDenied`: the service account is not linked to
    // the app. No new token changes that, so the shared one is kept.
    let setup = setup();
    setup.emulator.inject(Fault { times: 2, ..Fault::answering("products.get", 401, "permissionDenied") });
    for call in 1..=2 {
        let err = verify(&setup, "coins_100", "gp-purchased").unwrap_err();
        assert_eq!(
            (err.code(), err.reason(), err.http_status()),
            (Code::PermissionDenied, "permissionDenied", 401),
            "{err}"
        );
        assert!(!err.is_retryable());
        assert_eq!(setup.emulator.count("products.get"), call, "asked exactly once per call");
        assert_eq!(setup.emulator.count("token"), 1, "no second token fetch");
    }
    // Once the app is granted, the same token serves.
    verify(&setup, "coins_100", "gp-purchased").unwrap();
    assert_eq!(setup.emulator.count("token"), 1, "the shared token is still in use");

    // Google's 401 `authError` (with WWW-Authenticate invalid_token): one
    // fresh token, and the call succeeds.
    setup.emulator.inject(Fault::answering("products.get", 401, "authError"));
    assert_eq!(verify(&setup, "coins_100", "gp-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!((setup.emulator.count("products.get"), setup.emulator.count("token")), (5, 2));

    // An envelope naming no reason, only status UNAUTHENTICATED (as some
    // Google APIs answer a bad token), refreshes too.
    let emulator = Arc::new(Emulator::with_default_state());
    emulator.add_service_account(KEY).unwrap();
    emulator.set_clock(1_767_225_600_000);
    let answers = iapd_emulators::kit_handler(emulator.clone());
    let bare_401_sent = std::sync::atomic::AtomicBool::new(false);
    let kit = kit::builder()
        .now_unix_millis(1_767_225_600_000)
        .config_json(config().to_string())
        .secret("service_account", key_for(KEY, &format!("{ORIGIN}/token")))
        .allow_origin(ORIGIN)
        .http(move |request| {
            let is_get = request.url().contains("/tokens/") && request.method() == "GET";
            if is_get && !bare_401_sent.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let body = json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}});
                return kit::Answer::from(HttpResponse::new(401, body.to_string()));
            }
            answers(request)
        })
        .build::<GooglePlay>()
        .unwrap();
    let answer = kit
        .verify(proto::VerifyRequest {
            app_id: PACKAGE.into(),
            product_id: "coins_100".into(),
            proof: proof("gp-purchased"),
            user_id: String::new(),
        })
        .unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid);
    assert_eq!(emulator.count("token"), 2, "refreshed once after the bare 401");
}

#[test]
fn concurrent_identical_verifies_share_one_request() {
    let setup = setup();
    setup.emulator.inject(Fault { operation: Some("products.get".into()), delay_ms: 2_000, ..Fault::default() });
    let request = proto::VerifyRequest {
        app_id: PACKAGE.into(),
        product_id: "coins_100".into(),
        proof: proof("gp-purchased"),
        user_id: String::new(),
    };
    for answer in setup.kit.verify_concurrently(&vec![request; 20]) {
        assert_eq!(answer.unwrap().verdict(), Verdict::Valid);
    }
    assert_eq!((setup.emulator.count("products.get"), setup.emulator.count("token")), (1, 1));
}

#[test]
fn the_assertion_is_checked_by_the_token_endpoint() {
    let setup = setup_with(config(), UNTRUSTED_KEY);
    let err = verify(&setup, "coins_100", "gp-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Unauthenticated, "invalid_grant"), "{err}");
    assert!(err.message().contains("intruder@elsewhere.iam.gserviceaccount.com"), "{err}");
    assert!(!err.message().contains("PRIVATE KEY"), "no key material in errors");
    assert_eq!(setup.emulator.count("products.get"), 0, "no API call without a token");

    // The token endpoint's 5xx are retried like the API's.
    let setup = self::setup();
    setup.emulator.inject(Fault::answering("token", 503, ""));
    verify(&setup, "coins_100", "gp-purchased").unwrap();
    assert_eq!(setup.emulator.count("token"), 2);
}

#[test]
fn only_configured_packages_are_served_and_google_is_not_asked_for_others() {
    let setup = setup();
    let err = setup
        .kit
        .verify(proto::VerifyRequest {
            app_id: "com.other.app".into(),
            product_id: "coins_100".into(),
            proof: proof("gp-purchased"),
            user_id: String::new(),
        })
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::PermissionDenied, "PACKAGE_NOT_ALLOWED"), "{err}");
    let err = setup
        .kit
        .list_items(proto::ListItemsRequest { app_id: "com.other.app".into(), ..Default::default() })
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(setup.kit.requests().is_empty(), "nothing was sent to google");

    let err = setup
        .kit
        .verify(proto::VerifyRequest {
            app_id: PACKAGE.into(),
            product_id: "coins_100".into(),
            proof: Some(proto::Proof {
                kind: Some(proto::proof::Kind::TransactionId("1".into())),
                ..Default::default()
            }),
            user_id: String::new(),
        })
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "UNSUPPORTED_PROOF"));
}

fn list(setup: &Setup, kind: ProductKind, page_size: i32, page_token: &str) -> proto::ListItemsResponse {
    setup
        .kit
        .list_items(proto::ListItemsRequest {
            app_id: PACKAGE.into(),
            kind: kind.into(),
            page_size,
            page_token: page_token.into(),
        })
        .unwrap()
}

fn walk(setup: &Setup, kind: ProductKind, page_size: i32) -> (Vec<proto::CatalogItem>, usize) {
    let (mut items, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = list(setup, kind, page_size, &token);
        items.extend(page.items);
        pages += 1;
        if page.next_page_token.is_empty() {
            return (items, pages);
        }
        token = page.next_page_token;
    }
}

#[test]
fn the_catalog_is_paged_across_both_listings_and_filtered_by_kind() {
    let setup = setup();
    let (items, pages) = walk(&setup, ProductKind::Unspecified, 1);
    let ids: Vec<&str> = items.iter().map(|item| item.product_id.as_str()).collect();
    assert_eq!(ids, ["coins_100", "remove_ads", "level_pack", "vip"]);
    assert!(pages >= 4, "one item per page");
    let coins = &items[0];
    assert_eq!(
        (
            coins.kind(),
            coins.title.as_str(),
            coins.price_currency_code.as_str(),
            coins.price_amount_micros,
            coins.active
        ),
        (ProductKind::Consumable, "100 coins", "USD", 990_000, true)
    );
    assert_eq!((items[1].kind(), items[1].price_amount_micros), (ProductKind::NonConsumable, 2_990_000));
    assert!(!items[2].active, "level_pack's only purchase option is INACTIVE");
    assert_eq!(
        (items[3].kind(), items[3].price_amount_micros, items[3].active),
        (ProductKind::Subscription, 4_990_000, true)
    );

    let kinds = |kind| walk(&setup, kind, 2).0.into_iter().map(|item| item.product_id).collect::<Vec<_>>();
    assert_eq!(kinds(ProductKind::Consumable), ["coins_100"]);
    assert_eq!(kinds(ProductKind::NonConsumable), ["remove_ads", "level_pack"]);
    assert_eq!(kinds(ProductKind::Subscription), ["vip"]);
    assert!(setup.emulator.count("subscriptions.list") > 0);

    // Prices in the configured region.
    let mut config = config();
    config["price_region"] = json!("DE");
    let setup = setup_with(config, KEY);
    let coins = list(&setup, ProductKind::Consumable, 10, "").items.remove(0);
    assert_eq!((coins.price_currency_code.as_str(), coins.price_amount_micros), ("EUR", 1_090_000));
}

#[test]
fn catalog_kind_filters_need_the_consumables_and_page_tokens_are_checked() {
    let mut config = config();
    config.as_object_mut().unwrap().remove("consumable_products");
    let setup = setup_with(config, KEY);
    let err = setup
        .kit
        .list_items(proto::ListItemsRequest {
            app_id: PACKAGE.into(),
            kind: ProductKind::Consumable.into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "KIND_UNKNOWN"));
    let all = walk(&setup, ProductKind::Unspecified, 0).0;
    assert_eq!(all[0].kind(), ProductKind::Unspecified, "google does not say; iapd does not guess");

    let err = setup
        .kit
        .list_items(proto::ListItemsRequest { app_id: PACKAGE.into(), page_token: "x:1".into(), ..Default::default() })
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "INVALID_PAGE_TOKEN"));
}

#[test]
fn configuration_errors_name_the_key_and_never_show_the_secret() {
    let build = |config: serde_json::Value, secret: Option<&str>| {
        let mut builder = kit::builder().config_json(config.to_string());
        if let Some(secret) = secret {
            builder = builder.secret("service_account", secret);
        }
        builder.build::<GooglePlay>().unwrap_err()
    };
    let err = build(json!({"packages": []}), Some(KEY));
    assert!(err.message().contains("config key `stores.test.config.packages`"), "{err}");
    let err = build(json!({"packages": [PACKAGE], "unknown": 1}), Some(KEY));
    assert!(err.message().contains("unknown field `unknown`"), "{err}");
    let err = build(json!({"packages": [PACKAGE]}), None);
    assert!(err.message().contains("secret `service_account` is not configured"), "{err}");

    let secret_text =
        "{\"type\": \"service_account\", \"client_email\": \"a@b\", \"private_key\": \"s3cr3t-material\"}";
    let err = build(json!({"packages": [PACKAGE]}), Some(secret_text));
    assert_eq!(err.reason(), "INVALID_SERVICE_ACCOUNT_KEY");
    assert!(err.message().contains("`private_key` is not an RSA private key"), "{err}");
    assert!(!err.message().contains("s3cr3t"), "{err}");
    let err = build(json!({"packages": [PACKAGE]}), Some("{\"type\": \"s3cr3t"));
    assert!(err.message().contains("malformed json at line 1"), "{err}");
    assert!(!err.message().contains("s3cr3t"), "{err}");
}
