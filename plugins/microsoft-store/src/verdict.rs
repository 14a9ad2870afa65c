//! A Collections item (and a subscription's recurrence) → iapd's verdict.
//!
//! Microsoft's rule: a product is owned when its item is `Active` and now is
//! between `startDate` and `endDate`. `Revoked` is most often a refund,
//! `Expired` a lapsed subscription-granted item; `Banned` and `Suspended`
//! are not entitlements. For consumables `quantity` is the unconsumed
//! balance: 0 means fulfilled (a developer-managed one never shows more than 1).

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use serde_json::json;

use crate::api::{CollectionItem, Found, Recurrence};

/// How a product is consumed, by Microsoft's `productKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consumability {
    /// `UnmanagedConsumable`: one at a time, consumed whole.
    DeveloperManaged,
    /// `Consumable`: a balance the Store keeps; consume removes a quantity.
    StoreManaged,
    /// Durables, apps, games and passes are never consumed.
    Not,
}

pub(crate) fn consumability(product_kind: &str) -> Consumability {
    match product_kind {
        "UnmanagedConsumable" => Consumability::DeveloperManaged,
        "Consumable" => Consumability::StoreManaged,
        _ => Consumability::Not,
    }
}

fn kind(product_kind: &str) -> ProductKind {
    match product_kind {
        "UnmanagedConsumable" | "Consumable" => ProductKind::Consumable,
        "Durable" | "Application" | "Game" => ProductKind::NonConsumable,
        "Pass" => ProductKind::Subscription,
        _ => ProductKind::Unspecified,
    }
}

/// The item of `product` (and `sku`) that says most: an `Active` one first,
/// then `Expired`, then `Revoked`, then any other (Microsoft may list a
/// product once per entitlement source).
pub(crate) fn pick<'a>(
    items: &'a [Found<CollectionItem>],
    product: &str,
    sku: Option<&str>,
) -> Option<&'a Found<CollectionItem>> {
    let rank = |status: &str| match status {
        "Active" => 0,
        "Expired" => 1,
        "Revoked" => 2,
        _ => 3,
    };
    items
        .iter()
        .filter(|found| found.item.product_id.eq_ignore_ascii_case(product))
        .filter(|found| sku.is_none_or(|sku| found.item.sku_id.eq_ignore_ascii_case(sku)))
        .min_by_key(|found| rank(&found.item.status))
}

/// What a verdict depends on besides the item.
#[derive(Debug)]
pub(crate) struct Facts<'a> {
    pub(crate) now_millis: i64,
    pub(crate) environment: Environment,
    /// The `userId` the app bound the Store ID key to.
    pub(crate) binding: &'a str,
    pub(crate) user_id: &'a str,
}

/// Microsoft's timestamp (ISO 8601, up to seven fractional digits) in unix
/// millis; "never" (`9999-12-31T23:59:59.9999999+00:00`) and no value are `None`.
pub(crate) fn unix_millis(value: Option<&str>, status: u16, field: &str) -> Result<Option<i64>, PluginError> {
    let Some(value) = value.filter(|value| !value.is_empty()) else { return Ok(None) };
    let parsed = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(|_| {
        PluginError::malformed_response(status, format!("microsoft answered a {field} that is not an iso 8601 time"))
    })?;
    if parsed.year() >= 9999 {
        return Ok(None);
    }
    Ok(Some(i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)))
}

