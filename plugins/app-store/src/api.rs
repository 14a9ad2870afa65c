//! The App Store Server API: Get Transaction Info and Finish Transaction.
//!
//! Requests carry an ES256 JWT signed with the App Store Connect In-App
//! Purchase key (`.p8`): header `kid`, claims `iss` (issuer id), `aud`
//! `appstoreconnect-v1`, `bid` (bundle id), `iat`, `exp`. One JWT per bundle
//! id, cached until shortly before it expires; after a 401 a new one is
//! signed and the request sent once more. Production and the sandbox are
//! two origins; Apple's 4040010 ("transaction id not found") in one sends
//! the request to the next.

use std::collections::HashMap;
use std::time::Duration;

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::retry::{self, Retry, with_retries};
use iapd_sdk_plugin::sync::{AccessToken, SingleFlight, TokenCache};
use iapd_sdk_plugin::{Secret, path_segment};
use serde::Deserialize;

/// Apple refuses tokens that live longer than an hour; iapd's live 20 minutes.
const TOKEN_LIFETIME_SECS: i64 = 1200;
const AUDIENCE: &str = "appstoreconnect-v1";
/// "Transaction id not found." The answer that sends a lookup to the sandbox.
pub(crate) const TRANSACTION_ID_NOT_FOUND: i64 = 4_040_010;
/// Apple's codes that say the same request may succeed later.
const RETRYABLE_CODES: [i64; 4] = [4_040_002, 4_040_004, 4_040_006, 5_000_001];

/// Apple's error body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiError {
    #[serde(default)]
    pub(crate) error_code: i64,
    #[serde(default)]
    pub(crate) error_message: String,
}

/// An answer: success, or Apple's considered refusal.
enum Answer {
    Success(HttpResponse),
    Refused(u16, ApiError),
}

/// A client of the App Store Server API.
pub(crate) struct ServerApi {
    issuer_id: String,
    key_id: String,
    key: jsonwebtoken::EncodingKey,
    /// Production, then sandbox.
    origins: [String; 2],
    tokens: HashMap<String, TokenCache>,
    /// One Get Transaction Info per (bundle id, transaction id) at a time;
    /// the environments asked are the store's, the same for every call.
    lookups: SingleFlight<(String, String), Result<Option<String>, PluginError>>,
}

impl std::fmt::Debug for ServerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerApi")
            .field("issuer_id", &self.issuer_id)
            .field("key_id", &self.key_id)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

impl ServerApi {
    pub(crate) fn new(
        issuer_id: &str,
        key_id: &str,
        private_key: &Secret,
        origins: [&String; 2],
        bundle_ids: &[String],
    ) -> Result<ServerApi, PluginError> {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(private_key.expose()).map_err(|_| {
            PluginError::invalid_argument(
                "secret `private_key`: not an ec private key in pem (the .p8 file app store connect gave)",
            )
        })?;
        Ok(ServerApi {
            issuer_id: issuer_id.to_owned(),
            key_id: key_id.to_owned(),
            key,
            origins: origins.map(|origin| origin.trim_end_matches('/').to_owned()),
            tokens: bundle_ids.iter().map(|bundle| (bundle.clone(), TokenCache::new())).collect(),
            lookups: SingleFlight::new(),
        })
    }

