//! The Huawei AppGallery store: HMS Core in-app purchases through Huawei's
//! IAP server APIs, and the catalog through AppGallery Connect.
//!
//! - Verify a one-time purchase → `POST {orders}/applications/purchases/tokens/verify`;
//!   a subscription (the proof's `store_parameters` carry `subscription_id`)
//!   → `POST {subscriptions}/sub/applications/v2/purchases/get`. The answer's
//!   `purchaseTokenData` / `inappPurchaseData` is a JSON string signed with the
//!   app's IAP key; iapd checks the signature (SHA256WithRSA, or PSS when the
//!   answer says `SHA256WithRSA/PSS`) with the configured public key before it
//!   reads a field. Optionally, a purchase Huawei still calls paid is looked
//!   up in `cancelledList`, the list of cancelled and refunded purchases.
//! - Acknowledge (non-consumables) and Consume (consumables) → `POST
//!   {orders}/applications/v2/purchases/confirm`, after a read; result code
//!   "9" means done already. Subscriptions need no confirmation.
//! - Every answer is HTTP 200 with a string `responseCode`: "0" success,
//!   "5", "6", "8", "9", "11", "12" mapped to verdicts or errors here.
//! - Auth: the app's OAuth client credentials buy an app-level access token
//!   (cached, one refresh in flight, refreshed once after a 401/403), sent as
//!   `Authorization: Basic base64("APPAT:" + token)`.
//! - Sites: the configured `site`'s hosts, or the AppTouch hosts for a
//!   purchase whose proof says `account_flag` 1. URLs come only from config.
//! - ListItems → AppGallery Connect's Product Management API, with an API
//!   client of its own.
//! - Concurrent identical lookups share one request.

#![forbid(unsafe_code)]

mod api;
mod catalog;
mod lenient;
mod purchase;
mod signature;

use iapd_sdk_plugin::checks;
use iapd_sdk_plugin::log;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, Verdict};
use iapd_sdk_plugin::retry::Retry;
use iapd_sdk_plugin::sync::SingleFlight;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Answer, Iap};
use crate::catalog::ConnectApi;
use crate::purchase::{Cancellation, Policy, PurchaseData};
use crate::signature::{PKCS1, PSS, PublicKey};

/// The most `cancelledList` pages (of 1000 rows) read for one purchase.
const MAX_CANCELLED_PAGES: usize = 20;
/// What iapd sends in `HW-IAP-APPINFO` to ask for RSA-PSS signatures.
const PSS_APPINFO: &str = r#"{"signatureAlgorithm":"SHA256WithRSA/PSS"}"#;

/// The store.
pub struct Huawei {
    config: Config,
    hosts: Hosts,
    key: PublicKey,
    iap: Iap,
    /// `None` without `connect_api_client_id`: ListItems says so.
    connect: Option<ConnectApi>,
    /// One lookup per (AppTouch, subscription id, token, product) at a time.
    lookups: SingleFlight<LookupKey, Result<Lookup, PluginError>>,
}

/// `[stores.<id>.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The app's package name(s): requests for others are refused.
    packages: Vec<String>,
    /// The app ID in AppGallery Connect, which is its OAuth client id; the
    /// app secret is the secret `client_secret`.
    client_id: String,
    /// The app's IAP public key as AppGallery Connect shows it (Base64).
    public_key: String,
    /// The site whose hosts iapd calls: `china`, `germany`, `singapore` or `russia`.
    site: Site,
    /// Ask for RSA-PSS signatures on order answers (`HW-IAP-APPINFO`).
    #[serde(default)]
    request_pss: bool,
    /// Whether sandbox purchases (`purchaseType` 0) are valid, with ENVIRONMENT_SANDBOX.
    #[serde(default)]
    allow_sandbox: bool,
    /// Whether a one-time purchase Huawei calls paid is also looked up in
    /// `cancelledList` (one more request, or more, per Verify).
    #[serde(default)]
    check_cancelled_list: bool,
    /// The AppGallery Connect API client for ListItems; its key is the secret `connect_api_key`.
    #[serde(default)]
    connect_api_client_id: Option<String>,
    /// Origins instead of the site's (an emulator's in tests).
    #[serde(default)]
    endpoints: Endpoints,
    /// Retries of transient failures (5xx, 429, timeouts, result code 6).
    #[serde(default)]
    retry: Retry,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Site {
    China,
    Germany,
    Singapore,
    Russia,
}

