#![allow(clippy::unwrap_used)]

//! The store against the Cafe Bazaar emulator, in-process through the kit.

use std::sync::Arc;

use iapd_emulators::Fault;
use iapd_emulators::cafe_bazaar::{CafeBazaar as Emulator, Purchase};
use iapd_sdk_plugin::kit::{self, Kit};
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use serde_json::json;

use crate::CafeBazaar;

const ORIGIN: &str = "http://bazaar.test";
const PACKAGE: &str = "com.example.game";
const NOW: i64 = 1_767_225_600_000;

struct Setup {
    emulator: Arc<Emulator>,
    kit: Kit<CafeBazaar>,
}

fn catalog() -> serde_json::Value {
    json!([
        {"product_id": "coins_100", "kind": "consumable", "title": "100 coins", "price_micros": 50_000_000_000i64},
        {"product_id": "coins_500", "kind": "consumable", "title": "500 coins"},
        {"product_id": "remove_ads", "kind": "non_consumable", "title": "Remove ads"},
        {"product_id": "level_pack", "kind": "non_consumable", "active": false},
        {"product_id": "vip", "kind": "subscription", "title": "VIP"},
    ])
}

fn oauth_config() -> serde_json::Value {
    json!({
        "packages": [PACKAGE],
        "auth": "oauth",
        "client_id": "iapd-demo",
        "api_root": ORIGIN,
        "catalog": catalog(),
        "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 40},
    })
}

fn pishkhan_config() -> serde_json::Value {
    let mut config = oauth_config();
    config["auth"] = json!("pishkhan");
    config.as_object_mut().unwrap().remove("client_id");
    config
}

fn setup_with(config: serde_json::Value, secrets: &[(&str, &str)]) -> Setup {
    let emulator = Arc::new(Emulator::with_default_state());
    emulator.set_clock(NOW);
    let mut builder = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config.to_string())
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()));
    for (name, value) in secrets {
        builder = builder.secret(name, *value);
    }
    Setup { emulator, kit: builder.build::<CafeBazaar>().unwrap() }
}

const OAUTH_SECRETS: &[(&str, &str)] =
    &[("client_secret", "demo-client-secret"), ("refresh_token", "demo-refresh-token")];

fn oauth() -> Setup {
    setup_with(oauth_config(), OAUTH_SECRETS)
}

fn pishkhan() -> Setup {
    setup_with(pishkhan_config(), &[("pishkhan_api_secret", "demo-pishkhan-secret")])
}

fn proof(token: &str) -> Option<proto::Proof> {
    Some(proto::Proof { kind: Some(proto::proof::Kind::PurchaseToken(token.to_owned())), ..Default::default() })
}

fn verify(setup: &Setup, product: &str, token: &str) -> Result<proto::VerifyResponse, PluginError> {
    setup.kit.verify(proto::VerifyRequest {
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: proof(token),
        user_id: String::new(),
    })
}

fn consume(setup: &Setup, product: &str, token: &str) -> Result<bool, PluginError> {
    setup
        .kit
        .consume(proto::ConsumeRequest { app_id: PACKAGE.into(), product_id: product.into(), proof: proof(token) })
        .map(|answer| answer.already_consumed)
}

fn add(setup: &Setup, token: &str, product: &str, purchase_state: i64, consumption_state: i64) {
    setup.emulator.add_purchase(Purchase {
        package_name: PACKAGE.into(),
        product_id: product.into(),
        purchase_token: token.into(),
        purchase_state,
        consumption_state,
        developer_payload: format!("payload-{token}"),
        purchase_time: 1_700_000_000_123,
    });
}

