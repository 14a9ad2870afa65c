//! Legacy app receipts: `POST verifyReceipt` with `{"receipt-data",
//! "password"}`. Deprecated by Apple but still sent by old clients.
//!
//! Apple answers HTTP 200 with a `status`: 0 valid; 21007 a sandbox receipt
//! sent to production (asked again at the sandbox when sandbox data is
//! accepted); 21005, 21009 and 21100–21199 temporary (retried); the rest are
//! verdicts or errors (table in the README). Of a valid receipt, the latest
//! transaction for the requested product is judged like a signed one.

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, Verdict};
use iapd_sdk_plugin::retry::{self, with_retries};
use serde::Deserialize;

use crate::{AppStore, Policy, Transaction, invalid};

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct VerifyReceiptResponse {
    status: i64,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    receipt: Option<Receipt>,
    #[serde(default)]
    latest_receipt_info: Vec<InApp>,
}

#[derive(Debug, Clone, Deserialize)]
struct Receipt {
    #[serde(default)]
    bundle_id: String,
    #[serde(default)]
    in_app: Vec<InApp>,
}

/// An `in_app` entry: every value a string, as Apple sends them.
#[derive(Debug, Clone, Deserialize)]
struct InApp {
    #[serde(default)]
    product_id: String,
    #[serde(default)]
    transaction_id: String,
    #[serde(default)]
    quantity: Option<String>,
    #[serde(default)]
    purchase_date_ms: Option<String>,
    #[serde(default)]
    expires_date_ms: Option<String>,
    #[serde(default)]
    cancellation_date_ms: Option<String>,
    #[serde(default)]
    cancellation_reason: Option<String>,
    #[serde(default)]
    app_account_token: Option<String>,
}

/// The verdict on a legacy receipt.
pub(crate) async fn verify(
    store: &AppStore,
    cx: &Ctx,
    policy: &Policy<'_>,
    data: &str,
) -> Result<proto::VerifyResponse, PluginError> {
    let Some((response, raw)) = store.receipts.run(data.to_owned(), || lookup(store, cx, data)).await? else {
        return Ok(invalid(
            "a sandbox receipt (status 21007), refused in production (set `allow_sandbox` to accept App Review's purchases)"
                .to_owned(),
            None,
        ));
    };
    let verdict = |verdict: Verdict, reason: &str| proto::VerifyResponse {
        verdict: verdict.into(),
        verdict_reason: format!("{reason} (verifyReceipt status {})", response.status),
        purchase: None,
    };
    match response.status {
        0 | 21006 => {}
        21002 => return Ok(verdict(Verdict::Invalid, "the receipt data is malformed")),
        21003 => return Ok(verdict(Verdict::Invalid, "the receipt could not be authenticated")),
        21008 => {
            return Ok(verdict(
                Verdict::Invalid,
                "a production receipt, refused by a store configured for the sandbox",
            ));
        }
        21010 => return Ok(verdict(Verdict::NotFound, "the app store found no account for this receipt")),
        21004 => {
            return Err(PluginError::failed_precondition(
                "the app store says the shared secret does not match (verifyReceipt status 21004): check the secret `shared_secret`",
            )
            .with_reason("21004"));
        }
        21000 => {
            return Err(PluginError::internal(
                "the app store could not read iapd's request (verifyReceipt status 21000)",
            )
            .with_reason("21000"));
        }
        other => {
            return Err(PluginError::new(
                Code::Unknown,
                format!("the app store answered verifyReceipt with status {other}"),
            )
            .with_reason(other.to_string()));
        }
    }
    let receipt = response.receipt.unwrap_or(Receipt { bundle_id: String::new(), in_app: Vec::new() });
    let latest = receipt
        .in_app
        .iter()
        .chain(&response.latest_receipt_info)
        .filter(|entry| entry.product_id == policy.request.product_id)
        .max_by_key(|entry| millis(entry.purchase_date_ms.as_deref()));
    let Some(entry) = latest else {
        return Ok(proto::VerifyResponse {
            verdict: Verdict::NotFound.into(),
            verdict_reason: format!("the receipt holds no transaction for product {:?}", policy.request.product_id),
            purchase: None,
        });
    };
    let transaction = Transaction {
        transaction_id: entry.transaction_id.clone(),
        bundle_id: receipt.bundle_id,
        product_id: entry.product_id.clone(),
        purchase_date: millis(entry.purchase_date_ms.as_deref()),
        expires_date: entry.expires_date_ms.as_deref().map(|value| millis(Some(value))),
        quantity: entry.quantity.as_deref().and_then(|quantity| quantity.parse().ok()),
        app_account_token: entry.app_account_token.clone(),
        revocation_date: entry.cancellation_date_ms.as_deref().map(|value| millis(Some(value))),
        revocation_reason: entry.cancellation_reason.as_deref().and_then(|reason| reason.parse().ok()),
        environment: response.environment,
        ..Transaction::default()
    };
    Ok(policy.judge(&transaction, raw))
}

