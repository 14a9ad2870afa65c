//! Unit tests of the sandbox store, run in-process with the SDK's test kit.
//! Most are tables: a token (and product, user) against the answer it must
//! select.

use std::collections::HashMap;

use iapd_sdk_plugin::kit::{self, Kit};
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState as Ack, ConsumptionState as Consumption, ProductKind, PurchaseState as State, Verdict,
};
use iapd_sdk_plugin::{Code, PluginError, Store};

use super::{DAY_MILLIS, JANUARY_2025_MILLIS, Sandbox};

const APP: &str = "com.example.game";
/// The kit's default clock: 2026-01-01T00:00:00Z.
const KIT_NOW: i64 = 1_767_225_600_000;

fn kit() -> Kit<Sandbox> {
    kit::builder().build::<Sandbox>().expect("the sandbox store builds with an empty config")
}

fn proof(token: &str) -> Option<proto::Proof> {
    Some(proto::Proof {
        kind: Some(proto::proof::Kind::PurchaseToken(token.to_owned())),
        store_parameters: HashMap::new(),
    })
}

fn verify_as(kit: &Kit<Sandbox>, product: &str, token: &str, user: &str) -> Result<proto::VerifyResponse, PluginError> {
    kit.verify(proto::VerifyRequest {
        app_id: APP.to_owned(),
        product_id: product.to_owned(),
        proof: proof(token),
        user_id: user.to_owned(),
    })
}

fn verify(kit: &Kit<Sandbox>, product: &str, token: &str) -> Result<proto::VerifyResponse, PluginError> {
    verify_as(kit, product, token, "")
}

fn acknowledge(kit: &Kit<Sandbox>, product: &str, token: &str) -> Result<proto::AcknowledgeResponse, PluginError> {
    kit.acknowledge(proto::AcknowledgeRequest {
        app_id: APP.to_owned(),
        product_id: product.to_owned(),
        proof: proof(token),
        developer_payload: String::new(),
    })
}

fn consume(kit: &Kit<Sandbox>, product: &str, token: &str) -> Result<proto::ConsumeResponse, PluginError> {
    kit.consume(proto::ConsumeRequest { app_id: APP.to_owned(), product_id: product.to_owned(), proof: proof(token) })
}

fn list(
    kit: &Kit<Sandbox>,
    kind: ProductKind,
    page_size: i32,
    page_token: &str,
) -> Result<proto::ListItemsResponse, PluginError> {
    kit.list_items(proto::ListItemsRequest {
        app_id: APP.to_owned(),
        kind: kind.into(),
        page_size,
        page_token: page_token.to_owned(),
    })
}

fn purchase(response: &proto::VerifyResponse) -> &proto::Purchase {
    response.purchase.as_ref().expect("a verdict about a known purchase carries the purchase")
}

#[track_caller]
fn assert_error(result: Result<impl std::fmt::Debug, PluginError>, code: Code, reason: &str) -> PluginError {
    let err = result.expect_err("the call must fail");
    assert_eq!((err.code(), err.reason()), (code, reason), "unexpected error: {err}");
    assert!(!err.message().is_empty(), "errors carry a message");
    err
}

// --- Verify: one row per outcome of the module doc table -------------------

struct Row {
    token: &'static str,
    product: &'static str,
    user: &'static str,
    verdict: Verdict,
    state: State,
    consumption: Consumption,
    ack: Ack,
    account: &'static str,
}

const fn row(
    token: &'static str,
    product: &'static str,
    verdict: Verdict,
    state: State,
    consumption: Consumption,
    ack: Ack,
) -> Row {
    Row { token, product, user: "", verdict, state, consumption, ack, account: "" }
}

const fn owned(token: &'static str, user: &'static str, verdict: Verdict, account: &'static str) -> Row {
    Row {
        token,
        product: "remove_ads",
        user,
        verdict,
        state: State::Purchased,
        consumption: Consumption::NotApplicable,
        ack: Ack::NotAcknowledged,
        account,
    }
}

