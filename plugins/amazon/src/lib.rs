//! The Amazon Appstore: in-app purchases through Amazon's Receipt
//! Verification Service (RVS).
//!
//! - Verify → `GET {api_root}[/sandbox]/version/1.0/verifyReceiptId/developer/<shared secret>/user/<user id>/receiptId/<receipt id>`.
//!   The proof is the `receipt` (the app's `Receipt.getReceiptId()`) with
//!   `store_parameters.user_id` (`UserData.getUserId()`), the only parameter
//!   taken: URLs come only from the config.
//! - The shared secret is a path segment, so it sits in every URL: the host
//!   redacts it from log lines and error messages raw and percent-encoded,
//!   and this plugin never puts a URL anywhere else (verdict reasons, raw
//!   answers).
//! - RVS answers by HTTP status: 200 the receipt, 400 no such receipt
//!   (`VERDICT_NOT_FOUND`), 497 another user's (`VERDICT_USER_MISMATCH`),
//!   410 no longer valid (`VERDICT_REFUNDED`), 496 a refused shared secret,
//!   429 and 5xx transient. Its error bodies differ between sources, so only
//!   the status decides; the body's `message` is logged.
//! - A receipt's `cancelDate` and `cancelReason` are the verdict: a cancelled
//!   one-time purchase is refunded, a subscription whose `cancelDate` has
//!   passed has expired. `testTransaction` (and Live App Testing's
//!   `betaProduct`) is the test environment.
//! - Amazon has no server-side acknowledge or consume (the app calls
//!   `PurchasingService.notifyFulfillment`, which RVS then reports as
//!   `fulfillmentResult`) and no catalog API: ListItems serves the catalog
//!   declared in the config.
//! - Concurrent identical Verifies (the same user and receipt) share one
//!   request to RVS.

#![forbid(unsafe_code)]

use iapd_sdk_plugin::catalog::{self, CatalogEntry};
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use iapd_sdk_plugin::retry::{self, Retry, with_retries};
use iapd_sdk_plugin::sync::SingleFlight;
use iapd_sdk_plugin::{Secret, checks, log, path_segment_pchar as segment, region};
use serde::Deserialize;

/// The only `store_parameters` key Verify reads.
const USER_ID: &str = "user_id";

/// The store.
pub struct Amazon {
    config: Config,
    store_id: String,
    shared_secret: Secret,
    /// One RVS request per (user id, receipt id) at a time: with the
    /// configured secret and environment, that is the whole URL.
    lookups: SingleFlight<(String, String), Result<HttpResponse, PluginError>>,
}

/// `[stores.<id>.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The package names served. RVS does not say which app a receipt is
    /// for (the shared secret is the developer account's), so this is
    /// checked here and the product against the receipt.
    packages: Vec<String>,
    /// Which RVS: production, or the RVS Cloud Sandbox (App Tester receipts).
    #[serde(default)]
    environment: Served,
    /// Whether test transactions (`testTransaction`, `betaProduct`) are
    /// valid (with ENVIRONMENT_TEST) at a production store.
    #[serde(default)]
    allow_test_purchases: bool,
    /// RVS's origin (an emulator's in tests); the sandbox is under `/sandbox`.
    #[serde(default = "default_api_root")]
    api_root: String,
    /// What the apps sell: Amazon has no catalog API.
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
    /// Retries of transient failures (429, 5xx, timeouts).
    #[serde(default)]
    retry: Retry,
}

/// The RVS a store asks.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Served {
    #[default]
    Production,
    Sandbox,
}

fn default_api_root() -> String {
    "https://appstore-sdk.amazon.com".to_owned()
}

/// RVS's receipt. Dates are epoch milliseconds, `null` when they do not
/// apply; numbers are numbers, so a string where one belongs is malformed.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Receipt {
    product_id: String,
    product_type: String,
    purchase_date: Option<i64>,
    cancel_date: Option<i64>,
    cancel_reason: Option<i64>,
    renewal_date: Option<i64>,
    grace_period_end_date: Option<i64>,
    term_sku: Option<String>,
    fulfillment_result: Option<String>,
    test_transaction: Option<bool>,
    beta_product: Option<bool>,
    country_code: Option<String>,
    quantity: Option<i32>,
}

