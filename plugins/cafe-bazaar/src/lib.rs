//! The Cafe Bazaar store: in-app purchases through the Cafe Bazaar Developer
//! API v2.
//!
//! - Verify → `GET /devapi/v2/api/validate/<package>/inapp/<product>/purchases/<token>/`.
//!   Mind the trap: Bazaar's `consumptionState` is **0 = consumed, 1 = not
//!   consumed**, the opposite of Google's; `purchaseState` 1 is refunded. A 404
//!   `not_found` is the one answer that proves a purchase never happened: a
//!   verdict, not an error.
//! - Consume → `POST /devapi/v2/api/consume/<package>/purchases/` with `{"token"}`.
//! - Bazaar has no acknowledge (purchases are never auto-refunded) and no
//!   catalog API: ListItems serves the catalog declared in the config.
//! - Auth, either scheme Bazaar documents: OAuth (client id, client secret and
//!   refresh token, the access token cached and refreshed on expiry and once
//!   after a 401), or the app's Pishkhan API secret header.
//! - Concurrent identical validates share one request: Bazaar's quota is daily.

#![forbid(unsafe_code)]

use std::sync::Mutex;

use iapd_sdk_plugin::catalog::{self, CatalogEntry};
use iapd_sdk_plugin::checks;
use iapd_sdk_plugin::path_segment as segment;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, AcknowledgementState, ConsumptionState, Environment, PurchaseState, Verdict};
use iapd_sdk_plugin::retry::{self, Retry, with_retries};
use iapd_sdk_plugin::sync::{AccessToken, SingleFlight, TokenCache};
use iapd_sdk_plugin::{Secret, log};
use serde::Deserialize;

/// The store.
pub struct CafeBazaar {
    config: Config,
    credentials: Credentials,
    tokens: TokenCache,
    quota: Mutex<QuotaDay>,
    /// One validate per (package, product, token) at a time.
    lookups: SingleFlight<(String, String, String), Result<Answer, PluginError>>,
}

enum Credentials {
    OAuth { client_secret: Secret, refresh_token: Secret },
    Pishkhan { api_secret: Secret },
}

/// `[stores.<id>.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The package names served.
    packages: Vec<String>,
    /// `oauth` (secrets `client_secret` and `refresh_token`) or `pishkhan`
    /// (secret `pishkhan_api_secret`).
    auth: AuthScheme,
    /// The OAuth client id (with `auth = "oauth"`).
    #[serde(default)]
    client_id: Option<String>,
    /// The API's origin (an emulator's in tests).
    #[serde(default = "default_api_root")]
    api_root: String,
    /// What the apps sell: Bazaar has no catalog API.
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
    /// Bazaar's daily call quota per developer; iapd warns at 80 % and 100 %.
    #[serde(default = "default_daily_quota")]
    daily_quota: u64,
    /// Retries of transient failures (5xx, 429, timeouts).
    #[serde(default)]
    retry: Retry,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum AuthScheme {
    OAuth,
    Pishkhan,
}

fn default_api_root() -> String {
    "https://pardakht.cafebazaar.ir".to_owned()
}
fn default_daily_quota() -> u64 {
    50_000
}

/// Calls counted in the current UTC day, against Bazaar's daily quota.
#[derive(Debug, Default)]
struct QuotaDay {
    day: i64,
    calls: u64,
}

/// Bazaar's validate answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Validation {
    consumption_state: i64,
    purchase_state: i64,
    #[serde(default)]
    developer_payload: String,
    #[serde(default)]
    purchase_time: i64,
}

/// Bazaar's error body: `{"error", "error_description"}`.
#[derive(Debug, Clone, Default, Deserialize)]
struct BazaarError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// An API answer: success, or Bazaar's considered refusal.
#[derive(Clone)]
enum Answer {
    Success(HttpResponse),
    Refused(u16, BazaarError),
}

impl Store for CafeBazaar {
    const NAME: &'static CStr = c"cafe_bazaar";
    const CAPABILITIES: u64 = CAP_VERIFY | CAP_CONSUME | CAP_LIST_ITEMS;
    type Config = Config;

