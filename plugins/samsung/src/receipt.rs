//! Verdicts from Samsung's verify answers: the Galaxy Store receipt
//! (`iap/v6/receipt`) and the legacy Tizen Store ticket check.

use std::collections::HashMap;

use iapd_sdk_plugin::checks;
use iapd_sdk_plugin::path_segment as encode;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use iapd_sdk_plugin::region;
use serde::Deserialize;
use serde_json::Value;

/// The receipt's `errorCode`s that mean the purchase does not exist: 9135
/// "not exist order" and 9153, a purchase id Samsung never issues.
const NOT_FOUND_CODES: [i64; 2] = [9135, 9153];

/// The five parameters of a Tizen Store purchase ticket (`_ticketParam1`..5).
#[derive(Debug)]
pub(crate) struct TizenTicket<'a> {
    params: [&'a str; 5],
}

const TIZEN_PARAMS: [&str; 5] = ["param1", "param2", "param3", "param4", "param5"];

impl<'a> TizenTicket<'a> {
    /// The ticket in a proof's `store_parameters`, `None` if it has none. Only
    /// `param1`..`param5` are accepted, all five: the verify URL is iapd's
    /// configuration, so nothing else of the caller's reaches Samsung.
    pub(crate) fn from_parameters(parameters: &'a HashMap<String, String>) -> Result<Option<Self>, PluginError> {
        if parameters.is_empty() {
            return Ok(None);
        }
        checks::only_store_parameters(
            parameters,
            &TIZEN_PARAMS,
            "the tizen ticket's parameters; the verify url comes from the config `tizen_verify_url`",
        )?;
        let mut params = [""; 5];
        for (slot, name) in params.iter_mut().zip(TIZEN_PARAMS) {
            *slot = checks::store_parameter(parameters, name, "a tizen ticket needs param1..param5")?;
        }
        Ok(Some(TizenTicket { params }))
    }

    /// The verify URL's query, as the Tizen guide spells it.
    pub(crate) fn query(&self, purchase_id: &str) -> String {
        let mut query = format!("purchaseID={}", encode(purchase_id));
        for (name, value) in TIZEN_PARAMS.iter().zip(self.params) {
            query.push_str(&format!("&{name}={}", encode(value)));
        }
        query
    }
}

/// The receipt answer. Samsung sends every value as a string and warns that
/// fields may be added, so unknown ones are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Receipt {
    status: Option<String>,
    /// A number in Samsung's example; a string is accepted too.
    error_code: Option<Value>,
    #[serde(default)]
    error_message: String,
    #[serde(default)]
    item_id: String,
    #[serde(default)]
    payment_id: String,
    #[serde(default)]
    order_id: String,
    #[serde(default)]
    package_name: String,
    purchase_date: Option<String>,
    mode: Option<String>,
    #[serde(rename = "consumeYN")]
    consume_yn: Option<String>,
    #[serde(rename = "acknowledgeYN")]
    acknowledge_yn: Option<String>,
    item_type: Option<String>,
    #[serde(default)]
    country_code: String,
    #[serde(default)]
    pass_through_param: String,
    #[serde(default)]
    obfuscated_account_id: String,
}

/// The error for a value iapd does not know: it decides nothing on a guess.
fn malformed(response: &HttpResponse, what: &str, detail: String) -> PluginError {
    PluginError::malformed_response(
        response.status(),
        format!("samsung answered the {what} with {detail}, which iapd does not know"),
    )
}

/// An answer with a `status`: JSON of Samsung's shape. Clients see `fail`
/// receipts with 4xx statuses too, so any HTTP status may carry one; a
/// non-2xx without one is an error naming the config key to check.
fn parse<T: serde::de::DeserializeOwned + HasStatus>(
    response: &HttpResponse,
    what: &str,
    config_key: &str,
) -> Result<T, PluginError> {
    let success = (200..300).contains(&response.status());
    match response.json::<T>() {
        Ok(answer) if answer.has_status() => Ok(answer),
        _ if !success => Err(PluginError::unexpected_response(
            response.status(),
            format!(
                "samsung answered the {what} with http {} and no answer of its shape; is `{config_key}` right?",
                response.status()
            ),
        )),
        Ok(_) => Err(malformed(response, what, "no `status`".to_owned())),
        Err(err) => Err(err),
    }
}

trait HasStatus {
    fn has_status(&self) -> bool;
}

impl HasStatus for Receipt {
    fn has_status(&self) -> bool {
        self.status.is_some()
    }
}

impl HasStatus for TizenAnswer {
    fn has_status(&self) -> bool {
        self.status.is_some()
    }
}

