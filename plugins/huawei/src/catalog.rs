//! The catalog: AppGallery Connect's Product Management API, with an API
//! client of its own (client id and key, a Bearer token of 48 hours),
//! `client_id` and `appId` headers, and the envelope
//! `{"error":{"errorCode":0,"errorMsg":"success"}}`.

use std::time::Duration;

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, ProductKind};
use iapd_sdk_plugin::retry::{self, Retry, with_retries};
use iapd_sdk_plugin::sync::TokenCache;
use iapd_sdk_plugin::{Secret, log};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::token_refusal;
use crate::lenient;

/// Items per page when the caller asks for none.
const DEFAULT_PAGE_SIZE: i64 = 50;
/// The largest PMS page iapd asks for; Huawei documents no maximum.
const MAX_PAGE_SIZE: i64 = 100;
/// The Connect API token's lifetime when the answer omits it.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(172_800);

/// The Connect API client of one app.
pub(crate) struct ConnectApi {
    root: String,
    client_id: String,
    app_id: String,
    key: Secret,
    tokens: TokenCache,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProductPage {
    error: PmsStatus,
    #[serde(default)]
    products: Vec<Product>,
    #[serde(default, deserialize_with = "lenient::int")]
    total_number: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PmsStatus {
    #[serde(default, deserialize_with = "lenient::int")]
    error_code: Option<i64>,
    #[serde(default)]
    error_msg: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Product {
    #[serde(deserialize_with = "lenient::text")]
    product_no: String,
    #[serde(default)]
    product_name: String,
    #[serde(default)]
    product_desc: String,
    #[serde(default)]
    purchase_type: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    currency: String,
    /// A decimal string in currency units (`"4.99"`); a number is read too.
    #[serde(default)]
    price: Value,
}

impl ConnectApi {
    pub(crate) fn new(root: &str, client_id: &str, app_id: &str, key: Secret) -> ConnectApi {
        ConnectApi {
            root: root.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            app_id: app_id.to_owned(),
            key,
            tokens: TokenCache::new(),
        }
    }

    /// One page of the app's products, of the request's kind. The page token
    /// carries Huawei's page number and size, so pages stay aligned.
    pub(crate) async fn list(
        &self,
        cx: &Ctx,
        retry: &Retry,
        request: &proto::ListItemsRequest,
    ) -> Result<proto::ListItemsResponse, PluginError> {
        let (page_num, page_size) = match request.page_token.as_str() {
            "" => (1, i64::from(request.page_size).clamp(0, MAX_PAGE_SIZE)),
            token => parse_page_token(token).ok_or_else(|| {
                PluginError::invalid_argument("page_token: not a token this store issued")
                    .with_reason("INVALID_PAGE_TOKEN")
            })?,
        };
        let page_size = if page_size == 0 { DEFAULT_PAGE_SIZE } else { page_size };
        let mut body = json!({
            "requestId": format!("iapd-{}-{}", cx.call_id(), cx.now_unix_millis()),
            "pageNum": page_num,
            "pageSize": page_size,
        });
        if let Some(kind) = purchase_type(request.kind()) {
            body["purchaseType"] = json!(kind);
        }
        let page: ProductPage = self.send(cx, retry, &body.to_string()).await?.json()?;
        let code = page.error.error_code.unwrap_or_default();
        if code != 0 {
            return Err(PluginError::new(
                Code::Unknown,
                format!("appgallery connect answered the product list with error {code}: {}", page.error.error_msg),
            )
            .with_reason(code.to_string())
            .with_http_status(200));
        }
        let items = page.products.into_iter().map(item).collect::<Result<Vec<_>, _>>()?;
        let read = page_num.saturating_mul(page_size);
        let next_page_token = if page.total_number.is_some_and(|total| read < total) {
            format!("p{}.{page_size}", page_num + 1)
        } else {
            String::new()
        };
        Ok(proto::ListItemsResponse { items, next_page_token })
    }

    /// POSTs a product list request with the token and the client's headers,
    /// refreshing the token once after a 401, retrying 429, 5xx and timeouts.
    async fn send(&self, cx: &Ctx, retry: &Retry, body: &str) -> Result<HttpResponse, PluginError> {
        let url = format!("{}/api/pms/product-price-service/v1/manage/product/list", self.root);
        with_retries(cx, retry, "product list", || async {
            let mut refreshed = false;
            loop {
                let token = self.tokens.get(cx, || self.fetch_token(cx)).await?;
                let request = HttpRequest::post(url.as_str())
                    .bearer(&token.value)
                    .header("client_id", &self.client_id)
                    .header("appId", &self.app_id)
                    .header("content-type", "application/json")
                    .body(body.to_owned());
                let response = retry::http(cx, request).await?;
                let status = response.status();
                match status {
                    200 => return Ok(response),
                    401 if !refreshed => {
                        self.tokens.invalidate(&token);
                        refreshed = true;
                    }
                    429 | 500..=599 => {
                        return Err(retry::transient(&response, format!("appgallery connect answered http {status}"))
                            .with_reason("UPSTREAM_ERROR"));
                    }
                    _ => return Err(refusal(&response)),
                }
            }
        })
        .await
    }

    async fn fetch_token(&self, cx: &Ctx) -> Result<(String, Duration), PluginError> {
        let body = json!({
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.key.expose_str()?,
        });
        let request = HttpRequest::post(format!("{}/api/oauth2/v1/token", self.root))
            .header("content-type", "application/json")
            .body(body.to_string());
        let response = retry::http(cx, request).await?;
        let status = response.status();
        if status == 429 || status >= 500 {
            return Err(retry::transient(
                &response,
                format!("appgallery connect's token endpoint answered http {status}"),
            )
            .with_reason("UPSTREAM_ERROR"));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default, deserialize_with = "lenient::int")]
            expires_in: Option<i64>,
        }
        let token = if status == 200 { Some(response.json::<TokenResponse>()?) } else { None };
        let Some((access_token, expires_in)) = token.and_then(|token| {
            let expires_in = token.expires_in;
            token.access_token.filter(|value| !value.is_empty()).map(|value| (value, expires_in))
        }) else {
            return Err(token_refusal(
                &response,
                &format!("appgallery connect refused api client `{}`", self.client_id),
                "CONNECT_TOKEN_REFUSED",
            ));
        };
        let lifetime = expires_in
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        cx.log(log::Level::Debug, &format!("huawei: new appgallery connect token for api client {}", self.client_id));
        Ok((access_token, lifetime))
    }
}

/// The caller's error for a Connect API refusal, with its `errorCode` as the reason.
fn refusal(response: &HttpResponse) -> PluginError {
    #[derive(Deserialize)]
    struct Envelope {
        error: PmsStatus,
    }
    let status = response.status();
    let Ok(Envelope { error }) = serde_json::from_slice::<Envelope>(response.body()) else {
        return PluginError::unexpected_response(
            status,
            format!(
                "appgallery connect answered the product list with http {status} and no error body; is `endpoints.connect_api` right?"
            ),
        );
    };
    let code = error.error_code.unwrap_or_default();
    PluginError::new(
        Code::for_refusal(status),
        format!("appgallery connect answered the product list with http {status}, error {code}: {}", error.error_msg),
    )
    .with_reason(code.to_string())
    .with_http_status(status)
}

fn item(product: Product) -> Result<proto::CatalogItem, PluginError> {
    let kind = match product.purchase_type.as_str() {
        "consumable" => ProductKind::Consumable,
        "non_consumable" => ProductKind::NonConsumable,
        "auto_subscription" => ProductKind::Subscription,
        _ => ProductKind::Unspecified,
    };
    let price_amount_micros = micros(&product.price).ok_or_else(|| {
        PluginError::malformed_response(
            200,
            format!("appgallery connect listed product {} with a price that is not a decimal", product.product_no),
        )
    })?;
    Ok(proto::CatalogItem {
        product_id: product.product_no,
        kind: kind.into(),
        title: product.product_name,
        description: product.product_desc,
        price_currency_code: product.currency,
        price_amount_micros,
        active: product.status == "active",
    })
}

/// PMS's `purchaseType` filter for a kind; none for UNSPECIFIED.
fn purchase_type(kind: ProductKind) -> Option<&'static str> {
    match kind {
        ProductKind::Consumable => Some("consumable"),
        ProductKind::NonConsumable => Some("non_consumable"),
        ProductKind::Subscription => Some("auto_subscription"),
        ProductKind::Unspecified => None,
    }
}