    fn info() -> proto::PluginInfo {
        proto::PluginInfo {
            display_name: "Cafe Bazaar".into(),
            methods: vec![],
            allowed_origins: vec![default_api_root()],
            secrets: vec!["client_secret".into(), "refresh_token".into(), "pishkhan_api_secret".into()],
            proof_kinds: vec!["purchase_token".into()],
        }
    }

    fn new(config: Config, init: &InitContext) -> Result<Self, PluginError> {
        let store = init.store_id();
        checks::packages_listed(&config.packages, store)?;
        config.retry.check(store)?;
        let credentials = match config.auth {
            AuthScheme::OAuth => {
                if config.client_id.as_deref().is_none_or(str::is_empty) {
                    return Err(PluginError::invalid_argument(format!(
                        "config key `stores.{store}.config.client_id`: required with auth = \"oauth\""
                    )));
                }
                Credentials::OAuth {
                    client_secret: init.secret("client_secret")?,
                    refresh_token: init.secret("refresh_token")?,
                }
            }
            AuthScheme::Pishkhan => Credentials::Pishkhan { api_secret: init.secret("pishkhan_api_secret")? },
        };
        Ok(CafeBazaar {
            config,
            credentials,
            tokens: TokenCache::new(),
            quota: Mutex::default(),
            lookups: SingleFlight::new(),
        })
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        let token = purchase_token(request.proof.as_ref())?;
        self.check_package(&request.app_id)?;
        match self.validate(cx, &request.app_id, &request.product_id, token).await? {
            Answer::Success(response) => self.verdict(&request.product_id, &response),
            Answer::Refused(404, error) if error.error == "not_found" => Ok(proto::VerifyResponse {
                verdict: Verdict::NotFound.into(),
                verdict_reason: format!("cafe bazaar: {} ({})", error.error_description, error.error),
                purchase: None,
            }),
            Answer::Refused(status, error) => Err(refusal(status, &error, "validate")),
        }
    }

    async fn consume(&self, cx: &Ctx, request: proto::ConsumeRequest) -> Result<proto::ConsumeResponse, PluginError> {
        let token = purchase_token(request.proof.as_ref())?;
        self.check_package(&request.app_id)?;
        if self.consumed(cx, &request.app_id, &request.product_id, token).await? {
            return Ok(proto::ConsumeResponse { already_consumed: true });
        }
        let url = format!("{}/devapi/v2/api/consume/{}/purchases/", self.root(), segment(&request.app_id));
        let body = serde_json::json!({ "token": token }).to_string();
        let answer = self
            .send(cx, "consume", || {
                HttpRequest::post(url.as_str()).header("content-type", "application/json").body(body.clone())
            })
            .await?;
        match answer {
            Answer::Success(_) => Ok(proto::ConsumeResponse { already_consumed: false }),
            // Consumed by another caller between our read and our write.
            Answer::Refused(400, _) if self.consumed(cx, &request.app_id, &request.product_id, token).await? => {
                Ok(proto::ConsumeResponse { already_consumed: true })
            }
            Answer::Refused(400, error) => Err(PluginError::failed_precondition(format!(
                "cafe bazaar refused consume: {}",
                error.error_description
            ))
            .with_reason(error.error)
            .with_http_status(400)),
            Answer::Refused(status, error) => Err(refusal(status, &error, "consume")),
        }
    }

    async fn list_items(
        &self,
        _cx: &Ctx,
        request: proto::ListItemsRequest,
    ) -> Result<proto::ListItemsResponse, PluginError> {
        let mut page = catalog::page(&self.config.catalog, &self.config.packages, &request)?;
        for item in &mut page.items {
            if item.price_currency_code.is_empty() {
                // Bazaar sells in rials.
                item.price_currency_code = "IRR".to_owned();
            }
        }
        Ok(page)
    }
}

impl std::fmt::Debug for CafeBazaar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CafeBazaar").field("config", &self.config).finish_non_exhaustive()
    }
}