#[test]
fn every_field_is_mapped_and_consumption_is_inverted_both_ways() {
    // (purchaseState, consumptionState) as Bazaar sends them → what iapd says.
    let table = [
        (0, 1, Verdict::Valid, PurchaseState::Purchased, ConsumptionState::NotConsumed),
        (0, 0, Verdict::Valid, PurchaseState::Purchased, ConsumptionState::Consumed),
        (1, 1, Verdict::Refunded, PurchaseState::Refunded, ConsumptionState::NotConsumed),
        (1, 0, Verdict::Refunded, PurchaseState::Refunded, ConsumptionState::Consumed),
    ];
    for setup in [oauth(), pishkhan()] {
        for (purchase_state, consumption_state, verdict, state, consumption) in table {
            let token = format!("bz-{purchase_state}-{consumption_state}");
            add(&setup, &token, "coins_100", purchase_state, consumption_state);
            let answer = verify(&setup, "coins_100", &token).unwrap();
            assert_eq!(answer.verdict(), verdict, "{token}");
            let purchase = answer.purchase.unwrap();
            assert_eq!((purchase.state(), purchase.consumption_state()), (state, consumption), "{token}");
            assert_eq!(purchase.purchase_time_unix_millis, 1_700_000_000_123);
            assert_eq!(purchase.developer_payload, format!("payload-{token}"));
            assert_eq!(
                purchase.acknowledgement_state(),
                AcknowledgementState::NotApplicable,
                "bazaar has no acknowledge"
            );
            assert_eq!((purchase.kind(), purchase.environment()), (ProductKind::Consumable, Environment::Production));
            assert_eq!(purchase.quantity, 1);
            let raw: serde_json::Value = serde_json::from_str(&purchase.raw_store_response).unwrap();
            assert_eq!(raw["consumptionState"], consumption_state, "the store's own answer is kept");
        }
    }
    let setup = oauth();
    assert_eq!(
        verify(&setup, "remove_ads", "bz-remove-ads").unwrap().purchase.unwrap().kind(),
        ProductKind::NonConsumable
    );
    add(&setup, "bz-odd", "coins_100", 0, 7);
    let err = verify(&setup, "coins_100", "bz-odd").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Internal, "MALFORMED_RESPONSE"), "unknown values fail closed");
}

#[test]
fn not_found_is_the_verdict_of_a_faked_purchase() {
    let setup = pishkhan();
    let answer = verify(&setup, "coins_100", "made-up-token").unwrap();
    assert_eq!(answer.verdict(), Verdict::NotFound);
    assert!(answer.verdict_reason.contains("not_found"), "{}", answer.verdict_reason);
    // Other 404s and 400s are errors, never the fraud signal.
    setup.emulator.inject(Fault::answering("validate", 404, "no_such_app"));
    let err = verify(&setup, "coins_100", "bz-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::NotFound, "no_such_app"));
    setup.emulator.inject(Fault::answering("validate", 400, "invalid_value"));
    let err = verify(&setup, "coins_100", "bz-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::InvalidArgument, "invalid_value", 400));
    setup.emulator.inject(Fault::answering("validate", 403, "forbidden"));
    assert_eq!(verify(&setup, "coins_100", "bz-purchased").unwrap_err().code(), Code::PermissionDenied);
}

#[test]
fn pishkhan_sends_the_secret_header_and_no_token() {
    let setup = pishkhan();
    verify(&setup, "coins_100", "bz-purchased").unwrap();
    let requests = setup.kit.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header_value("CAFEBAZAAR-PISHKHAN-API-SECRET"), Some("demo-pishkhan-secret"));
    assert_eq!(
        requests[0].url(),
        format!("{ORIGIN}/devapi/v2/api/validate/{PACKAGE}/inapp/coins_100/purchases/bz-purchased/")
    );
    assert_eq!(setup.emulator.count("token"), 0);

    let wrong = setup_with(pishkhan_config(), &[("pishkhan_api_secret", "not-the-secret")]);
    let err = verify(&wrong, "coins_100", "bz-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Unauthenticated, "unauthorized"), "{err}");
    assert!(!err.message().contains("not-the-secret"));
}

#[test]
fn oauth_tokens_are_cached_refreshed_on_expiry_and_once_after_a_401() {
    let setup = oauth();
    for _ in 0..3 {
        verify(&setup, "coins_100", "bz-purchased").unwrap();
    }
    assert_eq!(setup.emulator.count("token"), 1);
    assert_eq!(setup.kit.requests()[1].header_value("authorization"), Some("Bearer bazaar-access-1"));

    setup.kit.advance_clock(3_600_000);
    setup.emulator.set_clock(setup.kit.now_unix_millis());
    verify(&setup, "coins_100", "bz-purchased").unwrap();
    assert_eq!(setup.emulator.count("token"), 2, "refreshed before expiry");

    setup.emulator.revoke_tokens();
    verify(&setup, "coins_100", "bz-purchased").unwrap();
    assert_eq!(setup.emulator.count("token"), 3, "one refresh after the 401");
    assert_eq!(setup.emulator.count("validate"), 6);

    let refused = setup_with(oauth_config(), &[("client_secret", "demo-client-secret"), ("refresh_token", "stolen")]);
    let err = verify(&refused, "coins_100", "bz-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Unauthenticated, "invalid_grant"), "{err}");
    assert!(!err.message().contains("stolen"));
}

#[test]
fn consume_is_idempotent_and_refusals_keep_bazaars_reason() {
    let setup = oauth();
    assert!(!consume(&setup, "coins_100", "bz-purchased").unwrap());
    assert_eq!(setup.emulator.purchase("bz-purchased").unwrap().consumption_state, 0, "0 is consumed at bazaar");
    assert!(consume(&setup, "coins_100", "bz-purchased").unwrap(), "second consume says it was done");
    assert!(consume(&setup, "coins_100", "bz-consumed").unwrap());
    let err = consume(&setup, "coins_100", "made-up-token").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::NotFound, "not_found"));
    let err = consume(&setup, "vip", "bz-subscription").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "invalid_value"), "{err}");
    let err = consume(&setup, "coins_100", "bz-refunded").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "invalid_value"), "{err}");
    // A consume between our read and our write: bazaar refuses, a re-read shows it consumed.
    add(&setup, "bz-raced", "coins_100", 0, 1);
    setup.emulator.inject(Fault::answering("consume", 400, "invalid_value"));
    let err = consume(&setup, "coins_100", "bz-raced").unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "still unconsumed on re-read: the refusal stands");
}