/// The verdict on `found`, refined by its subscription's `recurrence` when
/// there is one.
pub(crate) fn verify_response(
    found: &Found<CollectionItem>,
    recurrence: Option<&Found<Recurrence>>,
    facts: &Facts<'_>,
) -> Result<proto::VerifyResponse, PluginError> {
    let item = &found.item;
    let end = unix_millis(item.end_date.as_deref(), 200, "endDate")?;
    let start = unix_millis(item.start_date.as_deref(), 200, "startDate")?;
    let acquired = unix_millis(item.acquired_date.as_deref(), 200, "acquiredDate")?;
    let mut expiry = end;
    let (mut verdict, mut state, mut reason) = match item.status.as_str() {
        _ if !facts.user_id.is_empty() && !facts.binding.is_empty() && facts.binding != facts.user_id => (
            Verdict::UserMismatch,
            PurchaseState::Purchased,
            format!("the store id key is bound to user `{}`, not `{}`", facts.binding, facts.user_id),
        ),
        "Active" if end.is_some_and(|end| end <= facts.now_millis) => {
            (Verdict::Expired, PurchaseState::Purchased, "active at microsoft, but its endDate has passed".to_owned())
        }
        "Active" if start.is_some_and(|start| start > facts.now_millis) => {
            (Verdict::Pending, PurchaseState::Pending, "active at microsoft from a startDate still to come".to_owned())
        }
        "Active" => (Verdict::Valid, PurchaseState::Purchased, String::new()),
        "Expired" => (Verdict::Expired, PurchaseState::Purchased, "expired at microsoft (status Expired)".to_owned()),
        "Revoked" => (
            Verdict::Refunded,
            PurchaseState::Refunded,
            "revoked at microsoft (status Revoked), most often a refund".to_owned(),
        ),
        status @ ("Banned" | "Suspended") => {
            (Verdict::Invalid, PurchaseState::Unspecified, format!("not an entitlement at microsoft (status {status})"))
        }
        other => {
            return Err(PluginError::malformed_response(
                200,
                format!("microsoft answered the collections query with status `{other}`, which iapd does not know"),
            ));
        }
    };
    if let (Some(recurrence), Verdict::Valid) = (recurrence, verdict) {
        let billing = &recurrence.item;
        let ends = unix_millis(billing.expiration_time_with_grace.as_deref(), 200, "expirationTimeWithGrace")?
            .or(unix_millis(billing.expiration_time.as_deref(), 200, "expirationTime")?);
        expiry = ends.or(expiry);
        match billing.recurrence_state.as_str() {
            "Revoked" => {
                (verdict, state) = (Verdict::Refunded, PurchaseState::Refunded);
                reason = "the subscription was revoked at microsoft (recurrenceState Revoked)".to_owned();
            }
            "Active" | "None" | "InDunning" | "Canceled" | "Inactive" | "Failed"
                if ends.is_some_and(|ends| ends <= facts.now_millis) =>
            {
                verdict = Verdict::Expired;
                reason = format!("the subscription ended (recurrenceState {})", billing.recurrence_state);
            }
            "Active" | "None" | "InDunning" | "Canceled" | "Inactive" | "Failed" => {}
            other => {
                return Err(PluginError::malformed_response(
                    200,
                    format!("microsoft answered a recurrenceState `{other}`, which iapd does not know"),
                ));
            }
        }
    }
    let consumption = match (consumability(&item.product_kind), item.quantity) {
        (Consumability::Not, _) => ConsumptionState::NotApplicable,
        (_, quantity) if quantity > 0 => ConsumptionState::NotConsumed,
        _ => ConsumptionState::Consumed,
    };
    let mut raw = json!({ "item": found.raw });
    if let Some(recurrence) = recurrence {
        raw["recurrence"] = recurrence.raw.clone();
    }
    let purchase = proto::Purchase {
        state: state.into(),
        consumption_state: consumption.into(),
        // Microsoft has no acknowledgement: nothing is refunded for want of one.
        acknowledgement_state: AcknowledgementState::NotApplicable.into(),
        order_id: item.transaction_id.clone(),
        transaction_id: item.transaction_id.clone(),
        purchase_time_unix_millis: acquired.unwrap_or(0),
        expiry_time_unix_millis: expiry.unwrap_or(0),
        quantity: i32::try_from(item.quantity).unwrap_or(i32::MAX),
        kind: kind(&item.product_kind).into(),
        environment: facts.environment.into(),
        account_binding: facts.binding.to_owned(),
        raw_store_response: raw.to_string(),
        ..Default::default()
    };
    Ok(proto::VerifyResponse { verdict: verdict.into(), verdict_reason: reason, purchase: Some(purchase) })
}

/// The recurrence of `item`: the one its `recurrenceData` names, else one of
/// the same product and SKU.
pub(crate) fn recurrence_of<'a>(
    item: &CollectionItem,
    recurrences: &'a [Found<Recurrence>],
) -> Option<&'a Found<Recurrence>> {
    let named = item.recurrence_data.as_deref().filter(|id| !id.is_empty());
    match named {
        Some(id) => recurrences.iter().find(|found| found.item.id == id),
        None => recurrences.iter().find(|found| {
            found.item.product_id.eq_ignore_ascii_case(&item.product_id)
                && (item.sku_id.is_empty()
                    || found.item.sku_id.is_empty()
                    || found.item.sku_id.eq_ignore_ascii_case(&item.sku_id))
        }),
    }
}
