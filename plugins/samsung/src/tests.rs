#![allow(clippy::unwrap_used)]

//! The store against the Samsung emulator, in-process through the kit.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use iapd_emulators::Fault;
use iapd_emulators::samsung::{Receipt, Samsung as Emulator};
use iapd_sdk_plugin::kit::{self, Kit};
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use serde_json::json;

use crate::Samsung;
use crate::devapi::{Action, item_result};

const ORIGIN: &str = "http://samsung.test";
const PACKAGE: &str = "com.example.galaxy";
/// The Tizen item group id of the emulator's tickets.
const ITEM_GROUP: &str = "100000031234";
const ACCOUNT: &str = "iapd-demo-service-account";
const NOW: i64 = 1_767_225_600_000;
const PRIVATE_KEY: &str = include_str!("../../../tests/fixtures/samsung/service-account.pem");
const PUBLIC_KEY: &str = include_str!("../../../tests/fixtures/samsung/service-account.pub.pem");

struct Setup {
    emulator: Arc<Emulator>,
    kit: Kit<Samsung>,
}

fn config() -> serde_json::Value {
    json!({
        "packages": [PACKAGE, ITEM_GROUP],
        "service_account_id": ACCOUNT,
        "receipt_root": ORIGIN,
        "devapi_root": ORIGIN,
        "tizen_verify_url": format!("{ORIGIN}/appsItemVerifyIAPReceipt.as"),
        "subscriptions": [
            {"product_id": "vip_monthly", "title": "VIP monthly", "price_micros": 4_990_000},
            {"product_id": "vip_yearly", "title": "VIP yearly", "currency": "EUR", "active": false},
        ],
        "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 40},
    })
}

fn setup_with(config: serde_json::Value, private_key: Option<&str>) -> Setup {
    let emulator = Arc::new(Emulator::with_default_state());
    emulator.set_clock(NOW);
    let mut builder = kit::builder()
        .now_unix_millis(NOW)
        .config_json(config.to_string())
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()));
    if let Some(key) = private_key {
        builder = builder.secret("private_key", key);
    }
    Setup { emulator, kit: builder.build::<Samsung>().unwrap() }
}

fn setup() -> Setup {
    setup_with(config(), Some(PRIVATE_KEY))
}

fn purchase_id(id: &str) -> Option<proto::Proof> {
    Some(proto::Proof { kind: Some(proto::proof::Kind::PurchaseId(id.to_owned())), ..Default::default() })
}

fn ticket(id: &str, params: &[(&str, &str)]) -> Option<proto::Proof> {
    let store_parameters = params.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
    Some(proto::Proof { kind: Some(proto::proof::Kind::PurchaseId(id.to_owned())), store_parameters })
}

fn verify_as(setup: &Setup, product: &str, id: &str, user: &str) -> Result<proto::VerifyResponse, PluginError> {
    setup.kit.verify(proto::VerifyRequest {
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: purchase_id(id),
        user_id: user.into(),
    })
}

fn verify(setup: &Setup, product: &str, id: &str) -> Result<proto::VerifyResponse, PluginError> {
    verify_as(setup, product, id, "")
}

fn acknowledge(setup: &Setup, product: &str, proof: Option<proto::Proof>) -> Result<bool, PluginError> {
    setup
        .kit
        .acknowledge(proto::AcknowledgeRequest {
            app_id: PACKAGE.into(),
            product_id: product.into(),
            proof,
            developer_payload: String::new(),
        })
        .map(|answer| answer.already_acknowledged)
}

fn consume(setup: &Setup, product: &str, proof: Option<proto::Proof>) -> Result<bool, PluginError> {
    setup
        .kit
        .consume(proto::ConsumeRequest { app_id: PACKAGE.into(), product_id: product.into(), proof })
        .map(|answer| answer.already_consumed)
}

fn receipt(id: &str, fields: serde_json::Value) -> Receipt {
    Receipt { purchase_id: id.to_owned(), fields: fields.as_object().unwrap().clone() }
}

/// A receipt like Samsung's, with `changes` applied.
fn receipt_with(id: &str, changes: serde_json::Value) -> Receipt {
    let mut fields = json!({
        "itemId": "coins_100", "paymentId": "TPMTID-X", "orderId": "S-X", "packageName": PACKAGE,
        "purchaseDate": "2026-01-01 00:00:00", "status": "success", "mode": "PRODUCTION", "consumeYN": "N",
    });
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            fields.as_object_mut().unwrap().remove(key);
        } else {
            fields[key] = value.clone();
        }
    }
    receipt(id, fields)
}

