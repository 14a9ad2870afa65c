//! The Galaxy Store Developer API: a service account's RS256 JWT buys an
//! access token (cached: Samsung's never expire, but can be revoked, so one
//! fresh token follows a 401), sent with the `service-account-id` header on
//! every call; the purchase acknowledgment API and the item list.

use std::time::Duration;

use iapd_sdk_plugin::path_segment as segment;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::retry::{self, Retry, with_retries};
use iapd_sdk_plugin::sync::TokenCache;
use iapd_sdk_plugin::{Secret, log};
use serde::Deserialize;
use serde_json::Value;

use crate::catalog::ItemPage;

/// The scopes iapd asks for: `publishing` covers IAP items and purchases,
/// `gss` Galaxy Store services.
const SCOPES: [&str; 2] = ["publishing", "gss"];
/// Samsung accepts JWTs that live at most 20 minutes.
const JWT_LIFETIME_SECS: i64 = 1200;
/// How long a cached access token is reused. Samsung's never expire; a day
/// bounds the damage of one revoked without a 401 ever telling.
const ACCESS_TOKEN_REUSE: Duration = Duration::from_secs(24 * 3600);

/// What a purchase update asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Acknowledge,
    Consume,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Acknowledge => "acknowledge",
            Action::Consume => "consume",
        }
    }
}

/// The Developer API client of one service account.
pub(crate) struct DevApi {
    root: String,
    account_id: String,
    key: jsonwebtoken::EncodingKey,
    tokens: TokenCache,
}

impl DevApi {
    /// Errors name the secret, never a value from it.
    pub(crate) fn new(root: &str, account_id: &str, private_key: &Secret) -> Result<DevApi, PluginError> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key.expose()).map_err(|_| {
            PluginError::failed_precondition(
                "secret `private_key` is not an rsa private key in pem (the key the seller portal gave for the service account)",
            )
            .with_reason("INVALID_SERVICE_ACCOUNT_KEY")
        })?;
        Ok(DevApi {
            root: root.trim_end_matches('/').to_owned(),
            account_id: account_id.to_owned(),
            key,
            tokens: TokenCache::new(),
        })
    }

    /// Acknowledges or consumes one purchase; whether it was done already.
    pub(crate) async fn update(
        &self,
        cx: &Ctx,
        retry: &Retry,
        package: &str,
        purchase_id: &str,
        action: Action,
    ) -> Result<bool, PluginError> {
        let url =
            format!("{}/iap/seller/v6/applications/{}/purchases/{}", self.root, segment(package), segment(purchase_id));
        let body = serde_json::json!({ "action": action.name() }).to_string();
        let response =
            self.send(cx, retry, action.name(), || HttpRequest::new("PATCH", url.as_str()).body(body.clone())).await?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct PurchaseUpdate {
            #[serde(default)]
            purchase_item_list: Vec<Item>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Item {
            #[serde(default)]
            purchase_id: String,
            status_code: Value,
            #[serde(default)]
            status_string: String,
        }
        let answer: PurchaseUpdate = response.json()?;
        let item =
            answer.purchase_item_list.into_iter().find(|item| item.purchase_id == purchase_id).ok_or_else(|| {
                PluginError::malformed_response(
                    response.status(),
                    format!("samsung's {} answer has no result for the purchase", action.name()),
                )
            })?;
        let code = match &item.status_code {
            Value::String(code) => code.clone(),
            other => other.to_string(),
        };
        item_result(action, &code, &item.status_string)
    }

    /// One page of the app's items (`page` from 1).
    pub(crate) async fn items(
        &self,
        cx: &Ctx,
        retry: &Retry,
        package: &str,
        page: u32,
        size: u32,
    ) -> Result<ItemPage, PluginError> {
        let url = format!("{}/iap/v6/applications/{}/items?page={page}&size={size}", self.root, segment(package));
        self.send(cx, retry, "item list", || HttpRequest::get(url.as_str())).await?.json()
    }

    /// Sends with the access token and service account headers, refreshing
    /// the token once after a 401 and retrying 429, 5xx and timeouts. A
    /// refusal is an error with Samsung's `code` as the reason.
    async fn send(
        &self,
        cx: &Ctx,
        retry: &Retry,
        what: &str,
        build: impl Fn() -> HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        with_retries(cx, retry, what, || async {
            let mut refreshed = false;
            loop {
                let token = self.tokens.get(cx, || self.fetch_token(cx)).await?;
                let request = build()
                    .bearer(&token.value)
                    .header("service-account-id", &self.account_id)
                    .header("content-type", "application/json");
                let response = exchange(cx, request, what).await?;
                match response.status() {
                    200..=299 => return Ok(response),
                    // Samsung's tokens never expire but can be revoked: one
                    // fresh token, then the refusal stands.
                    401 if !refreshed => {
                        self.tokens.invalidate(&token);
                        refreshed = true;
                    }
                    _ => return Err(refusal(&response, what)),
                }
            }
        })
        .await
    }

    /// A new access token for the service account.
    async fn fetch_token(&self, cx: &Ctx) -> Result<(String, Duration), PluginError> {
        let now = cx.now_unix_millis().div_euclid(1000);
        let claims = serde_json::json!({
            "iss": self.account_id,
            "scopes": SCOPES,
            "iat": now,
            "exp": now + JWT_LIFETIME_SECS,
        });
        let jwt = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &self.key)
            .map_err(|err| PluginError::internal(format!("cannot sign the service account jwt: {err}")))?;
        let request = HttpRequest::post(format!("{}/auth/accessToken", self.root))
            .bearer(&jwt)
            .header("content-type", "application/json");
        let response = exchange(cx, request, "access token request").await?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            #[serde(default)]
            ok: bool,
            created_item: Option<CreatedItem>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct CreatedItem {
            access_token: String,
        }
        let created = if response.status() == 200 { Some(response.json::<Created>()?) } else { None };
        match created {
            Some(Created { ok: true, created_item: Some(item) }) => {
                cx.log(
                    log::Level::Debug,
                    &format!("samsung: new access token for service account {}", self.account_id),
                );
                Ok((item.access_token, ACCESS_TOKEN_REUSE))
            }
            _ => {
                let error = SamsungError::parse(&response);
                let code = if response.status() == 403 { Code::PermissionDenied } else { Code::Unauthenticated };
                Err(PluginError::new(
                    code,
                    format!(
                        "samsung refused an access token for service account `{}` (http {}): {}",
                        self.account_id,
                        response.status(),
                        error.as_ref().map_or("", |error| error.message.as_str())
                    ),
                )
                .with_reason(error.map_or_else(|| "ACCESS_TOKEN_REFUSED".to_owned(), |error| error.code))
                .with_http_status(response.status()))
            }
        }
    }
}

