//! The Amazon Appstore's Receipt Verification Service (RVS), as
//! `shared/reference/stores/amazon-appstore.md` describes it:
//!
//! - `GET /version/1.0/verifyReceiptId/developer/{sharedSecret}/user/{userId}/receiptId/{receiptId}`
//!   for production, and the same under `/sandbox` for the RVS Cloud Sandbox
//!   (receipts of the App Tester). No headers, no body. The path is split on
//!   `/` first and each segment percent-decoded after, so `%2F`, `%3D` and
//!   `%3A` are read as `/`, `=` and `:`, and raw `=` and `:` work too; a raw
//!   `/` inside a value makes another path, which is 404.
//! - Production refuses a shared secret it does not know with HTTP 496; the
//!   sandbox takes any non-empty one (an empty one gets
//!   `sandboxEmptySecretStatus`, 496 unless the state says otherwise).
//! - An unknown receipt is 400, a receipt of another user 497, a revoked one
//!   410. App Tester receipts exist only in the sandbox and production ones
//!   only in production: asked at the other, they are 400 too.
//! - Errors are `{"message", "status": false}`, or with
//!   `"errorBodies": "code"` in the state the machine codes some clients
//!   expect (`{"message": "InvalidReceiptId"}`): Amazon documents neither.
//! - A receipt answers every field, `null` where it does not apply: dates in
//!   epoch milliseconds (numbers), `cancelReason` and `quantity` numbers,
//!   booleans as booleans. A subscription with `termMillis` renews on the
//!   emulator's clock under the same receipt id (`renewalDate` moves on);
//!   turned off, it ends at the end of the term then running (`cancelDate`).
//!   The sandbox's `termSku` is the parent SKU with `_term` appended.
//!
//! There is no acknowledge or consume API: the app reports fulfillment
//! (`notifyFulfillment`), which [`Amazon::fulfill`] stands in for. Test
//! controls as for the other emulators: `/emulator/v1/purchases` (a
//! receipt), `/emulator/v1/faults`, `/emulator/v1/stats`
//! (`/emulator/v1/tokens:revoke` does nothing: RVS has no tokens).
//! Operations: `verifyReceiptId` and `sandbox.verifyReceiptId`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::{self, Controls, StoreState};
use crate::{Emulator, Fault, Request, Response};

/// The state a new emulator starts with when none is given: the shared
/// secret of `tests/fixtures/amazon/shared-secret` and a receipt for every
/// verdict (`tests/emulators/src/amazon_state.json`).
pub const DEFAULT_STATE: &str = include_str!("amazon_state.json");

/// The fulfillment results after which Amazon cancels and refunds.
const REFUNDING_RESULTS: [&str; 3] = ["UNAVAILABLE", "EXISTING_PURCHASE", "NOT_ELIGIBLE"];

/// The emulator.
#[derive(Debug)]
pub struct Amazon {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    shared_secrets: BTreeSet<String>,
    receipts: HashMap<String, Receipt>,
    error_bodies: ErrorBodies,
    sandbox_empty_secret_status: u16,
    controls: Controls,
}

/// An emulator state file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// The developer accounts' shared secrets production accepts.
    #[serde(default)]
    pub shared_secrets: Vec<String>,
    /// Receipts.
    #[serde(default)]
    pub receipts: Vec<Receipt>,
    /// The shape of error bodies.
    #[serde(default)]
    pub error_bodies: ErrorBodies,
    /// What the sandbox answers an empty shared secret (Amazon does not say).
    #[serde(default = "invalid_secret_status")]
    pub sandbox_empty_secret_status: u16,
}

fn invalid_secret_status() -> u16 {
    496
}

impl Default for Seed {
    fn default() -> Self {
        Seed {
            shared_secrets: Vec::new(),
            receipts: Vec::new(),
            error_bodies: ErrorBodies::default(),
            sandbox_empty_secret_status: invalid_secret_status(),
        }
    }
}

/// The shape of RVS error bodies, which Amazon does not document.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ErrorBodies {
    /// `{"message": "Failed to parse receipt Id", "status": false}`.
    #[default]
    Message,
    /// `{"message": "InvalidReceiptId"}`.
    Code,
}