#[test]
fn every_receipt_field_is_mapped() {
    use AcknowledgementState as Ack;
    use ConsumptionState as Consumption;
    struct Row {
        id: &'static str,
        product: &'static str,
        verdict: Verdict,
        state: PurchaseState,
        consumption: ConsumptionState,
        acknowledgement: AcknowledgementState,
        kind: ProductKind,
        time: i64,
        order: &'static str,
        payment: &'static str,
        region: &'static str,
        payload: &'static str,
        binding: &'static str,
    }
    let base = Row {
        id: "",
        product: "coins_100",
        verdict: Verdict::Valid,
        state: PurchaseState::Purchased,
        consumption: Consumption::NotConsumed,
        acknowledgement: Ack::NotApplicable,
        kind: ProductKind::Consumable,
        time: 1_767_225_600_000,
        order: "S20260101US00000001",
        payment: "TPMTID20260101US0000001",
        region: "US",
        payload: "",
        binding: "",
    };
    let table = [
        Row { id: "sg-purchased", payload: "order-1", ..base },
        Row {
            id: "sg-consumed",
            consumption: Consumption::Consumed,
            time: 1_767_225_900_000,
            order: "S20260101US00000002",
            payment: "TPMTID20260101US0000002",
            ..base
        },
        Row {
            id: "sg-remove-ads",
            product: "remove_ads",
            consumption: Consumption::NotApplicable,
            acknowledgement: Ack::NotAcknowledged,
            kind: ProductKind::NonConsumable,
            time: 1_767_225_599_000,
            order: "S20260101KR00000003",
            payment: "TPMTID20260101KR0000003",
            region: "KR",
            ..base
        },
        Row {
            id: "sg-acknowledged",
            product: "remove_ads",
            consumption: Consumption::NotApplicable,
            acknowledgement: Ack::Acknowledged,
            kind: ProductKind::NonConsumable,
            time: 1_767_229_200_000,
            order: "S20260101US00000004",
            payment: "TPMTID20260101US0000004",
            ..base
        },
        Row {
            id: "sg-subscription",
            product: "vip_monthly",
            consumption: Consumption::NotApplicable,
            acknowledgement: Ack::NotAcknowledged,
            kind: ProductKind::Subscription,
            time: 1_767_232_800_000,
            order: "S20260101US00000005",
            payment: "TPMTID20260101US0000005",
            ..base
        },
        Row {
            id: "sg-canceled",
            verdict: Verdict::Canceled,
            state: PurchaseState::Canceled,
            time: 1_767_240_000_000,
            order: "S20260101US00000007",
            payment: "TPMTID20260101US0000007",
            ..base
        },
        Row {
            id: "sg-bound",
            product: "coins_500",
            time: 1_767_243_600_000,
            order: "S20260101US00000008",
            payment: "TPMTID20260101US0000008",
            binding: "user-42",
            ..base
        },
    ];
    let setup = setup();
    for row in table {
        let answer = verify(&setup, row.product, row.id).unwrap();
        assert_eq!(answer.verdict(), row.verdict, "{}: {}", row.id, answer.verdict_reason);
        let purchase = answer.purchase.unwrap();
        assert_eq!(
            (purchase.state(), purchase.consumption_state(), purchase.acknowledgement_state(), purchase.kind()),
            (row.state, row.consumption, row.acknowledgement, row.kind),
            "{}",
            row.id
        );
        assert_eq!(purchase.purchase_time_unix_millis, row.time, "{}", row.id);
        assert_eq!((purchase.order_id.as_str(), purchase.transaction_id.as_str()), (row.order, row.payment));
        assert_eq!(purchase.region_code, row.region, "{}", row.id);
        assert_eq!(purchase.developer_payload, row.payload, "{}", row.id);
        assert_eq!(purchase.account_binding, row.binding, "{}", row.id);
        assert_eq!((purchase.environment(), purchase.quantity), (Environment::Production, 1));
        let raw: serde_json::Value = serde_json::from_str(&purchase.raw_store_response).unwrap();
        assert_eq!(raw["orderId"], row.order, "the store's own answer is kept");
    }

    // Neither flag: the kind is not known. Fields Samsung may add are ignored.
    setup.emulator.add_receipt(receipt_with(
        "sg-bare",
        json!({"consumeYN": null, "itemType": "Item", "newField": "x", "nested": {"a": 1}}),
    ));
    let purchase = verify(&setup, "coins_100", "sg-bare").unwrap().purchase.unwrap();
    assert_eq!(
        (purchase.kind(), purchase.consumption_state(), purchase.acknowledgement_state()),
        (ProductKind::Unspecified, ConsumptionState::NotApplicable, AcknowledgementState::NotApplicable)
    );
    assert_eq!(setup.kit.requests()[0].url(), format!("{ORIGIN}/iap/v6/receipt?purchaseID=sg-purchased"));
    assert_eq!(setup.kit.requests()[0].header_value("authorization"), None, "the receipt api takes no auth");
}

#[test]
fn the_region_is_alpha_2_and_the_raw_answer_keeps_samsungs_code() {
    let setup = setup();
    setup.emulator.add_receipt(receipt_with("sg-alpha2", json!({"countryCode": "DE"})));
    setup.emulator.add_receipt(receipt_with("sg-unknown-region", json!({"countryCode": "ZZZ"})));
    for (id, samsung, region) in
        [("sg-purchased", "USA", "US"), ("sg-alpha2", "DE", "DE"), ("sg-unknown-region", "ZZZ", "")]
    {
        let answer = verify(&setup, "coins_100", id).unwrap();
        assert_eq!(answer.verdict(), Verdict::Valid, "{id}: an unknown region never fails the verify");
        let purchase = answer.purchase.unwrap();
        assert_eq!(purchase.region_code, region, "{id}");
        let raw: serde_json::Value = serde_json::from_str(&purchase.raw_store_response).unwrap();
        assert_eq!(raw["countryCode"], samsung, "{id}: the raw answer keeps samsung's code");
    }
    let korea = verify(&setup, "remove_ads", "sg-remove-ads").unwrap().purchase.unwrap();
    assert_eq!(korea.region_code, "KR");
    let logged = setup.kit.logs().into_iter().any(|(level, message)| {
        level == iapd_sdk_plugin::log::Level::Debug as u32 && message.contains("\"ZZZ\", not an iso 3166-1 code")
    });
    assert!(logged, "the unknown code is logged at debug: {:?}", setup.kit.logs());
}

