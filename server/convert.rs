//! Conversions between the public API (`iapd.v1`) and the plugin contract
//! (`iapd.plugin.v1`). The two evolve separately; enum values are mapped by
//! name, and a value one side does not know becomes UNSPECIFIED.

use iapd_sdk_plugin::proto as plugin;
use prost_types::Timestamp;

use crate::pb;

pub(crate) fn proof(proof: pb::PurchaseProof) -> plugin::Proof {
    use pb::purchase_proof::Proof as P;
    use plugin::proof::Kind as K;
    plugin::Proof {
        kind: proof.proof.map(|proof| match proof {
            P::PurchaseToken(value) => K::PurchaseToken(value),
            P::TransactionId(value) => K::TransactionId(value),
            P::SignedTransaction(value) => K::SignedTransaction(value),
            P::Receipt(value) => K::Receipt(value),
            P::PurchaseId(value) => K::PurchaseId(value),
        }),
        store_parameters: proof.store_parameters,
    }
}

pub(crate) fn product_kind_to_plugin(kind: i32) -> i32 {
    let kind = match pb::ProductKind::try_from(kind).unwrap_or_default() {
        pb::ProductKind::Unspecified => plugin::ProductKind::Unspecified,
        pb::ProductKind::Consumable => plugin::ProductKind::Consumable,
        pb::ProductKind::NonConsumable => plugin::ProductKind::NonConsumable,
        pb::ProductKind::Subscription => plugin::ProductKind::Subscription,
    };
    kind.into()
}

fn product_kind(kind: i32) -> i32 {
    let kind = match plugin::ProductKind::try_from(kind).unwrap_or_default() {
        plugin::ProductKind::Unspecified => pb::ProductKind::Unspecified,
        plugin::ProductKind::Consumable => pb::ProductKind::Consumable,
        plugin::ProductKind::NonConsumable => pb::ProductKind::NonConsumable,
        plugin::ProductKind::Subscription => pb::ProductKind::Subscription,
    };
    kind.into()
}

fn verdict(verdict: i32) -> i32 {
    use plugin::Verdict as V;
    let verdict = match V::try_from(verdict).unwrap_or_default() {
        V::Unspecified => pb::Verdict::Unspecified,
        V::Valid => pb::Verdict::Valid,
        V::Pending => pb::Verdict::Pending,
        V::Canceled => pb::Verdict::Canceled,
        V::Refunded => pb::Verdict::Refunded,
        V::NotFound => pb::Verdict::NotFound,
        V::UserMismatch => pb::Verdict::UserMismatch,
        V::Invalid => pb::Verdict::Invalid,
        V::Expired => pb::Verdict::Expired,
    };
    verdict.into()
}

fn purchase_state(state: i32) -> i32 {
    use plugin::PurchaseState as S;
    let state = match S::try_from(state).unwrap_or_default() {
        S::Unspecified => pb::PurchaseState::Unspecified,
        S::Purchased => pb::PurchaseState::Purchased,
        S::Pending => pb::PurchaseState::Pending,
        S::Canceled => pb::PurchaseState::Canceled,
        S::Refunded => pb::PurchaseState::Refunded,
    };
    state.into()
}

fn consumption_state(state: i32) -> i32 {
    use plugin::ConsumptionState as S;
    let state = match S::try_from(state).unwrap_or_default() {
        S::Unspecified => pb::ConsumptionState::Unspecified,
        S::NotConsumed => pb::ConsumptionState::NotConsumed,
        S::Consumed => pb::ConsumptionState::Consumed,
        S::NotApplicable => pb::ConsumptionState::NotApplicable,
    };
    state.into()
}

fn acknowledgement_state(state: i32) -> i32 {
    use plugin::AcknowledgementState as S;
    let state = match S::try_from(state).unwrap_or_default() {
        S::Unspecified => pb::AcknowledgementState::Unspecified,
        S::NotAcknowledged => pb::AcknowledgementState::NotAcknowledged,
        S::Acknowledged => pb::AcknowledgementState::Acknowledged,
        S::NotApplicable => pb::AcknowledgementState::NotApplicable,
    };
    state.into()
}