/// A receipt as RVS keeps it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Receipt {
    /// `receiptId`: opaque, may hold `/`, `=` and `:`.
    pub receipt_id: String,
    /// The app-specific user id the receipt belongs to.
    pub user_id: String,
    /// The SKU; for a subscription the parent SKU.
    pub product_id: String,
    /// `CONSUMABLE`, `ENTITLED` or `SUBSCRIPTION`.
    pub product_type: String,
    /// Epoch millis; for a subscription the first purchase.
    pub purchase_date: i64,
    /// An App Tester receipt: known only to the sandbox.
    #[serde(default)]
    pub sandbox: bool,
    /// Set when cancelled or refunded.
    #[serde(default)]
    pub cancel_date: Option<i64>,
    /// 0 not known yet, 1 the customer, 2 Amazon, 4 replaced by a new subscription.
    #[serde(default)]
    pub cancel_reason: Option<i64>,
    /// A purchase in Amazon's test or publishing flow (always true in the sandbox).
    #[serde(default)]
    pub test_transaction: bool,
    /// A Live App Testing product.
    #[serde(default)]
    pub beta_product: bool,
    /// The customer's country.
    #[serde(default = "united_states")]
    pub country_code: String,
    /// The subscription's term, e.g. `1 Month`.
    #[serde(default)]
    pub term: Option<String>,
    /// The term SKU; in the sandbox always the parent SKU and `_term`.
    #[serde(default)]
    pub term_sku: Option<String>,
    /// A subscription's term on the emulator's clock: it renews every
    /// `termMillis` from `purchaseDate`, keeping its receipt id.
    #[serde(default)]
    pub term_millis: Option<i64>,
    /// Whether a subscription renews (with `termMillis`, until auto-renew
    /// is turned off).
    #[serde(default)]
    pub auto_renewing: bool,
    /// When auto-renew was turned off: the subscription ends with the term
    /// running then.
    #[serde(default)]
    pub auto_renew_off_at: Option<i64>,
    /// The next renewal, for a subscription without `termMillis`.
    #[serde(default)]
    pub renewal_date: Option<i64>,
    /// Set during a free trial.
    #[serde(default)]
    pub free_trial_end_date: Option<i64>,
    /// Set during a grace period.
    #[serde(default)]
    pub grace_period_end_date: Option<i64>,
    /// A pending deferred change.
    #[serde(default)]
    pub deferred_date: Option<i64>,
    /// The SKU of a pending deferred change.
    #[serde(default)]
    pub deferred_sku: Option<String>,
    /// `[{"promotionType", "promotionStatus"}]`.
    #[serde(default)]
    pub promotions: Option<Value>,
    /// When the app reported fulfillment.
    #[serde(default)]
    pub fulfillment_date: Option<i64>,
    /// `FULFILLED`, `UNAVAILABLE`, `EXISTING_PURCHASE`, `NOT_ELIGIBLE`.
    #[serde(default)]
    pub fulfillment_result: Option<String>,
    /// `{"QuickSubscribe": "true"}` for Quick Subscribe purchases.
    #[serde(default)]
    pub purchase_metadata_map: Option<Value>,
    /// An add-on subscription's base subscriptions.
    #[serde(default)]
    pub base_receipts: Option<Value>,
    /// `null` or 1.
    #[serde(default)]
    pub quantity: Option<i64>,
    /// Answers 410: "no longer valid".
    #[serde(default)]
    pub revoked: bool,
}

fn united_states() -> String {
    "US".to_owned()
}

impl Amazon {
    /// An emulator with `seed`.
    pub fn new(seed: Seed) -> Amazon {
        let state = State {
            shared_secrets: seed.shared_secrets.into_iter().collect(),
            receipts: seed.receipts.into_iter().map(|receipt| (receipt.receipt_id.clone(), receipt)).collect(),
            error_bodies: seed.error_bodies,
            sandbox_empty_secret_status: seed.sandbox_empty_secret_status,
            controls: Controls::default(),
        };
        Amazon { state: Mutex::new(state) }
    }

    /// An emulator with [`DEFAULT_STATE`].
    pub fn with_default_state() -> Amazon {
        serde_json::from_str(DEFAULT_STATE)
            .map(Amazon::new)
            .unwrap_or_else(|err| panic!("the built-in amazon state is broken: {err}"))
    }

    /// Adds or replaces a receipt.
    pub fn add_receipt(&self, receipt: Receipt) {
        self.lock().add_purchase(receipt);
    }

    /// Error bodies from now on in this shape.
    pub fn set_error_bodies(&self, shape: ErrorBodies) {
        self.lock().error_bodies = shape;
    }