impl Store for Amazon {
    const NAME: &'static CStr = c"amazon";
    const CAPABILITIES: u64 = CAP_VERIFY | CAP_LIST_ITEMS;
    type Config = Config;

    fn info() -> proto::PluginInfo {
        proto::PluginInfo {
            display_name: "Amazon Appstore".into(),
            methods: vec![],
            allowed_origins: vec![default_api_root()],
            secrets: vec!["shared_secret".into()],
            proof_kinds: vec!["receipt".into()],
        }
    }

    fn new(config: Config, init: &InitContext) -> Result<Self, PluginError> {
        let store_id = init.store_id().to_owned();
        checks::packages_listed(&config.packages, &store_id)?;
        config.retry.check(&store_id)?;
        if config.api_root.contains(['?', '#']) {
            return Err(PluginError::invalid_argument(format!(
                "config key `stores.{store_id}.config.api_root`: give an origin (and path) without a query"
            )));
        }
        let shared_secret = init.secret("shared_secret")?;
        // Never the value: only what is wrong with it.
        if shared_secret.expose_str()?.trim().is_empty() {
            return Err(PluginError::invalid_argument(format!(
                "secret `stores.{store_id}.secrets.shared_secret` is empty; give the shared key of amazon's developer console (any non-empty value in the sandbox)"
            )));
        }
        Ok(Amazon { config, store_id, shared_secret, lookups: SingleFlight::new() })
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        let (receipt_id, user_id) = proof(request.proof.as_ref())?;
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        let response = self.lookup(cx, user_id, receipt_id).await?;
        let status = response.status();
        log_message(cx, &response);
        let verdict = |verdict: Verdict, reason: &str| proto::VerifyResponse {
            verdict: verdict.into(),
            verdict_reason: format!("amazon rvs answered http {status}: {reason}"),
            purchase: None,
        };
        match status {
            200 => self.judge(cx, &request, receipt_id, user_id, &response),
            400 => Ok(verdict(Verdict::NotFound, "no such receipt id (or not one of this developer account's)")),
            410 => {
                Ok(verdict(Verdict::Refunded, "the receipt is no longer valid; amazon says to treat it as cancelled"))
            }
            497 => Ok(verdict(
                Verdict::UserMismatch,
                "the receipt belongs to another user than `store_parameters.user_id`",
            )),
            496 => Err(PluginError::unauthenticated(format!(
                "amazon rvs refused the shared secret (http 496){}: check `stores.{}.secrets.shared_secret`",
                amazon_message(&response),
                self.store_id
            ))
            .with_reason("INVALID_SHARED_SECRET")
            .with_http_status(status)),
            _ => Err(PluginError::unexpected_response(
                status,
                format!(
                    "amazon rvs answered http {status}{}, which it does not document; is `stores.{}.config.api_root` right?",
                    amazon_message(&response),
                    self.store_id
                ),
            )),
        }
    }

    async fn list_items(
        &self,
        _cx: &Ctx,
        request: proto::ListItemsRequest,
    ) -> Result<proto::ListItemsResponse, PluginError> {
        catalog::page(&self.config.catalog, &self.config.packages, &request)
    }
}