#[test]
fn faults_are_retried_and_counted_at_the_store() {
    let setup = pishkhan();
    setup.emulator.inject(Fault { times: 2, ..Fault::answering("validate", 503, "") });
    assert_eq!(verify(&setup, "coins_100", "bz-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("validate"), 3);

    setup.emulator.inject(Fault { times: 4, ..Fault::answering("validate", 500, "server_error") });
    let err = verify(&setup, "coins_100", "bz-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason(), err.is_retryable()), (Code::Unavailable, "server_error", true));
    assert_eq!(setup.emulator.count("validate"), 7, "four attempts");

    setup.emulator.inject(Fault { retry_after_secs: Some(1), ..Fault::answering("validate", 429, "") });
    let before = setup.kit.now_unix_millis();
    verify(&setup, "coins_100", "bz-purchased").unwrap();
    assert_eq!(setup.kit.now_unix_millis() - before, 1_000, "Retry-After honoured");
}

#[test]
fn malformed_json_from_bazaar_is_malformed_response() {
    let setup = oauth();
    // Verify's and Consume's read of validate, and the token endpoint.
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("validate", 200, "") });
    let verify_err = verify(&setup, "coins_100", "bz-purchased").unwrap_err();
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("validate", 200, "") });
    let consume_err = consume(&setup, "coins_100", "bz-purchased").unwrap_err();
    let fresh = oauth();
    fresh.emulator.inject(Fault { malformed: true, ..Fault::answering("token", 200, "") });
    let token_err = verify(&fresh, "coins_100", "bz-purchased").unwrap_err();
    for (what, err, expected) in [
        ("validate", verify_err, "Validation"),
        ("consume", consume_err, "Validation"),
        ("token", token_err, "TokenResponse"),
    ] {
        assert_eq!(
            (err.code(), err.reason(), err.http_status()),
            (Code::Internal, "MALFORMED_RESPONSE", 200),
            "{what}: {err}"
        );
        assert!(err.message().contains(&format!("malformed json: expected {expected}")), "{what}: {err}");
    }
    assert_eq!(fresh.emulator.count("validate"), 0, "no validate without a token");
    // The faults caused it: the same calls succeed now.
    assert!(!consume(&setup, "coins_100", "bz-purchased").unwrap());
}