#[rustfmt::skip]
const VERIFY_TABLE: &[Row] = &[
    row("purchased-1",    "coins_100",   Verdict::Valid,    State::Purchased, Consumption::NotConsumed,   Ack::NotAcknowledged),
    row("purchased",      "remove_ads",  Verdict::Valid,    State::Purchased, Consumption::NotApplicable, Ack::NotAcknowledged),
    row("purchased-sub",  "vip_monthly", Verdict::Valid,    State::Purchased, Consumption::NotApplicable, Ack::NotAcknowledged),
    row("purchased-old",  "level_pack",  Verdict::Valid,    State::Purchased, Consumption::NotApplicable, Ack::NotAcknowledged),
    row("acknowledged-1", "coins_100",   Verdict::Valid,    State::Purchased, Consumption::NotConsumed,   Ack::Acknowledged),
    row("acknowledged",   "vip_yearly",  Verdict::Valid,    State::Purchased, Consumption::NotApplicable, Ack::Acknowledged),
    row("consumed-1",     "coins_500",   Verdict::Valid,    State::Purchased, Consumption::Consumed,      Ack::Acknowledged),
    // Only a consumable can be consumed: on other kinds `consumed` is `acknowledged`.
    row("consumed-2",     "remove_ads",  Verdict::Valid,    State::Purchased, Consumption::NotApplicable, Ack::Acknowledged),
    row("consumed",       "vip_monthly", Verdict::Valid,    State::Purchased, Consumption::NotApplicable, Ack::Acknowledged),
    row("pending-1",      "coins_100",   Verdict::Pending,  State::Pending,   Consumption::NotConsumed,   Ack::NotAcknowledged),
    row("pending",        "vip_monthly", Verdict::Pending,  State::Pending,   Consumption::NotApplicable, Ack::NotAcknowledged),
    row("canceled-1",     "remove_ads",  Verdict::Canceled, State::Canceled,  Consumption::NotApplicable, Ack::NotAcknowledged),
    row("refunded-1",     "coins_500",   Verdict::Refunded, State::Refunded,  Consumption::NotConsumed,   Ack::NotAcknowledged),
    row("refunded-sub",   "vip_yearly",  Verdict::Refunded, State::Refunded,  Consumption::NotApplicable, Ack::NotAcknowledged),
    // Expired is a subscription outcome; other kinds never expire.
    row("expired-1",      "vip_monthly", Verdict::Expired,  State::Purchased, Consumption::NotApplicable, Ack::NotAcknowledged),
    row("expired",        "vip_yearly",  Verdict::Expired,  State::Purchased, Consumption::NotApplicable, Ack::NotAcknowledged),
    row("expired-1",      "remove_ads",  Verdict::Valid,    State::Purchased, Consumption::NotApplicable, Ack::NotAcknowledged),
    row("expired-2",      "coins_100",   Verdict::Valid,    State::Purchased, Consumption::NotConsumed,   Ack::NotAcknowledged),
    row("invalid-1",      "coins_100",   Verdict::Invalid,  State::Purchased, Consumption::NotConsumed,   Ack::NotAcknowledged),
    row("slow-5-x",       "coins_100",   Verdict::Valid,    State::Purchased, Consumption::NotConsumed,   Ack::NotAcknowledged),
    row("slow-0",         "remove_ads",  Verdict::Valid,    State::Purchased, Consumption::NotApplicable, Ack::NotAcknowledged),
    owned("owned-by-alice-1", "alice", Verdict::Valid,        "alice"),
    owned("owned-by-alice-1", "bob",   Verdict::UserMismatch, "alice"),
    owned("owned-by-alice-1", "",      Verdict::Valid,        "alice"),
    owned("owned-by-bob",     "bob",   Verdict::Valid,        "bob"),
];

#[test]
fn verify_answers_every_outcome_of_the_table() {
    let kit = kit();
    for row in VERIFY_TABLE {
        let what = format!("{} / {} / user `{}`", row.token, row.product, row.user);
        let response = verify_as(&kit, row.product, row.token, row.user).unwrap_or_else(|err| panic!("{what}: {err}"));
        assert_eq!(response.verdict(), row.verdict, "{what}: verdict ({})", response.verdict_reason);
        assert!(!response.verdict_reason.is_empty(), "{what}: every verdict has a reason");
        let purchase = purchase(&response);
        assert_eq!(purchase.state(), row.state, "{what}: purchase state");
        assert_eq!(purchase.consumption_state(), row.consumption, "{what}: consumption state");
        assert_eq!(purchase.acknowledgement_state(), row.ack, "{what}: acknowledgement state");
        assert_eq!(purchase.account_binding, row.account, "{what}: account binding");
        let entry = super::CATALOG.iter().find(|entry| entry.product_id == row.product).expect("catalog product");
        assert_eq!(purchase.kind(), entry.kind, "{what}: kind from the catalog");
        assert_eq!(purchase.environment(), proto::Environment::Sandbox, "{what}");
        assert_eq!(purchase.quantity, 1, "{what}");
        assert_eq!(purchase.region_code, "US", "{what}");
        let hex = purchase.order_id.strip_prefix("SANDBOX.").unwrap_or_else(|| panic!("{what}: order id"));
        assert!(
            hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{what}: order id {}",
            purchase.order_id
        );
        assert!(
            (JANUARY_2025_MILLIS..JANUARY_2025_MILLIS + 180 * DAY_MILLIS).contains(&purchase.purchase_time_unix_millis),
            "{what}: purchase time"
        );
        assert!(purchase.purchase_time_unix_millis < KIT_NOW, "{what}: purchase time in the past");
        let raw: serde_json::Value = serde_json::from_str(&purchase.raw_store_response).expect("raw response is json");
        assert_eq!(raw["token"], row.token, "{what}: raw response");
        assert_eq!(raw["productId"], row.product, "{what}: raw response");
    }
    assert!(kit.requests().is_empty(), "the sandbox store never uses the network");
}

