//! The Store services: Collections (`publisherQuery` v9, consume v8) and
//! Purchase (recurrences). Every call is a JSON POST with the Entra token as
//! `Authorization: Bearer`; the user's Store ID key travels in the body.

use iapd_sdk_plugin::log;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::retry::{self, Retry, with_retries};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Entra;

/// Pages of one query followed at most; a user owns a product once per
/// source, so more means the store is answering something else.
const MAX_PAGES: usize = 20;
/// What iapd tells the Store services it is, as Microsoft recommends.
const USER_AGENT: &str = concat!("iapd-plugin-microsoft-store/", env!("CARGO_PKG_VERSION"));
/// The default sandbox: retail purchases.
pub(crate) const RETAIL: &str = "RETAIL";

/// Microsoft's error envelope: `{"code", "message", "innererror": {"code", "message"}, …}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServiceError {
    pub(crate) code: String,
    pub(crate) inner_code: String,
    pub(crate) message: String,
    /// `MS-CorrelationId`, for Microsoft's support.
    pub(crate) correlation_id: String,
}

impl ServiceError {
    fn parse(response: &HttpResponse) -> Option<ServiceError> {
        let body: Value = serde_json::from_slice(response.body()).ok()?;
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        let error = ServiceError {
            code: text(&body["code"]),
            inner_code: text(&body["innererror"]["code"]),
            message: match text(&body["innererror"]["message"]) {
                inner if !inner.is_empty() => inner,
                _ => text(&body["message"]),
            },
            correlation_id: response.header("ms-correlationid").unwrap_or_default().to_owned(),
        };
        (!error.code.is_empty() || !error.inner_code.is_empty()).then_some(error)
    }

    /// The most specific code: the inner one (`AuthenticationTokenInvalid`), else the outer (`Unauthorized`).
    pub(crate) fn reason(&self) -> &str {
        if self.inner_code.is_empty() { &self.code } else { &self.inner_code }
    }

    /// An error with `code`, Microsoft's reason and message, and the correlation id.
    pub(crate) fn to_error(&self, code: Code, status: u16, what: &str) -> PluginError {
        let err = PluginError::new(
            code,
            format!("microsoft answered {what} with http {status} {}: {}", self.reason(), self.message),
        )
        .with_reason(self.reason())
        .with_http_status(status);
        if self.correlation_id.is_empty() { err } else { err.with_metadata("ms_correlation_id", &self.correlation_id) }
    }
}

/// A call's outcome once transient failures are retried away.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// 2xx.
    Success(HttpResponse),
    /// 401 for the user's Store ID key (`AuthenticationTokenInvalid` with a
    /// fresh Entra token, or `InconsistentClientId`): the proof is bad.
    KeyRefused(ServiceError),
    /// Another considered refusal, in Microsoft's envelope.
    Refused(u16, ServiceError),
}

/// A Collections item (v9 `PublisherQueryItemContractV9`): the fields the
/// verdict needs; the raw item is kept beside it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CollectionItem {
    #[serde(default)]
    pub(crate) id: String,
    pub(crate) product_id: String,
    #[serde(default)]
    pub(crate) sku_id: String,
    #[serde(default)]
    pub(crate) product_kind: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) acquired_date: Option<String>,
    #[serde(default)]
    pub(crate) start_date: Option<String>,
    #[serde(default)]
    pub(crate) end_date: Option<String>,
    #[serde(default = "one")]
    pub(crate) quantity: i64,
    #[serde(default)]
    pub(crate) transaction_id: String,
    #[serde(default)]
    pub(crate) recurrence_data: Option<String>,
}

fn one() -> i64 {
    1
}

/// A subscription's billing state (Purchase service `recurrences/query`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Recurrence {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) product_id: String,
    #[serde(default)]
    pub(crate) sku_id: String,
    pub(crate) recurrence_state: String,
    #[serde(default)]
    pub(crate) expiration_time: Option<String>,
    #[serde(default)]
    pub(crate) expiration_time_with_grace: Option<String>,
}

/// An item with its raw JSON.
#[derive(Debug, Clone)]
pub(crate) struct Found<T> {
    pub(crate) item: T,
    pub(crate) raw: Value,
}

/// The result of a lookup with a Store ID key.
#[derive(Debug, Clone)]
pub(crate) enum Lookup<T> {
    Items(Vec<Found<T>>),
    KeyRefused(ServiceError),
}

/// A consume's answer (v8).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Consumed {
    pub(crate) new_quantity: i64,
    #[serde(default)]
    pub(crate) order_transactions: Vec<Value>,
}

/// The Store services of one store.
pub(crate) struct Api {
    pub(crate) entra: Entra,
    pub(crate) collections_root: String,
    pub(crate) purchase_root: String,
    pub(crate) sandbox: String,
    pub(crate) retry: Retry,
}

impl Api {
    /// The user's items of `product` (and `sku`), every page: v9 `publisherQuery`.
    pub(crate) async fn query(
        &self,
        cx: &Ctx,
        key: &str,
        product: &str,
        sku: Option<&str>,
    ) -> Result<Lookup<CollectionItem>, PluginError> {
        let mut product_sku = json!({ "productId": product });
        if let Some(sku) = sku {
            product_sku["skuId"] = json!(sku);
        }
        let mut body = json!({
            "beneficiaries": [beneficiary(key)],
            "productSkuIds": [product_sku],
            "maxPageSize": 100,
        });
        self.with_sandbox(&mut body);
        let url = format!("{}/v9.0/collections/publisherQuery", self.collections_root);
        self.pages(cx, "the collections query", &url, body).await
    }

