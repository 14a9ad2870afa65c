//! InAppPurchaseData, the purchase Huawei signs, and the verdict iapd draws
//! from it.

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use iapd_sdk_plugin::region;
use serde::Deserialize;

use crate::lenient;

/// The fields of InAppPurchaseData iapd reads (Huawei adds others).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PurchaseData {
    #[serde(default, deserialize_with = "lenient::text")]
    pub(crate) application_id: String,
    #[serde(default, deserialize_with = "lenient::text")]
    pub(crate) package_name: String,
    #[serde(default, deserialize_with = "lenient::text")]
    pub(crate) product_id: String,
    #[serde(default, deserialize_with = "lenient::text")]
    pub(crate) purchase_token: String,
    #[serde(default, deserialize_with = "lenient::text")]
    pub(crate) order_id: String,
    #[serde(default, deserialize_with = "lenient::text")]
    pub(crate) pay_order_id: String,
    #[serde(default, deserialize_with = "lenient::text")]
    pub(crate) developer_payload: String,
    #[serde(default, deserialize_with = "lenient::text")]
    pub(crate) country: String,
    /// 0 consumable, 1 non-consumable, 2 subscription.
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) kind: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) purchase_time: Option<i64>,
    /// -1 initialized (not paid), 0 purchased, 1 canceled, 2 refunded.
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) purchase_state: Option<i64>,
    /// 0 not consumed, 1 consumed (one-time products).
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) consumption_state: Option<i64>,
    /// 0 not confirmed, 1 confirmed; absent: no confirmation required.
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) confirmed: Option<i64>,
    /// 0 sandbox, 1 promotion; absent for real purchases.
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) purchase_type: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) quantity: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) expiration_date: Option<i64>,
    /// When a subscription was revoked (refunded, or replaced at once).
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) cancel_time: Option<i64>,
    /// Whether a subscription entitles now.
    #[serde(default, deserialize_with = "lenient::boolean")]
    pub(crate) sub_isvalid: Option<bool>,
}

impl PurchaseData {
    pub(crate) fn kind(&self) -> Result<ProductKind, String> {
        match self.kind {
            Some(0) => Ok(ProductKind::Consumable),
            Some(1) => Ok(ProductKind::NonConsumable),
            Some(2) => Ok(ProductKind::Subscription),
            Some(other) => Err(format!("kind {other}")),
            None => Err("no kind".to_owned()),
        }
    }
}

/// A `cancelledList` row of the purchase: it was cancelled or refunded.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Cancellation {
    #[serde(default, deserialize_with = "lenient::text")]
    pub(crate) purchase_token: String,
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) cancelled_time: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) cancelled_reason: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub(crate) cancelled_source: Option<i64>,
}

impl Cancellation {
    fn describe(&self) -> String {
        let reason = match self.cancelled_reason {
            Some(0) => "other",
            Some(1) => "the buyer changed their mind",
            Some(2) => "the product was not provided",
            Some(3) => "the app's service was abnormal",
            Some(4) => "an accidental purchase",
            Some(5) => "fraud",
            Some(6) => "a chargeback",
            Some(7) => "an upgrade or downgrade",
            Some(8) => "the buyer's service area changed",
            _ => "an undocumented reason",
        };
        let source = match self.cancelled_source {
            Some(0) => "the buyer",
            Some(1) => "the developer",
            Some(2) => "huawei",
            _ => "an undocumented source",
        };
        format!(
            "in huawei's cancelled list: cancelled by {source} at {} for {reason} (cancelledReason {})",
            self.cancelled_time.unwrap_or_default(),
            self.cancelled_reason.map_or_else(|| "absent".to_owned(), |code| code.to_string())
        )
    }
}

/// What the store's policy allows, from the config.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// The app ID purchases must belong to.
    pub(crate) client_id: String,
    pub(crate) allow_sandbox: bool,
}