#[test]
fn user_mismatch_names_both_accounts() {
    let response = verify_as(&kit(), "remove_ads", "owned-by-alice-7", "bob").expect("verify");
    assert_eq!(response.verdict(), Verdict::UserMismatch);
    assert!(
        response.verdict_reason.contains("`alice`") && response.verdict_reason.contains("`bob`"),
        "{}",
        response.verdict_reason
    );
}

#[test]
fn verify_is_deterministic_per_token() {
    let kit = kit();
    let first = verify(&kit, "coins_100", "purchased-a").expect("verify");
    let again = verify(&kit, "coins_100", "purchased-a").expect("verify");
    let other = verify(&kit, "coins_100", "purchased-b").expect("verify");
    assert_eq!(first, again);
    assert_ne!(purchase(&first).order_id, purchase(&other).order_id);
}

#[test]
fn expiry_times_follow_the_kind_and_the_clock() {
    let kit = kit();
    for product in ["coins_100", "remove_ads"] {
        let response = verify(&kit, product, "purchased-1").expect("verify");
        assert_eq!(purchase(&response).expiry_time_unix_millis, 0, "{product} never expires");
    }
    let active = verify(&kit, "vip_monthly", "purchased-1").expect("verify");
    assert_eq!(purchase(&active).expiry_time_unix_millis, KIT_NOW + 30 * DAY_MILLIS);
    kit.advance_clock(DAY_MILLIS);
    let active = verify(&kit, "vip_monthly", "purchased-1").expect("verify");
    assert_eq!(purchase(&active).expiry_time_unix_millis, KIT_NOW + 31 * DAY_MILLIS, "an active subscription renews");
    let expired = verify(&kit, "vip_monthly", "expired-1").expect("verify");
    let expired = purchase(&expired);
    assert_eq!(expired.expiry_time_unix_millis, expired.purchase_time_unix_millis + 30 * DAY_MILLIS);
}

/// The real clock, for checks that must hold on any machine.
fn real_now_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(since_epoch.as_millis()).expect("millis fit")
}

#[test]
fn purchase_times_lie_in_the_past_and_expired_subscriptions_have_expired() {
    let kit = kit();
    // Every day of the 180 is reached by some token; none is in the future.
    let mut days = std::collections::BTreeSet::new();
    for n in 0..2_000 {
        let token = format!("expired-{n}");
        let response = verify(&kit, "vip_monthly", &token).expect("verify");
        assert_eq!(response.verdict(), Verdict::Expired, "{token}");
        let subscription = purchase(&response);
        let bought = subscription.purchase_time_unix_millis;
        assert!((JANUARY_2025_MILLIS..JANUARY_2025_MILLIS + 180 * DAY_MILLIS).contains(&bought), "{token}: {bought}");
        assert_eq!((bought - JANUARY_2025_MILLIS) % DAY_MILLIS, 0, "{token}: midnight");
        days.insert((bought - JANUARY_2025_MILLIS) / DAY_MILLIS);
        let expiry = subscription.expiry_time_unix_millis;
        assert_eq!(expiry, bought + 30 * DAY_MILLIS, "{token}");
        for now in [KIT_NOW, real_now_millis()] {
            assert!(bought < now && expiry < now, "{token}: bought {bought}, expired {expiry}, now {now}");
        }
        let again = verify(&kit, "coins_100", &format!("purchased-{n}")).expect("verify");
        assert!(purchase(&again).purchase_time_unix_millis < real_now_millis(), "purchased-{n}");
    }
    assert_eq!(days.len(), 180, "the hash spreads purchases over every day");
    // Deterministic per token, whatever the clock says.
    let later = kit::builder().now_unix_millis(KIT_NOW + 400 * DAY_MILLIS).build::<Sandbox>().expect("build");
    for token in ["purchased-x", "expired-y", "refunded-z"] {
        let here = verify(&kit, "vip_yearly", token).expect("verify");
        let there = verify(&later, "vip_yearly", token).expect("verify");
        assert_eq!(purchase(&here).purchase_time_unix_millis, purchase(&there).purchase_time_unix_millis, "{token}");
        assert_eq!(purchase(&here).order_id, purchase(&there).order_id, "{token}");
    }
}