    /// The user's subscriptions, every page: `recurrences/query` with the purchase key.
    pub(crate) async fn recurrences(&self, cx: &Ctx, purchase_key: &str) -> Result<Lookup<Recurrence>, PluginError> {
        let mut body = json!({ "b2bKey": purchase_key });
        self.with_sandbox(&mut body);
        let url = format!("{}/v8.0/b2b/recurrences/query", self.purchase_root);
        self.pages(cx, "the recurrences query", &url, body).await
    }

    /// Reports `quantity` of `product` fulfilled (v8 consume): the same
    /// body, `trackingId` included, on every attempt, so a retry after an
    /// unknown outcome is not a second consume.
    pub(crate) async fn consume(
        &self,
        cx: &Ctx,
        key: &str,
        product: &str,
        tracking_id: &str,
        remove_quantity: Option<i64>,
    ) -> Result<Reply, PluginError> {
        let mut body = json!({
            "beneficiary": beneficiary(key),
            "productId": product,
            "trackingId": tracking_id,
            "includeOrderIds": true,
        });
        if let Some(quantity) = remove_quantity {
            body["removeQuantity"] = json!(quantity);
        }
        self.with_sandbox(&mut body);
        let url = format!("{}/v8.0/collections/consume", self.collections_root);
        self.post(cx, "consume", &url, &body).await
    }

    fn with_sandbox(&self, body: &mut Value) {
        // Retail is the default; a development sandbox is named.
        if self.sandbox != RETAIL {
            body["sbx"] = json!(self.sandbox);
        }
    }

    /// Every page of a query, resending the same body with each
    /// `continuationToken`, as Microsoft asks.
    async fn pages<T: serde::de::DeserializeOwned>(
        &self,
        cx: &Ctx,
        what: &str,
        url: &str,
        mut body: Value,
    ) -> Result<Lookup<T>, PluginError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            #[serde(default)]
            items: Vec<Value>,
            #[serde(default)]
            continuation_token: Option<String>,
        }
        let mut found = Vec::new();
        for _ in 0..MAX_PAGES {
            let response = match self.post(cx, what, url, &body).await? {
                Reply::Success(response) => response,
                Reply::KeyRefused(error) => return Ok(Lookup::KeyRefused(error)),
                Reply::Refused(status, error) => {
                    return Err(error.to_error(Code::for_refusal(status), status, what));
                }
            };
            let page: Page = response.json()?;
            for raw in page.items {
                let item = serde_json::from_value(raw.clone()).map_err(|err| {
                    PluginError::malformed_response(
                        response.status(),
                        format!("microsoft answered {what} with an item iapd cannot read: {err}"),
                    )
                })?;
                found.push(Found { item, raw });
            }
            match page.continuation_token.filter(|token| !token.is_empty()) {
                Some(token) => body["continuationToken"] = json!(token),
                None => return Ok(Lookup::Items(found)),
            }
        }
        Err(PluginError::malformed_response(200, format!("microsoft answered {what} with more than {MAX_PAGES} pages")))
    }

    /// One call with the Entra token: a fresh token and one more try after a
    /// 401 that refuses it, retries of 429, 5xx and timeouts.
    async fn post(&self, cx: &Ctx, what: &str, url: &str, body: &Value) -> Result<Reply, PluginError> {
        with_retries(cx, &self.retry, what, || async {
            let mut refreshed = false;
            loop {
                let token = self.entra.token(cx, &self.retry).await?;
                let request = HttpRequest::post(url).bearer(&token.value).header("user-agent", USER_AGENT).json(body)?;
                let response = retry::http(cx, request).await?;
                let status = response.status();
                if (200..300).contains(&status) {
                    return Ok(Reply::Success(response));
                }
                let error = ServiceError::parse(&response);
                if let Some(error) = &error {
                    cx.log(
                        log::Level::Debug,
                        &format!(
                            "microsoft answered {what} with http {status} {} (ms-correlationid {})",
                            error.reason(),
                            error.correlation_id
                        ),
                    );
                }
                match (status, error) {
                    (401, Some(error)) => match error.reason() {
                        "PartnerAadTicketRequired" | "AuthenticationTokenInvalid" if !refreshed => {
                            self.entra.invalidate(&token);
                            refreshed = true;
                        }
                        "AuthenticationTokenInvalid" | "InconsistentClientId" => return Ok(Reply::KeyRefused(error)),
                        _ => return Err(error.to_error(Code::Unauthenticated, status, what)),
                    },
                    (429 | 500..=599, error) => {
                        let error = error.unwrap_or_default();
                        let reason = if error.reason().is_empty() { "UPSTREAM_ERROR" } else { error.reason() };
                        return Err(retry::transient(
                            &response,
                            format!("microsoft answered {what} with http {status} {reason}: {}", error.message),
                        )
                        .with_reason(reason));
                    }
                    (_, Some(error)) => return Ok(Reply::Refused(status, error)),
                    (_, None) => {
                        return Err(PluginError::unexpected_response(
                            status,
                            format!(
                                "microsoft answered {what} with http {status} and no error body; are `collections_root` and `purchase_root` right?"
                            ),
                        ));
                    }
                }
            }
        })
        .await
    }
}

/// The user, identified by their Store ID key.
fn beneficiary(key: &str) -> Value {
    json!({ "identityType": "b2b", "identityValue": key, "localTicketReference": "iapd" })
}