    /// What the app's `notifyFulfillment(receiptId, result)` does: RVS shows
    /// the date and result, and a result other than `FULFILLED` cancels and
    /// refunds the purchase (`cancelReason` 1: which reason Amazon shows is
    /// not documented). False for an unknown receipt.
    pub fn fulfill(&self, receipt_id: &str, result: &str) -> bool {
        let mut state = self.lock();
        let now = state.controls.now_millis();
        let Some(receipt) = state.receipts.get_mut(receipt_id) else { return false };
        receipt.fulfillment_date = Some(now);
        receipt.fulfillment_result = Some(result.to_owned());
        if REFUNDING_RESULTS.contains(&result) {
            receipt.cancel_date = Some(now);
            receipt.cancel_reason = Some(1);
        }
        true
    }

    /// Cancels (refunds) a receipt now, with `reason`. False for an unknown
    /// receipt.
    pub fn cancel(&self, receipt_id: &str, reason: i64) -> bool {
        let mut state = self.lock();
        let now = state.controls.now_millis();
        let Some(receipt) = state.receipts.get_mut(receipt_id) else { return false };
        receipt.cancel_date = Some(now);
        receipt.cancel_reason = Some(reason);
        true
    }

    /// Turns a subscription's auto-renew off now. False for an unknown receipt.
    pub fn turn_off_auto_renew(&self, receipt_id: &str) -> bool {
        let mut state = self.lock();
        let now = state.controls.now_millis();
        let Some(receipt) = state.receipts.get_mut(receipt_id) else { return false };
        receipt.auto_renew_off_at = Some(now);
        true
    }

    /// Queues a fault (operations `verifyReceiptId`, `sandbox.verifyReceiptId`).
    pub fn inject(&self, fault: Fault) {
        self.lock().controls.inject(fault);
    }

    /// Freezes the clock at `unix_millis`.
    pub fn set_clock(&self, unix_millis: i64) {
        self.lock().controls.set_clock(unix_millis);
    }

    /// How many requests an operation received, faults included.
    pub fn count(&self, operation: &str) -> u64 {
        self.lock().controls.count(operation)
    }

    /// What RVS answers for a receipt now (production's view), for tests.
    pub fn receipt(&self, receipt_id: &str) -> Option<Value> {
        let state = self.lock();
        state.receipts.get(receipt_id).map(|receipt| state.answer(receipt, false))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Emulator for Amazon {
    fn handle(&self, request: &Request) -> Response {
        store::handle(&mut *self.lock(), request)
    }
}

/// The verify path's segments after the optional `sandbox`.
const VERIFY: [&str; 4] = ["version", "1.0", "verifyReceiptId", "developer"];

impl StoreState for State {
    type Purchase = Receipt;

    fn controls(&mut self) -> &mut Controls {
        &mut self.controls
    }

    fn operation(_method: &str, segments: &[&str]) -> &'static str {
        match segments {
            ["sandbox", rest @ ..] if is_verify(rest) => "sandbox.verifyReceiptId",
            rest if is_verify(rest) => "verifyReceiptId",
            _ => "unknown",
        }
    }

    fn fault_error(status: u16, reason: Option<&str>) -> Response {
        rvs_error(status, ErrorBodies::Message, reason)
    }

    fn serve(&mut self, request: &Request, segments: &[&str]) -> Response {
        let (sandbox, rest) = match segments {
            ["sandbox", rest @ ..] => (true, rest),
            rest => (false, rest),
        };
        let [_, _, _, _, secret, _, user, _, receipt_id] = rest else {
            return Response::json(404, &json!({"message": "Not Found", "status": false}));
        };
        if !is_verify(rest) {
            return Response::json(404, &json!({"message": "Not Found", "status": false}));
        }
        if request.method != "GET" {
            let mut response = Response::json(405, &json!({"message": "Method Not Allowed", "status": false}));
            response.headers.push(("allow".to_owned(), "GET".to_owned()));
            return response;
        }
        self.verify(sandbox, secret, user, receipt_id)
    }

    fn add_purchase(&mut self, receipt: Receipt) {
        self.receipts.insert(receipt.receipt_id.clone(), receipt);
    }

    fn revoke_tokens(&mut self) {
        // RVS has no tokens: the shared secret neither expires nor rotates here.
    }
}

fn is_verify(segments: &[&str]) -> bool {
    segments.len() == 9 && segments[..4] == VERIFY && segments[5] == "user" && segments[7] == "receiptId"
}

impl State {
    fn verify(&self, sandbox: bool, secret: &str, user: &str, receipt_id: &str) -> Response {
        let secret_refused = match (sandbox, secret) {
            (true, "") => Some(self.sandbox_empty_secret_status),
            (true, _) => None,
            (false, secret) => (!self.shared_secrets.contains(secret)).then_some(496),
        };
        if let Some(status) = secret_refused {
            return rvs_error(status, self.error_bodies, None);
        }
        let Some(receipt) = self.receipts.get(receipt_id).filter(|receipt| receipt.sandbox == sandbox) else {
            return rvs_error(400, self.error_bodies, None);
        };
        if receipt.user_id != user {
            return rvs_error(497, self.error_bodies, None);
        }
        if receipt.revoked {
            return rvs_error(410, self.error_bodies, None);
        }
        Response::json(200, &self.answer(receipt, sandbox))
    }

