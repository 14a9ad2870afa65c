#![allow(clippy::unwrap_used)]

//! The store against the Microsoft Store emulator, in-process through the kit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use iapd_emulators::Fault;
use iapd_emulators::microsoft_store::{self as emulator, Item, KeyKind, MicrosoftStore as Emulator, Seed};
use iapd_sdk_plugin::kit::{self, Kit};
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use serde_json::json;

use crate::MicrosoftStore;

const ORIGIN: &str = "http://microsoft.test";
const APP: &str = "9NBLGGH4R315";
const TENANT: &str = "8f2c6e1a-0b5d-4c3e-9a71-5d2e0f4b6c10";
const CLIENT: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const SECRET: &str = "demo-client-secret";
const ACCOUNT: &str = "demo-account";
const USER: &str = "user-42";
const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

const DURABLE: &str = "9NBLGGH42CFD";
const COINS: &str = "9NCOINS00100"; // developer-managed consumable
const GEMS: &str = "9NGEMS000500"; // store-managed consumable, balance 5
const VIP: &str = "9NVIPPASS001";
const OLD_PASS: &str = "9NOLDPASS001";
const TRACKING: &str = "1b3afaa8-2c4d-4e5f-8a9b-0c1d2e3f4a5b";

struct Setup {
    emulator: Arc<Emulator>,
    kit: Kit<MicrosoftStore>,
}

fn config() -> serde_json::Value {
    json!({
        "packages": [APP],
        "tenant_id": TENANT,
        "client_id": CLIENT,
        "login_root": ORIGIN,
        "collections_root": ORIGIN,
        "purchase_root": ORIGIN,
        "catalog": [
            {"product_id": DURABLE, "kind": "non_consumable", "title": "Remove ads", "currency": "USD", "price_micros": 1_990_000},
            {"product_id": COINS, "kind": "consumable", "title": "100 coins"},
            {"product_id": GEMS, "kind": "consumable", "title": "Gems"},
            {"product_id": VIP, "kind": "subscription", "title": "VIP"},
        ],
        "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 40},
    })
}

fn build(emulator: Arc<Emulator>, config: serde_json::Value, secret: &str) -> Setup {
    emulator.set_clock(NOW);
    let kit = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config.to_string())
        .secret("client_secret", secret)
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        .build::<MicrosoftStore>()
        .unwrap();
    Setup { emulator, kit }
}

fn setup_with(config: serde_json::Value) -> Setup {
    build(Arc::new(Emulator::with_default_state()), config, SECRET)
}

fn setup() -> Setup {
    setup_with(config())
}

impl Setup {
    fn key(&self) -> String {
        self.emulator.key(ACCOUNT, USER, KeyKind::Collections)
    }

    fn purchase_key(&self) -> String {
        self.emulator.key(ACCOUNT, USER, KeyKind::Purchase)
    }

    fn verify(
        &self,
        product: &str,
        key: &str,
        parameters: &[(&str, &str)],
    ) -> Result<proto::VerifyResponse, PluginError> {
        self.verify_as(product, key, parameters, "")
    }

    fn verify_as(
        &self,
        product: &str,
        key: &str,
        parameters: &[(&str, &str)],
        user: &str,
    ) -> Result<proto::VerifyResponse, PluginError> {
        self.kit.verify(request(product, key, parameters, user))
    }

    fn consume(&self, product: &str, key: &str, parameters: &[(&str, &str)]) -> Result<bool, PluginError> {
        self.kit
            .consume(proto::ConsumeRequest {
                app_id: APP.into(),
                product_id: product.into(),
                proof: proof(key, parameters),
            })
            .map(|answer| answer.already_consumed)
    }

    /// The bodies of the requests sent to `path`, in order.
    fn bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.kit
            .requests()
            .iter()
            .filter(|request| request.url() == format!("{ORIGIN}{path}"))
            .map(|request| serde_json::from_slice(request.body_bytes()).unwrap_or_default())
            .collect()
    }
}

fn proof(key: &str, parameters: &[(&str, &str)]) -> Option<proto::Proof> {
    Some(proto::Proof {
        kind: Some(proto::proof::Kind::PurchaseToken(key.to_owned())),
        store_parameters: parameters.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
    })
}

fn request(product: &str, key: &str, parameters: &[(&str, &str)], user: &str) -> proto::VerifyRequest {
    proto::VerifyRequest {
        app_id: APP.into(),
        product_id: product.into(),
        proof: proof(key, parameters),
        user_id: user.into(),
    }
}

fn item(product: &str, kind: &str, status: &str, quantity: i64) -> Item {
    serde_json::from_value(json!({
        "id": format!("{product}-item"), "productId": product, "productKind": kind, "status": status,
        "acquiredDate": "2025-12-01T00:00:00.0000000+00:00", "startDate": "2025-12-01T00:00:00.0000000+00:00",
        "endDate": "9999-12-31T23:59:59.9999999+00:00", "modifiedDate": "2025-12-01T00:00:00.0000000+00:00",
        "quantity": quantity, "transactionId": format!("{product}-order"),
    }))
    .unwrap()
}