/// `[stores.<id>.config.endpoints]`: each origin (or URL prefix) replaces the site's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Endpoints {
    orders: Option<String>,
    subscriptions: Option<String>,
    apptouch_orders: Option<String>,
    apptouch_subscriptions: Option<String>,
    oauth: Option<String>,
    connect_api: Option<String>,
}

/// The URL prefixes the store calls.
#[derive(Debug)]
struct Hosts {
    orders: String,
    subscriptions: String,
    apptouch_orders: String,
    apptouch_subscriptions: String,
    oauth: String,
    connect_api: String,
}

const OAUTH: &str = "https://oauth-login.cloud.huawei.com";
const APPTOUCH_ORDERS: &str = "https://orders-at-dre.iap.cloud.huawei.eu";
const APPTOUCH_SUBSCRIPTIONS: &str = "https://subscr-at-dre.iap.cloud.huawei.eu";

impl Site {
    const ALL: [Site; 4] = [Site::China, Site::Germany, Site::Singapore, Site::Russia];

    /// (orders, subscriptions, AppGallery Connect API) of the site.
    fn origins(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Site::China => (
                "https://orders-drcn.iap.cloud.huawei.com.cn",
                "https://subscr-drcn.iap.cloud.huawei.com.cn",
                "https://connect-api.cloud.huawei.com",
            ),
            Site::Germany => (
                "https://orders-dre.iap.cloud.huawei.eu",
                "https://subscr-dre.iap.cloud.huawei.eu",
                "https://connect-api-dre.cloud.huawei.com",
            ),
            Site::Singapore => (
                "https://orders-dra.iap.cloud.huawei.asia",
                "https://subscr-dra.iap.cloud.huawei.asia",
                "https://connect-api-dra.cloud.huawei.com",
            ),
            Site::Russia => (
                "https://orders-drru.iap.cloud.huawei.ru",
                "https://subscr-drru.iap.cloud.huawei.ru",
                "https://connect-api-drru.cloud.huawei.com",
            ),
        }
    }
}

impl Hosts {
    fn new(site: Site, endpoints: &Endpoints) -> Hosts {
        let (orders, subscriptions, connect_api) = site.origins();
        let pick = |chosen: &Option<String>, default: &str| {
            chosen.as_deref().unwrap_or(default).trim_end_matches('/').to_owned()
        };
        Hosts {
            orders: pick(&endpoints.orders, orders),
            subscriptions: pick(&endpoints.subscriptions, subscriptions),
            apptouch_orders: pick(&endpoints.apptouch_orders, APPTOUCH_ORDERS),
            apptouch_subscriptions: pick(&endpoints.apptouch_subscriptions, APPTOUCH_SUBSCRIPTIONS),
            oauth: pick(&endpoints.oauth, OAUTH),
            connect_api: pick(&endpoints.connect_api, connect_api),
        }
    }

    fn orders(&self, apptouch: bool) -> &str {
        if apptouch { &self.apptouch_orders } else { &self.orders }
    }

    fn subscriptions(&self, apptouch: bool) -> &str {
        if apptouch { &self.apptouch_subscriptions } else { &self.subscriptions }
    }
}

/// What a proof asks about: its token, and from `store_parameters` the
/// subscription id and whether the buyer has an AppTouch account.
#[derive(Debug)]
struct Target<'a> {
    token: &'a str,
    subscription_id: Option<&'a str>,
    apptouch: bool,
}

/// The `store_parameters` a proof may carry; any other is refused, so a
/// caller never chooses where iapd sends a request.
const STORE_PARAMETERS: [&str; 2] = ["subscription_id", "account_flag"];