/// The verdict of a Galaxy Store receipt.
pub(crate) fn galaxy_verdict(
    cx: &Ctx,
    response: &HttpResponse,
    request: &proto::VerifyRequest,
    allow_test_purchases: bool,
) -> Result<proto::VerifyResponse, PluginError> {
    let receipt: Receipt = parse(response, "receipt", "receipt_root")?;
    let status = receipt.status.as_deref().unwrap_or_default();
    let state = match status {
        "success" => PurchaseState::Purchased,
        "cancel" => PurchaseState::Canceled,
        "fail" => return fail_verdict(response, &receipt),
        other => return Err(malformed(response, "receipt", format!("status `{other}`"))),
    };
    if !(200..300).contains(&response.status()) {
        return Err(PluginError::internal(format!(
            "samsung answered the receipt with http {} and a `{status}` receipt",
            response.status()
        ))
        .with_reason("UNEXPECTED_RESPONSE")
        .with_http_status(response.status()));
    }
    let environment = match receipt.mode.as_deref() {
        Some("PRODUCTION") => Environment::Production,
        Some("TEST") => Environment::Test,
        other => return Err(malformed(response, "receipt", format!("mode {other:?}"))),
    };
    let consumption = match receipt.consume_yn.as_deref() {
        Some("Y") => ConsumptionState::Consumed,
        Some("N") => ConsumptionState::NotConsumed,
        None => ConsumptionState::NotApplicable,
        Some(other) => return Err(malformed(response, "receipt", format!("consumeYN `{other}`"))),
    };
    let acknowledgement = match receipt.acknowledge_yn.as_deref() {
        Some("Y") => AcknowledgementState::Acknowledged,
        Some("N") => AcknowledgementState::NotAcknowledged,
        None => AcknowledgementState::NotApplicable,
        Some(other) => return Err(malformed(response, "receipt", format!("acknowledgeYN `{other}`"))),
    };
    let kind = match (receipt.item_type.as_deref(), &receipt.consume_yn, &receipt.acknowledge_yn) {
        (Some("Subscription"), _, _) => ProductKind::Subscription,
        (_, Some(_), _) => ProductKind::Consumable,
        (_, None, Some(_)) => ProductKind::NonConsumable,
        (_, None, None) => ProductKind::Unspecified,
    };
    let purchase_time = purchase_time(response, "receipt", receipt.purchase_date.as_deref())?;

    let (verdict, verdict_reason) = if receipt.package_name != request.app_id {
        (Verdict::Invalid, format!("the purchase is of package `{}`, not `{}`", receipt.package_name, request.app_id))
    } else if receipt.item_id != request.product_id {
        (Verdict::Invalid, format!("the purchase is of item `{}`, not `{}`", receipt.item_id, request.product_id))
    } else if state == PurchaseState::Canceled {
        (Verdict::Canceled, "canceled at samsung (status cancel)".to_owned())
    } else if environment == Environment::Test && !allow_test_purchases {
        (Verdict::Invalid, "test purchase refused in production; set allow_test_purchases".to_owned())
    } else if !request.user_id.is_empty()
        && !receipt.obfuscated_account_id.is_empty()
        && receipt.obfuscated_account_id != request.user_id
    {
        (Verdict::UserMismatch, "the purchase is bound to another account (obfuscatedAccountId)".to_owned())
    } else {
        (Verdict::Valid, String::new())
    };
    let purchase = proto::Purchase {
        state: state.into(),
        consumption_state: consumption.into(),
        acknowledgement_state: acknowledgement.into(),
        order_id: receipt.order_id,
        transaction_id: receipt.payment_id,
        purchase_time_unix_millis: purchase_time,
        expiry_time_unix_millis: 0,
        quantity: 1,
        kind: kind.into(),
        environment: environment.into(),
        developer_payload: receipt.pass_through_param,
        // Samsung sends alpha-3 (`USA`); the raw answer keeps it.
        region_code: region::region_code(cx, "samsung", &receipt.country_code),
        account_binding: receipt.obfuscated_account_id,
        raw_store_response: String::from_utf8_lossy(response.body()).into_owned(),
    };
    Ok(proto::VerifyResponse { verdict: verdict.into(), verdict_reason, purchase: Some(purchase) })
}

/// A `fail` receipt: the purchase does not exist (a verdict), or Samsung
/// could not answer (an error, never a verdict).
fn fail_verdict(response: &HttpResponse, receipt: &Receipt) -> Result<proto::VerifyResponse, PluginError> {
    let code = match &receipt.error_code {
        Some(Value::Number(number)) => number.as_i64(),
        Some(Value::String(text)) => text.trim().parse::<i64>().ok(),
        _ => None,
    };
    match code {
        Some(code) if NOT_FOUND_CODES.contains(&code) => Ok(proto::VerifyResponse {
            verdict: Verdict::NotFound.into(),
            verdict_reason: format!("samsung: {} (errorCode {code})", receipt.error_message),
            purchase: None,
        }),
        Some(code) => Err(PluginError::new(
            Code::Unknown,
            format!("samsung could not answer the receipt: errorCode {code}: {}", receipt.error_message),
        )
        .with_reason(code.to_string())
        .with_metadata("error_code", code.to_string())
        .with_metadata("error_message", receipt.error_message.clone())
        .with_http_status(response.status())),
        None => Err(PluginError::new(
            Code::Unknown,
            format!("samsung answered the receipt with status fail and no errorCode: {}", receipt.error_message),
        )
        .with_reason("RECEIPT_FAILED")
        .with_metadata("error_message", receipt.error_message.clone())
        .with_http_status(response.status())),
    }
}