fn millis(iso: &str) -> i64 {
    crate::verdict::unix_millis(Some(iso), 200, "test").unwrap().unwrap()
}

#[test]
fn every_status_and_kind_of_the_demo_account_becomes_its_verdict() {
    use ConsumptionState as Consumption;
    let setup = setup();
    let key = setup.key();
    let table = [
        (DURABLE, Verdict::Valid, ProductKind::NonConsumable, Consumption::NotApplicable, 1, 0),
        (COINS, Verdict::Valid, ProductKind::Consumable, Consumption::NotConsumed, 1, 0),
        (GEMS, Verdict::Valid, ProductKind::Consumable, Consumption::NotConsumed, 5, 0),
        (VIP, Verdict::Valid, ProductKind::Subscription, Consumption::NotApplicable, 1, 1_893_456_000_000),
        (OLD_PASS, Verdict::Expired, ProductKind::Subscription, Consumption::NotApplicable, 1, 1_748_736_000_000),
        ("9NREFUNDED01", Verdict::Refunded, ProductKind::NonConsumable, Consumption::NotApplicable, 1, 0),
        ("9NBANNED0001", Verdict::Invalid, ProductKind::NonConsumable, Consumption::NotApplicable, 1, 0),
    ];
    for (product, verdict, kind, consumption, quantity, expiry) in table {
        let answer = setup.verify(product, &key, &[]).unwrap();
        assert_eq!(answer.verdict(), verdict, "{product}: {}", answer.verdict_reason);
        let purchase = answer.purchase.unwrap();
        assert_eq!((purchase.kind(), purchase.consumption_state()), (kind, consumption), "{product}");
        assert_eq!((purchase.quantity, purchase.expiry_time_unix_millis), (quantity, expiry), "{product}");
        assert_eq!(purchase.environment(), Environment::Production, "{product}");
        assert_eq!(
            purchase.acknowledgement_state(),
            AcknowledgementState::NotApplicable,
            "microsoft has no acknowledge"
        );
        assert_eq!(purchase.account_binding, USER, "the key's userId");
        let raw: serde_json::Value = serde_json::from_str(&purchase.raw_store_response).unwrap();
        assert_eq!(raw["item"]["productId"], product, "microsoft's own item is kept");
    }
    let durable = setup.verify(DURABLE, &key, &[]).unwrap().purchase.unwrap();
    assert_eq!(durable.order_id, "0b6e1c3a-1f2d-4e5b-8a9c-0d1e2f3a4b01");
    assert_eq!(
        durable.purchase_time_unix_millis,
        millis("2025-12-24T10:00:00.123+00:00"),
        "seven digits, read to the ms"
    );
    let refunded = setup.verify("9NREFUNDED01", &key, &[]).unwrap();
    assert_eq!(refunded.purchase.unwrap().state(), PurchaseState::Refunded);
    for product in ["9NSANDBOX001", "9NNEVERSOLD1"] {
        let answer = setup.verify(product, &key, &[]).unwrap();
        assert_eq!(answer.verdict(), Verdict::NotFound, "{product}: a retail store sees no sandbox item");
        assert!(answer.verdict_reason.contains("sandbox RETAIL"), "{}", answer.verdict_reason);
    }
    let body = &setup.bodies("/v9.0/collections/publisherQuery")[0];
    assert_eq!(body["beneficiaries"][0]["identityType"], "b2b");
    assert_eq!(body["beneficiaries"][0]["identityValue"], key.as_str());
    assert_eq!(body["productSkuIds"], json!([{"productId": DURABLE}]));
    assert!(body.get("sbx").is_none(), "retail is microsoft's default");
}

#[test]
fn dates_quantities_and_statuses_decide_the_edge_cases() {
    let setup = setup();
    let key = setup.key();
    let mut ended = item("9NENDED00001", "Durable", "Active", 1);
    ended.end_date = "2025-12-31T00:00:00.0000000+00:00".into();
    let mut later = item("9NLATER00001", "Durable", "Active", 1);
    later.start_date = "2026-02-01T00:00:00.0000000+00:00".into();
    for added in [
        ended,
        later,
        item("9NFULFILLED1", "UnmanagedConsumable", "Active", 0),
        item("9NSUSPENDED1", "Game", "Suspended", 1),
        item("9NODDSTATE01", "Durable", "Lost", 1),
        item("9NODDKIND001", "Bundle", "Active", 1),
    ] {
        setup.emulator.add_item(ACCOUNT, added);
    }
    let verdict = |product: &str| setup.verify(product, &key, &[]).unwrap();
    assert_eq!(verdict("9NENDED00001").verdict(), Verdict::Expired, "active, but past its endDate: microsoft lags");
    assert_eq!(verdict("9NLATER00001").verdict(), Verdict::Pending);
    let fulfilled = verdict("9NFULFILLED1").purchase.unwrap();
    assert_eq!(fulfilled.consumption_state(), ConsumptionState::Consumed, "a balance of 0 is consumed");
    assert_eq!(verdict("9NSUSPENDED1").verdict(), Verdict::Invalid);
    let odd = verdict("9NODDKIND001");
    assert_eq!((odd.verdict(), odd.purchase.unwrap().kind()), (Verdict::Valid, ProductKind::Unspecified));
    let err = setup.verify("9NODDSTATE01", &key, &[]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Internal, "MALFORMED_RESPONSE"), "unknown statuses fail closed");
}

