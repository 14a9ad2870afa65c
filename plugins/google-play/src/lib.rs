//! The Google Play store: one-time purchases through the Google Play
//! Developer API (Android Publisher v3).
//!
//! - Verify → `purchases.products.get`; Acknowledge → `…:acknowledge`;
//!   Consume → `…:consume`; ListItems → `monetization.onetimeproducts.list`
//!   then `monetization.subscriptions.list`.
//! - Auth: a service-account JSON key (a secret), exchanged for access tokens
//!   at the key's own `token_uri`.
//! - Only the packages listed in the config are served; any other is
//!   PERMISSION_DENIED before Google is asked.
//! - Concurrent identical Verifies share one request to Google.

#![forbid(unsafe_code)]

mod api;
mod auth;
mod convert;

use iapd_sdk_plugin::checks;
use iapd_sdk_plugin::path_segment as segment;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, ProductKind, Verdict};
use iapd_sdk_plugin::sync::SingleFlight;
use serde::Deserialize;

use iapd_sdk_plugin::retry::Retry;

use crate::api::{Answer, Client, GoogleError};
use crate::auth::{ServiceAccount, TokenSource};

/// The store.
pub struct GooglePlay {
    config: Config,
    client: Client,
    /// One `purchases.products.get` per (package, product, token) at a time.
    lookups: SingleFlight<(String, String, String), Result<Answer, PluginError>>,
}

/// The secret holding the service-account JSON key.
const SERVICE_ACCOUNT: &str = "service_account";

/// `[stores.<id>.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The package names this key may serve.
    packages: Vec<String>,
    /// The API's origin (an emulator's in tests).
    #[serde(default = "default_api_root")]
    api_root: String,
    /// The one-time products the app consumes. Google's catalog does not say
    /// which are consumable: without this list, one-time products have no
    /// kind unless a purchase shows it (consumed, or rewarded).
    #[serde(default)]
    consumable_products: Vec<String>,
    /// Whether license testers' purchases (`purchaseType` 0) are VALID;
    /// if false they are INVALID.
    #[serde(default = "default_true")]
    allow_test_purchases: bool,
    /// How the app set `obfuscatedAccountId` from its user id: `none` (as
    /// is) or `sha256` (lowercase hex), for comparing it with `user_id`.
    #[serde(default)]
    account_id_hash: AccountIdHash,
    /// The region whose price ListItems shows.
    #[serde(default = "default_region")]
    price_region: String,
    /// The listing language ListItems shows (else the first listing).
    #[serde(default = "default_language")]
    language: String,
    /// Retries of transient failures.
    #[serde(default)]
    retry: Retry,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum AccountIdHash {
    #[default]
    None,
    Sha256,
}