#[test]
fn concurrent_identical_verifies_share_one_validate() {
    for setup in [oauth(), pishkhan()] {
        // The first validate answers slowly: all twenty calls overlap it.
        setup.emulator.inject(Fault { operation: Some("validate".into()), delay_ms: 2_000, ..Fault::default() });
        let request = proto::VerifyRequest {
            app_id: PACKAGE.into(),
            product_id: "coins_100".into(),
            proof: proof("bz-purchased"),
            user_id: String::new(),
        };
        let started = setup.kit.now_unix_millis();
        let answers = setup.kit.verify_concurrently(&vec![request; 20]);
        assert_eq!(answers.len(), 20);
        for answer in answers {
            assert_eq!(answer.unwrap().verdict(), Verdict::Valid);
        }
        assert_eq!(setup.emulator.count("validate"), 1, "20 identical Verifies, 1 request to bazaar's daily quota");
        assert!(setup.kit.now_unix_millis() - started >= 2_000, "all waited for the one slow answer");

        // Another token is another lookup; once answered, nothing is cached.
        let other = proto::VerifyRequest {
            app_id: PACKAGE.into(),
            product_id: "remove_ads".into(),
            proof: proof("bz-remove-ads"),
            user_id: String::new(),
        };
        let answers = setup.kit.verify_concurrently(&[other.clone(), other]);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(setup.emulator.count("validate"), 2);
        verify(&setup, "coins_100", "bz-purchased").unwrap();
        assert_eq!(setup.emulator.count("validate"), 3);
    }
}

#[test]
fn timeouts_are_retried() {
    let emulator = Arc::new(Emulator::with_default_state());
    let kit = kit::builder()
        .config_json(pishkhan_config().to_string())
        .secret("pishkhan_api_secret", "demo-pishkhan-secret")
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        // The first attempt times out at the host.
        .fail_first(1, Code::DeadlineExceeded)
        .build::<CafeBazaar>()
        .unwrap();
    let answer = kit
        .verify(proto::VerifyRequest {
            app_id: PACKAGE.into(),
            product_id: "coins_100".into(),
            proof: proof("bz-purchased"),
            user_id: String::new(),
        })
        .unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid);
    assert_eq!(kit.requests().len(), 2, "one attempt failed, the retry answered");
}

#[test]
fn the_catalog_comes_from_the_config_paged_and_filtered() {
    let setup = pishkhan();
    let page = |kind: ProductKind, size: i32, token: &str| {
        setup
            .kit
            .list_items(proto::ListItemsRequest {
                app_id: PACKAGE.into(),
                kind: kind.into(),
                page_size: size,
                page_token: token.into(),
            })
            .unwrap()
    };
    let first = page(ProductKind::Unspecified, 2, "");
    let second = page(ProductKind::Unspecified, 2, &first.next_page_token);
    let third = page(ProductKind::Unspecified, 2, &second.next_page_token);
    let ids: Vec<String> =
        [first.items, second.items, third.items.clone()].concat().into_iter().map(|item| item.product_id).collect();
    assert_eq!(ids, ["coins_100", "coins_500", "remove_ads", "level_pack", "vip"]);
    assert!(third.next_page_token.is_empty());
    let consumables = page(ProductKind::Consumable, 0, "");
    assert_eq!(consumables.items.len(), 2);
    assert_eq!(
        (consumables.items[0].price_currency_code.as_str(), consumables.items[0].price_amount_micros),
        ("IRR", 50_000_000_000)
    );
    assert_eq!(page(ProductKind::Subscription, 0, "").items[0].product_id, "vip");
    assert!(!page(ProductKind::NonConsumable, 0, "").items[1].active);
    assert!(setup.kit.requests().is_empty(), "bazaar has no catalog api: nothing is sent");
}

#[test]
fn configuration_errors_name_the_key() {
    let fails = |config: serde_json::Value, secrets: &[(&str, &str)]| {
        let mut builder = kit::builder().config_json(config.to_string());
        for (name, value) in secrets {
            builder = builder.secret(name, *value);
        }
        builder.build::<CafeBazaar>().unwrap_err()
    };
    let mut config = oauth_config();
    config.as_object_mut().unwrap().remove("client_id");
    assert!(fails(config, OAUTH_SECRETS).message().contains("`stores.test.config.client_id`"));
    let err = fails(oauth_config(), &[("client_secret", "x")]);
    assert!(err.message().contains("secret `refresh_token` is not configured"), "{err}");
    let err = fails(json!({"packages": [PACKAGE], "auth": "magic"}), &[]);
    assert!(err.message().contains("unknown variant `magic`"), "{err}");
    let err = fails(json!({"packages": [], "auth": "pishkhan"}), &[("pishkhan_api_secret", "x")]);
    assert!(err.message().contains("`stores.test.config.packages`"), "{err}");
}