#[test]
fn the_key_binds_the_user_and_a_key_that_cannot_work_is_invalid() {
    let setup = setup();
    let key = setup.key();
    assert_eq!(setup.verify_as(DURABLE, &key, &[], USER).unwrap().verdict(), Verdict::Valid);
    let other = setup.verify_as(DURABLE, &key, &[], "user-7").unwrap();
    assert_eq!(other.verdict(), Verdict::UserMismatch);
    assert!(other.verdict_reason.contains("bound to user `user-42`, not `user-7`"), "{}", other.verdict_reason);
    let queries = setup.emulator.count("collections.query");

    // Refused before asking: the wrong kind, another client's, expired, no key at all.
    let cases = [
        (setup.purchase_key(), "is a purchase key"),
        (
            setup.emulator.key_with(
                ACCOUNT,
                USER,
                KeyKind::Collections,
                Some("aaaaaaaa-0000-0000-0000-000000000000"),
                3600,
            ),
            "made for entra client",
        ),
        (setup.emulator.key_with(ACCOUNT, USER, KeyKind::Collections, None, 0), "expired at unix time"),
        ("not-a-key".to_owned(), "not a microsoft store id key"),
    ];
    for (bad, expected) in &cases {
        let answer = setup.verify(DURABLE, bad, &[]).unwrap();
        assert_eq!(answer.verdict(), Verdict::Invalid, "{expected}");
        assert!(answer.verdict_reason.contains(expected), "{expected}: {}", answer.verdict_reason);
    }
    assert_eq!(setup.emulator.count("collections.query"), queries, "nothing was asked of microsoft");

    // Refused by Microsoft: a forged signature, a key revoked early.
    let forged = format!("{}AAAA", &key[..key.len() - 4]);
    let revoked = setup.key();
    setup.emulator.revoke_key(&revoked);
    let tokens = setup.emulator.count("token");
    for bad in [forged, revoked] {
        let answer = setup.verify(DURABLE, &bad, &[]).unwrap();
        assert_eq!(answer.verdict(), Verdict::Invalid);
        assert!(answer.verdict_reason.contains("AuthenticationTokenInvalid"), "{}", answer.verdict_reason);
    }
    assert_eq!(setup.emulator.count("token"), tokens + 2, "each refusal first got one fresh entra token");
    // A key without a client claim passes iapd's reading; Microsoft refuses
    // it as another client's, and no token refresh can change that.
    let clientless = setup.emulator.key_with(ACCOUNT, USER, KeyKind::Collections, Some(""), 3600);
    let answer = setup.verify(DURABLE, &clientless, &[]).unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert!(answer.verdict_reason.contains("InconsistentClientId"), "{}", answer.verdict_reason);
    assert_eq!(setup.emulator.count("token"), tokens + 2, "no refresh for InconsistentClientId");
    let err = setup.consume(COINS, &clientless, &[]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "InconsistentClientId"), "{err}");
}

#[test]
fn a_sandbox_store_sees_only_its_sandbox() {
    let mut config = config();
    config["sandbox"] = json!("XDKS.1");
    let setup = setup_with(config);
    let key = setup.key();
    let answer = setup.verify("9NSANDBOX001", &key, &[]).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    assert_eq!(answer.purchase.unwrap().environment(), Environment::Sandbox);
    assert_eq!(setup.verify(DURABLE, &key, &[]).unwrap().verdict(), Verdict::NotFound, "retail is another sandbox");
    assert_eq!(setup.bodies("/v9.0/collections/publisherQuery")[0]["sbx"], "XDKS.1");
    setup
        .emulator
        .add_item(ACCOUNT, Item { sandbox: "XDKS.1".into(), ..item(COINS, "UnmanagedConsumable", "Active", 1) });
    let err = setup.consume(COINS, &key, &[]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "SANDBOX_CONSUME_UNSUPPORTED"), "{err}");
    assert_eq!(setup.emulator.count("collections.consume"), 0);
}