fn target(proof: Option<&proto::Proof>) -> Result<Target<'_>, PluginError> {
    let token = checks::purchase_token(proof, "huawei")?;
    let parameters = proof.map(|proof| &proof.store_parameters);
    let mut keys: Vec<&String> = parameters.into_iter().flat_map(|p| p.keys()).collect();
    keys.sort();
    if let Some(key) = keys.iter().find(|key| !STORE_PARAMETERS.contains(&key.as_str())) {
        return Err(PluginError::invalid_argument(format!(
            "proof.store_parameters: `{key}` is not a huawei parameter; only subscription_id and account_flag are accepted (the hosts come from the config)"
        ))
        .with_reason("UNKNOWN_STORE_PARAMETER"));
    }
    let parameter = |name: &str| parameters.and_then(|p| p.get(name)).map(String::as_str);
    let apptouch = match parameter("account_flag") {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => {
            return Err(PluginError::invalid_argument(
                "proof.store_parameters.account_flag: must be \"0\" (HUAWEI ID) or \"1\" (AppTouch), the purchase's accountFlag",
            )
            .with_reason("INVALID_STORE_PARAMETER"));
        }
    };
    let subscription_id = match parameter("subscription_id") {
        Some("") => {
            return Err(PluginError::invalid_argument("proof.store_parameters.subscription_id: is empty")
                .with_reason("INVALID_STORE_PARAMETER"));
        }
        other => other,
    };
    Ok(Target { token, subscription_id, apptouch })
}

/// What makes a lookup distinct: AppTouch or not, the subscription id, the token, the product.
type LookupKey = (bool, Option<String>, String, String);

/// A lookup's outcome, shared by concurrent identical calls.
#[derive(Debug, Clone)]
enum Lookup {
    /// Signed data whose signature verified.
    Verified { data: Box<PurchaseData>, raw: String, cancellation: Option<Cancellation> },
    /// Signed data whose signature did not.
    Forged(String),
    /// A result code other than "0".
    Refused(Answer),
}

impl Store for Huawei {
    const NAME: &'static CStr = c"huawei";
    const CAPABILITIES: u64 = CAP_VERIFY | CAP_ACKNOWLEDGE | CAP_CONSUME | CAP_LIST_ITEMS;
    type Config = Config;

    fn info() -> proto::PluginInfo {
        let mut origins = vec![OAUTH.to_owned(), APPTOUCH_ORDERS.to_owned(), APPTOUCH_SUBSCRIPTIONS.to_owned()];
        for site in Site::ALL {
            let (orders, subscriptions, connect_api) = site.origins();
            origins.extend([orders, subscriptions, connect_api].map(str::to_owned));
        }
        proto::PluginInfo {
            display_name: "Huawei AppGallery".into(),
            methods: vec![],
            allowed_origins: origins,
            secrets: vec!["client_secret".into(), "connect_api_key".into()],
            proof_kinds: vec!["purchase_token".into()],
        }
    }

    fn new(config: Config, init: &InitContext) -> Result<Self, PluginError> {
        let store = init.store_id();
        checks::packages_listed(&config.packages, store)?;
        config.retry.check(store)?;
        if config.client_id.trim().is_empty() {
            return Err(PluginError::invalid_argument(format!(
                "config key `stores.{store}.config.client_id`: give the app ID from appgallery connect"
            )));
        }
        let key = PublicKey::from_base64(&config.public_key).map_err(|err| {
            PluginError::invalid_argument(format!(
                "config key `stores.{store}.config.public_key`: {err}; give the iap public key appgallery connect shows (base64)"
            ))
        })?;
        let hosts = Hosts::new(config.site, &config.endpoints);
        let iap = Iap::new(&config.client_id, init.secret("client_secret")?, &hosts.oauth);
        let connect = match config.connect_api_client_id.as_deref() {
            None => None,
            Some("") => {
                return Err(PluginError::invalid_argument(format!(
                    "config key `stores.{store}.config.connect_api_client_id`: is empty; remove it or name the api client"
                )));
            }
            Some(id) => {
                Some(ConnectApi::new(&hosts.connect_api, id, &config.client_id, init.secret("connect_api_key")?))
            }
        };
        Ok(Huawei { config, hosts, key, iap, connect, lookups: SingleFlight::new() })
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        let target = target(request.proof.as_ref())?;
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        let verdict = |verdict: Verdict, reason: String| proto::VerifyResponse {
            verdict: verdict.into(),
            verdict_reason: format!("huawei: {reason}"),
            purchase: None,
        };
        match self.lookup(cx, &target, &request.product_id).await? {
            Lookup::Verified { data, raw, cancellation } => {
                purchase::verdict(cx, &self.policy(), &request, target.token, &data, cancellation.as_ref(), &raw)
            }
            Lookup::Forged(reason) => Ok(verdict(Verdict::Invalid, reason)),
            Lookup::Refused(answer) => match answer.code.as_str() {
                "8" => Ok(verdict(
                    Verdict::NotFound,
                    format!("the user does not own the product (result code 8): {}", answer.message),
                )),
                "12" => Ok(verdict(
                    Verdict::NotFound,
                    format!(
                        "no such order record (result code 12; only a user's latest purchase of a product is known, so an older token is superseded): {}",
                        answer.message
                    ),
                )),
                "11" => Ok(verdict(
                    Verdict::Invalid,
                    format!("the buyer's account is abnormal or deregistered (result code 11): {}", answer.message),
                )),
                _ => Err(result_error(&answer, what(&target))),
            },
        }
    }