    /// The signed transaction Apple answers for `id`, asking each of
    /// `environments` (false = production, true = sandbox) in turn; `None`
    /// if none knows it. Concurrent identical calls share one lookup, and
    /// each judges its own copy.
    pub(crate) async fn transaction_info(
        &self,
        cx: &Ctx,
        retry: &Retry,
        bundle: &str,
        id: &str,
        environments: &[bool],
    ) -> Result<Option<String>, PluginError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct TransactionInfo {
            signed_transaction_info: String,
        }
        let path = format!("/inApps/v1/transactions/{}", path_segment(id));
        let request = ("GET", path.as_str(), "get transaction info");
        self.lookups
            .run((bundle.to_owned(), id.to_owned()), || async {
                match self.first_that_knows(cx, retry, bundle, request, environments).await? {
                    Some(response) => Ok(Some(response.json::<TransactionInfo>()?.signed_transaction_info)),
                    None => Ok(None),
                }
            })
            .await
    }

    /// Finish Transaction for `id` in the first of `environments` that knows it.
    pub(crate) async fn finish(
        &self,
        cx: &Ctx,
        retry: &Retry,
        bundle: &str,
        id: &str,
        environments: &[bool],
    ) -> Result<(), PluginError> {
        let path = format!("/inApps/v1/transactions/{}/finish", path_segment(id));
        let request = ("POST", path.as_str(), "finish transaction");
        match self.first_that_knows(cx, retry, bundle, request, environments).await? {
            Some(_) => Ok(()),
            None => Err(PluginError::not_found(format!("the app store does not know transaction {id}"))
                .with_reason(TRANSACTION_ID_NOT_FOUND.to_string())),
        }
    }

    /// Sends `(method, path, what)` to each of `environments` in turn until
    /// one knows the transaction; `None` if each answers
    /// `TRANSACTION_ID_NOT_FOUND`. Any other refusal is an error about `what`.
    async fn first_that_knows(
        &self,
        cx: &Ctx,
        retry: &Retry,
        bundle: &str,
        (method, path, what): (&str, &str, &str),
        environments: &[bool],
    ) -> Result<Option<HttpResponse>, PluginError> {
        for &sandbox in environments {
            match self.send(cx, retry, bundle, sandbox, method, path).await? {
                Answer::Success(response) => return Ok(Some(response)),
                Answer::Refused(404, error) if error.error_code == TRANSACTION_ID_NOT_FOUND => {}
                Answer::Refused(status, error) => return Err(refusal(status, &error, what)),
            }
        }
        Ok(None)
    }

    async fn send(
        &self,
        cx: &Ctx,
        retry: &Retry,
        bundle: &str,
        sandbox: bool,
        method: &str,
        path: &str,
    ) -> Result<Answer, PluginError> {
        let url = format!("{}{path}", self.origins[usize::from(sandbox)]);
        let what = format!("{method} {path}");
        with_retries(cx, retry, &what, || async {
            let mut refreshed = false;
            loop {
                let token = self.token(cx, bundle).await?;
                let request = HttpRequest::new(method, url.as_str())
                    .bearer(&token.value)
                    .header("accept", "application/json");
                let response = retry::send(cx, request).await?;
                let status = response.status();
                if (200..300).contains(&status) {
                    return Ok(Answer::Success(response));
                }
                if status == 401 {
                    if let Some(cache) = self.tokens.get(bundle) {
                        cache.invalidate(&token);
                    }
                    if !refreshed {
                        refreshed = true;
                        continue;
                    }
                    return Err(PluginError::unauthenticated(
                        "the app store refused iapd's api token twice: check `issuer_id`, `key_id` and the secret `private_key`",
                    )
                    .with_reason("UNAUTHENTICATED")
                    .with_http_status(401));
                }
                let error = serde_json::from_slice::<ApiError>(response.body()).ok().filter(|error| error.error_code != 0);
                let transient = status == 429
                    || status >= 500
                    || error.as_ref().is_some_and(|error| RETRYABLE_CODES.contains(&error.error_code));
                if transient {
                    let error = error.unwrap_or_default();
                    let message = format!("the app store answered {what} with http {status}: {}", error.error_message);
                    let reason =
                        if error.error_code == 0 { "UPSTREAM_ERROR".to_owned() } else { error.error_code.to_string() };
                    return Err(retry::transient(&response, message).with_reason(reason));
                }
                return match error {
                    Some(error) => Ok(Answer::Refused(status, error)),
                    None => Err(PluginError::unexpected_response(
                        status,
                        format!("the app store answered {what} with http {status} and no error body; is `api_root` right?"),
                    )),
                };
            }
        })
        .await
    }

    async fn token(&self, cx: &Ctx, bundle: &str) -> Result<AccessToken, PluginError> {
        let cache = self.tokens.get(bundle).ok_or_else(|| {
            PluginError::permission_denied(format!("app_id: bundle `{bundle}` is not one this store serves"))
                .with_reason("PACKAGE_NOT_ALLOWED")
        })?;
        cache
            .get(cx, || async {
                let now = cx.now_unix_millis() / 1000;
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                header.kid = Some(self.key_id.clone());
                let claims = serde_json::json!({
                    "iss": self.issuer_id,
                    "iat": now,
                    "exp": now + TOKEN_LIFETIME_SECS,
                    "aud": AUDIENCE,
                    "bid": bundle,
                });
                let token = jsonwebtoken::encode(&header, &claims, &self.key)
                    .map_err(|err| PluginError::internal(format!("cannot sign the app store api token: {err}")))?;
                Ok((token, Duration::from_secs(TOKEN_LIFETIME_SECS.unsigned_abs())))
            })
            .await
    }
}

/// The caller's error for Apple's refusal. The reason is Apple's numeric
/// error code.
pub(crate) fn refusal(status: u16, error: &ApiError, what: &str) -> PluginError {
    let code = match status {
        // InvalidTransactionId (4000006) and the like: the caller's input.
        400 => Code::InvalidArgument,
        403 => Code::PermissionDenied,
        // AppNotFound and the like: the config names an app Apple does not know.
        404 => Code::FailedPrecondition,
        _ => Code::Unknown,
    };
    PluginError::new(code, format!("the app store answered {what} with http {status}: {}", error.error_message))
        .with_reason(error.error_code.to_string())
        .with_http_status(status)
}