impl CafeBazaar {
    fn root(&self) -> &str {
        self.config.api_root.trim_end_matches('/')
    }

    fn check_package(&self, package: &str) -> Result<(), PluginError> {
        checks::allowed_package(&self.config.packages, package)
    }

    /// The validate answer, shared by concurrent identical calls: each
    /// judges its own copy.
    async fn validate(&self, cx: &Ctx, package: &str, product: &str, token: &str) -> Result<Answer, PluginError> {
        let url = format!(
            "{}/devapi/v2/api/validate/{}/inapp/{}/purchases/{}/",
            self.root(),
            segment(package),
            segment(product),
            segment(token)
        );
        let key = (package.to_owned(), product.to_owned(), token.to_owned());
        self.lookups.run(key, || self.send(cx, "validate", || HttpRequest::get(url.as_str()))).await
    }

    /// Whether Bazaar says the purchase is consumed (`consumptionState` 0).
    async fn consumed(&self, cx: &Ctx, package: &str, product: &str, token: &str) -> Result<bool, PluginError> {
        match self.validate(cx, package, product, token).await? {
            Answer::Success(response) => Ok(response.json::<Validation>()?.consumption_state == 0),
            Answer::Refused(status, error) => Err(refusal(status, &error, "validate")),
        }
    }

    fn verdict(&self, product: &str, response: &HttpResponse) -> Result<proto::VerifyResponse, PluginError> {
        let bazaar: Validation = response.json()?;
        let malformed = |field: &str, value: i64| {
            PluginError::malformed_response(
                response.status(),
                format!("cafe bazaar answered validate with {field} {value}, which iapd does not know"),
            )
        };
        // Bazaar's inversion: 0 is consumed, 1 is not.
        let consumption = match bazaar.consumption_state {
            0 => ConsumptionState::Consumed,
            1 => ConsumptionState::NotConsumed,
            other => return Err(malformed("consumptionState", other)),
        };
        let (state, verdict, verdict_reason) = match bazaar.purchase_state {
            0 => (PurchaseState::Purchased, Verdict::Valid, String::new()),
            1 => (PurchaseState::Refunded, Verdict::Refunded, "refunded at cafe bazaar (purchaseState 1)".to_owned()),
            other => return Err(malformed("purchaseState", other)),
        };
        let kind = catalog::kind_of(&self.config.catalog, product);
        let purchase = proto::Purchase {
            state: state.into(),
            consumption_state: consumption.into(),
            acknowledgement_state: AcknowledgementState::NotApplicable.into(),
            purchase_time_unix_millis: bazaar.purchase_time,
            quantity: 1,
            kind: kind.into(),
            environment: Environment::Production.into(),
            developer_payload: bazaar.developer_payload,
            raw_store_response: String::from_utf8_lossy(response.body()).into_owned(),
            ..Default::default()
        };
        Ok(proto::VerifyResponse { verdict: verdict.into(), verdict_reason, purchase: Some(purchase) })
    }

    /// Sends with credentials, refreshing the OAuth token once after a 401
    /// and retrying 429, 5xx and timeouts.
    async fn send(&self, cx: &Ctx, what: &str, build: impl Fn() -> HttpRequest) -> Result<Answer, PluginError> {
        with_retries(cx, &self.config.retry, what, || async {
            let mut refreshed = false;
            loop {
                let (request, token) = match &self.credentials {
                    Credentials::Pishkhan { api_secret } => {
                        (build().header("CAFEBAZAAR-PISHKHAN-API-SECRET", api_secret.expose()), None)
                    }
                    Credentials::OAuth { .. } => {
                        let token = self.access_token(cx).await?;
                        (build().bearer(&token.value), Some(token))
                    }
                };
                self.count_call(cx);
                let response = retry::send(cx, request).await?;
                let status = response.status();
                match status {
                    200..=299 => return Ok(Answer::Success(response)),
                    401 if !refreshed && token.is_some() => {
                        if let Some(token) = &token {
                            self.tokens.invalidate(token);
                        }
                        refreshed = true;
                    }
                    429 | 500..=599 => {
                        let error = parse_error(&response).unwrap_or_default();
                        let message =
                            format!("cafe bazaar answered {what} with http {status}: {}", error.error_description);
                        return Err(retry::transient(&response, message).with_reason(if error.error.is_empty() {
                            "UPSTREAM_ERROR".to_owned()
                        } else {
                            error.error
                        }));
                    }
                    _ => {
                        return match parse_error(&response) {
                            Some(error) => Ok(Answer::Refused(status, error)),
                            None => Err(PluginError::unexpected_response(
                                status,
                                format!(
                                    "cafe bazaar answered {what} with http {status} and no error body; is `api_root` right?"
                                ),
                            )),
                        };
                    }
                }
            }
        })
        .await
    }