#[test]
fn a_subscription_is_refined_by_its_recurrence_when_the_purchase_key_comes_too() {
    let setup = setup();
    let key = setup.key();
    let purchase_key = setup.purchase_key();
    let answer = setup.verify(VIP, &key, &[("purchase_key", &purchase_key)]).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!(purchase.expiry_time_unix_millis, millis("2030-01-04T00:00:00+00:00"), "the grace period counts");
    let raw: serde_json::Value = serde_json::from_str(&purchase.raw_store_response).unwrap();
    assert_eq!(raw["recurrence"]["recurrenceState"], "Active");
    assert_eq!(setup.bodies("/v8.0/b2b/recurrences/query")[0]["b2bKey"], purchase_key.as_str());

    // Billing states the collections item does not show yet.
    for (n, state, expires, verdict) in [
        (1, "Revoked", "2030-01-01T00:00:00.0000000+00:00", Verdict::Refunded),
        (2, "Canceled", "2025-12-31T00:00:00.0000000+00:00", Verdict::Expired),
        (3, "Canceled", "2026-01-31T00:00:00.0000000+00:00", Verdict::Valid),
        (4, "InDunning", "2026-01-31T00:00:00.0000000+00:00", Verdict::Valid),
    ] {
        let product = format!("9NPASS00000{n}");
        let recurrence_id = format!("mdr:0:{n}:recurrence");
        setup.emulator.add_item(
            ACCOUNT,
            Item { recurrence_data: Some(recurrence_id.clone()), ..item(&product, "Pass", "Active", 1) },
        );
        setup.emulator.add_recurrence(
            ACCOUNT,
            json!({"id": recurrence_id, "productId": product, "skuId": "0010", "recurrenceState": state, "expirationTime": expires}),
        );
        let answer = setup.verify(&product, &key, &[("purchase_key", &purchase_key)]).unwrap();
        assert_eq!(answer.verdict(), verdict, "{state} until {expires}: {}", answer.verdict_reason);
        assert_eq!(answer.purchase.unwrap().expiry_time_unix_millis, millis(expires));
    }
    setup
        .emulator
        .add_recurrence(ACCOUNT, json!({"id": "mdr:0:odd", "productId": "9NODDPASS001", "recurrenceState": "Paused"}));
    setup.emulator.add_item(ACCOUNT, item("9NODDPASS001", "Pass", "Active", 1));
    let err = setup.verify("9NODDPASS001", &key, &[("purchase_key", &purchase_key)]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Internal, "MALFORMED_RESPONSE"));

    let asked = setup.emulator.count("recurrences.query");
    let wrong_kind = setup.verify(VIP, &key, &[("purchase_key", &key)]).unwrap();
    assert_eq!(wrong_kind.verdict(), Verdict::Invalid);
    assert!(wrong_kind.verdict_reason.starts_with("store_parameters.purchase_key: "), "{}", wrong_kind.verdict_reason);
    assert_eq!(setup.verify(VIP, &key, &[]).unwrap().verdict(), Verdict::Valid, "collections alone without the key");
    assert_eq!(setup.verify(DURABLE, &key, &[("purchase_key", &purchase_key)]).unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("recurrences.query"), asked, "only a pass with a purchase key asks");
}

#[test]
fn sku_id_picks_the_sku_and_an_active_item_wins_otherwise() {
    let setup = setup();
    let key = setup.key();
    setup.emulator.add_item(
        ACCOUNT,
        Item { sku_id: "0020".into(), id: "other-sku".into(), ..item(DURABLE, "Durable", "Revoked", 1) },
    );
    assert_eq!(setup.verify(DURABLE, &key, &[("sku_id", "0020")]).unwrap().verdict(), Verdict::Refunded);
    assert_eq!(setup.verify(DURABLE, &key, &[("sku_id", "0010")]).unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.verify(DURABLE, &key, &[]).unwrap().verdict(), Verdict::Valid);
    let bodies = setup.bodies("/v9.0/collections/publisherQuery");
    assert_eq!(bodies[0]["productSkuIds"], json!([{"productId": DURABLE, "skuId": "0020"}]));
}

#[test]
fn pages_are_followed_with_the_same_body_and_the_token() {
    let mut seed: Seed = serde_json::from_str(emulator::DEFAULT_STATE).unwrap();
    seed.page_size_limit = Some(1);
    let setup = build(Arc::new(Emulator::new(seed).unwrap()), config(), SECRET);
    let key = setup.key();
    setup.emulator.add_item(ACCOUNT, Item { sku_id: "0020".into(), ..item("9NTWOSKUS001", "Durable", "Revoked", 1) });
    setup.emulator.add_item(ACCOUNT, Item { sku_id: "0030".into(), ..item("9NTWOSKUS001", "Durable", "Active", 1) });
    assert_eq!(setup.verify("9NTWOSKUS001", &key, &[]).unwrap().verdict(), Verdict::Valid, "the second page's item");
    let bodies = setup.bodies("/v9.0/collections/publisherQuery");
    assert_eq!(bodies.len(), 2);
    assert!(bodies[1]["continuationToken"].is_string());
    let mut first = bodies[1].clone();
    first.as_object_mut().unwrap().remove("continuationToken");
    assert_eq!(first, bodies[0], "the same body, plus the token");
}

