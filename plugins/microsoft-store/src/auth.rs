//! Entra ID (Azure AD) client-credentials tokens for the Store services'
//! audience, `https://onestore.microsoft.com`: the v1 endpoint Microsoft's
//! Store documentation gives, `POST {login_root}/{tenant_id}/oauth2/token`
//! with `resource`. Tokens live an hour; the SDK's `TokenCache` reuses one
//! until shortly before that, with one refresh in flight.

use std::time::Duration;

use iapd_sdk_plugin::Secret;
use iapd_sdk_plugin::path_segment as segment;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::retry::{self, Retry, with_retries};
use iapd_sdk_plugin::sync::{AccessToken, TokenCache};
use serde::Deserialize;

/// The audience of the token every Collections and Purchase call carries.
pub(crate) const SERVICE_AUDIENCE: &str = "https://onestore.microsoft.com";
/// The lifetime Microsoft documents, when an answer gives none.
const DEFAULT_LIFETIME_SECS: u64 = 3600;

/// The Entra client of one store.
pub(crate) struct Entra {
    token_url: String,
    client_id: String,
    client_secret: Secret,
    tokens: TokenCache,
}

/// Entra's token answer. v1 sends `expires_in` as a string ("3599"), v2 as
/// a number; both are read.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// Entra's error body: `{"error", "error_description", "error_codes", …}`.
#[derive(Deserialize, Default)]
struct EntraError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl Entra {
    pub(crate) fn new(login_root: &str, tenant_id: &str, client_id: &str, client_secret: Secret) -> Entra {
        Entra {
            token_url: format!("{}/{}/oauth2/token", login_root.trim_end_matches('/'), segment(tenant_id)),
            client_id: client_id.to_owned(),
            client_secret,
            tokens: TokenCache::new(),
        }
    }

    /// A token for the Store services, cached.
    pub(crate) async fn token(&self, cx: &Ctx, retry: &Retry) -> Result<AccessToken, PluginError> {
        self.tokens.get(cx, || self.fetch(cx, retry)).await
    }

    /// Forgets `token` after Microsoft refused it.
    pub(crate) fn invalidate(&self, token: &AccessToken) {
        self.tokens.invalidate(token);
    }

    async fn fetch(&self, cx: &Ctx, retry: &Retry) -> Result<(String, Duration), PluginError> {
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&resource={}",
            segment(&self.client_id),
            segment(self.client_secret.expose_str()?),
            segment(SERVICE_AUDIENCE)
        );
        let response = with_retries(cx, retry, "entra token request", || async {
            let request = HttpRequest::post(self.token_url.as_str())
                .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
                .body(form.clone());
            let response = retry::http(cx, request).await?;
            let status = response.status();
            if status == 429 || status >= 500 {
                let error = parse_error(&response);
                return Err(retry::transient(
                    &response,
                    format!("entra's token endpoint answered http {status}: {}", first_line(&error.error_description)),
                )
                .with_reason(if error.error.is_empty() {
                    "UPSTREAM_ERROR".to_owned()
                } else {
                    error.error
                }));
            }
            Ok(response)
        })
        .await?;
        let status = response.status();
        if status != 200 {
            let error = parse_error(&response);
            let code = if status == 403 { Code::PermissionDenied } else { Code::Unauthenticated };
            return Err(PluginError::new(
                code,
                format!(
                    "entra refused a token for client `{}` (http {status}): {}",
                    self.client_id,
                    first_line(&error.error_description)
                ),
            )
            .with_reason(if error.error.is_empty() { "TOKEN_REFUSED".to_owned() } else { error.error })
            .with_http_status(status));
        }
        let answer: TokenAnswer = response.json()?;
        let lifetime = match &answer.expires_in {
            None => DEFAULT_LIFETIME_SECS,
            Some(serde_json::Value::Number(secs)) => secs.as_u64().unwrap_or(DEFAULT_LIFETIME_SECS),
            Some(serde_json::Value::String(secs)) => secs.trim().parse().map_err(|_| {
                PluginError::malformed_response(status, "entra answered an expires_in that is not a number of seconds")
            })?,
            Some(_) => {
                return Err(PluginError::malformed_response(
                    status,
                    "entra answered an expires_in that is not a number of seconds",
                ));
            }
        };
        Ok((answer.access_token, Duration::from_secs(lifetime)))
    }
}

fn parse_error(response: &HttpResponse) -> EntraError {
    serde_json::from_slice(response.body()).unwrap_or_default()
}

/// Entra's descriptions run on with trace and correlation ids; the first
/// line (`AADSTS7000215: Invalid client secret provided. …`) says it.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