impl std::fmt::Debug for Amazon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amazon").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Amazon {
    /// RVS's answer for a user's receipt, shared by concurrent identical
    /// calls (each judges its own copy against its own product). 429, 5xx
    /// and timeouts are retried; any other status is the answer.
    async fn lookup(&self, cx: &Ctx, user_id: &str, receipt_id: &str) -> Result<HttpResponse, PluginError> {
        let secret = self.shared_secret.expose_str()?.trim();
        let url = format!(
            "{}{}/version/1.0/verifyReceiptId/developer/{}/user/{}/receiptId/{}",
            self.config.api_root.trim_end_matches('/'),
            if self.config.environment == Served::Sandbox { "/sandbox" } else { "" },
            segment(secret),
            segment(user_id),
            segment(receipt_id)
        );
        let key = (user_id.to_owned(), receipt_id.to_owned());
        self.lookups
            .run(key, || {
                with_retries(cx, &self.config.retry, "amazon rvs verifyReceiptId", || async {
                    let response = retry::http(cx, HttpRequest::get(url.as_str())).await?;
                    let status = response.status();
                    if status == 429 || status >= 500 {
                        let message = format!("amazon rvs answered http {status}{}", amazon_message(&response));
                        let reason = if status == 429 { "THROTTLED" } else { "UPSTREAM_ERROR" };
                        return Err(retry::transient(&response, message).with_reason(reason));
                    }
                    Ok(response)
                })
            })
            .await
    }

    /// The verdict on RVS's receipt for this caller's request.
    fn judge(
        &self,
        cx: &Ctx,
        request: &proto::VerifyRequest,
        receipt_id: &str,
        user_id: &str,
        response: &HttpResponse,
    ) -> Result<proto::VerifyResponse, PluginError> {
        let receipt: Receipt = response.json()?;
        let kind = match receipt.product_type.as_str() {
            "CONSUMABLE" => ProductKind::Consumable,
            "ENTITLED" => ProductKind::NonConsumable,
            "SUBSCRIPTION" => ProductKind::Subscription,
            other => {
                return Err(PluginError::malformed_response(
                    response.status(),
                    format!("amazon rvs answered productType {other:?}, which iapd does not know"),
                ));
            }
        };
        let test = receipt.test_transaction == Some(true) || receipt.beta_product == Some(true);
        let served = self.config.environment;
        let environment = match (test, served) {
            (true, _) => Environment::Test,
            (false, Served::Sandbox) => Environment::Sandbox,
            (false, Served::Production) => Environment::Production,
        };
        let fulfilled = receipt.fulfillment_result.as_deref() == Some("FULFILLED");
        let now = cx.now_unix_millis();
        let subscription = kind == ProductKind::Subscription;
        let ended = receipt.cancel_date.filter(|cancelled| !subscription || *cancelled <= now);
        let purchase = proto::Purchase {
            state: if ended.is_some() && !subscription { PurchaseState::Refunded } else { PurchaseState::Purchased }
                .into(),
            consumption_state: match (kind, fulfilled) {
                (ProductKind::Consumable, true) => ConsumptionState::Consumed,
                (ProductKind::Consumable, false) => ConsumptionState::NotConsumed,
                _ => ConsumptionState::NotApplicable,
            }
            .into(),
            acknowledgement_state: if fulfilled {
                AcknowledgementState::Acknowledged
            } else {
                AcknowledgementState::NotAcknowledged
            }
            .into(),
            transaction_id: receipt_id.to_owned(),
            purchase_time_unix_millis: receipt.purchase_date.unwrap_or_default(),
            // A subscription lasts to its cancelDate, else through its grace
            // period, else to its renewal.
            expiry_time_unix_millis: if subscription {
                receipt.cancel_date.or(receipt.grace_period_end_date).or(receipt.renewal_date).unwrap_or_default()
            } else {
                0
            },
            quantity: receipt.quantity.unwrap_or(1),
            kind: kind.into(),
            environment: environment.into(),
            region_code: region::region_code(cx, "amazon", receipt.country_code.as_deref().unwrap_or_default()),
            account_binding: user_id.to_owned(),
            raw_store_response: String::from_utf8_lossy(response.body()).into_owned(),
            ..Default::default()
        };
        let verdict = |verdict: Verdict, reason: String| proto::VerifyResponse {
            verdict: verdict.into(),
            verdict_reason: reason,
            purchase: Some(purchase.clone()),
        };
        let term_sku = receipt.term_sku.as_deref().filter(|_| subscription);
        if receipt.product_id != request.product_id && term_sku != Some(request.product_id.as_str()) {
            let term = term_sku.map(|sku| format!(" (term sku {sku:?})")).unwrap_or_default();
            return Ok(verdict(
                Verdict::Invalid,
                format!("the receipt is for product {:?}{term}, not {:?}", receipt.product_id, request.product_id),
            ));
        }
        if test && served == Served::Production && !self.config.allow_test_purchases {
            let what = if receipt.beta_product == Some(true) {
                "a live app testing purchase (betaProduct)"
            } else {
                "a test transaction (testTransaction)"
            };
            return Ok(verdict(
                Verdict::Invalid,
                format!("{what}, refused by a production store (set `allow_test_purchases` to accept it)"),
            ));
        }
        if let Some(cancelled) = ended {
            let why = cancel_reason(receipt.cancel_reason);
            return Ok(if subscription {
                verdict(Verdict::Expired, format!("the subscription ended at {cancelled} (unix millis): {why}"))
            } else {
                verdict(Verdict::Refunded, format!("cancelled and refunded at {cancelled} (unix millis): {why}"))
            });
        }
        Ok(verdict(Verdict::Valid, String::new()))
    }
}