fn default_api_root() -> String {
    "https://androidpublisher.googleapis.com".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_region() -> String {
    "US".to_owned()
}
fn default_language() -> String {
    "en-US".to_owned()
}

impl Store for GooglePlay {
    const NAME: &'static CStr = c"google_play";
    const CAPABILITIES: u64 = CAP_VERIFY | CAP_ACKNOWLEDGE | CAP_CONSUME | CAP_LIST_ITEMS;
    type Config = Config;

    fn info() -> proto::PluginInfo {
        proto::PluginInfo {
            display_name: "Google Play".into(),
            methods: vec![],
            allowed_origins: vec![default_api_root(), "https://oauth2.googleapis.com".into()],
            secrets: vec![SERVICE_ACCOUNT.into()],
            proof_kinds: vec!["purchase_token".into()],
        }
    }

    fn new(config: Config, init: &InitContext) -> Result<Self, PluginError> {
        let store = init.store_id();
        checks::packages_listed(&config.packages, store)?;
        config.retry.check(store)?;
        // The one secret the plugin declares; each store has its own secrets.
        let key = init.secret(SERVICE_ACCOUNT)?;
        let account = ServiceAccount::parse(SERVICE_ACCOUNT, key.expose())?;
        let client = Client {
            api_root: config.api_root.clone(),
            tokens: TokenSource::new(account),
            retry: config.retry.clone(),
        };
        Ok(GooglePlay { config, client, lookups: SingleFlight::new() })
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        let token = purchase_token(request.proof.as_ref())?;
        self.check_package(&request.app_id)?;
        match self.lookup(cx, &request.app_id, &request.product_id, token).await? {
            Answer::Success(response) => convert::verdict(&self.config, &request, &response),
            Answer::Refused(google) => match (google.status, google.reason.as_str()) {
                // A wrong package is the operator's mistake, not a sign of fraud.
                (404, "applicationNotFound") => Err(google.to_plugin_error("purchases.products.get")),
                (404, _) => Ok(refusal_verdict(Verdict::NotFound, &google)),
                (410, _) => Ok(refusal_verdict(Verdict::Expired, &google)),
                _ => Err(google.to_plugin_error("purchases.products.get")),
            },
        }
    }

    async fn acknowledge(
        &self,
        cx: &Ctx,
        request: proto::AcknowledgeRequest,
    ) -> Result<proto::AcknowledgeResponse, PluginError> {
        let token = purchase_token(request.proof.as_ref())?;
        self.check_package(&request.app_id)?;
        let body = if request.developer_payload.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({ "developerPayload": request.developer_payload })
        };
        let purchase = (request.app_id.as_str(), request.product_id.as_str(), token);
        let already_acknowledged = self
            .change_once(cx, purchase, "acknowledge", Some(body.to_string()), convert::ProductPurchase::is_acknowledged)
            .await?;
        Ok(proto::AcknowledgeResponse { already_acknowledged })
    }

    async fn consume(&self, cx: &Ctx, request: proto::ConsumeRequest) -> Result<proto::ConsumeResponse, PluginError> {
        let token = purchase_token(request.proof.as_ref())?;
        self.check_package(&request.app_id)?;
        let purchase = (request.app_id.as_str(), request.product_id.as_str(), token);
        let already_consumed =
            self.change_once(cx, purchase, "consume", None, convert::ProductPurchase::is_consumed).await?;
        Ok(proto::ConsumeResponse { already_consumed })
    }

    async fn list_items(
        &self,
        cx: &Ctx,
        request: proto::ListItemsRequest,
    ) -> Result<proto::ListItemsResponse, PluginError> {
        self.check_package(&request.app_id)?;
        let kind = request.kind();
        if matches!(kind, ProductKind::Consumable | ProductKind::NonConsumable)
            && self.config.consumable_products.is_empty()
        {
            return Err(PluginError::failed_precondition(
                "google play's catalog does not say which one-time products are consumable: list them in the store's `consumable_products` config to filter by kind",
            )
            .with_reason("KIND_UNKNOWN"));
        }
        // The page token says which listing comes next: `o:` one-time
        // products, `s:` subscriptions, each with Google's own page token.
        let (listing, google_token) = match request.page_token.split_once(':') {
            _ if request.page_token.is_empty() => {
                (if kind == ProductKind::Subscription { Listing::Subscriptions } else { Listing::OneTime }, "")
            }
            Some(("o", token)) => (Listing::OneTime, token),
            Some(("s", token)) => (Listing::Subscriptions, token),
            _ => {
                return Err(PluginError::invalid_argument("page_token: not a token this store issued")
                    .with_reason("INVALID_PAGE_TOKEN"));
            }
        };
        let mut query = Vec::new();
        if request.page_size > 0 {
            query.push(format!("pageSize={}", request.page_size.min(1000)));
        }
        if !google_token.is_empty() {
            query.push(format!("pageToken={}", segment(google_token)));
        }
        let (path, what) = match listing {
            Listing::OneTime => ("oneTimeProducts", "monetization.onetimeproducts.list"),
            Listing::Subscriptions => ("subscriptions", "monetization.subscriptions.list"),
        };
        let mut url = self.client.url(&format!("applications/{}/{path}", segment(&request.app_id)));
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let response = match self.client.send(cx, what, || HttpRequest::get(url.as_str())).await? {
            Answer::Success(response) => response,
            Answer::Refused(google) => return Err(google.to_plugin_error(what)),
        };
        let page = convert::catalog_page(&self.config, listing == Listing::Subscriptions, &response)?;
        let items =
            page.items.into_iter().filter(|item| kind == ProductKind::Unspecified || item.kind() == kind).collect();
        let next_page_token = match (page.next_page_token, listing) {
            (Some(next), Listing::OneTime) => format!("o:{next}"),
            (Some(next), Listing::Subscriptions) => format!("s:{next}"),
            (None, Listing::OneTime) if kind == ProductKind::Unspecified => "s:".to_owned(),
            (None, _) => String::new(),
        };
        Ok(proto::ListItemsResponse { items, next_page_token })
    }
}

