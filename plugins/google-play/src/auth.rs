//! OAuth 2.0 for server-to-server apps: a service-account key signs an RS256
//! JWT assertion, which the key's own `token_uri` exchanges for an access
//! token. The token is cached until shortly before it expires, and only one
//! refresh is ever in flight.

use std::time::Duration;

use iapd_sdk_plugin::log;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::retry::{Retry, with_retries};
use iapd_sdk_plugin::sync::{AccessToken, TokenCache};
use serde_json::Value;

use crate::api;

/// The scope of the Android Publisher API.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/androidpublisher";
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Google accepts assertions that live at most an hour.
const ASSERTION_LIFETIME_SECS: i64 = 3600;

/// The parts of a service-account JSON key iapd uses.
pub(crate) struct ServiceAccount {
    pub(crate) client_email: String,
    pub(crate) token_uri: String,
    key_id: Option<String>,
    key: jsonwebtoken::EncodingKey,
}

impl ServiceAccount {
    /// Parses a key. Errors name the secret and the field, never a value
    /// from the key.
    pub(crate) fn parse(secret_name: &str, json: &[u8]) -> Result<ServiceAccount, PluginError> {
        let invalid = |detail: String| {
            PluginError::failed_precondition(format!(
                "secret `{secret_name}` is not a service-account json key: {detail}"
            ))
            .with_reason("INVALID_SERVICE_ACCOUNT_KEY")
        };
        let key: Value = serde_json::from_slice(json)
            .map_err(|err| invalid(format!("malformed json at line {} column {}", err.line(), err.column())))?;
        let field = |name: &str| key.get(name).and_then(Value::as_str).filter(|value| !value.is_empty());
        if field("type") != Some("service_account") {
            return Err(invalid("`type` is not \"service_account\"".to_owned()));
        }
        let client_email = field("client_email").ok_or_else(|| invalid("no `client_email`".to_owned()))?;
        let private_key = field("private_key").ok_or_else(|| invalid("no `private_key`".to_owned()))?;
        let key_pem = jsonwebtoken::EncodingKey::from_rsa_pem(private_key.as_bytes())
            .map_err(|_| invalid("`private_key` is not an RSA private key in PEM".to_owned()))?;
        Ok(ServiceAccount {
            client_email: client_email.to_owned(),
            token_uri: field("token_uri").unwrap_or(GOOGLE_TOKEN_URL).to_owned(),
            key_id: field("private_key_id").map(str::to_owned),
            key: key_pem,
        })
    }

    fn assertion(&self, now_secs: i64) -> Result<String, PluginError> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid.clone_from(&self.key_id);
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now_secs,
            "exp": now_secs + ASSERTION_LIFETIME_SECS,
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|err| PluginError::internal(format!("cannot sign the oauth assertion: {err}")))
    }
}

/// Access tokens for one service account.
pub(crate) struct TokenSource {
    account: ServiceAccount,
    cache: TokenCache,
}

impl TokenSource {
    pub(crate) fn new(account: ServiceAccount) -> TokenSource {
        TokenSource { account, cache: TokenCache::new() }
    }

    /// A token valid for a while yet: the cached one or a fresh one.
    pub(crate) async fn token(&self, cx: &Ctx, retry: &Retry) -> Result<AccessToken, PluginError> {
        self.cache.get(cx, || self.fetch(cx, retry)).await
    }

    /// Forgets `token` after the API refused it (revoked or expired early).
    pub(crate) fn invalidate(&self, token: &AccessToken) {
        self.cache.invalidate(token);
    }

    async fn fetch(&self, cx: &Ctx, retry: &Retry) -> Result<(String, Duration), PluginError> {
        let url = &self.account.token_uri;
        let response = with_retries(cx, retry, "oauth token request", || async {
            let now = cx.now_unix_millis();
            let assertion = self.account.assertion(now.div_euclid(1000))?;
            let body =
                format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
            let request =
                HttpRequest::post(url.as_str()).header("content-type", "application/x-www-form-urlencoded").body(body);
            let response = cx.http(request).await?;
            if response.status() >= 500 || response.status() == 429 {
                return Err(api::transient_error(&response, "oauth token request"));
            }
            Ok(response)
        })
        .await?;
        if response.status() != 200 {
            return Err(self.refused(&response));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let token: TokenResponse = response.json()?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(ASSERTION_LIFETIME_SECS.unsigned_abs()));
        cx.log(
            log::Level::Debug,
            &format!(
                "google oauth: new access token for {}, valid {} s",
                self.account.client_email,
                lifetime.as_secs()
            ),
        );
        Ok((token.access_token, lifetime))
    }

    /// The token endpoint's refusal: `{"error", "error_description"}`.
    fn refused(&self, response: &HttpResponse) -> PluginError {
        #[derive(serde::Deserialize, Default)]
        struct OAuthError {
            #[serde(default)]
            error: String,
            #[serde(default)]
            error_description: String,
        }
        let body: OAuthError = serde_json::from_slice(response.body()).unwrap_or_default();
        let reason = if body.error.is_empty() { "OAUTH_TOKEN_REFUSED".to_owned() } else { body.error.clone() };
        PluginError::unauthenticated(format!(
            "google oauth refused service account `{}` (http {}): {} {}",
            self.account.client_email,
            response.status(),
            body.error,
            body.error_description
        ))
        .with_reason(reason)
        .with_http_status(response.status())
    }
}