#[test]
fn unknown_products_are_a_not_found_verdict() {
    let kit = kit();
    for token in ["purchased-1", "acknowledged", "refunded-1", "owned-by-alice"] {
        let response = verify(&kit, "no_such_product", token).expect("verify");
        assert_eq!(response.verdict(), Verdict::NotFound, "{token}");
        assert!(response.verdict_reason.contains("no_such_product"), "{}", response.verdict_reason);
        assert_eq!(response.purchase, None, "{token}");
    }
}

#[test]
fn notfound_tokens_are_a_not_found_verdict_for_any_product() {
    let kit = kit();
    for (product, token) in
        [("coins_100", "notfound"), ("vip_monthly", "notfound-1"), ("no_such_product", "notfound-2")]
    {
        let response = verify(&kit, product, token).expect("verify");
        assert_eq!(response.verdict(), Verdict::NotFound, "{token}");
        assert!(response.verdict_reason.contains(token), "{}", response.verdict_reason);
        assert_eq!(response.purchase, None, "{token}");
    }
}

#[test]
fn slow_tokens_wait_on_the_host_clock() {
    let kit = kit();
    let before = verify(&kit, "vip_monthly", "purchased-1").expect("verify");
    let before = purchase(&before).expiry_time_unix_millis;
    assert_eq!(before, KIT_NOW + 30 * DAY_MILLIS);
    // The expiry of an active subscription is `now + 30 days`, computed after
    // the wait: it shows how far the kit's clock moved.
    let slow = verify(&kit, "vip_monthly", "slow-250-a").expect("verify");
    assert_eq!(slow.verdict(), Verdict::Valid);
    assert_eq!(purchase(&slow).expiry_time_unix_millis, before + 250);
    let after = verify(&kit, "vip_monthly", "purchased-1").expect("verify");
    assert_eq!(purchase(&after).expiry_time_unix_millis, before + 250, "the clock stays moved");
    // The longest delay allowed, taken on the kit's clock (no real wait).
    let slowest = verify(&kit, "vip_monthly", "slow-600000").expect("verify");
    assert_eq!(purchase(&slowest).expiry_time_unix_millis, before + 250 + 600_000);
    // The other operations wait too.
    acknowledge(&kit, "coins_100", "slow-1000-b").expect("acknowledge");
    consume(&kit, "coins_100", "slow-1000-c").expect("consume");
    let after = verify(&kit, "vip_monthly", "purchased-1").expect("verify");
    assert_eq!(purchase(&after).expiry_time_unix_millis, before + 250 + 600_000 + 2_000);
}

/// `error-<kind>`: (kind, code, reason, retryable, retry_after_millis).
#[rustfmt::skip]
const ERROR_TABLE: &[(&str, Code, &str, bool, u64)] = &[
    ("unavailable",     Code::Unavailable,        "BACKEND_ERROR",       true,  0),
    ("ratelimited",     Code::ResourceExhausted,  "RATE_LIMITED",        true,  2_000),
    ("internal",        Code::Internal,           "INTERNAL_ERROR",      false, 0),
    ("denied",          Code::PermissionDenied,   "PERMISSION_DENIED",   false, 0),
    ("unauthenticated", Code::Unauthenticated,    "INVALID_CREDENTIALS", false, 0),
];

#[test]
fn error_tokens_fail_every_operation_with_their_code_and_reason() {
    let kit = kit();
    for &(kind, code, reason, retryable, retry_after_millis) in ERROR_TABLE {
        for token in [format!("error-{kind}"), format!("error-{kind}-123")] {
            // Errors come first: even an unknown product gets the error.
            let results = [
                verify(&kit, "coins_100", &token).map(drop),
                verify(&kit, "no_such_product", &token).map(drop),
                acknowledge(&kit, "remove_ads", &token).map(drop),
                consume(&kit, "coins_100", &token).map(drop),
            ];
            for result in results {
                let err = assert_error(result, code, reason);
                let wire = err.to_proto();
                assert!(err.message().contains("simulated"), "{token}: {err}");
                assert_eq!((wire.retryable, wire.retry_after_millis), (retryable, retry_after_millis), "{token}");
            }
        }
    }
}