/// What RVS's `cancelReason` says.
fn cancel_reason(reason: Option<i64>) -> String {
    match reason {
        None => "no cancelReason given".to_owned(),
        Some(0) => "the reason is not known yet (cancelReason 0)".to_owned(),
        Some(1) => "cancelled by the customer (cancelReason 1)".to_owned(),
        Some(2) => "cancelled by amazon, or by its customer service for the customer (cancelReason 2)".to_owned(),
        Some(3) => "cancelled for a reason internal to amazon (cancelReason 3)".to_owned(),
        Some(4) => {
            "replaced by a new subscription after a tier or term change (cancelReason 4); verify the new receipt"
                .to_owned()
        }
        Some(other) => format!("cancelReason {other}"),
    }
}

/// RVS's `message`, if its body has one, as `: "…"` for an error's
/// message. Amazon's error bodies differ in shape and are not always JSON;
/// the message is only ever context, never what decides.
fn amazon_message(response: &HttpResponse) -> String {
    serde_json::from_slice::<serde_json::Value>(response.body())
        .ok()
        .and_then(|body| body.get("message").and_then(serde_json::Value::as_str).map(str::to_owned))
        .filter(|message| !message.is_empty())
        .map(|message| format!(": {:?}", message.chars().take(200).collect::<String>()))
        .unwrap_or_default()
}

/// Logs RVS's `message` of a refusal at debug (the host redacts the log).
fn log_message(cx: &Ctx, response: &HttpResponse) {
    if response.status() != 200 {
        cx.log(
            log::Level::Debug,
            &format!("amazon rvs answered http {}{}", response.status(), amazon_message(response)),
        );
    }
}

/// The receipt id and the user id of a proof.
fn proof(proof: Option<&proto::Proof>) -> Result<(&str, &str), PluginError> {
    let Some((proof, receipt_id)) = proof.and_then(|proof| match proof.kind.as_ref() {
        Some(proto::proof::Kind::Receipt(receipt_id)) if !receipt_id.is_empty() => Some((proof, receipt_id)),
        _ => None,
    }) else {
        return Err(PluginError::invalid_argument(
            "proof: amazon verifies a `receipt` (the receipt id) with `store_parameters.user_id` (the user id)",
        )
        .with_reason("UNSUPPORTED_PROOF"));
    };
    let why = "amazon's user id of the purchase, `getUserData().getUserId()`";
    checks::only_store_parameters(&proof.store_parameters, &[USER_ID], why)?;
    let user_id = checks::store_parameter(&proof.store_parameters, USER_ID, &format!("it is {why}"))?;
    Ok((receipt_id, user_id))
}

export_store!(Amazon);

#[cfg(test)]
mod tests;