/// A verified purchase, judged against one caller's request.
pub(crate) fn verdict(
    cx: &Ctx,
    policy: &Policy,
    request: &proto::VerifyRequest,
    token: &str,
    data: &PurchaseData,
    cancellation: Option<&Cancellation>,
    raw: &str,
) -> Result<proto::VerifyResponse, PluginError> {
    let malformed = |what: String| {
        PluginError::malformed_response(
            200,
            format!("huawei's signed purchase data has {what}, which iapd does not know"),
        )
    };
    let kind = data.kind().map_err(malformed)?;
    let subscription = kind == ProductKind::Subscription;
    let environment = match data.purchase_type {
        Some(0) => Environment::Sandbox,
        _ => Environment::Production,
    };
    let now = cx.now_unix_millis();
    let (state, verdict, mut reason) = if subscription {
        if let Some(revoked) = data.cancel_time {
            (
                PurchaseState::Refunded,
                Verdict::Refunded,
                format!("the subscription was revoked at {revoked} (cancelTime)"),
            )
        } else if data.sub_isvalid == Some(false) || data.expiration_date.is_some_and(|expires| expires <= now) {
            (
                PurchaseState::Purchased,
                Verdict::Expired,
                "the subscription is not valid now (subIsvalid, expirationDate)".to_owned(),
            )
        } else {
            (PurchaseState::Purchased, Verdict::Valid, String::new())
        }
    } else {
        match data.purchase_state {
            Some(0) => (PurchaseState::Purchased, Verdict::Valid, String::new()),
            Some(1) => (PurchaseState::Canceled, Verdict::Canceled, "canceled at huawei (purchaseState 1)".to_owned()),
            Some(2) => (PurchaseState::Refunded, Verdict::Refunded, "refunded at huawei (purchaseState 2)".to_owned()),
            // -1 is "initialized", not paid; 3 "pending" appears in some of Huawei's code.
            Some(-1 | 3) => (PurchaseState::Pending, Verdict::Pending, "not paid yet at huawei".to_owned()),
            Some(other) => return Err(malformed(format!("purchaseState {other}"))),
            None => return Err(malformed("no purchaseState".to_owned())),
        }
    };
    let (state, verdict) = match cancellation {
        Some(row) if verdict == Verdict::Valid => {
            reason = row.describe();
            (PurchaseState::Refunded, Verdict::Refunded)
        }
        _ => (state, verdict),
    };
    // Checks of the signed data against the request and the store come first:
    // a purchase of another app or product says nothing about this one.
    let mismatch = [
        (!data.application_id.is_empty() && data.application_id != policy.client_id)
            .then(|| format!("a purchase of app {}, not this store's app {}", data.application_id, policy.client_id)),
        (!data.package_name.is_empty() && data.package_name != request.app_id)
            .then(|| format!("a purchase of package {}, not {}", data.package_name, request.app_id)),
        (data.product_id != request.product_id)
            .then(|| format!("a purchase of product {}, not {}", data.product_id, request.product_id)),
        (!data.purchase_token.is_empty() && data.purchase_token != token)
            .then(|| "signed data of another purchase token".to_owned()),
        (environment == Environment::Sandbox && !policy.allow_sandbox).then(|| {
            "a sandbox purchase (purchaseType 0), and this store does not allow them (allow_sandbox)".to_owned()
        }),
    ]
    .into_iter()
    .flatten()
    .next();
    let (verdict, reason) = match mismatch {
        Some(mismatch) => (Verdict::Invalid, mismatch),
        None => (verdict, reason),
    };
    let consumption_state = match (kind, data.consumption_state) {
        (ProductKind::Consumable, Some(1)) => ConsumptionState::Consumed,
        (ProductKind::Consumable, _) => ConsumptionState::NotConsumed,
        _ => ConsumptionState::NotApplicable,
    };
    let acknowledgement_state = match (subscription, data.confirmed) {
        (false, Some(1)) => AcknowledgementState::Acknowledged,
        (false, Some(_)) => AcknowledgementState::NotAcknowledged,
        _ => AcknowledgementState::NotApplicable,
    };
    let purchase = proto::Purchase {
        state: state.into(),
        consumption_state: consumption_state.into(),
        acknowledgement_state: acknowledgement_state.into(),
        order_id: data.order_id.clone(),
        transaction_id: data.pay_order_id.clone(),
        purchase_time_unix_millis: data.purchase_time.unwrap_or_default(),
        expiry_time_unix_millis: if subscription { data.expiration_date.unwrap_or_default() } else { 0 },
        quantity: data.quantity.and_then(|quantity| i32::try_from(quantity).ok()).filter(|q| *q > 0).unwrap_or(1),
        kind: kind.into(),
        environment: environment.into(),
        developer_payload: data.developer_payload.clone(),
        region_code: region::region_code(cx, "huawei", &data.country),
        account_binding: String::new(),
        raw_store_response: raw.to_owned(),
    };
    let verdict_reason = if reason.is_empty() { reason } else { format!("huawei: {reason}") };
    Ok(proto::VerifyResponse { verdict: verdict.into(), verdict_reason, purchase: Some(purchase) })
}