#[test]
fn store_parameters_proofs_and_packages_are_checked_before_asking() {
    let setup = setup();
    let key = setup.key();
    for (parameters, consume) in [
        (vec![("collections_root", "http://169.254.169.254")], false),
        (vec![("sku_id", "0010"), ("sbx", "XDKS.1")], false),
        (vec![("tracking_id", TRACKING)], false),
        (vec![("purchase_key", "x")], true),
    ] {
        let err = if consume {
            setup.consume(GEMS, &key, &parameters).unwrap_err()
        } else {
            setup.verify(DURABLE, &key, &parameters).unwrap_err()
        };
        assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "UNKNOWN_STORE_PARAMETER"), "{parameters:?}");
        assert!(err.message().contains("come from the config"), "{err}");
    }
    let err = setup
        .kit
        .verify(proto::VerifyRequest {
            app_id: APP.into(),
            product_id: DURABLE.into(),
            proof: Some(proto::Proof { kind: Some(proto::proof::Kind::PurchaseId(key.clone())), ..Default::default() }),
            user_id: String::new(),
        })
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "UNSUPPORTED_PROOF"));
    let mut other_app = request(DURABLE, &key, &[], "");
    other_app.app_id = "9NOTHERAPP01".into();
    assert_eq!(setup.kit.verify(other_app).unwrap_err().reason(), "PACKAGE_NOT_ALLOWED");
    assert!(setup.kit.requests().is_empty(), "nothing reached microsoft");
}

#[test]
fn entra_tokens_are_cached_refreshed_before_expiry_and_once_after_a_401() {
    let setup = setup();
    let key = setup.key();
    for _ in 0..3 {
        setup.verify(DURABLE, &key, &[]).unwrap();
    }
    assert_eq!(setup.emulator.count("token"), 1);
    let token_request = &setup.kit.requests()[0];
    assert_eq!(token_request.url(), format!("{ORIGIN}/{TENANT}/oauth2/token"));
    let form = String::from_utf8_lossy(token_request.body_bytes()).into_owned();
    assert!(form.starts_with("grant_type=client_credentials&client_id="), "{form}");
    assert!(form.ends_with("&resource=https%3A%2F%2Fonestore.microsoft.com"), "{form}");
    let query = &setup.kit.requests()[1];
    assert!(query.header_value("authorization").unwrap().starts_with("Bearer ey"));
    assert!(query.header_value("user-agent").unwrap().starts_with("iapd-plugin-microsoft-store/"));

    // The v1 answer's "3599" (a string) is read: refreshed a minute early.
    setup.kit.advance_clock(3_539_000);
    setup.emulator.set_clock(setup.kit.now_unix_millis());
    setup.verify(DURABLE, &key, &[]).unwrap();
    assert_eq!(setup.emulator.count("token"), 2, "refreshed before expiry");

    setup.emulator.revoke_tokens();
    assert_eq!(setup.verify(DURABLE, &key, &[]).unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("token"), 3, "one refresh after the 401");

    setup.emulator.inject(Fault { times: 2, ..Fault::answering("collections.query", 401, "PartnerAadTicketRequired") });
    let err = setup.verify(DURABLE, &key, &[]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Unauthenticated, "PartnerAadTicketRequired"), "{err}");
    assert_eq!(setup.emulator.count("token"), 4, "one fresh token, refused too");

    let refused = build(Arc::new(Emulator::with_default_state()), config(), "not-the-secret");
    let err = refused.verify(DURABLE, &refused.key(), &[]).unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Unauthenticated, "invalid_client", 401), "{err}");
    assert!(err.message().contains("AADSTS7000215"), "{err}");
    assert!(!err.message().contains("Trace ID"), "only entra's first line: {err}");
    assert!(!err.message().contains("not-the-secret"));
    assert_eq!(refused.emulator.count("collections.query"), 0);
}

#[test]
fn transient_failures_are_retried_honouring_retry_after() {
    let setup = setup();
    let key = setup.key();
    setup.emulator.inject(Fault { times: 2, ..Fault::answering("collections.query", 503, "") });
    assert_eq!(setup.verify(DURABLE, &key, &[]).unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("collections.query"), 3);

    setup.emulator.inject(Fault { times: 4, ..Fault::answering("collections.query", 500, "") });
    let err = setup.verify(DURABLE, &key, &[]).unwrap_err();
    assert_eq!((err.code(), err.reason(), err.is_retryable()), (Code::Unavailable, "InternalServerError", true));
    assert_eq!(setup.emulator.count("collections.query"), 7, "four attempts");

    setup.emulator.inject(Fault { retry_after_secs: Some(2), ..Fault::answering("collections.query", 429, "") });
    let before = setup.kit.now_unix_millis();
    setup.verify(DURABLE, &key, &[]).unwrap();
    assert_eq!(setup.kit.now_unix_millis() - before, 2_000, "Retry-After honoured");

    let fresh = setup_with(config());
    fresh.emulator.inject(Fault::answering("token", 503, ""));
    assert_eq!(fresh.verify(DURABLE, &fresh.key(), &[]).unwrap().verdict(), Verdict::Valid);
    assert_eq!(fresh.emulator.count("token"), 2, "the token endpoint's 503 was retried");

    let emulator = Arc::new(Emulator::with_default_state());
    emulator.set_clock(NOW);
    let kit = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config().to_string())
        .secret("client_secret", SECRET)
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        .fail_first(2, Code::DeadlineExceeded)
        .build::<MicrosoftStore>()
        .unwrap();
    let key = emulator.key(ACCOUNT, USER, KeyKind::Collections);
    assert_eq!(kit.verify(request(DURABLE, &key, &[], "")).unwrap().verdict(), Verdict::Valid);
    assert_eq!(kit.requests().len(), 4, "the timed-out token request and query were retried");
}

