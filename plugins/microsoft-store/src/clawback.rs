//! Microsoft's clawback events (Clawback v2): refunds, returns and
//! chargebacks, which Microsoft writes to an Azure Storage Queue it hosts
//! for the publisher, read through an SAS URI
//! (`GET https://purchase.mp.microsoft.com/v8.0/b2b/clawback/sastoken`).
//! Reading the queue belongs to store notifications, which iapd does not
//! serve yet; these are the types and the decoding they will use.
//!
//! An event names no user: it is matched to a consume by
//! `orderId:lineItemId:productId` (consume's `orderTransactions`), to a
//! subscription by `recurrenceId`, to a durable by `orderId` and `productId`.

use base64::Engine as _;
use serde::Deserialize;

/// The answer of `GET /v8.0/b2b/clawback/sastoken`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SasToken {
    /// When the URI stops working, ISO 8601.
    pub expires_on: String,
    /// The queue's URI with its SAS query; messages are under `/messages`.
    pub uri: String,
}

/// One event (`ClawbackEventContractV2`), CloudEvents-shaped.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClawbackEvent {
    /// The event's id.
    pub id: String,
    /// Why money went back.
    pub source: ClawbackSource,
    /// `ClawbackEventContractV2`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// What happened to which purchase.
    pub data: ClawbackData,
    /// When the event was written, ISO 8601.
    #[serde(default)]
    pub time: String,
}

/// Where an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ClawbackSource {
    /// A return or refund through support or the return site.
    #[serde(rename = "/Purchase/Refund")]
    Refund,
    /// A chargeback, or a chargeback Microsoft won back.
    #[serde(rename = "/Purchase/Chargeback")]
    Chargeback,
}

/// The purchase an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClawbackData {
    /// The order line.
    pub line_item_id: String,
    /// The order (a collections item's `transactionId`).
    pub order_id: String,
    /// The product's Store ID.
    pub product_id: String,
    /// `Durable`, `UnmanagedConsumable`, `Consumable`, `Pass`, …
    #[serde(default)]
    pub product_type: String,
    /// The SKU.
    #[serde(default)]
    pub sku_id: String,
    /// What became of the entitlement.
    pub event_state: EventState,
    /// `RETAIL` in production.
    #[serde(default)]
    pub sandbox_id: String,
    /// When it was bought, ISO 8601.
    #[serde(default)]
    pub purchased_date: String,
    /// When it was clawed back, ISO 8601.
    #[serde(default)]
    pub event_date: String,
    /// For a subscription.
    #[serde(default)]
    pub recurrence_data: Option<RecurrenceData>,
}

/// A subscription's part of an event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecurrenceData {
    /// The recurrence (a collections item's `recurrenceData`).
    pub recurrence_id: String,
    /// `Full` or `Partial` (pro-rated).
    #[serde(default)]
    pub refund_type: String,
}

/// What a clawback did to the entitlement. Some of Microsoft's tables spell
/// the states `Return` and `Refund`; both spellings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum EventState {
    /// Money back and the entitlement removed (a consumable not yet
    /// fulfilled): nothing left to do.
    #[serde(alias = "Return")]
    Returned,
    /// Money back, but the removal failed (a consumable already consumed):
    /// revoke what was granted.
    Revoked,
    /// Money back and the buyer keeps the item: watch, do not revoke.
    #[serde(alias = "Refund")]
    Refunded,
    /// An earlier chargeback won by Microsoft: undo the revocation.
    ChargebackReversal,
}

impl EventState {
    /// Whether the publisher should take back what it granted.
    pub fn revoke_grant(self) -> bool {
        self == EventState::Revoked
    }
}

