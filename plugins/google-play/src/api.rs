//! Talking to the Android Publisher API: auth on every request, one token
//! refresh after a 401 that refuses the token, retries with backoff for what
//! Google says to retry (409 `concurrentUpdate`, 429, 5xx), and Google's
//! error envelope.

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::retry::{self, Retry, with_retries};
use serde::Deserialize;

use crate::auth::TokenSource;

/// The error for an answer worth retrying: 409, 429 or 5xx.
pub(crate) fn transient_error(response: &HttpResponse, what: &str) -> PluginError {
    let google = GoogleError::parse(response);
    let status = response.status();
    let fallback_reason = match status {
        409 => "concurrentUpdate",
        429 => "rateLimitExceeded",
        _ => "backendError",
    };
    let reason = google.as_ref().map_or(fallback_reason, |google| google.reason.as_str());
    let message = google.as_ref().map_or("", |google| google.message.as_str());
    retry::transient(response, format!("google play answered {what} with http {status}: {message}")).with_reason(reason)
}

/// Google's error envelope: `{"error":{"code","message","errors":[{"reason"}],"status"}}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GoogleError {
    pub(crate) status: u16,
    pub(crate) reason: String,
    pub(crate) message: String,
}

impl GoogleError {
    /// The envelope in `response`, or `None` if the body is not one (an HTML
    /// page from a wrong `api_root`, say).
    pub(crate) fn parse(response: &HttpResponse) -> Option<GoogleError> {
        #[derive(Deserialize)]
        struct Envelope {
            error: Body,
        }
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            message: String,
            #[serde(default)]
            errors: Vec<Item>,
            #[serde(default)]
            status: String,
        }
        #[derive(Deserialize)]
        struct Item {
            #[serde(default)]
            reason: String,
        }
        let envelope: Envelope = serde_json::from_slice(response.body()).ok()?;
        let reason = envelope
            .error
            .errors
            .into_iter()
            .map(|item| item.reason)
            .find(|reason| !reason.is_empty())
            .unwrap_or(envelope.error.status);
        Some(GoogleError { status: response.status(), reason, message: envelope.error.message })
    }

    /// The error for the caller, for a refusal that is not a verdict.
    pub(crate) fn to_plugin_error(&self, what: &str) -> PluginError {
        let code = match (self.status, self.reason.as_str()) {
            // Google answers some of these with 401 (`permissionDenied` when
            // the service account is not linked to the app): the reason says
            // what is wrong, not the status.
            (_, "permissionDenied" | "userInsufficientPermission" | "insufficientPermissions" | "forbidden") => {
                Code::PermissionDenied
            }
            (400, "invalidPurchaseState" | "productNotOwnedByUser" | "unsupportedIabType") => Code::FailedPrecondition,
            (400, _) => Code::InvalidArgument,
            (401, _) => Code::Unauthenticated,
            (403, _) => Code::PermissionDenied,
            (404 | 410, _) => Code::NotFound,
            (409, _) => Code::Aborted,
            (429, _) => Code::ResourceExhausted,
            (500..=599, _) => Code::Unavailable,
            _ => Code::Unknown,
        };
        PluginError::new(code, format!("google play answered {what} with http {}: {}", self.status, self.message))
            .with_reason(self.reason.clone())
            .with_http_status(self.status)
    }
}

/// Whether a 401 says Google refused the access token, so that a fresh one
/// may pass: reason `authError`, an envelope with no reason but status
/// UNAUTHENTICATED, or `WWW-Authenticate: Bearer … error="invalid_token"`.
/// A 401 with another reason (`permissionDenied`) is about the account's
/// grants, which no new token changes.
fn token_refused(response: &HttpResponse) -> bool {
    let invalid_token = response.header("www-authenticate").is_some_and(|value| value.contains("invalid_token"));
    match GoogleError::parse(response) {
        Some(google) => match google.reason.as_str() {
            "authError" | "UNAUTHENTICATED" => true,
            "" => invalid_token,
            _ => false,
        },
        None => invalid_token,
    }
}

/// An API answer: a success, or Google's considered refusal (4xx other than
/// 409, 429 and a 401 refusing the token), which the caller maps (a 404 can
/// be a verdict).
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Success(HttpResponse),
    Refused(GoogleError),
}

/// The API client for one configured store.
pub(crate) struct Client {
    pub(crate) api_root: String,
    pub(crate) tokens: TokenSource,
    pub(crate) retry: Retry,
}

impl Client {
    /// The URL of `path` (already encoded) under the API root.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/androidpublisher/v3/{path}", self.api_root.trim_end_matches('/'))
    }

    /// Sends the request `build` makes, with a bearer token, retried as the
    /// module says.
    pub(crate) async fn send(
        &self,
        cx: &Ctx,
        what: &str,
        build: impl Fn() -> HttpRequest,
    ) -> Result<Answer, PluginError> {
        with_retries(cx, &self.retry, what, || async {
            let mut refreshed = false;
            loop {
                let token = self.tokens.token(cx, &self.retry).await?;
                let response = cx.http(build().bearer(&token.value)).await?;
                match response.status() {
                    200..=299 => return Ok(Answer::Success(response)),
                    // An access token can be revoked or expire early: one
                    // fresh token, then the refusal stands.
                    401 if !refreshed && token_refused(&response) => {
                        self.tokens.invalidate(&token);
                        refreshed = true;
                    }
                    409 | 429 | 500..=599 => return Err(transient_error(&response, what)),
                    status => {
                        return match GoogleError::parse(&response) {
                            Some(google) => Ok(Answer::Refused(google)),
                            None => Err(PluginError::unexpected_response(
                                status,
                                format!(
                                    "google play answered {what} with http {status} and no google error envelope; is `api_root` right?"
                                ),
                            )),
                        };
                    }
                }
            }
        })
        .await
    }
}