#[test]
fn the_per_user_limit_is_resource_exhausted_with_microsofts_delay() {
    let setup = setup();
    let key = setup.key();
    for _ in 0..emulator::THROTTLE_LIMIT {
        setup.verify(DURABLE, &key, &[]).unwrap();
    }
    let err = setup.verify(DURABLE, &key, &[]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::ResourceExhausted, "Throttled"), "{err}");
    assert_eq!(err.retry_after_delay(), Some(Duration::from_secs(300)), "longer than max_retry_after: not waited out");
    assert_eq!(setup.emulator.count("collections.query"), 101, "one attempt");
}

#[test]
fn refusals_in_microsofts_envelope_keep_its_reason() {
    let setup = setup();
    let key = setup.key();
    for (status, reason, code) in [
        (400, "InvalidParameter", Code::InvalidArgument),
        (403, "Forbidden", Code::PermissionDenied),
        (404, "NotFound", Code::NotFound),
    ] {
        setup.emulator.inject(Fault::answering("collections.query", status, reason));
        let err = setup.verify(DURABLE, &key, &[]).unwrap_err();
        assert_eq!((err.code(), err.reason(), err.http_status()), (code, reason, status), "{err}");
    }
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("collections.query", 200, "") });
    let err = setup.verify(DURABLE, &key, &[]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Internal, "MALFORMED_RESPONSE"));
    assert!(err.message().contains("expected Page"), "{err}");

    let emulator = Arc::new(Emulator::with_default_state());
    let handler = iapd_emulators::kit_handler(emulator.clone());
    emulator.set_clock(NOW);
    let kit = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config().to_string())
        .secret("client_secret", SECRET)
        .allow_origin(ORIGIN)
        .http(move |request: &HttpRequest| {
            if request.url().contains("/collections/") {
                kit::Answer::from(HttpResponse::new(404, "<html>not here</html>"))
            } else {
                handler(request)
            }
        })
        .build::<MicrosoftStore>()
        .unwrap();
    let key = emulator.key(ACCOUNT, USER, KeyKind::Collections);
    let err = kit.verify(request(DURABLE, &key, &[], "")).unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Internal, "UNEXPECTED_RESPONSE", 404));
}

#[test]
fn a_developer_managed_consume_is_idempotent_by_the_tracking_id_of_its_purchase() {
    let setup = setup();
    let key = setup.key();
    assert!(!setup.consume(COINS, &key, &[]).unwrap(), "consumed now");
    assert_eq!(setup.emulator.item(ACCOUNT, COINS).unwrap()["quantity"], 0);
    assert!(setup.consume(COINS, &key, &[]).unwrap(), "a repeat says it was done");
    let bodies = setup.bodies("/v8.0/collections/consume");
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], bodies[1], "the same body, tracking id included");
    assert_eq!(bodies[0]["includeOrderIds"], true);
    assert!(bodies[0].get("removeQuantity").is_none(), "microsoft refuses it for developer-managed");
    assert!(crate::is_guid(bodies[0]["trackingId"].as_str().unwrap()));
    let verified = setup.verify(COINS, &key, &[]).unwrap().purchase.unwrap();
    assert_eq!(verified.consumption_state(), ConsumptionState::Consumed);

    // Consumed under another tracking id (by another system): still done.
    setup.emulator.add_item(ACCOUNT, item("9NCOINS00200", "UnmanagedConsumable", "Active", 0));
    assert!(setup.consume("9NCOINS00200", &key, &[]).unwrap());

    // Bought again: a new order, a new tracking id.
    setup.emulator.add_item(
        ACCOUNT,
        Item { transaction_id: "second-order".into(), ..item(COINS, "UnmanagedConsumable", "Active", 1) },
    );
    assert!(!setup.consume(COINS, &key, &[]).unwrap());
    let bodies = setup.bodies("/v8.0/collections/consume");
    assert_ne!(bodies.last().unwrap()["trackingId"], bodies[0]["trackingId"]);

    let err = setup.consume(COINS, &key, &[("quantity", "2")]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "INVALID_STORE_PARAMETER"));
}