/// The Tizen Store's answer to a ticket check.
#[derive(Debug, Deserialize)]
struct TizenAnswer {
    status: Option<String>,
    #[serde(rename = "paymentID", default)]
    payment_id: String,
    #[serde(rename = "itemID", default)]
    item_id: String,
    #[serde(rename = "purchaseDate")]
    purchase_date: Option<String>,
    mode: Option<String>,
}

/// The verdict of a Tizen Store ticket check.
pub(crate) fn tizen_verdict(
    response: &HttpResponse,
    product_id: &str,
    allow_test_purchases: bool,
) -> Result<proto::VerifyResponse, PluginError> {
    let answer: TizenAnswer = parse(response, "tizen ticket check", "tizen_verify_url")?;
    match answer.status.as_deref() {
        Some("true") => {}
        Some("false") => {
            return Ok(proto::VerifyResponse {
                verdict: Verdict::NotFound.into(),
                verdict_reason: "tizen store could not verify the ticket (status false)".to_owned(),
                purchase: None,
            });
        }
        other => return Err(malformed(response, "tizen ticket check", format!("status {other:?}"))),
    }
    // `mode` as the AppControl's `_mode`: 0 commercial, 1 developer mode.
    let environment = match answer.mode.as_deref() {
        Some("0") => Environment::Production,
        Some("1") => Environment::Test,
        other => return Err(malformed(response, "tizen ticket check", format!("mode {other:?}"))),
    };
    let purchase_time = purchase_time(response, "tizen ticket check", answer.purchase_date.as_deref())?;
    let (verdict, verdict_reason) = if answer.item_id != product_id {
        (Verdict::Invalid, format!("the ticket is of item `{}`, not `{product_id}`", answer.item_id))
    } else if environment == Environment::Test && !allow_test_purchases {
        (
            Verdict::Invalid,
            "test purchase refused in production (tizen developer mode); set allow_test_purchases".to_owned(),
        )
    } else {
        (Verdict::Valid, String::new())
    };
    let purchase = proto::Purchase {
        state: PurchaseState::Purchased.into(),
        consumption_state: ConsumptionState::NotApplicable.into(),
        acknowledgement_state: AcknowledgementState::NotApplicable.into(),
        order_id: answer.payment_id.clone(),
        transaction_id: answer.payment_id,
        purchase_time_unix_millis: purchase_time,
        quantity: 1,
        kind: ProductKind::Unspecified.into(),
        environment: environment.into(),
        raw_store_response: String::from_utf8_lossy(response.body()).into_owned(),
        ..Default::default()
    };
    Ok(proto::VerifyResponse { verdict: verdict.into(), verdict_reason, purchase: Some(purchase) })
}

/// `purchaseDate` in unix millis; 0 when absent.
fn purchase_time(response: &HttpResponse, what: &str, date: Option<&str>) -> Result<i64, PluginError> {
    match date {
        None => Ok(0),
        Some(date) => gmt_millis(date).ok_or_else(|| malformed(response, what, format!("purchaseDate `{date}`"))),
    }
}

/// `YYYY-MM-DD HH:mm:ss` in GMT, as Samsung writes dates, in unix millis.
pub(crate) fn gmt_millis(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let separators_ok = bytes.len() == 19
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b' '
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten()
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let doy = (153 * month_from_march + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::gmt_millis;

    #[test]
    fn samsung_dates_are_gmt() {
        assert_eq!(gmt_millis("1970-01-01 00:00:00"), Some(0));
        assert_eq!(gmt_millis("2026-01-01 00:00:00"), Some(1_767_225_600_000));
        assert_eq!(gmt_millis("2013-11-15 10:31:23"), Some(1_384_511_483_000));
        assert_eq!(gmt_millis("2000-02-29 23:59:59"), Some(951_868_799_000));
        assert_eq!(gmt_millis("1969-12-31 23:59:59"), Some(-1000));
        for bad in [
            "",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-13-01 00:00:00",
            "2026-02-29 00:00:00",
            "1900-02-29 00:00:00",
            "2026-01-01 24:00:00",
            "2026-01-01 00:60:00",
            "+026-01-01 00:00:00",
            "2026-01-01 00:00:00Z",
        ] {
            assert_eq!(gmt_millis(bad), None, "{bad}");
        }
    }
}