    async fn acknowledge(
        &self,
        cx: &Ctx,
        request: proto::AcknowledgeRequest,
    ) -> Result<proto::AcknowledgeResponse, PluginError> {
        let target = target(request.proof.as_ref())?;
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        let data = self.read_paid(cx, &target, &request.app_id, &request.product_id).await?;
        let already = match data.kind {
            // Huawei confirms subscriptions itself; there is no call to make.
            Some(2) => true,
            Some(1) if data.confirmed.is_none_or(|confirmed| confirmed == 1) => true,
            Some(1) => self.confirm(cx, &target, &request.product_id).await?,
            _ => {
                return Err(wrong_kind(
                    "huawei's confirmation of a consumable consumes it: consume a consumable, acknowledge a non-consumable",
                ));
            }
        };
        Ok(proto::AcknowledgeResponse { already_acknowledged: already })
    }

    async fn consume(&self, cx: &Ctx, request: proto::ConsumeRequest) -> Result<proto::ConsumeResponse, PluginError> {
        let target = target(request.proof.as_ref())?;
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        if target.subscription_id.is_some() {
            return Err(wrong_kind("a subscription cannot be consumed"));
        }
        let data = self.read_paid(cx, &target, &request.app_id, &request.product_id).await?;
        if data.kind != Some(0) {
            return Err(wrong_kind("consume is for consumables; acknowledge a non-consumable"));
        }
        let already = data.consumption_state == Some(1) || self.confirm(cx, &target, &request.product_id).await?;
        Ok(proto::ConsumeResponse { already_consumed: already })
    }

    async fn list_items(
        &self,
        cx: &Ctx,
        request: proto::ListItemsRequest,
    ) -> Result<proto::ListItemsResponse, PluginError> {
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        let connect = self.connect.as_ref().ok_or_else(|| {
            PluginError::failed_precondition(
                "config key `connect_api_client_id` is not set: huawei's catalog is appgallery connect's product api, which needs an api client",
            )
            .with_reason("CONNECT_API_NOT_CONFIGURED")
        })?;
        connect.list(cx, &self.config.retry, &request).await
    }
}

impl std::fmt::Debug for Huawei {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Huawei").field("config", &self.config).field("hosts", &self.hosts).finish_non_exhaustive()
    }
}

impl Huawei {
    fn policy(&self) -> Policy {
        Policy { client_id: self.config.client_id.clone(), allow_sandbox: self.config.allow_sandbox }
    }

    /// Asks Huawei about the proof's purchase and checks the signature;
    /// concurrent identical lookups share one request.
    async fn lookup(&self, cx: &Ctx, target: &Target<'_>, product: &str) -> Result<Lookup, PluginError> {
        let key =
            (target.apptouch, target.subscription_id.map(str::to_owned), target.token.to_owned(), product.to_owned());
        self.lookups.run(key, || self.ask(cx, target, product)).await
    }