#[test]
fn a_store_managed_consume_takes_the_callers_tracking_id_and_never_deducts_twice() {
    let setup = setup();
    let key = setup.key();
    let err = setup.consume(GEMS, &key, &[]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "MISSING_STORE_PARAMETER"));
    for (parameters, what) in [
        (vec![("tracking_id", "not-a-guid")], "a guid"),
        (vec![("tracking_id", TRACKING), ("quantity", "0")], "at least 1"),
        (vec![("tracking_id", TRACKING), ("quantity", "two")], "at least 1"),
    ] {
        let err = setup.consume(GEMS, &key, &parameters).unwrap_err();
        assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "INVALID_STORE_PARAMETER"), "{what}");
    }
    assert_eq!(setup.emulator.count("collections.consume"), 0);

    let parameters = [("tracking_id", TRACKING), ("quantity", "2")];
    assert!(!setup.consume(GEMS, &key, &parameters).unwrap());
    assert_eq!(setup.emulator.item(ACCOUNT, GEMS).unwrap()["quantity"], 3);
    assert!(!setup.consume(GEMS, &key, &parameters).unwrap(), "microsoft cannot tell a replay of a balance");
    assert_eq!(setup.emulator.item(ACCOUNT, GEMS).unwrap()["quantity"], 3, "the replay deducted nothing");
    assert_eq!(setup.bodies("/v8.0/collections/consume")[0]["removeQuantity"], 2);

    let too_many = [("tracking_id", "2b3afaa8-2c4d-4e5f-8a9b-0c1d2e3f4a5b"), ("quantity", "4")];
    let err = setup.consume(GEMS, &key, &too_many).unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::FailedPrecondition, "InsufficientBalance", 400));
    assert!(err.metadata().contains_key("ms_correlation_id"), "{:?}", err.metadata());
}

#[test]
fn a_consume_whose_answer_was_lost_is_sent_again_with_its_tracking_id() {
    let emulator = Arc::new(Emulator::with_default_state());
    emulator.set_clock(NOW);
    let handler = iapd_emulators::kit_handler(emulator.clone());
    let lost = Arc::new(AtomicBool::new(false));
    let kit = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config().to_string())
        .secret("client_secret", SECRET)
        .allow_origin(ORIGIN)
        .http_or_fail(move |request: &HttpRequest| {
            let answer = handler(request);
            // Microsoft consumed, but its answer never came back.
            if request.url().ends_with("/collections/consume") && !lost.swap(true, Ordering::SeqCst) {
                return Err(Code::DeadlineExceeded);
            }
            Ok(answer)
        })
        .build::<MicrosoftStore>()
        .unwrap();
    let key = emulator.key(ACCOUNT, USER, KeyKind::Collections);
    let consume = |product: &str, parameters: &[(&str, &str)]| {
        kit.consume(proto::ConsumeRequest {
            app_id: APP.into(),
            product_id: product.into(),
            proof: proof(&key, parameters),
        })
    };
    consume(GEMS, &[("tracking_id", TRACKING)]).unwrap();
    assert_eq!(emulator.count("collections.consume"), 2, "sent again after the timeout");
    assert_eq!(emulator.item(ACCOUNT, GEMS).unwrap()["quantity"], 4, "one gem consumed, not two");
    let sent: Vec<Vec<u8>> = kit
        .requests()
        .iter()
        .filter(|request| request.url().ends_with("/collections/consume"))
        .map(|request| request.body_bytes().to_vec())
        .collect();
    assert_eq!(sent[0], sent[1], "the same tracking id and body");
}

#[test]
fn only_an_active_consumable_is_consumed() {
    let setup = setup();
    let key = setup.key();
    for (product, code, reason) in [
        (DURABLE, Code::FailedPrecondition, "NOT_CONSUMABLE"),
        (VIP, Code::FailedPrecondition, "NOT_CONSUMABLE"),
        ("9NREFUNDED01", Code::FailedPrecondition, "PURCHASE_REFUNDED"),
        (OLD_PASS, Code::FailedPrecondition, "PURCHASE_NOT_ACTIVE"),
        ("9NNEVERSOLD1", Code::NotFound, "PRODUCT_NOT_OWNED"),
    ] {
        let err = setup.consume(product, &key, &[]).unwrap_err();
        assert_eq!((err.code(), err.reason()), (code, reason), "{product}: {err}");
    }
    let err = setup.consume(COINS, &setup.purchase_key(), &[]).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "INVALID_STORE_ID_KEY"));
    let forged = setup.key().replace('.', ".x");
    let err = setup.consume(COINS, &forged, &[]).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(setup.emulator.count("collections.consume"), 0);
}

#[test]
fn acknowledge_is_not_offered() {
    assert_eq!(MicrosoftStore::CAPABILITIES & CAP_ACKNOWLEDGE, 0);
    let setup = setup();
    let err = setup
        .kit
        .acknowledge(proto::AcknowledgeRequest {
            app_id: APP.into(),
            product_id: DURABLE.into(),
            proof: proof(&setup.key(), &[]),
            developer_payload: String::new(),
        })
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(setup.kit.requests().is_empty());
}