#[test]
fn concurrent_identical_verifies_share_one_request_and_each_caller_is_judged_alone() {
    let setup = setup();
    // Galaxy Store receipts: the first receipt answers slowly, so all twenty
    // calls overlap it. The purchase is bound to user-42: the callers who
    // say another user get USER_MISMATCH from the same one answer.
    setup.emulator.inject(Fault { operation: Some("receipt".into()), delay_ms: 2_000, ..Fault::default() });
    let requests: Vec<proto::VerifyRequest> = (0..20)
        .map(|caller| proto::VerifyRequest {
            app_id: PACKAGE.into(),
            product_id: "coins_500".into(),
            proof: purchase_id("sg-bound"),
            user_id: if caller % 2 == 0 { "user-42".into() } else { "user-7".into() },
        })
        .collect();
    let started = setup.kit.now_unix_millis();
    let answers = setup.kit.verify_concurrently(&requests);
    assert_eq!(answers.len(), 20);
    for (caller, answer) in answers.into_iter().enumerate() {
        let expected = if caller % 2 == 0 { Verdict::Valid } else { Verdict::UserMismatch };
        assert_eq!(answer.unwrap().verdict(), expected, "caller {caller}");
    }
    assert_eq!(setup.emulator.count("receipt"), 1, "20 identical Verifies, 1 receipt request");
    assert!(setup.kit.now_unix_millis() - started >= 2_000, "all waited for the one slow answer");

    // Tizen tickets, likewise; another purchase id is another request.
    setup.emulator.inject(Fault { operation: Some("tizen.verify".into()), delay_ms: 2_000, ..Fault::default() });
    let ticket_request = proto::VerifyRequest {
        app_id: ITEM_GROUP.into(),
        product_id: "000000000072".into(),
        proof: ticket(TICKET, &TICKET_PARAMS),
        user_id: String::new(),
    };
    let answers = setup.kit.verify_concurrently(&vec![ticket_request; 20]);
    for answer in answers {
        assert_eq!(answer.unwrap().verdict(), Verdict::Valid);
    }
    assert_eq!(setup.emulator.count("tizen.verify"), 1, "20 identical ticket checks, 1 request");
    let two = [purchase_id("sg-purchased"), purchase_id("sg-consumed")].map(|proof| proto::VerifyRequest {
        app_id: PACKAGE.into(),
        product_id: "coins_100".into(),
        proof,
        user_id: String::new(),
    });
    assert!(setup.kit.verify_concurrently(&two).iter().all(Result::is_ok));
    assert_eq!(setup.emulator.count("receipt"), 3, "two purchase ids, two requests");
}

#[test]
fn values_iapd_does_not_know_fail_closed() {
    let setup = setup();
    for (id, changes) in [
        ("sg-odd-status", json!({"status": "refunded"})),
        ("sg-no-status", json!({"status": null})),
        ("sg-odd-mode", json!({"mode": "SANDBOX"})),
        ("sg-no-mode", json!({"mode": null})),
        ("sg-odd-date", json!({"purchaseDate": "2026-01-01T00:00:00Z"})),
        ("sg-odd-flag", json!({"consumeYN": "maybe"})),
        ("sg-odd-ack", json!({"acknowledgeYN": "1"})),
    ] {
        setup.emulator.add_receipt(receipt_with(id, changes));
        let err = verify(&setup, "coins_100", id).unwrap_err();
        assert_eq!((err.code(), err.reason()), (Code::Internal, "MALFORMED_RESPONSE"), "{id}: {err}");
    }
}

#[test]
fn malformed_json_from_every_samsung_api_is_malformed_response() {
    let setup = setup();
    let mut errors = Vec::new();
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("receipt", 200, "") });
    errors.push(("receipt", "Receipt", verify(&setup, "coins_100", "sg-purchased").unwrap_err()));
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("tizen.verify", 200, "") });
    let tizen = verify_ticket(&setup, "000000000072", ticket(TICKET, &TICKET_PARAMS)).unwrap_err();
    errors.push(("tizen.verify", "TizenAnswer", tizen));
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("token", 200, "") });
    errors.push(("token", "Created", consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap_err()));
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("purchases.update", 200, "") });
    errors.push((
        "purchases.update",
        "PurchaseUpdate",
        consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap_err(),
    ));
    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("items.list", 200, "") });
    let listed =
        setup.kit.list_items(proto::ListItemsRequest { app_id: PACKAGE.into(), ..Default::default() }).unwrap_err();
    errors.push(("items.list", "ItemPage", listed));
    for (what, expected, err) in errors {
        assert_eq!(
            (err.code(), err.reason(), err.http_status()),
            (Code::Internal, "MALFORMED_RESPONSE", 200),
            "{what}: {err}"
        );
        assert!(err.message().contains(&format!("malformed json: expected {expected}")), "{what}: {err}");
    }
}

#[test]
fn test_purchases_are_refused_unless_allowed() {
    let setup = setup();
    let answer = verify(&setup, "coins_100", "sg-test").unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert_eq!(answer.verdict_reason, "test purchase refused in production; set allow_test_purchases");
    assert_eq!(answer.purchase.unwrap().environment(), Environment::Test);

    let mut allowing = config();
    allowing["allow_test_purchases"] = json!(true);
    let setup = setup_with(allowing, Some(PRIVATE_KEY));
    let answer = verify(&setup, "coins_100", "sg-test").unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    assert_eq!(answer.purchase.unwrap().environment(), Environment::Test);
}

#[test]
fn a_fail_receipt_is_not_found_only_for_an_order_samsung_does_not_have() {
    let setup = setup();
    let answer = verify(&setup, "coins_100", "never-sold").unwrap();
    assert_eq!(answer.verdict(), Verdict::NotFound);
    assert_eq!(answer.verdict_reason, "samsung: not exist order (errorCode 9135)");
    assert!(answer.purchase.is_none());
    let answer = verify(&setup, "coins_100", "not a purchase id").unwrap();
    assert_eq!(
        (answer.verdict(), answer.verdict_reason.as_str()),
        (Verdict::NotFound, "samsung: invalid purchaseID (errorCode 9153)")
    );

    // Any other failure is Samsung not answering: an error, never a verdict.
    setup.emulator.add_receipt(receipt(
        "sg-broken",
        json!({"status": "fail", "errorCode": 9999, "errorMessage": "system error"}),
    ));
    let err = verify(&setup, "coins_100", "sg-broken").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Unknown, "9999"), "{err}");
    assert_eq!(err.metadata().get("error_code").map(String::as_str), Some("9999"));
    assert_eq!(err.metadata().get("error_message").map(String::as_str), Some("system error"));
    setup.emulator.add_receipt(receipt("sg-string-code", json!({"status": "fail", "errorCode": "9135"})));
    assert_eq!(verify(&setup, "coins_100", "sg-string-code").unwrap().verdict(), Verdict::NotFound);
    setup.emulator.add_receipt(receipt("sg-no-code", json!({"status": "fail", "errorMessage": "?"})));
    let err = verify(&setup, "coins_100", "sg-no-code").unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::Unknown, "RECEIPT_FAILED"));

    // A fail body with a 4xx reads the same; a 4xx without one is an error.
    let fail_400 = |body: &str| {
        let body = body.to_owned();
        kit::builder()
            .config_json(config().to_string())
            .secret("private_key", PRIVATE_KEY)
            .allow_origin(ORIGIN)
            .http(move |_| HttpResponse::new(400, body.clone()))
            .build::<Samsung>()
            .unwrap()
            .verify(proto::VerifyRequest {
                app_id: PACKAGE.into(),
                product_id: "coins_100".into(),
                proof: purchase_id("x"),
                user_id: String::new(),
            })
    };
    let answer = fail_400(r#"{"status":"fail","errorCode":9135,"errorMessage":"not exist order"}"#).unwrap();
    assert_eq!(answer.verdict(), Verdict::NotFound);
    let err = fail_400("<html>bad request</html>").unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Internal, "UNEXPECTED_RESPONSE", 400));
    assert!(err.message().contains("`receipt_root`"), "{err}");
}