fn environment(environment: i32) -> i32 {
    use plugin::Environment as E;
    let environment = match E::try_from(environment).unwrap_or_default() {
        E::Unspecified => pb::Environment::Unspecified,
        E::Production => pb::Environment::Production,
        E::Sandbox => pb::Environment::Sandbox,
        E::Test => pb::Environment::Test,
    };
    environment.into()
}

pub(crate) fn timestamp(unix_millis: i64) -> Option<Timestamp> {
    (unix_millis > 0).then(|| Timestamp {
        seconds: unix_millis.div_euclid(1000),
        nanos: i32::try_from(unix_millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    })
}

/// Where a verify answer came from, for the normalized purchase.
pub(crate) struct Origin<'a> {
    pub(crate) store: &'a str,
    pub(crate) app_id: &'a str,
    pub(crate) product_id: &'a str,
}

pub(crate) fn verify_response(answer: plugin::VerifyResponse, origin: &Origin<'_>) -> pb::VerifyResponse {
    pb::VerifyResponse {
        verdict: verdict(answer.verdict),
        verdict_reason: answer.verdict_reason,
        purchase: answer.purchase.map(|purchase| pb::Purchase {
            store: origin.store.to_owned(),
            app_id: origin.app_id.to_owned(),
            product_id: origin.product_id.to_owned(),
            state: purchase_state(purchase.state),
            consumption_state: consumption_state(purchase.consumption_state),
            acknowledgement_state: acknowledgement_state(purchase.acknowledgement_state),
            order_id: purchase.order_id,
            transaction_id: purchase.transaction_id,
            purchase_time: timestamp(purchase.purchase_time_unix_millis),
            expiry_time: timestamp(purchase.expiry_time_unix_millis),
            quantity: purchase.quantity.max(1),
            kind: product_kind(purchase.kind),
            environment: environment(purchase.environment),
            developer_payload: purchase.developer_payload,
            region_code: purchase.region_code,
            account_binding: purchase.account_binding,
            raw_store_response: purchase.raw_store_response,
        }),
        ledger: None,
        source: pb::AnswerSource::Unspecified.into(),
        store_checked_time: None,
    }
}

/// The ledger's record as the API shows it.
pub(crate) fn ledger_entry(recorded: &crate::ledger::Recorded) -> pb::LedgerEntry {
    use crate::ledger::Claim;
    let claim = match recorded.claim {
        Claim::NoUser => pb::Claim::NoUser,
        Claim::New => pb::Claim::New,
        Claim::Owner => pb::Claim::Owner,
        Claim::Shared => pb::Claim::Shared,
        Claim::Transferred => pb::Claim::Transferred,
        Claim::ClaimedByOther => pb::Claim::OtherUser,
        Claim::NotClaimable => pb::Claim::NotClaimable,
    };
    pb::LedgerEntry {
        purchase_id: recorded.purchase_id.clone(),
        first_seen_time: timestamp(recorded.first_seen_ms),
        seen_before: recorded.seen_before,
        claim: claim.into(),
    }
}

pub(crate) fn catalog_item(item: plugin::CatalogItem) -> pb::CatalogItem {
    pb::CatalogItem {
        product_id: item.product_id,
        kind: product_kind(item.kind),
        title: item.title,
        description: item.description,
        price: (!item.price_currency_code.is_empty())
            .then_some(pb::Price { currency_code: item.price_currency_code, amount_micros: item.price_amount_micros }),
        active: item.active,
    }
}

/// A purchase a user holds, as the API shows it.
pub(crate) fn held_purchase(purchase: crate::ledger::HeldPurchase, now_ms: i64) -> pb::HeldPurchase {
    let active = purchase.active(now_ms);
    pb::HeldPurchase {
        verdict: pb::Verdict::from_str_name(&purchase.verdict).unwrap_or_default().into(),
        state: pb::PurchaseState::from_str_name(&purchase.state).unwrap_or_default().into(),
        kind: pb::ProductKind::from_str_name(&purchase.kind).unwrap_or_default().into(),
        first_seen_time: timestamp(purchase.first_seen_ms),
        expiry_time: purchase.expiry_ms.and_then(timestamp),
        consumed: purchase.consumed_ms.is_some(),
        acknowledged: purchase.acknowledged_ms.is_some(),
        shared: purchase.shared,
        active,
        purchase_id: purchase.purchase_id,
        store: purchase.store,
        product_id: purchase.product_id,
    }
}