#[test]
fn bad_tokens_are_invalid_arguments() {
    let kit = kit();
    #[rustfmt::skip]
    let tokens = [
        "", "bogus", "bogus-1", "Purchased-1", "purchased_1", "-purchased",
        "owned", "owned-by", "owned-by-", "owned-by--1", "owned-alice-1",
        "slow", "slow-", "slow-abc", "slow--5", "slow-600001", "slow-99999999999999999999999",
        "error", "error-", "error-bogus", "error-Unavailable",
    ];
    for token in tokens {
        let err = assert_error(verify(&kit, "coins_100", token), Code::InvalidArgument, "UNKNOWN_TOKEN");
        assert!(err.message().starts_with("proof.purchase_token: "), "{token}: {err}");
        assert_error(acknowledge(&kit, "coins_100", token), Code::InvalidArgument, "UNKNOWN_TOKEN");
        assert_error(consume(&kit, "coins_100", token), Code::InvalidArgument, "UNKNOWN_TOKEN");
    }
}

#[test]
fn proofs_other_than_a_purchase_token_are_invalid_arguments() {
    let kit = kit();
    let proofs = [
        None,
        Some(proto::Proof::default()),
        Some(proto::Proof {
            kind: Some(proto::proof::Kind::TransactionId("purchased-1".to_owned())),
            store_parameters: HashMap::new(),
        }),
    ];
    for proof in proofs {
        let request = proto::VerifyRequest {
            app_id: APP.to_owned(),
            product_id: "coins_100".to_owned(),
            proof: proof.clone(),
            user_id: String::new(),
        };
        assert_error(kit.verify(request), Code::InvalidArgument, "UNSUPPORTED_PROOF");
        let request = proto::ConsumeRequest { app_id: APP.to_owned(), product_id: "coins_100".to_owned(), proof };
        assert_error(kit.consume(request), Code::InvalidArgument, "UNSUPPORTED_PROOF");
    }
}

// --- Acknowledge and Consume -------------------------------------------------

#[test]
fn acknowledge_then_verify_shows_acknowledged() {
    let kit = kit();
    for product in ["coins_100", "remove_ads", "vip_monthly"] {
        let before = verify(&kit, product, "purchased-ack").expect("verify");
        assert_eq!(purchase(&before).acknowledgement_state(), Ack::NotAcknowledged, "{product}");
        let first = acknowledge(&kit, product, "purchased-ack").expect("acknowledge");
        assert!(!first.already_acknowledged, "{product}");
        let after = verify(&kit, product, "purchased-ack").expect("verify");
        assert_eq!(purchase(&after).acknowledgement_state(), Ack::Acknowledged, "{product}");
        assert_eq!(after.verdict(), Verdict::Valid, "{product}");
        let raw: serde_json::Value = serde_json::from_str(&purchase(&after).raw_store_response).expect("json");
        assert_eq!(raw["acknowledged"], true);
        let second = acknowledge(&kit, product, "purchased-ack").expect("acknowledge again");
        assert!(second.already_acknowledged, "{product}");
    }
}

#[test]
fn state_is_kept_per_app_product_and_token() {
    let kit = kit();
    assert!(!acknowledge(&kit, "coins_100", "purchased-1").expect("acknowledge").already_acknowledged);
    let unchanged = [
        verify(&kit, "coins_100", "purchased-2").expect("other token"),
        verify(&kit, "coins_500", "purchased-1").expect("other product"),
        kit.verify(proto::VerifyRequest {
            app_id: "com.example.other".to_owned(),
            product_id: "coins_100".to_owned(),
            proof: proof("purchased-1"),
            user_id: String::new(),
        })
        .expect("other app"),
    ];
    for response in &unchanged {
        assert_eq!(purchase(response).acknowledgement_state(), Ack::NotAcknowledged);
    }
    // A fresh store starts over.
    let fresh = verify(&self::kit(), "coins_100", "purchased-1").expect("verify");
    assert_eq!(purchase(&fresh).acknowledgement_state(), Ack::NotAcknowledged);
}

#[test]
fn already_acknowledged_tokens_say_so() {
    let kit = kit();
    for (product, token) in
        [("coins_100", "acknowledged-1"), ("vip_yearly", "acknowledged"), ("remove_ads", "acknowledged-x")]
    {
        assert!(acknowledge(&kit, product, token).expect("acknowledge").already_acknowledged, "{token}");
    }
}

#[test]
fn consume_twice_says_already_consumed() {
    let kit = kit();
    let first = consume(&kit, "coins_100", "purchased-eat").expect("consume");
    assert!(!first.already_consumed);
    let after = verify(&kit, "coins_100", "purchased-eat").expect("verify");
    let bought = purchase(&after);
    assert_eq!(after.verdict(), Verdict::Valid);
    assert_eq!(bought.consumption_state(), Consumption::Consumed);
    assert_eq!(bought.acknowledgement_state(), Ack::Acknowledged, "consuming acknowledges");
    let second = consume(&kit, "coins_100", "purchased-eat").expect("consume again");
    assert!(second.already_consumed);
    // A token that is consumed from the start.
    assert!(consume(&kit, "coins_500", "consumed-1").expect("consume").already_consumed);
    // An acknowledged consumable can still be consumed.
    assert!(!consume(&kit, "coins_500", "acknowledged-2").expect("consume").already_consumed);
}