#[test]
fn another_package_or_item_is_invalid_and_names_both() {
    let setup = setup();
    let answer = verify(&setup, "coins_100", "sg-other-app").unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert_eq!(answer.verdict_reason, "the purchase is of package `com.other.app`, not `com.example.galaxy`");
    assert!(answer.purchase.is_some(), "the purchase is shown for audit");
    let answer = verify(&setup, "coins_500", "sg-purchased").unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert_eq!(answer.verdict_reason, "the purchase is of item `coins_100`, not `coins_500`");
    assert_eq!(answer.purchase.unwrap().order_id, "S20260101US00000001");
}

#[test]
fn the_account_binding_must_match_the_user() {
    let setup = setup();
    let answer = verify_as(&setup, "coins_500", "sg-bound", "user-7").unwrap();
    assert_eq!(answer.verdict(), Verdict::UserMismatch);
    assert_eq!(answer.purchase.unwrap().account_binding, "user-42");
    assert_eq!(verify_as(&setup, "coins_500", "sg-bound", "user-42").unwrap().verdict(), Verdict::Valid);
    assert_eq!(verify_as(&setup, "coins_100", "sg-purchased", "user-7").unwrap().verdict(), Verdict::Valid, "unbound");
}

const TICKET: &str = "2bf8fe4fdef1dae29974e5400c106bfced6a650793efa3ce68a79e026481193d";
const TICKET_PARAMS: [(&str, &str); 5] = [
    ("param1", "abe87f635bf41aae0178b5384cbc09c1083026e93e44bd0efd69e66a9cc2ace6"),
    ("param2", "d49e3385783366868999e17bae3410597c0b6bcf69a92cd74cab17454cf9d4d6"),
    ("param3", "af8050beb9c0f63c773fb86f7218bb6cbd6cf78a5cdff281c2e22a229f9a1485"),
    ("param4", "1"),
    ("param5", "I20131115RU00001243"),
];
const DEV_TICKET: &str = "9c0ffee5a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbcc";
const DEV_TICKET_PARAMS: [(&str, &str); 5] = [
    ("param1", "0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9001122334455"),
    ("param2", "66778899aabbccddeeff00112233445566778899aabbccddeeff001122334455"),
    ("param3", "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"),
    ("param4", "1"),
    ("param5", "I20131116RU00001244"),
];

fn verify_ticket(
    setup: &Setup,
    product: &str,
    proof: Option<proto::Proof>,
) -> Result<proto::VerifyResponse, PluginError> {
    setup.kit.verify(proto::VerifyRequest {
        app_id: ITEM_GROUP.into(),
        product_id: product.into(),
        proof,
        user_id: String::new(),
    })
}

#[test]
fn tizen_tickets_are_checked_at_the_configured_url() {
    let setup = setup();
    let answer = verify_ticket(&setup, "000000000072", ticket(TICKET, &TICKET_PARAMS)).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid, "{}", answer.verdict_reason);
    let purchase = answer.purchase.unwrap();
    assert_eq!(
        (purchase.order_id.as_str(), purchase.transaction_id.as_str()),
        ("TPMTID20131115RU00001243", "TPMTID20131115RU00001243")
    );
    assert_eq!(
        (purchase.environment(), purchase.purchase_time_unix_millis),
        (Environment::Production, 1_384_511_483_000)
    );
    assert_eq!(purchase.state(), PurchaseState::Purchased);
    let expected_url = format!(
        "{ORIGIN}/appsItemVerifyIAPReceipt.as?purchaseID={TICKET}&param1={}&param2={}&param3={}&param4=1&param5=I20131115RU00001243",
        TICKET_PARAMS[0].1, TICKET_PARAMS[1].1, TICKET_PARAMS[2].1
    );
    assert_eq!(setup.kit.requests()[0].url(), expected_url);

    // Another item of the group, a wrong parameter, and developer mode.
    let answer = verify_ticket(&setup, "000000000099", ticket(TICKET, &TICKET_PARAMS)).unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid);
    assert_eq!(answer.verdict_reason, "the ticket is of item `000000000072`, not `000000000099`");
    let mut forged = TICKET_PARAMS;
    forged[3].1 = "2";
    let answer = verify_ticket(&setup, "000000000072", ticket(TICKET, &forged)).unwrap();
    assert_eq!(answer.verdict(), Verdict::NotFound);
    assert_eq!(answer.verdict_reason, "tizen store could not verify the ticket (status false)");
    let answer = verify_ticket(&setup, "000000000072", ticket(DEV_TICKET, &DEV_TICKET_PARAMS)).unwrap();
    assert_eq!(answer.verdict(), Verdict::Invalid, "developer mode is a test purchase");
    assert_eq!(answer.purchase.unwrap().environment(), Environment::Test);
    let mut allowing = config();
    allowing["allow_test_purchases"] = json!(true);
    let allowing = setup_with(allowing, Some(PRIVATE_KEY));
    let answer = verify_ticket(&allowing, "000000000072", ticket(DEV_TICKET, &DEV_TICKET_PARAMS)).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid);

    // Characters that would change the query are encoded.
    let mut tricky = TICKET_PARAMS;
    tricky[4].1 = "I2013&param5=x y";
    assert_eq!(verify_ticket(&setup, "000000000072", ticket(TICKET, &tricky)).unwrap().verdict(), Verdict::NotFound);
    assert!(setup.kit.requests().last().unwrap().url().ends_with("&param5=I2013%26param5%3Dx%20y"));
    assert_eq!(setup.emulator.count("tizen.verify"), 5);
}