    async fn ask(&self, cx: &Ctx, target: &Target<'_>, product: &str) -> Result<Lookup, PluginError> {
        let what = what(target);
        let (url, body, data_field) = match target.subscription_id {
            Some(subscription_id) => (
                format!("{}/sub/applications/v2/purchases/get", self.hosts.subscriptions(target.apptouch)),
                json!({"subscriptionId": subscription_id, "purchaseToken": target.token}),
                "inappPurchaseData",
            ),
            None => (
                format!("{}/applications/purchases/tokens/verify", self.hosts.orders(target.apptouch)),
                json!({"purchaseToken": target.token, "productId": product}),
                "purchaseTokenData",
            ),
        };
        let headers: &[(&str, &str)] = if self.config.request_pss && target.subscription_id.is_none() {
            &[("HW-IAP-APPINFO", PSS_APPINFO)]
        } else {
            &[]
        };
        let answer = self.iap.call(cx, &self.config.retry, what, &url, &body, headers).await?;
        if answer.code != "0" {
            return Ok(Lookup::Refused(answer));
        }
        let malformed = |problem: String| {
            PluginError::malformed_response(200, format!("huawei answered the {what} with {problem}"))
        };
        let signed = answer.text(data_field);
        if signed.is_empty() {
            return Err(malformed(format!("result code 0 and no {data_field}")));
        }
        let signature = answer.text("dataSignature");
        let algorithm = match answer.text("signatureAlgorithm") {
            "" | PKCS1 => PKCS1,
            PSS => PSS,
            other => return Err(malformed(format!("signatureAlgorithm {other:?}, which iapd does not know"))),
        };
        // The order service always signs; whether the subscription service
        // always does is not documented, so its signature is checked when sent.
        if (!signature.is_empty() || target.subscription_id.is_none())
            && let Err(err) = self.key.verify(signed, signature, algorithm)
        {
            cx.log(log::Level::Warn, &format!("huawei: the {what}'s signed data was refused: {err}"));
            return Ok(Lookup::Forged(err.to_string()));
        }
        let mut data: PurchaseData = serde_json::from_str(signed)
            .map_err(|_| malformed(format!("a {data_field} that is not the purchase data expected")))?;
        if target.subscription_id.is_some() {
            // The subscription service answers only for subscriptions.
            data.kind.get_or_insert(2);
        }
        let cancellation =
            if self.config.check_cancelled_list && target.subscription_id.is_none() && data.purchase_state == Some(0) {
                self.cancelled(cx, target, &data).await?
            } else {
                None
            };
        Ok(Lookup::Verified { data: Box::new(data), raw: answer.raw, cancellation })
    }