#[test]
fn acknowledging_a_consumed_purchase_is_a_failed_precondition() {
    let kit = kit();
    consume(&kit, "coins_100", "purchased-c").expect("consume");
    assert_error(acknowledge(&kit, "coins_100", "purchased-c"), Code::FailedPrecondition, "PURCHASE_CONSUMED");
    assert_error(acknowledge(&kit, "coins_500", "consumed-1"), Code::FailedPrecondition, "PURCHASE_CONSUMED");
}

#[test]
fn consuming_a_non_consumable_is_a_failed_precondition() {
    let kit = kit();
    for product in ["remove_ads", "level_pack", "vip_monthly", "vip_yearly"] {
        let err =
            assert_error(consume(&kit, product, "purchased-1"), Code::FailedPrecondition, "PRODUCT_NOT_CONSUMABLE");
        assert!(err.message().contains(product), "{err}");
        let after = verify(&kit, product, "purchased-1").expect("verify");
        assert_eq!(purchase(&after).consumption_state(), Consumption::NotApplicable, "nothing changed for {product}");
        assert_eq!(purchase(&after).acknowledgement_state(), Ack::NotAcknowledged, "nothing changed for {product}");
    }
}

#[test]
fn unpaid_purchases_cannot_change_state() {
    let kit = kit();
    #[rustfmt::skip]
    let cases = [
        ("pending-1", "pending"), ("pending", "pending"),
        ("refunded-1", "refunded"), ("canceled-1", "canceled"),
    ];
    for (token, word) in cases {
        let err =
            assert_error(acknowledge(&kit, "coins_100", token), Code::FailedPrecondition, "INVALID_PURCHASE_STATE");
        assert!(err.message().contains(word), "{token}: {err}");
        let err = assert_error(consume(&kit, "coins_100", token), Code::FailedPrecondition, "INVALID_PURCHASE_STATE");
        assert!(err.message().contains(word), "{token}: {err}");
        assert_error(acknowledge(&kit, "vip_monthly", token), Code::FailedPrecondition, "INVALID_PURCHASE_STATE");
    }
}

#[test]
fn invalid_purchases_cannot_be_acknowledged_or_consumed() {
    let kit = kit();
    for product in ["coins_100", "remove_ads", "vip_monthly"] {
        for token in ["invalid", "invalid-1"] {
            for result in [acknowledge(&kit, product, token).map(drop), consume(&kit, product, token).map(drop)] {
                let err = assert_error(result, Code::FailedPrecondition, "INVALID_PURCHASE");
                assert_eq!(err.message(), err.message().to_lowercase(), "{product} / {token}: lowercase message");
                assert!(err.message().contains("invalid"), "{product} / {token}: {err}");
                assert!(!err.to_proto().retryable, "{product} / {token}: retrying cannot help");
            }
            let after = verify(&kit, product, token).expect("verify");
            assert_eq!(after.verdict(), Verdict::Invalid, "{product} / {token}");
            assert_eq!(purchase(&after).acknowledgement_state(), Ack::NotAcknowledged, "nothing changed: {product}");
        }
    }
    // A product the store does not sell is not found first, as in Verify.
    assert_error(acknowledge(&kit, "no_such_product", "invalid-1"), Code::NotFound, "PURCHASE_NOT_FOUND");
    assert_error(consume(&kit, "no_such_product", "invalid-1"), Code::NotFound, "PURCHASE_NOT_FOUND");
}

#[test]
fn expired_subscriptions_can_be_acknowledged_but_not_consumed() {
    let kit = kit();
    for product in ["vip_monthly", "vip_yearly"] {
        let first = acknowledge(&kit, product, "expired-ack").expect("an ended purchase is still a real one");
        assert!(!first.already_acknowledged, "{product}");
        assert!(acknowledge(&kit, product, "expired-ack").expect("again").already_acknowledged, "{product}");
        let after = verify(&kit, product, "expired-ack").expect("verify");
        assert_eq!(after.verdict(), Verdict::Expired, "{product}");
        assert_eq!(purchase(&after).acknowledgement_state(), Ack::Acknowledged, "{product}");
        assert_error(consume(&kit, product, "expired-ack"), Code::FailedPrecondition, "PRODUCT_NOT_CONSUMABLE");
    }
    // On other kinds `expired` is a plain valid purchase.
    assert!(!consume(&kit, "coins_100", "expired-1").expect("consume").already_consumed);
    assert!(!acknowledge(&kit, "remove_ads", "expired-1").expect("acknowledge").already_acknowledged);
}