    async fn access_token(&self, cx: &Ctx) -> Result<AccessToken, PluginError> {
        let Credentials::OAuth { client_secret, refresh_token } = &self.credentials else {
            return Err(PluginError::internal("no oauth credentials"));
        };
        self.tokens
            .get(cx, || async {
                let form = format!(
                    "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                    segment(self.config.client_id.as_deref().unwrap_or_default()),
                    segment(client_secret.expose_str()?),
                    segment(refresh_token.expose_str()?)
                );
                let url = format!("{}/devapi/v2/auth/token/", self.root());
                let response = with_retries(cx, &self.config.retry, "oauth token request", || async {
                    self.count_call(cx);
                    let request = HttpRequest::post(url.as_str())
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(form.clone());
                    let response = cx.http(request).await?;
                    if response.status() >= 500 {
                        return Err(PluginError::unavailable(format!(
                            "cafe bazaar's token endpoint answered http {}",
                            response.status()
                        ))
                        .with_http_status(response.status()));
                    }
                    Ok(response)
                })
                .await?;
                if response.status() != 200 {
                    let error = parse_error(&response).unwrap_or_default();
                    return Err(PluginError::unauthenticated(format!(
                        "cafe bazaar refused the oauth refresh (http {}): {}",
                        response.status(),
                        error.error_description
                    ))
                    .with_reason(if error.error.is_empty() { "OAUTH_TOKEN_REFUSED".to_owned() } else { error.error })
                    .with_http_status(response.status()));
                }
                #[derive(Deserialize)]
                struct TokenResponse {
                    access_token: String,
                    #[serde(default = "default_lifetime")]
                    expires_in: u64,
                }
                fn default_lifetime() -> u64 {
                    3600
                }
                let token: TokenResponse = response.json()?;
                Ok((token.access_token, std::time::Duration::from_secs(token.expires_in)))
            })
            .await
    }

    /// Counts a call against Bazaar's daily quota and warns near it.
    fn count_call(&self, cx: &Ctx) {
        let day = cx.now_unix_millis().div_euclid(86_400_000);
        let calls = {
            let mut quota = self.quota.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if quota.day != day {
                *quota = QuotaDay { day, calls: 0 };
            }
            quota.calls += 1;
            quota.calls
        };
        let quota = self.config.daily_quota;
        if calls == quota * 8 / 10 || calls == quota {
            cx.log(
                log::Level::Warn,
                &format!("cafe bazaar: {calls} api calls today, of a daily quota of {quota} (UTC day)"),
            );
        }
    }
}

fn parse_error(response: &HttpResponse) -> Option<BazaarError> {
    serde_json::from_slice::<BazaarError>(response.body()).ok().filter(|error| !error.error.is_empty())
}

/// The caller's error for Bazaar's refusal.
fn refusal(status: u16, error: &BazaarError, what: &str) -> PluginError {
    PluginError::new(
        Code::for_refusal(status),
        format!("cafe bazaar answered {what} with http {status}: {}", error.error_description),
    )
    .with_reason(error.error.clone())
    .with_http_status(status)
}

fn purchase_token(proof: Option<&proto::Proof>) -> Result<&str, PluginError> {
    checks::purchase_token(proof, "cafe bazaar")
}

export_store!(CafeBazaar);

#[cfg(test)]
mod tests;
