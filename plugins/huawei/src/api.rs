//! The IAP server APIs: the app-level access token (OAuth 2.0 client
//! credentials), the `Authorization: Basic base64("APPAT:" + token)` header
//! on every call, and the envelope every answer shares: HTTP 200 with a
//! string `responseCode`, "0" for success.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use iapd_sdk_plugin::path_segment as form_value;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::retry::{self, Retry, with_retries};
use iapd_sdk_plugin::sync::TokenCache;
use iapd_sdk_plugin::{Secret, log};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::lenient;

/// Huawei's lifetime of an app-level access token, when the answer omits it.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// One IAP answer: HTTP 200 and the envelope.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// `responseCode`: "0" success, otherwise a result code.
    pub(crate) code: String,
    /// `responseMessage`.
    pub(crate) message: String,
    /// The other fields (`purchaseTokenData`, `dataSignature`, …).
    pub(crate) fields: Map<String, Value>,
    /// The body as Huawei sent it.
    pub(crate) raw: String,
}

impl Answer {
    /// A string field, empty when absent.
    pub(crate) fn text(&self, name: &str) -> &str {
        self.fields.get(name).and_then(Value::as_str).unwrap_or_default()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(deserialize_with = "lenient::text")]
    response_code: String,
    #[serde(default, deserialize_with = "lenient::text")]
    response_message: String,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

/// The IAP client of one app.
pub(crate) struct Iap {
    client_id: String,
    client_secret: Secret,
    token_url: String,
    tokens: TokenCache,
}

impl Iap {
    pub(crate) fn new(client_id: &str, client_secret: Secret, oauth_root: &str) -> Iap {
        Iap {
            client_id: client_id.to_owned(),
            client_secret,
            token_url: format!("{}/oauth2/v3/token", oauth_root.trim_end_matches('/')),
            tokens: TokenCache::new(),
        }
    }

    /// POSTs `body` to `url` with the app's access token, refreshing it once
    /// after a 401 or 403, and retrying 429, 5xx, timeouts and result code
    /// "6" (Huawei's transient "critical error", unless it says the token is
    /// of the other service). Any other result code is the caller's to read.
    pub(crate) async fn call(
        &self,
        cx: &Ctx,
        retry: &Retry,
        what: &str,
        url: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Answer, PluginError> {
        let body = body.to_string();
        with_retries(cx, retry, what, || async {
            let mut refreshed = false;
            loop {
                let token = self.tokens.get(cx, || self.fetch_token(cx)).await?;
                let credentials = BASE64.encode(format!("APPAT:{}", token.value));
                let mut request = HttpRequest::post(url)
                    .header("authorization", format!("Basic {credentials}"))
                    .header("content-type", "application/json; charset=UTF-8")
                    .body(body.clone());
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let response = retry::http(cx, request).await?;
                let status = response.status();
                match status {
                    200 => return read_answer(&response, what),
                    // Huawei does not document its refusal of a token: a 401
                    // or 403 gets one fresh token, then stands.
                    401 | 403 if !refreshed => {
                        self.tokens.invalidate(&token);
                        refreshed = true;
                    }
                    401 | 403 => {
                        let message = response.json::<Envelope>().map(|e| e.response_message).unwrap_or_default();
                        return Err(PluginError::unauthenticated(format!(
                            "huawei refused the app's access token for the {what}, a fresh one too (http {status}): {message}"
                        ))
                        .with_reason("ACCESS_TOKEN_REFUSED")
                        .with_http_status(status));
                    }
                    429 | 500..=599 => {
                        return Err(retry::transient(&response, format!("huawei answered the {what} with http {status}"))
                            .with_reason("UPSTREAM_ERROR"));
                    }
                    _ => {
                        return Err(PluginError::unexpected_response(
                            status,
                            format!("huawei answered the {what} with http {status}; is the store's endpoint right?"),
                        ));
                    }
                }
            }
        })
        .await
    }

    /// A new app-level access token: `grant_type=client_credentials` with the
    /// app ID and app secret.
    async fn fetch_token(&self, cx: &Ctx) -> Result<(String, Duration), PluginError> {
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            form_value(&self.client_id),
            form_value(self.client_secret.expose_str()?)
        );
        let request = HttpRequest::post(self.token_url.as_str())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        let response = retry::http(cx, request).await?;
        let status = response.status();
        if status == 429 || status >= 500 {
            // 503 is also the token endpoint's flow control (1000 tokens per 5 minutes).
            return Err(retry::transient(&response, format!("huawei's token endpoint answered http {status}"))
                .with_reason("UPSTREAM_ERROR"));
        }
        if status != 200 {
            return Err(token_refusal(&response, "huawei refused the app's client credentials", "TOKEN_REFUSED"));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default, deserialize_with = "lenient::int")]
            expires_in: Option<i64>,
        }
        let token: TokenResponse = response.json()?;
        let lifetime = token
            .expires_in
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        cx.log(log::Level::Debug, &format!("huawei: new app-level access token for app {}", self.client_id));
        Ok((token.access_token, lifetime))
    }
}

/// The envelope of an HTTP 200 answer; a result code "6" is retryable unless
/// it is `rights invalid` (a token of the other service).
fn read_answer(response: &HttpResponse, what: &str) -> Result<Answer, PluginError> {
    let envelope: Envelope = response.json()?;
    let answer = Answer {
        code: envelope.response_code,
        message: envelope.response_message,
        fields: envelope.fields,
        raw: String::from_utf8_lossy(response.body()).into_owned(),
    };
    if answer.code == "6" && !rights_invalid(&answer) {
        return Err(PluginError::unavailable(format!(
            "huawei answered the {what} with result code 6 (critical error): {}",
            answer.message
        ))
        .with_reason("IAP_RESPONSE_RESULT_ERROR")
        .with_metadata("response_code", "6")
        .with_http_status(200));
    }
    Ok(answer)
}

/// Result code "6" with `rights invalid`: a subscription token sent to the
/// order service, or the other way round.
pub(crate) fn rights_invalid(answer: &Answer) -> bool {
    answer.code == "6" && answer.message.to_ascii_lowercase().contains("rights invalid")
}

/// UNAUTHENTICATED for an OAuth token endpoint's refusal, with Huawei's
/// numeric `error` and `sub_error` in the metadata.
pub(crate) fn token_refusal(response: &HttpResponse, what: &str, reason: &str) -> PluginError {
    #[derive(Default, Deserialize)]
    struct OAuthError {
        #[serde(default, deserialize_with = "lenient::text")]
        error: String,
        #[serde(default, deserialize_with = "lenient::text")]
        sub_error: String,
        #[serde(default)]
        error_description: String,
    }
    let status = response.status();
    let error: OAuthError = serde_json::from_slice(response.body()).unwrap_or_default();
    let codes = match (error.error.as_str(), error.sub_error.as_str()) {
        ("", _) => String::new(),
        (code, "") => format!(", error {code}"),
        (code, sub) => format!(", error {code} sub_error {sub}"),
    };
    let mut err = PluginError::unauthenticated(format!("{what} (http {status}{codes}): {}", error.error_description))
        .with_reason(reason)
        .with_http_status(status);
    if !error.error.is_empty() {
        err = err.with_metadata("error", error.error);
    }
    if !error.sub_error.is_empty() {
        err = err.with_metadata("sub_error", error.sub_error);
    }
    err
}