#[test]
fn consumed_tokens_on_other_kinds_are_acknowledged_and_verify_agrees() {
    let kit = kit();
    for product in ["remove_ads", "level_pack", "vip_monthly", "vip_yearly"] {
        let before = verify(&kit, product, "consumed-9").expect("verify");
        let bought = purchase(&before);
        assert_eq!(before.verdict(), Verdict::Valid, "{product}");
        assert_eq!(bought.consumption_state(), Consumption::NotApplicable, "{product}");
        assert_eq!(bought.acknowledgement_state(), Ack::Acknowledged, "{product}");
        let raw: serde_json::Value = serde_json::from_str(&bought.raw_store_response).expect("json");
        assert_eq!((&raw["acknowledged"], &raw["consumed"]), (&true.into(), &false.into()), "{product}");
        // Acknowledge agrees with Verify: already acknowledged, not consumed.
        assert!(acknowledge(&kit, product, "consumed-9").expect("acknowledge").already_acknowledged, "{product}");
        assert_error(consume(&kit, product, "consumed-9"), Code::FailedPrecondition, "PRODUCT_NOT_CONSUMABLE");
        let after = verify(&kit, product, "consumed-9").expect("verify");
        assert_eq!(after, before, "{product}: nothing changed");
    }
}

#[test]
fn unknown_purchases_cannot_be_acknowledged_or_consumed() {
    let kit = kit();
    for (product, token) in
        [("coins_100", "notfound"), ("remove_ads", "notfound-1"), ("no_such_product", "purchased-1")]
    {
        assert_error(acknowledge(&kit, product, token), Code::NotFound, "PURCHASE_NOT_FOUND");
        assert_error(consume(&kit, product, token), Code::NotFound, "PURCHASE_NOT_FOUND");
    }
}

// --- ListItems ----------------------------------------------------------------

fn ids(response: &proto::ListItemsResponse) -> Vec<&str> {
    response.items.iter().map(|item| item.product_id.as_str()).collect()
}

/// Reads every page with `page_size`, returning the ids page by page.
fn all_pages(kit: &Kit<Sandbox>, kind: ProductKind, page_size: i32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(kit, kind, page_size, &token).expect("list_items");
        pages.push(ids(&page).into_iter().map(str::to_owned).collect());
        if page.next_page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 10, "paging does not end");
        token = page.next_page_token;
    }
}

#[test]
fn list_items_pages_through_the_catalog() {
    let kit = kit();
    let first = list(&kit, ProductKind::Unspecified, 2, "").expect("list_items");
    assert_eq!(ids(&first), ["coins_100", "coins_500"]);
    assert!(!first.next_page_token.is_empty());
    let second = list(&kit, ProductKind::Unspecified, 2, &first.next_page_token).expect("list_items");
    assert_eq!(ids(&second), ["remove_ads", "level_pack"]);
    let third = list(&kit, ProductKind::Unspecified, 2, &second.next_page_token).expect("list_items");
    assert_eq!(ids(&third), ["vip_monthly", "vip_yearly"]);
    assert_eq!(third.next_page_token, "", "the last page has no next token");

    let everything: Vec<String> = all_pages(&kit, ProductKind::Unspecified, 2).concat();
    let catalog: Vec<&str> = super::CATALOG.iter().map(|entry| entry.product_id).collect();
    assert_eq!(everything, catalog);
    for page_size in [1, 4, 5, 6, 7] {
        let pages = all_pages(&kit, ProductKind::Unspecified, page_size);
        assert_eq!(pages.len(), catalog.len().div_ceil(page_size as usize), "page size {page_size}");
        assert_eq!(pages.concat(), catalog, "page size {page_size}");
    }
}

#[test]
fn list_items_uses_the_default_page_size_when_none_is_given() {
    let kit = kit();
    for page_size in [0, -1, i32::MIN] {
        let all = list(&kit, ProductKind::Unspecified, page_size, "").expect("list_items");
        assert_eq!(all.items.len(), super::CATALOG.len(), "page size {page_size}");
        assert_eq!(all.next_page_token, "");
    }
    let huge = list(&kit, ProductKind::Unspecified, i32::MAX, "").expect("list_items");
    assert_eq!(huge.items.len(), super::CATALOG.len());
}