/// Why a queue message is not a clawback event.
#[derive(Debug, thiserror::Error)]
pub enum ClawbackError {
    /// `MessageText` is neither base64 nor base64url.
    #[error("clawback message text is not base64")]
    NotBase64,
    /// The decoded text is not an event.
    #[error("clawback message is not a clawback event: {0}")]
    NotAnEvent(#[from] serde_json::Error),
}

impl ClawbackEvent {
    /// The event in a queue message's `MessageText`: base64 of its JSON.
    /// Microsoft's own library decodes base64url, its documentation says
    /// base64, so either alphabet is read, padded or not.
    pub fn from_message_text(text: &str) -> Result<ClawbackEvent, ClawbackError> {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let trimmed = text.trim().trim_end_matches('=');
        let bytes = STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
            .map_err(|_| ClawbackError::NotBase64)?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    /// The example event of Microsoft's clawback documentation.
    const EVENT: &str = r#"{"id":"5ef37bd1-a4a1-4ad5-8fc1-2d1d1b5b4ff7","source":"/Purchase/Refund","type":"ClawbackEventContractV2",
        "data":{"lineItemId":"230e9063-6c83-4e3f-9b9b-2ef0e4f0b7a1","orderId":"70fd35f2-2f09-4b44-93b9-8d6b6a25e3b0","productId":"9N0297GK108W",
        "productType":"UnmanagedConsumable","purchasedDate":"2023-01-24T21:59:19.5725585+00:00","eventDate":"2023-01-26T08:18:52.246847+00:00",
        "eventState":"Revoked","sandboxId":"XDKS.1","skuId":"0010",
        "recurrenceData":{"recurrenceId":"mdr:0:abc:def","durationIntervalStart":"2023-01-20T00:00:00+00:00","durationInDays":31,"consumedDurationInDays":6,"refundType":"Partial"}},
        "time":"2023-01-26T08:18:56.7103057+00:00","specversion":"1.0","datacontenttype":"application/json","subject":"/Purchase/Refund/907eb4af","traceparent":"00-a-b-00"}"#;

    #[test]
    fn a_message_decodes_in_either_base64_alphabet() {
        for engine in [base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::URL_SAFE_NO_PAD] {
            let event = ClawbackEvent::from_message_text(&engine.encode(EVENT)).expect("an event");
            assert_eq!(event.source, ClawbackSource::Refund);
            assert_eq!(event.data.event_state, EventState::Revoked);
            assert!(event.data.event_state.revoke_grant());
            assert_eq!(event.data.order_id, "70fd35f2-2f09-4b44-93b9-8d6b6a25e3b0");
            assert_eq!(event.data.recurrence_data.as_ref().map(|r| r.refund_type.as_str()), Some("Partial"));
        }
    }

    #[test]
    fn both_spellings_of_the_states_are_read_and_only_revoked_takes_back() {
        for (spelled, state) in [
            ("Returned", EventState::Returned),
            ("Return", EventState::Returned),
            ("Refunded", EventState::Refunded),
            ("Refund", EventState::Refunded),
            ("Revoked", EventState::Revoked),
            ("ChargebackReversal", EventState::ChargebackReversal),
        ] {
            let parsed: EventState = serde_json::from_value(serde_json::json!(spelled)).expect(spelled);
            assert_eq!(parsed, state);
            assert_eq!(parsed.revoke_grant(), state == EventState::Revoked, "{spelled}");
        }
        assert!(serde_json::from_value::<EventState>(serde_json::json!("Lost")).is_err());
    }

    #[test]
    fn a_message_that_is_not_an_event_says_why() {
        assert!(matches!(ClawbackEvent::from_message_text("%%%"), Err(ClawbackError::NotBase64)));
        let not_event = base64::engine::general_purpose::STANDARD.encode(r#"{"id": 1}"#);
        let err = ClawbackEvent::from_message_text(&not_event).expect_err("not an event");
        assert!(err.to_string().starts_with("clawback message is not a clawback event"), "{err}");
        let sas: SasToken = serde_json::from_str(
            r#"{"expiresOn":"2022-12-09T02:13Z","uri":"https://a.queue.core.windows.net/q?sv=1"}"#,
        )
        .expect("sas");
        assert_eq!(sas.expires_on, "2022-12-09T02:13Z");
    }
}