    /// The purchase's row in `cancelledList` since it was made, if any.
    async fn cancelled(
        &self,
        cx: &Ctx,
        target: &Target<'_>,
        data: &PurchaseData,
    ) -> Result<Option<Cancellation>, PluginError> {
        let url = format!("{}/applications/v2/purchases/cancelledList", self.hosts.orders(target.apptouch));
        let start = data.purchase_time.unwrap_or_default();
        let end = cx.now_unix_millis().max(start + 1);
        let mut continuation = String::new();
        for _ in 0..MAX_CANCELLED_PAGES {
            let body =
                json!({"startAt": start, "endAt": end, "maxRows": 1000, "type": 0, "continuationToken": continuation});
            let answer = self.iap.call(cx, &self.config.retry, "cancelled list query", &url, &body, &[]).await?;
            if answer.code != "0" {
                return Err(result_error(&answer, "cancelled list query"));
            }
            // A JSON string holding the array, as documented; an array is read too.
            let rows = match answer.fields.get("cancelledPurchaseList") {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::String(text)) => serde_json::from_str::<Vec<Cancellation>>(text),
                Some(other) => serde_json::from_value::<Vec<Cancellation>>(other.clone()),
            }
            .map_err(|_| {
                PluginError::malformed_response(200, "huawei answered the cancelled list query with a cancelledPurchaseList that is not a list of purchases")
            })?;
            if let Some(row) = rows.into_iter().find(|row| row.purchase_token == target.token) {
                return Ok(Some(row));
            }
            continuation = answer.text("continuationToken").to_owned();
            if continuation.is_empty() {
                return Ok(None);
            }
        }
        cx.log(
            log::Level::Warn,
            &format!("huawei: the cancelled list since the purchase has more than {MAX_CANCELLED_PAGES} pages; the rest was not read"),
        );
        Ok(None)
    }

    /// The proof's purchase, read first for an acknowledge or consume: it
    /// must verify and be paid.
    async fn read_paid(
        &self,
        cx: &Ctx,
        target: &Target<'_>,
        app_id: &str,
        product: &str,
    ) -> Result<PurchaseData, PluginError> {
        let (data, raw, cancellation) = match self.lookup(cx, target, product).await? {
            Lookup::Verified { data, raw, cancellation } => (data, raw, cancellation),
            Lookup::Forged(reason) => {
                return Err(
                    PluginError::failed_precondition(format!("huawei: {reason}")).with_reason("INVALID_PURCHASE")
                );
            }
            Lookup::Refused(answer) => return Err(result_error(&answer, what(target))),
        };
        let request =
            proto::VerifyRequest { app_id: app_id.to_owned(), product_id: product.to_owned(), ..Default::default() };
        let judged = purchase::verdict(cx, &self.policy(), &request, target.token, &data, cancellation.as_ref(), &raw)?;
        let reason = match judged.verdict() {
            Verdict::Valid => return Ok(*data),
            Verdict::Pending => "PURCHASE_PENDING",
            Verdict::Canceled => "PURCHASE_CANCELED",
            Verdict::Refunded => "PURCHASE_REFUNDED",
            Verdict::Expired => "PURCHASE_EXPIRED",
            _ => "INVALID_PURCHASE",
        };
        Err(PluginError::failed_precondition(judged.verdict_reason).with_reason(reason))
    }

    /// Confirms a one-time purchase; whether it was confirmed (or consumed) already.
    async fn confirm(&self, cx: &Ctx, target: &Target<'_>, product: &str) -> Result<bool, PluginError> {
        let url = format!("{}/applications/v2/purchases/confirm", self.hosts.orders(target.apptouch));
        let body = json!({"purchaseToken": target.token, "productId": product});
        let answer = self.iap.call(cx, &self.config.retry, "confirmation", &url, &body, &[]).await?;
        match answer.code.as_str() {
            "0" => Ok(false),
            "9" => Ok(true),
            _ => Err(result_error(&answer, "confirmation")),
        }
    }
}

fn what(target: &Target<'_>) -> &'static str {
    if target.subscription_id.is_some() { "subscription query" } else { "order verification" }
}

fn wrong_kind(message: &str) -> PluginError {
    PluginError::failed_precondition(format!("huawei: {message}")).with_reason("WRONG_PRODUCT_TYPE")
}

/// The error for a result code, with Huawei's name for it as the reason and
/// the code in `ErrorInfo.metadata["response_code"]`.
fn result_error(answer: &Answer, what: &str) -> PluginError {
    let rights_invalid = api::rights_invalid(answer);
    let (code, reason, detail) = match answer.code.as_str() {
        "5" => (
            Code::FailedPrecondition,
            "IAP_APP_IAP_NOT_ACTIVATED",
            "in-app purchases are not enabled for the app in appgallery connect",
        ),
        "6" if rights_invalid => (
            Code::InvalidArgument,
            "RIGHTS_INVALID",
            "the token is of the other service: a subscription needs store_parameters.subscription_id, a one-time purchase none",
        ),
        "8" => (Code::NotFound, "IAP_RESPONSE_RESULT_ITEM_NOT_OWNED", "the user does not own the product"),
        "9" => (
            Code::FailedPrecondition,
            "IAP_RESPONSE_RESULT_ITEM_CONSUMED_OR_ACKNED",
            "the purchase is consumed or confirmed already",
        ),
        "11" => {
            (Code::FailedPrecondition, "IAP_USER_ACCOUNT_INVALID", "the buyer's account is abnormal or deregistered")
        }
        "12" => (
            Code::NotFound,
            "IAP_RECORD_NOT_EXIST",
            "no such order record; only a user's latest purchase of a product is known",
        ),
        _ => (Code::Unknown, "UNKNOWN_RESPONSE_CODE", "a result code iapd does not know"),
    };
    PluginError::new(
        code,
        format!("huawei answered the {what} with result code {} ({detail}): {}", answer.code, answer.message),
    )
    .with_reason(reason)
    .with_metadata("response_code", answer.code.clone())
    .with_http_status(200)
}

export_store!(Huawei);

#[cfg(test)]
mod tests;