/// Apple's answer to a receipt and its raw text; `None` when a 21007 is
/// the last word.
pub(crate) type Lookup = Result<Option<(VerifyReceiptResponse, String)>, PluginError>;

/// Asks production first, then the sandbox on 21007 when sandbox data is
/// accepted. Shared by concurrent calls with the same receipt (the body is
/// the receipt and the store's own secret), each judging its own copy.
async fn lookup(store: &AppStore, cx: &Ctx, data: &str) -> Lookup {
    let mut body = serde_json::json!({ "receipt-data": data, "exclude-old-transactions": false });
    if let Some(secret) = &store.shared_secret {
        body["password"] = serde_json::Value::from(secret.expose_str()?);
    }
    let body = body.to_string();
    for &sandbox in store.environments() {
        let url = if sandbox { &store.config.sandbox_receipt_url } else { &store.config.receipt_url };
        let (response, raw) = post(store, cx, url, &body).await?;
        if response.status == 21007 && !sandbox {
            continue;
        }
        return Ok(Some((response, raw)));
    }
    Ok(None)
}

/// Posts the receipt, retrying HTTP 5xx and Apple's temporary statuses.
async fn post(
    store: &AppStore,
    cx: &Ctx,
    url: &str,
    body: &str,
) -> Result<(VerifyReceiptResponse, String), PluginError> {
    with_retries(cx, &store.config.retry, "verifyReceipt", || async {
        let request = HttpRequest::post(url).header("content-type", "application/json").body(body.to_owned());
        let response = retry::send(cx, request).await?;
        let status = response.status();
        if status >= 500 || status == 429 {
            let message = format!("the app store answered verifyReceipt with http {status}");
            return Err(retry::transient(&response, message).with_reason("UPSTREAM_ERROR"));
        }
        // Apple answers every receipt with 200 and a status; any other
        // answer without one is from somewhere else.
        let parsed: VerifyReceiptResponse = if (200..300).contains(&status) {
            response.json()?
        } else {
            serde_json::from_slice(response.body()).map_err(|_| {
                PluginError::unexpected_response(
                    status,
                    format!(
                        "the app store answered verifyReceipt with http {status} and no receipt status; is `receipt_url` right?"
                    ),
                )
            })?
        };
        if matches!(parsed.status, 21005 | 21009 | 21100..=21199) {
            return Err(PluginError::unavailable(format!(
                "the app store could not check the receipt now (verifyReceipt status {})",
                parsed.status
            ))
            .with_reason(parsed.status.to_string())
            .retryable(true));
        }
        Ok((parsed, String::from_utf8_lossy(response.body()).into_owned()))
    })
    .await
}

/// Apple's millisecond strings; 0 when absent or not a number.
fn millis(value: Option<&str>) -> i64 {
    value.and_then(|value| value.parse().ok()).unwrap_or(0)
}