    /// The receipt's fields now, every one present.
    fn answer(&self, receipt: &Receipt, sandbox: bool) -> Value {
        let now = self.controls.now_millis();
        let subscription = receipt.product_type == "SUBSCRIPTION";
        let mut auto_renewing = subscription && receipt.auto_renewing;
        let mut renewal_date = receipt.renewal_date;
        let (mut cancel_date, mut cancel_reason) = (receipt.cancel_date, receipt.cancel_reason);
        if let Some(term) = receipt.term_millis.filter(|term| subscription && *term > 0) {
            // The end of the term running at `at`: renewals keep the receipt id.
            let term_end = |at: i64| receipt.purchase_date + ((at - receipt.purchase_date).div_euclid(term) + 1) * term;
            match receipt.auto_renew_off_at {
                Some(off) => {
                    auto_renewing = false;
                    renewal_date = None;
                    if cancel_date.is_none() {
                        cancel_date = Some(term_end(off));
                        cancel_reason = Some(1);
                    }
                }
                None if auto_renewing && cancel_date.is_none() => renewal_date = Some(term_end(now)),
                None => renewal_date = None,
            }
        }
        let term_sku = match (subscription, sandbox) {
            (true, true) => Some(format!("{}_term", receipt.product_id)),
            (true, false) => receipt.term_sku.clone(),
            (false, _) => None,
        };
        json!({
            "autoRenewing": auto_renewing,
            "baseReceipts": receipt.base_receipts,
            "betaProduct": receipt.beta_product,
            "cancelDate": cancel_date,
            "cancelReason": cancel_reason,
            "countryCode": receipt.country_code,
            "deferredDate": receipt.deferred_date,
            "deferredSku": receipt.deferred_sku,
            "freeTrialEndDate": receipt.free_trial_end_date,
            "fulfillmentDate": receipt.fulfillment_date,
            "fulfillmentResult": receipt.fulfillment_result,
            "gracePeriodEndDate": receipt.grace_period_end_date,
            "parentProductId": null,
            "productId": receipt.product_id,
            "productType": receipt.product_type,
            "promotions": receipt.promotions,
            "purchaseDate": receipt.purchase_date,
            "purchaseMetadataMap": receipt.purchase_metadata_map,
            "quantity": receipt.quantity,
            "receiptId": receipt.receipt_id,
            "renewalDate": renewal_date,
            "term": if subscription { receipt.term.clone() } else { None },
            "termSku": term_sku,
            "testTransaction": receipt.test_transaction || sandbox,
        })
    }
}

/// An RVS error body in `shape`, with `message` or the status's own.
fn rvs_error(status: u16, shape: ErrorBodies, message: Option<&str>) -> Response {
    let (text, code) = match status {
        400 => ("Failed to parse receipt Id", "InvalidReceiptId"),
        410 => ("Receipt is no longer valid", "InvalidReceiptId"),
        429 => ("Too many requests", "TooManyRequests"),
        496 => ("Invalid developer secret", "InvalidDeveloperSecret"),
        497 => ("Purchase token/app user mismatch", "InvalidUserId"),
        _ => ("Internal server error", "InternalError"),
    };
    match shape {
        ErrorBodies::Message => Response::json(status, &json!({"message": message.unwrap_or(text), "status": false})),
        ErrorBodies::Code => Response::json(status, &json!({"message": message.unwrap_or(code)})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "2:emulator-secret/with+slash=";
    const USER: &str = "user-1=";

    fn emulator() -> Amazon {
        let receipt = |receipt_id: &str, sandbox: bool| Receipt {
            sandbox,
            ..serde_json::from_value(json!({
                "receiptId": receipt_id, "userId": USER, "productId": "coins", "productType": "CONSUMABLE",
                "purchaseDate": 1_000,
            }))
            .unwrap()
        };
        let emulator = Amazon::new(Seed { shared_secrets: vec![SECRET.into()], ..Seed::default() });
        emulator.add_receipt(receipt("a/b=:3:11", false));
        emulator.add_receipt(receipt("tester=", true));
        emulator
    }

    fn get(emulator: &Amazon, path: &str) -> Response {
        emulator.handle(&Request::new("GET", path))
    }

    /// The controls every emulator shares, through this one.
    #[test]
    fn a_quota_set_through_the_controls_is_enforced_and_counted() {
        let emulator = emulator();
        let quota = Request::new("POST", "/emulator/v1/quota").body(r#"{"requests": 2, "windowMs": 60000}"#);
        assert_eq!(emulator.handle(&quota).status, 200);
        let path =
            "/version/1.0/verifyReceiptId/developer/2:emulator-secret%2Fwith+slash=/user/user-1=/receiptId/a%2Fb=:3:11";
        // The windows are aligned to the clock: start in a fresh one.
        let statuses: Vec<u16> = (0..3).map(|_| get(&emulator, path).status).collect();
        let stats = get(&emulator, "/emulator/v1/stats").json_body();
        if statuses == [200, 200, 429] {
            assert_eq!(stats["quota"], json!({"mostInAWindow": 3, "refused": 1}), "{stats}");
        } else {
            // The minute turned between two requests: never more than 2 a window.
            assert!(statuses.iter().filter(|status| **status == 429).count() <= 1, "{statuses:?}");
        }
        let bad = Request::new("POST", "/emulator/v1/quota").body(r#"{"requests": 2}"#);
        assert_eq!(emulator.handle(&bad).status, 400);
    }

    #[test]
    fn segments_are_decoded_after_the_split_raw_or_encoded() {
        let emulator = emulator();
        for path in [
            "/version/1.0/verifyReceiptId/developer/2:emulator-secret%2Fwith+slash=/user/user-1=/receiptId/a%2Fb=:3:11",
            "/version/1.0/verifyReceiptId/developer/2%3Aemulator-secret%2Fwith%2Bslash%3D/user/user-1%3D/receiptId/a%2Fb%3D%3A3%3A11",
        ] {
            let answer = get(&emulator, path);
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(answer.json_body()["receiptId"], "a/b=:3:11");
        }
        // A raw `/` in a value is another path.
        let raw =
            "/version/1.0/verifyReceiptId/developer/2:emulator-secret%2Fwith+slash=/user/user-1=/receiptId/a/b=:3:11";
        assert_eq!(get(&emulator, raw).status, 404);
        assert_eq!(get(&emulator, "/version/1.0/verifyReceipt").status, 404);
        let post = Request::new(
            "POST",
            "/version/1.0/verifyReceiptId/developer/2:emulator-secret%2Fwith+slash=/user/user-1=/receiptId/x",
        );
        assert_eq!(emulator.handle(&post).status, 405);
    }

    #[test]
    fn production_checks_the_secret_and_the_sandbox_takes_any_but_an_empty_one() {
        let emulator = emulator();
        let production = |secret: &str, receipt: &str| {
            get(&emulator, &format!("/version/1.0/verifyReceiptId/developer/{secret}/user/user-1=/receiptId/{receipt}"))
        };
        let wrong = production("2:other", "a%2Fb=:3:11");
        assert_eq!(
            (wrong.status, wrong.json_body()),
            (496, json!({"message": "Invalid developer secret", "status": false}))
        );
        assert_eq!(production("2:emulator-secret%2Fwith+slash=", "tester=").status, 400, "a tester receipt");
        let sandbox = |secret: &str, receipt: &str| {
            get(
                &emulator,
                &format!("/sandbox/version/1.0/verifyReceiptId/developer/{secret}/user/user-1=/receiptId/{receipt}"),
            )
        };
        let answer = sandbox("anything", "tester=");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json_body()["testTransaction"], true);
        assert_eq!(sandbox("", "tester=").status, 496);
        assert_eq!(sandbox("anything", "a%2Fb=:3:11").status, 400, "a production receipt");
        assert_eq!((emulator.count("verifyReceiptId"), emulator.count("sandbox.verifyReceiptId")), (2, 3));
    }

    #[test]
    fn errors_come_in_either_shape() {
        let emulator = emulator();
        emulator.set_error_bodies(ErrorBodies::Code);
        let path =
            "/version/1.0/verifyReceiptId/developer/2:emulator-secret%2Fwith+slash=/user/someone/receiptId/a%2Fb=:3:11";
        let answer = get(&emulator, path);
        assert_eq!((answer.status, answer.json_body()), (497, json!({"message": "InvalidUserId"})));
    }
}