#[test]
fn store_parameters_are_only_the_five_ticket_parameters() {
    let setup = setup();
    let mut with_url = TICKET_PARAMS.to_vec();
    with_url.push(("verify_url", "http://attacker.example/steal"));
    let err = verify_ticket(&setup, "000000000072", ticket(TICKET, &with_url)).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "UNKNOWN_STORE_PARAMETER"));
    assert!(err.message().contains("`verify_url`"), "{err}");
    let err = verify_ticket(&setup, "000000000072", ticket(TICKET, &[("_ticketVerifyUrl", "x")])).unwrap_err();
    assert!(err.message().contains("`_ticketVerifyUrl`"), "{err}");
    let mut missing = TICKET_PARAMS.to_vec();
    missing.remove(2);
    let err = verify_ticket(&setup, "000000000072", ticket(TICKET, &missing)).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "MISSING_STORE_PARAMETER"));
    assert!(err.message().contains("`param3` is missing"), "{err}");
    let mut empty = TICKET_PARAMS;
    empty[0].1 = "";
    assert!(verify_ticket(&setup, "000000000072", ticket(TICKET, &empty)).unwrap_err().message().contains("`param1`"));
    assert!(setup.kit.requests().is_empty(), "nothing is sent for a refused proof");

    // A ticket's item group must be served too.
    let err = setup
        .kit
        .verify(proto::VerifyRequest {
            app_id: "100000099999".into(),
            product_id: "000000000072".into(),
            proof: ticket(TICKET, &TICKET_PARAMS),
            user_id: String::new(),
        })
        .unwrap_err();
    assert_eq!(err.reason(), "PACKAGE_NOT_ALLOWED");

    // The tizen store has no server-side acknowledge or consume.
    for err in [
        acknowledge(&setup, "000000000072", ticket(TICKET, &TICKET_PARAMS)).unwrap_err(),
        consume(&setup, "000000000072", ticket(TICKET, &TICKET_PARAMS)).unwrap_err(),
    ] {
        assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "OPERATION_NOT_SUPPORTED"), "{err}");
        assert!(err.message().starts_with("the tizen store has no server-side"), "{err}");
    }
    assert!(setup.kit.requests().is_empty());
}

#[test]
fn the_proof_is_a_purchase_id_of_a_served_package() {
    let setup = setup();
    for proof in [
        None,
        purchase_id(""),
        Some(proto::Proof {
            kind: Some(proto::proof::Kind::PurchaseToken("sg-purchased".into())),
            ..Default::default()
        }),
    ] {
        let err = setup
            .kit
            .verify(proto::VerifyRequest {
                app_id: PACKAGE.into(),
                product_id: "coins_100".into(),
                proof,
                user_id: String::new(),
            })
            .unwrap_err();
        assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "UNSUPPORTED_PROOF"));
    }
    let err = setup
        .kit
        .verify(proto::VerifyRequest {
            app_id: "com.other.app".into(),
            product_id: "coins_100".into(),
            proof: purchase_id("sg-other-app"),
            user_id: String::new(),
        })
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::PermissionDenied, "PACKAGE_NOT_ALLOWED"));
    assert!(setup.kit.requests().is_empty());
}

/// What an acknowledge or consume comes to.
#[derive(Debug, PartialEq)]
enum Outcome {
    Done { already: bool },
    Refused(Code, &'static str),
}

#[test]
fn every_per_item_status_code_for_both_actions() {
    let setup = setup();
    // (action, purchase, the code Samsung answers, the outcome), in order: state changes carry over.
    let table = [
        (Action::Consume, "sg-purchased", "0", Outcome::Done { already: false }),
        (Action::Consume, "sg-purchased", "4", Outcome::Done { already: true }),
        (Action::Consume, "sg-consumed", "4", Outcome::Done { already: true }),
        (Action::Consume, "never-sold", "1", Outcome::Refused(Code::NotFound, "ORDER_NOT_FOUND")),
        (Action::Consume, "sg-canceled", "2", Outcome::Refused(Code::FailedPrecondition, "ORDER_NOT_SUCCESSFUL")),
        (Action::Consume, "sg-remove-ads", "3", Outcome::Refused(Code::FailedPrecondition, "WRONG_PRODUCT_TYPE")),
        (Action::Consume, "sg-other-app", "5", Outcome::Refused(Code::PermissionDenied, "NOT_AUTHORIZED")),
        (Action::Acknowledge, "sg-remove-ads", "0", Outcome::Done { already: false }),
        (Action::Acknowledge, "sg-remove-ads", "4", Outcome::Done { already: true }),
        (Action::Acknowledge, "sg-acknowledged", "4", Outcome::Done { already: true }),
        (Action::Acknowledge, "sg-subscription", "0", Outcome::Done { already: false }),
        (Action::Acknowledge, "never-sold", "1", Outcome::Refused(Code::NotFound, "ORDER_NOT_FOUND")),
        (Action::Acknowledge, "sg-canceled", "2", Outcome::Refused(Code::FailedPrecondition, "ORDER_NOT_SUCCESSFUL")),
        (Action::Acknowledge, "sg-bound", "3", Outcome::Refused(Code::FailedPrecondition, "WRONG_PRODUCT_TYPE")),
        (Action::Acknowledge, "sg-other-app", "5", Outcome::Refused(Code::PermissionDenied, "NOT_AUTHORIZED")),
    ];
    for (action, id, samsung_code, expected) in table {
        let result = match action {
            Action::Consume => consume(&setup, "coins_100", purchase_id(id)),
            Action::Acknowledge => acknowledge(&setup, "remove_ads", purchase_id(id)),
        };
        let outcome = match &result {
            Ok(already) => Outcome::Done { already: *already },
            Err(err) => {
                assert_eq!(err.metadata().get("status_code").map(String::as_str), Some(samsung_code), "{err}");
                assert!(err.message().contains(&format!("status code {samsung_code} (")), "{err}");
                let reason = ["ORDER_NOT_FOUND", "ORDER_NOT_SUCCESSFUL", "WRONG_PRODUCT_TYPE", "NOT_AUTHORIZED"]
                    .into_iter()
                    .find(|reason| *reason == err.reason())
                    .unwrap_or("other");
                Outcome::Refused(err.code(), reason)
            }
        };
        assert_eq!(outcome, expected, "{action:?} {id}: {result:?}");
    }
    assert_eq!(setup.emulator.receipt("sg-purchased").unwrap()["consumeYN"], "Y", "consumed at samsung");
    assert_eq!(setup.emulator.receipt("sg-remove-ads").unwrap()["acknowledgeYN"], "Y");
    assert_eq!(setup.emulator.receipt("sg-subscription").unwrap()["acknowledgeYN"], "Y");
    let purchase = verify(&setup, "coins_100", "sg-purchased").unwrap().purchase.unwrap();
    assert_eq!(purchase.consumption_state(), ConsumptionState::Consumed, "verify sees the change");

    // Samsung's words reach the caller; a code iapd does not know fails closed.
    let err = item_result(Action::Consume, "3", "This type of product is not a consumable item.").unwrap_err();
    assert!(err.message().contains("This type of product is not a consumable item."), "{err}");
    assert!(err.message().contains("consume is for consumables, acknowledge for non-consumables"), "{err}");
    for code in ["6", "", "success"] {
        let err = item_result(Action::Acknowledge, code, "?").unwrap_err();
        assert_eq!((err.code(), err.reason()), (Code::Internal, "MALFORMED_RESPONSE"), "{code:?}");
    }
}

#[test]
fn developer_api_requests_carry_the_service_account() {
    let setup = setup();
    consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap();
    let requests = setup.kit.requests();
    assert_eq!(requests.len(), 2);
    let (token, patch) = (&requests[0], &requests[1]);
    assert_eq!((token.method(), token.url()), ("POST", format!("{ORIGIN}/auth/accessToken").as_str()));
    let jwt = token.header_value("authorization").unwrap().strip_prefix("Bearer ").unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
    let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation).unwrap().claims;
    assert_eq!(claims["iss"], ACCOUNT);
    assert_eq!(claims["scopes"], json!(["publishing", "gss"]));
    assert_eq!(claims["iat"], NOW / 1000);
    assert_eq!(claims["exp"], NOW / 1000 + 1200, "samsung's longest jwt lifetime");