#[test]
fn concurrent_identical_verifies_share_one_query_and_each_judges_its_user() {
    let setup = setup();
    let key = setup.key();
    setup.emulator.inject(Fault { operation: Some("collections.query".into()), delay_ms: 2_000, ..Fault::default() });
    let requests: Vec<proto::VerifyRequest> =
        (0..20).map(|n| request(DURABLE, &key, &[], if n % 2 == 0 { USER } else { "user-7" })).collect();
    let started = setup.kit.now_unix_millis();
    let answers = setup.kit.verify_concurrently(&requests);
    for (n, answer) in answers.into_iter().enumerate() {
        let expected = if n % 2 == 0 { Verdict::Valid } else { Verdict::UserMismatch };
        assert_eq!(answer.unwrap().verdict(), expected, "call {n}");
    }
    assert_eq!(setup.emulator.count("collections.query"), 1, "20 identical lookups, 1 query");
    assert_eq!(setup.emulator.count("token"), 1, "and 1 token");
    assert!(setup.kit.now_unix_millis() - started >= 2_000, "all waited for the one slow answer");
    let others = setup
        .kit
        .verify_concurrently(&[request(COINS, &key, &[], ""), request(COINS, &key, &[("sku_id", "0010")], "")]);
    assert!(others.iter().all(Result::is_ok), "{others:?}");
    assert_eq!(setup.emulator.count("collections.query"), 3, "another product or sku is another lookup");
}

#[test]
fn the_catalog_comes_from_the_config() {
    let setup = setup();
    let page = |kind: ProductKind, size: i32, token: &str| {
        setup
            .kit
            .list_items(proto::ListItemsRequest {
                app_id: APP.into(),
                kind: kind.into(),
                page_size: size,
                page_token: token.into(),
            })
            .unwrap()
    };
    let first = page(ProductKind::Unspecified, 3, "");
    let second = page(ProductKind::Unspecified, 3, &first.next_page_token);
    let ids: Vec<String> =
        [first.items, second.items.clone()].concat().into_iter().map(|item| item.product_id).collect();
    assert_eq!(ids, [DURABLE, COINS, GEMS, VIP]);
    assert!(second.next_page_token.is_empty());
    assert_eq!(page(ProductKind::Consumable, 0, "").items.len(), 2);
    assert_eq!(page(ProductKind::NonConsumable, 0, "").items[0].price_amount_micros, 1_990_000);
    assert!(setup.kit.requests().is_empty(), "microsoft has no catalog service: nothing is sent");
}

#[test]
fn configuration_errors_name_the_key() {
    let fails = |config: serde_json::Value, secret: Option<&str>| {
        let mut builder = kit::builder().config_json(config.to_string());
        if let Some(secret) = secret {
            builder = builder.secret("client_secret", secret);
        }
        builder.build::<MicrosoftStore>().unwrap_err()
    };
    let mut empty_client = config();
    empty_client["client_id"] = json!(" ");
    assert!(fails(empty_client, Some(SECRET)).message().contains("`stores.test.config.client_id`"));
    let mut bad_sandbox = config();
    bad_sandbox["sandbox"] = json!("XDKS 1; drop");
    assert!(fails(bad_sandbox, Some(SECRET)).message().contains("`stores.test.config.sandbox`"));
    let mut no_packages = config();
    no_packages["packages"] = json!([]);
    assert!(fails(no_packages, Some(SECRET)).message().contains("`stores.test.config.packages`"));
    let mut no_tenant = config();
    no_tenant.as_object_mut().unwrap().remove("tenant_id");
    assert!(fails(no_tenant, Some(SECRET)).message().contains("missing field `tenant_id`"));
    let err = fails(config(), None);
    assert!(err.message().contains("secret `client_secret` is not configured"), "{err}");
}

#[test]
fn derived_tracking_ids_are_guids_stable_per_purchase() {
    let first: crate::api::CollectionItem =
        serde_json::from_value(json!({"id": "a", "productId": COINS, "status": "Active", "transactionId": "order-1"}))
            .unwrap();
    let again = crate::derived_tracking_id(COINS, &first);
    assert_eq!(again, crate::derived_tracking_id(COINS, &first));
    assert!(crate::is_guid(&again), "{again}");
    let second = crate::api::CollectionItem { transaction_id: "order-2".into(), ..first };
    assert_ne!(again, crate::derived_tracking_id(COINS, &second));
    for not_guid in
        ["", "1b3afaa8-2c4d-4e5f-8a9b", "1b3afaa8-2c4d-4e5f-8a9b-0c1d2e3f4a5g", "1b3afaa82c4d4e5f8a9b0c1d2e3f4a5b"]
    {
        assert!(!crate::is_guid(not_guid), "{not_guid}");
    }
}