/// One HTTP attempt. No answer in time is retryable (the next attempt may
/// answer within the call's deadline), and so are 429 and 5xx.
pub(crate) async fn exchange(cx: &Ctx, request: HttpRequest, what: &str) -> Result<HttpResponse, PluginError> {
    let response = retry::send(cx, request).await?;
    let status = response.status();
    if status == 429 || status >= 500 {
        let error = SamsungError::parse(&response);
        let message = format!(
            "samsung answered the {what} with http {status}: {}",
            error.as_ref().map_or("", |error| error.message.as_str())
        );
        return Err(retry::transient(&response, message)
            .with_reason(error.map_or_else(|| "UPSTREAM_ERROR".to_owned(), |error| error.code)));
    }
    Ok(response)
}

/// The Developer API's error body: `{"code", "message", "from"}`; `code` is
/// a word (`AUTH_REQUIRE`) or a number (106).
#[derive(Debug)]
struct SamsungError {
    code: String,
    message: String,
}

impl SamsungError {
    fn parse(response: &HttpResponse) -> Option<SamsungError> {
        let body: Value = serde_json::from_slice(response.body()).ok()?;
        let code = match body.get("code")? {
            Value::String(code) if !code.is_empty() => code.clone(),
            Value::Number(code) => code.to_string(),
            _ => return None,
        };
        let message = body.get("message").and_then(Value::as_str).unwrap_or_default().to_owned();
        Some(SamsungError { code, message })
    }
}

/// The caller's error for a Developer API refusal.
fn refusal(response: &HttpResponse, what: &str) -> PluginError {
    let status = response.status();
    let Some(error) = SamsungError::parse(response) else {
        return PluginError::unexpected_response(
            status,
            format!("samsung answered the {what} with http {status} and no error body; is `devapi_root` right?"),
        );
    };
    PluginError::new(
        Code::for_refusal(status),
        format!("samsung answered the {what} with http {status}: {}", error.message),
    )
    .with_reason(error.code)
    .with_http_status(status)
}

/// The outcome of one purchase in an acknowledge or consume answer: whether
/// it was done already (code 4), or the error for codes 1, 2, 3 and 5, with
/// Samsung's `statusString` in the message and its code in the metadata.
pub(crate) fn item_result(action: Action, code: &str, status_string: &str) -> Result<bool, PluginError> {
    let what = action.name();
    let (grpc_code, reason, detail) = match code {
        "0" => return Ok(false),
        "4" => return Ok(true),
        "1" => (Code::NotFound, "ORDER_NOT_FOUND", "no order has this purchase id"),
        "2" => (Code::FailedPrecondition, "ORDER_NOT_SUCCESSFUL", "the order is not a successful one"),
        "3" => (
            Code::FailedPrecondition,
            "WRONG_PRODUCT_TYPE",
            "consume is for consumables, acknowledge for non-consumables and subscriptions",
        ),
        "5" => (Code::PermissionDenied, "NOT_AUTHORIZED", "the order is not one this seller may change"),
        _ => (Code::Internal, "MALFORMED_RESPONSE", "a status code iapd does not know"),
    };
    Err(PluginError::new(
        grpc_code,
        format!("samsung answered {what} with status code {code} ({status_string}): {detail}"),
    )
    .with_reason(reason)
    .with_metadata("status_code", code)
    .with_http_status(200))
}