    assert_eq!(patch.method(), "PATCH");
    assert_eq!(patch.url(), format!("{ORIGIN}/iap/seller/v6/applications/{PACKAGE}/purchases/sg-purchased"));
    assert!(patch.header_value("authorization").unwrap().starts_with("Bearer galaxy-access-"));
    assert_eq!(patch.header_value("service-account-id"), Some(ACCOUNT));
    assert_eq!(patch.header_value("content-type"), Some("application/json"));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(patch.body_bytes()).unwrap(), json!({"action": "consume"}));
}

#[test]
fn the_access_token_is_cached_and_refreshed_once_after_a_401() {
    let setup = setup();
    consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap();
    acknowledge(&setup, "remove_ads", purchase_id("sg-remove-ads")).unwrap();
    list_all(&setup, ProductKind::Unspecified, 3);
    setup.kit.advance_clock(6 * 3600 * 1000);
    setup.emulator.set_clock(setup.kit.now_unix_millis());
    consume(&setup, "coins_500", purchase_id("sg-bound")).unwrap();
    assert_eq!(setup.emulator.count("token"), 1, "samsung's tokens never expire: one serves every call");

    setup.emulator.revoke_tokens();
    assert!(consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap());
    assert_eq!(setup.emulator.count("token"), 2, "one fresh token after the 401");
    assert_eq!(setup.emulator.count("purchases.update"), 5, "the refused attempt and its retry");

    // A 401 that persists is reported once the fresh token is refused too.
    setup.emulator.inject(Fault { times: 2, ..Fault::answering("purchases.update", 401, "AUTH_REQUIRE") });
    let err = consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Unauthenticated, "AUTH_REQUIRE", 401));
    assert_eq!(setup.emulator.count("token"), 3);
    setup.emulator.inject(Fault::answering("items.list", 403, "NO_PERMISSION"));
    let err =
        setup.kit.list_items(proto::ListItemsRequest { app_id: PACKAGE.into(), ..Default::default() }).unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::PermissionDenied, "NO_PERMISSION"));
}

#[test]
fn a_refused_service_account_is_unauthenticated_and_the_key_never_shows() {
    let mut unknown = config();
    unknown["service_account_id"] = json!("someone-else");
    let setup = setup_with(unknown, Some(PRIVATE_KEY));
    let err = consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap_err();
    assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Unauthenticated, "AUTH_REQUIRE", 401), "{err}");
    assert!(err.message().contains("Not found service account by serviceAccountId"), "{err}");
    assert!(err.message().contains("`someone-else`"));

    for (_, message) in setup.kit.logs() {
        assert!(!message.contains("PRIVATE KEY") && !message.contains("eyJ"), "a log shows a secret: {message}");
    }

    let err = kit::builder()
        .config_json(config().to_string())
        .secret("private_key", "not-a-key")
        .build::<Samsung>()
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "INVALID_SERVICE_ACCOUNT_KEY"));
    assert!(!err.message().contains("not-a-key"), "{err}");
}

#[test]
fn without_a_service_account_verify_works_and_the_developer_api_says_what_is_missing() {
    let mut without = config();
    without.as_object_mut().unwrap().remove("service_account_id");
    let setup = setup_with(without, None);
    assert_eq!(verify(&setup, "coins_100", "sg-purchased").unwrap().verdict(), Verdict::Valid);
    let list = |kind: ProductKind| {
        setup.kit.list_items(proto::ListItemsRequest {
            app_id: PACKAGE.into(),
            kind: kind.into(),
            ..Default::default()
        })
    };
    for err in [
        acknowledge(&setup, "remove_ads", purchase_id("sg-remove-ads")).unwrap_err(),
        consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap_err(),
        list(ProductKind::Consumable).unwrap_err(),
    ] {
        assert_eq!((err.code(), err.reason()), (Code::FailedPrecondition, "SERVICE_ACCOUNT_NOT_CONFIGURED"));
        assert!(err.message().contains("`stores.test.config.service_account_id`"), "{err}");
    }
    let subscriptions = list(ProductKind::Subscription).unwrap();
    assert_eq!(subscriptions.items.len(), 2, "configured subscriptions need no samsung call");
    assert_eq!(setup.emulator.count("token"), 0);
}