impl std::fmt::Debug for GooglePlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GooglePlay").field("config", &self.config).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Listing {
    OneTime,
    Subscriptions,
}

impl GooglePlay {
    fn check_package(&self, package: &str) -> Result<(), PluginError> {
        checks::allowed_package(&self.config.packages, package)
    }

    fn purchase_url(&self, package: &str, product: &str, token: &str, verb: &str) -> String {
        self.client.url(&format!(
            "applications/{}/purchases/products/{}/tokens/{}{verb}",
            segment(package),
            segment(product),
            segment(token)
        ))
    }

    /// `…:acknowledge` or `…:consume` on (package, product, token),
    /// idempotent for the caller: nothing is sent if `done` holds already,
    /// and an `invalidPurchaseState` refusal is checked against a fresh read,
    /// since another caller may have done it meanwhile. Answers whether it
    /// was done already.
    async fn change_once(
        &self,
        cx: &Ctx,
        (package, product, token): (&str, &str, &str),
        verb: &str,
        json_body: Option<String>,
        done: fn(&convert::ProductPurchase) -> bool,
    ) -> Result<bool, PluginError> {
        if done(&self.current(cx, package, product, token).await?) {
            return Ok(true);
        }
        let what = format!("purchases.products.{verb}");
        let url = self.purchase_url(package, product, token, &format!(":{verb}"));
        let answer = self
            .client
            .send(cx, &what, || match &json_body {
                Some(body) => {
                    HttpRequest::post(url.as_str()).header("content-type", "application/json").body(body.clone())
                }
                None => HttpRequest::post(url.as_str()),
            })
            .await?;
        match answer {
            Answer::Success(_) => Ok(false),
            Answer::Refused(google)
                if google.reason == "invalidPurchaseState"
                    && done(&self.current(cx, package, product, token).await?) =>
            {
                Ok(true)
            }
            Answer::Refused(google) => Err(google.to_plugin_error(&what)),
        }
    }

    /// `purchases.products.get`, shared by concurrent identical calls.
    async fn lookup(&self, cx: &Ctx, package: &str, product: &str, token: &str) -> Result<Answer, PluginError> {
        let key = (package.to_owned(), product.to_owned(), token.to_owned());
        let url = self.purchase_url(package, product, token, "");
        self.lookups
            .run(key, || async {
                self.client.send(cx, "purchases.products.get", || HttpRequest::get(url.as_str())).await
            })
            .await
    }

    /// The purchase as Google has it now, for acknowledge and consume: a
    /// refusal (not found included) is an error here.
    async fn current(
        &self,
        cx: &Ctx,
        package: &str,
        product: &str,
        token: &str,
    ) -> Result<convert::ProductPurchase, PluginError> {
        match self.lookup(cx, package, product, token).await? {
            Answer::Success(response) => response.json(),
            Answer::Refused(google) => Err(google.to_plugin_error("purchases.products.get")),
        }
    }
}

fn purchase_token(proof: Option<&proto::Proof>) -> Result<&str, PluginError> {
    checks::purchase_token(proof, "google play")
}

fn refusal_verdict(verdict: Verdict, google: &GoogleError) -> proto::VerifyResponse {
    proto::VerifyResponse {
        verdict: verdict.into(),
        verdict_reason: format!("google play: {} ({})", google.message, google.reason),
        purchase: None,
    }
}

export_store!(GooglePlay);

#[cfg(test)]
mod tests;