#[test]
fn list_items_filters_by_kind() {
    let kit = kit();
    #[rustfmt::skip]
    let table: [(ProductKind, &[&str]); 4] = [
        (ProductKind::Consumable,    &["coins_100", "coins_500"]),
        (ProductKind::NonConsumable, &["remove_ads", "level_pack"]),
        (ProductKind::Subscription,  &["vip_monthly", "vip_yearly"]),
        (ProductKind::Unspecified,   &["coins_100", "coins_500", "remove_ads", "level_pack", "vip_monthly", "vip_yearly"]),
    ];
    for (kind, expected) in table {
        let all = list(&kit, kind, 0, "").expect("list_items");
        assert_eq!(ids(&all), expected, "{kind:?}");
        if kind != ProductKind::Unspecified {
            assert!(all.items.iter().all(|item| item.kind() == kind), "{kind:?}");
        }
        // The same items, one per page.
        let pages = all_pages(&kit, kind, 1);
        assert_eq!(pages.len(), expected.len(), "{kind:?}");
        assert_eq!(pages.concat(), expected, "{kind:?}");
    }
}

#[test]
fn list_items_describes_each_item() {
    let all = list(&kit(), ProductKind::Unspecified, 0, "").expect("list_items");
    for (item, entry) in all.items.iter().zip(super::CATALOG) {
        assert_eq!(item.kind(), entry.kind);
        assert_eq!(item.title, entry.title);
        assert_eq!(item.description, format!("{} (sandbox)", entry.title));
        assert_eq!(item.price_currency_code, "USD");
        assert_eq!(item.price_amount_micros, entry.price_micros);
        assert!(item.price_amount_micros > 0);
        assert_eq!(item.active, entry.active);
    }
    let inactive: Vec<&str> =
        all.items.iter().filter(|item| !item.active).map(|item| item.product_id.as_str()).collect();
    assert_eq!(inactive, ["level_pack"]);
}

#[test]
fn list_items_refuses_page_tokens_it_did_not_issue() {
    let kit = kit();
    #[rustfmt::skip]
    let tokens = [
        "abc", "-1", "-0", "+2", "+0", "2.0", " 2", "2 ", "\t2", "2\n", "0x2", "1_0", "1e1", "\u{ff12}",
        "99999999999999999999999",
    ];
    for token in tokens {
        let err =
            assert_error(list(&kit, ProductKind::Unspecified, 2, token), Code::InvalidArgument, "INVALID_PAGE_TOKEN");
        assert!(err.message().starts_with("page_token: "), "{err}");
    }
}

#[test]
fn list_items_takes_any_plain_decimal_offset() {
    let kit = kit();
    for (token, first) in [("0", "coins_100"), ("00", "coins_100"), ("2", "remove_ads"), ("004", "vip_monthly")] {
        let page = list(&kit, ProductKind::Unspecified, 1, token).unwrap_or_else(|err| panic!("{token}: {err}"));
        assert_eq!(ids(&page), [first], "{token}");
    }
}

#[test]
fn list_items_past_the_end_is_an_empty_last_page() {
    let kit = kit();
    for token in ["6", "100", &usize::MAX.to_string()] {
        let page = list(&kit, ProductKind::Unspecified, 2, token).expect("list_items");
        assert!(page.items.is_empty(), "{token}");
        assert_eq!(page.next_page_token, "", "{token}");
    }
}

// --- Configuration and metadata ----------------------------------------------

#[test]
fn config_refuses_unknown_keys() {
    let err = kit::builder().config_json(r#"{"typo": 1}"#).build::<Sandbox>().expect_err("unknown keys are refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("typo"), "{err}");
    for json in ["", "  ", "{}"] {
        kit::builder().config_json(json).build::<Sandbox>().unwrap_or_else(|err| panic!("config `{json}`: {err}"));
    }
    let err = kit::builder().config_json("[1]").build::<Sandbox>().expect_err("not an object");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[test]
fn info_matches_the_capabilities() {
    use iapd_sdk_plugin::abi::{CAP_ACKNOWLEDGE, CAP_CONSUME, CAP_LIST_ITEMS, CAP_VERIFY, method};
    let info = Sandbox::info();
    assert_eq!(info.display_name, "Sandbox");
    assert_eq!(info.methods, [method::VERIFY, method::ACKNOWLEDGE, method::CONSUME, method::LIST_ITEMS]);
    assert_eq!(Sandbox::CAPABILITIES, CAP_VERIFY | CAP_ACKNOWLEDGE | CAP_CONSUME | CAP_LIST_ITEMS);
    assert!(info.allowed_origins.is_empty(), "the sandbox store calls no origin");
    assert!(info.secrets.is_empty(), "the sandbox store needs no credentials");
    assert_eq!(info.proof_kinds, ["purchase_token"]);
    assert_eq!(Sandbox::NAME, c"sandbox");
}