/// Every item of `kind`, fetched `page_size` at a time.
fn list_all(setup: &Setup, kind: ProductKind, page_size: i32) -> Vec<proto::CatalogItem> {
    let mut items = Vec::new();
    let mut page_token = String::new();
    for _ in 0..100 {
        let page = setup
            .kit
            .list_items(proto::ListItemsRequest { app_id: PACKAGE.into(), kind: kind.into(), page_size, page_token })
            .unwrap();
        let most = if page_size > 0 { usize::try_from(page_size).unwrap() } else { 50 };
        assert!(page.items.len() <= most, "{page:?}");
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return items;
        }
        page_token = page.next_page_token;
    }
    panic!("the listing never ended");
}

#[test]
fn the_catalog_is_paged_across_samsung_pages_for_every_filter() {
    let all = [
        "coins_100",
        "remove_ads",
        "coins_500",
        "level_pack",
        "coins_1000",
        "theme_dark",
        "starter_bundle",
        "mystery",
        "vip_monthly",
        "vip_yearly",
    ];
    // Kinds as Tizen's type codes name them: 10 all, 01 consumable, 00 non-consumable, 02 subscription.
    let expected: [(ProductKind, &[&str]); 4] = [
        (ProductKind::Unspecified, &all),
        (ProductKind::Consumable, &["coins_100", "coins_500", "coins_1000", "starter_bundle"]),
        (ProductKind::NonConsumable, &["remove_ads", "level_pack", "theme_dark"]),
        (ProductKind::Subscription, &["vip_monthly", "vip_yearly"]),
    ];
    for samsung_size in [1, 2, 3, 8, 100] {
        let mut config = config();
        config["catalog_page_size"] = json!(samsung_size);
        let setup = setup_with(config, Some(PRIVATE_KEY));
        for (kind, ids) in expected {
            for page_size in [1, 2, 3, 5, 0] {
                let listed: Vec<String> =
                    list_all(&setup, kind, page_size).into_iter().map(|item| item.product_id).collect();
                assert_eq!(listed, ids, "{kind:?}, samsung pages of {samsung_size}, pages of {page_size}");
                let unique: BTreeSet<&String> = listed.iter().collect();
                assert_eq!(unique.len(), listed.len(), "no item twice");
            }
        }
        for request in setup.kit.requests().iter().filter(|request| request.url().contains("/items")) {
            assert!(request.url().contains(&format!("&size={samsung_size}")), "{}", request.url());
            assert!(!request.url().contains("page=0"), "samsung pages start at 1: {}", request.url());
        }
    }

    let setup = setup();
    let items: HashMap<String, proto::CatalogItem> =
        list_all(&setup, ProductKind::Unspecified, 0).into_iter().map(|item| (item.product_id.clone(), item)).collect();
    let coins = &items["coins_100"];
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
    assert_eq!(items["coins_1000"].price_amount_micros, 6_500_000);
    assert_eq!(items["starter_bundle"].price_amount_micros, 400_000_000);
    assert!(!items["level_pack"].active, "unpublished");
    assert!(!items["theme_dark"].active, "removed");
    assert_eq!(items["mystery"].kind(), ProductKind::Unspecified);
    assert_eq!(items["vip_monthly"].kind(), ProductKind::Subscription);
    assert_eq!((items["vip_monthly"].price_amount_micros, items["vip_yearly"].active), (4_990_000, false));
    assert_eq!(items["vip_yearly"].price_currency_code, "EUR");

    for token in ["i3", "p1.200", "p0.0", "c"] {
        let err = setup
            .kit
            .list_items(proto::ListItemsRequest {
                app_id: PACKAGE.into(),
                page_token: token.into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!((err.code(), err.reason()), (Code::InvalidArgument, "INVALID_PAGE_TOKEN"), "{token}");
    }
}

#[test]
fn faults_are_retried_and_counted_at_the_store() {
    let setup = setup();
    setup.emulator.inject(Fault { times: 2, ..Fault::answering("receipt", 503, "") });
    assert_eq!(verify(&setup, "coins_100", "sg-purchased").unwrap().verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("receipt"), 3);

    setup.emulator.inject(Fault { times: 4, ..Fault::answering("receipt", 500, "SYSTEM_ERROR") });
    let err = verify(&setup, "coins_100", "sg-purchased").unwrap_err();
    assert_eq!((err.code(), err.reason(), err.is_retryable()), (Code::Unavailable, "SYSTEM_ERROR", true));
    assert_eq!(setup.emulator.count("receipt"), 7, "four attempts");

    setup.emulator.inject(Fault { retry_after_secs: Some(2), ..Fault::answering("receipt", 429, "") });
    let before = setup.kit.now_unix_millis();
    verify(&setup, "coins_100", "sg-purchased").unwrap();
    assert_eq!(setup.kit.now_unix_millis() - before, 2_000, "Retry-After honoured");
    assert_eq!(setup.emulator.count("receipt"), 9);

    setup.emulator.inject(Fault { times: 2, ..Fault::answering("purchases.update", 502, "") });
    assert!(!consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap());
    assert_eq!(setup.emulator.count("purchases.update"), 3);
    setup.emulator.inject(Fault::answering("token", 503, ""));
    setup.emulator.revoke_tokens();
    assert!(consume(&setup, "coins_100", purchase_id("sg-purchased")).unwrap());
    assert_eq!(setup.emulator.count("token"), 3, "the first, one refused with 503, the retry");

    setup.emulator.inject(Fault { times: 1, ..Fault::answering("tizen.verify", 503, "") });
    let answer = verify_ticket(&setup, "000000000072", ticket(TICKET, &TICKET_PARAMS)).unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid);
    assert_eq!(setup.emulator.count("tizen.verify"), 2);

    setup.emulator.inject(Fault { malformed: true, ..Fault::answering("receipt", 200, "") });
    assert_eq!(verify(&setup, "coins_100", "sg-purchased").unwrap_err().code(), Code::Internal);
}

#[test]
fn timeouts_are_retried() {
    let emulator = Arc::new(Emulator::with_default_state());
    let kit = kit::builder()
        .config_json(config().to_string())
        .secret("private_key", PRIVATE_KEY)
        .allow_origin(ORIGIN)
        .http(iapd_emulators::kit_handler(emulator.clone()))
        // The first attempt times out at the host.
        .fail_first(1, Code::DeadlineExceeded)
        .build::<Samsung>()
        .unwrap();
    let answer = kit
        .verify(proto::VerifyRequest {
            app_id: PACKAGE.into(),
            product_id: "coins_100".into(),
            proof: purchase_id("sg-purchased"),
            user_id: String::new(),
        })
        .unwrap();
    assert_eq!(answer.verdict(), Verdict::Valid);
    assert_eq!(kit.requests().len(), 2, "one attempt failed, the retry answered");
}

#[test]
fn configuration_errors_name_the_key() {
    let fails = |config: serde_json::Value, key: Option<&str>| {
        let mut builder = kit::builder().config_json(config.to_string());
        if let Some(key) = key {
            builder = builder.secret("private_key", key);
        }
        builder.build::<Samsung>().unwrap_err()
    };
    let with = |key: &str, value: serde_json::Value| {
        let mut config = config();
        config[key] = value;
        config
    };
    let err = fails(with("api_root", json!("x")), Some(PRIVATE_KEY));
    assert!(err.message().contains("unknown field `api_root`"), "{err}");
    for size in [0, 101] {
        let err = fails(with("catalog_page_size", json!(size)), Some(PRIVATE_KEY));
        assert!(err.message().contains("`stores.test.config.catalog_page_size`"), "{err}");
    }
    let err = fails(with("service_account_id", json!("")), Some(PRIVATE_KEY));
    assert!(err.message().contains("`stores.test.config.service_account_id`"), "{err}");
    let err = fails(config(), None);
    assert!(err.message().contains("secret `private_key` is not configured"), "{err}");
    let err = fails(with("packages", json!([])), Some(PRIVATE_KEY));
    assert!(err.message().contains("`stores.test.config.packages`"), "{err}");
    let err = fails(with("tizen_verify_url", json!("https://iap.tizenstore.com/x.as?a=1")), Some(PRIVATE_KEY));
    assert!(err.message().contains("`stores.test.config.tizen_verify_url`"), "{err}");
    let err = fails(with("subscriptions", json!([{"product_id": "vip", "kind": "subscription"}])), Some(PRIVATE_KEY));
    assert!(err.message().contains("unknown field `kind`"), "{err}");
}

#[test]
fn the_emulator_checks_jwts_and_headers_as_samsung_does() {
    use iapd_emulators::{Emulator as _, Request};
    let emulator = Emulator::with_default_state();
    emulator.set_clock(NOW);
    let now = NOW / 1000;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(PRIVATE_KEY.as_bytes()).unwrap();
    let sign = |iss: &str, iat: i64, exp: i64| {
        let claims = json!({"iss": iss, "scopes": ["publishing", "gss"], "iat": iat, "exp": exp});
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap()
    };
    let token_request = |jwt: &str| {
        emulator.handle(&Request::new("POST", "/auth/accessToken").header("authorization", &format!("Bearer {jwt}")))
    };
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": ACCOUNT, "iat": now, "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    for (jwt, message) in [
        (sign(ACCOUNT, now, now + 1201), "Invalid JWT: the lifetime must be at most 20 minutes"),
        (sign(ACCOUNT, now - 1300, now - 100), "Invalid JWT: expired or not yet valid"),
        (sign("someone-else", now, now + 60), "Not found service account by serviceAccountId"),
        (hs256, "Invalid JWT signature"),
    ] {
        let answer = token_request(&jwt);
        assert_eq!(answer.status, 401, "{message}");
        assert_eq!(answer.json_body(), json!({"code": "AUTH_REQUIRE", "message": message, "from": "asgw"}));
    }
    let answer = emulator.handle(&Request::new("POST", "/auth/accessToken"));
    assert_eq!(answer.status, 401);
    let answer = token_request(&sign(ACCOUNT, now, now + 1200)).json_body();
    assert_eq!(answer["ok"], true);
    let access = answer["createdItem"]["accessToken"].as_str().unwrap().to_owned();

    let update = |headers: &[(&str, &str)], body: serde_json::Value| {
        let mut request =
            Request::new("PATCH", &format!("/iap/seller/v6/applications/{PACKAGE}/purchases/sg-purchased"))
                .body(body.to_string());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        emulator.handle(&request)
    };
    let bearer = format!("Bearer {access}");
    let answer = update(&[("authorization", &bearer)], json!({"action": "consume"}));
    assert_eq!(
        (answer.status, answer.json_body()["code"].as_str()),
        (401, Some("AUTH_REQUIRE")),
        "no service-account-id"
    );
    let answer = update(&[("service-account-id", ACCOUNT)], json!({"action": "consume"}));
    assert_eq!(answer.json_body()["message"], "Invalid accessToken");
    let both = [("authorization", bearer.as_str()), ("service-account-id", ACCOUNT)];
    assert_eq!(update(&both, json!({"action": "refund"})).status, 400);
    // The batch form, with ids as strings or objects.
    let answer = update(
        &both,
        json!({"action": "consume", "purchasedIdList": ["sg-bound", {"purchaseId": "sg-consumed"}, "sg-purchased"]}),
    )
    .json_body();
    assert_eq!(answer["totalCount"], 3);
    let codes: Vec<(&str, &str)> = answer["purchaseItemList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["purchaseId"].as_str().unwrap(), item["statusCode"].as_str().unwrap()))
        .collect();
    assert_eq!(codes, [("sg-purchased", "0"), ("sg-bound", "0"), ("sg-consumed", "4")]);
    assert_eq!(emulator.receipt("sg-bound").unwrap()["consumeDate"], "2026-01-01 00:00:00");
}