fn parse_page_token(token: &str) -> Option<(i64, i64)> {
    let (page, size) = token.strip_prefix('p')?.split_once('.')?;
    let (page, size) = (page.parse().ok()?, size.parse().ok()?);
    (page >= 1 && (1..=MAX_PAGE_SIZE).contains(&size)).then_some((page, size))
}

/// A price in millionths: from a decimal string in currency units (`"4.99"`),
/// or a number; absent is 0.
fn micros(price: &Value) -> Option<i64> {
    let text = match price {
        Value::Null => return Some(0),
        Value::String(text) => text.trim().to_owned(),
        Value::Number(number) => number.to_string(),
        _ => return None,
    };
    let (units, fraction) = text.split_once('.').unwrap_or((&text, ""));
    if units.is_empty() || !units.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 6 {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
    units.parse::<i64>().ok()?.checked_mul(1_000_000)?.checked_add(fraction)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn decimal_prices_become_micros_and_others_are_refused() {
        for (price, expected) in [
            (json!("4.99"), Some(4_990_000)),
            (json!("0.5"), Some(500_000)),
            (json!("1300"), Some(1_300_000_000)),
            (json!(2.99), Some(2_990_000)),
            (json!(null), Some(0)),
            (json!("1.2345678"), None),
            (json!("-1.00"), None),
            (json!("4,99"), None),
            (json!(""), None),
            (json!([1]), None),
        ] {
            assert_eq!(super::micros(&price), expected, "{price}");
        }
    }

    #[test]
    fn page_tokens_are_only_those_issued() {
        assert_eq!(super::parse_page_token("p2.50"), Some((2, 50)));
        for token in ["2.50", "p0.50", "p2.0", "p2.101", "p2", "px.50"] {
            assert_eq!(super::parse_page_token(token), None, "{token}");
        }
    }
}
