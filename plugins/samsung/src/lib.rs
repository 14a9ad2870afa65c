//! The Samsung store: Galaxy Store in-app purchases through Samsung's IAP
//! server APIs, and tickets of the legacy Tizen Store.
//!
//! - Verify a Galaxy Store purchase → `GET {receipt_root}/iap/v6/receipt?purchaseID=<id>`,
//!   no auth. Every value in the answer is a string; `status` is `success`,
//!   `cancel` or `fail`, and a `fail` with errorCode 9135 ("not exist order")
//!   or 9153 (invalid purchase id) is the one answer that proves a purchase
//!   never happened: a verdict, not an error.
//! - Verify a Tizen Store ticket (the proof's `store_parameters` carry
//!   `param1`..`param5`) → `GET {tizen_verify_url}?purchaseID=…&param1=…&param5=…`,
//!   answering `status` `"true"` or `"false"`. The URL comes from the
//!   config, never from the caller.
//! - Acknowledge / Consume → `PATCH {devapi_root}/iap/seller/v6/applications/<package>/purchases/<id>`
//!   with `{"action"}`; Samsung answers per item, code 4 meaning "already done".
//! - ListItems → the IAP Publish API's item pages, filtered and re-paged
//!   here, then the subscriptions the config declares (Samsung's item API
//!   does not list subscriptions).
//! - The Developer API authenticates with a service account: an RS256 JWT
//!   (20 minutes at most) buys an access token that never expires; it is
//!   cached, and refreshed once after a 401.
//! - Concurrent identical Verifies (the same receipt, the same ticket) share
//!   one request to Samsung.

#![forbid(unsafe_code)]

mod catalog;
mod devapi;
mod receipt;

use iapd_sdk_plugin::checks;
use iapd_sdk_plugin::path_segment as segment;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto;
use iapd_sdk_plugin::retry::{Retry, with_retries};
use iapd_sdk_plugin::sync::SingleFlight;
use serde::Deserialize;

use crate::devapi::{Action, DevApi};
use crate::receipt::TizenTicket;

/// The largest Samsung item page iapd asks for. Samsung documents no maximum.
const MAX_CATALOG_PAGE_SIZE: u32 = 100;

/// The store.
pub struct Samsung {
    config: Config,
    store_id: String,
    /// `None` without `service_account_id`: Verify works, the Developer API does not.
    devapi: Option<DevApi>,
    /// One verify GET per URL at a time: the URL is all that makes the
    /// request (the purchase id, or the ticket's id and parameters).
    lookups: SingleFlight<String, Result<HttpResponse, PluginError>>,
}

/// `[stores.<id>.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The package names served, and for Tizen tickets the item group ids.
    packages: Vec<String>,
    /// The Seller Portal service account, for acknowledge, consume and the
    /// catalog; its RSA private key is the secret `private_key`.
    #[serde(default)]
    service_account_id: Option<String>,
    /// The origin of the receipt API.
    #[serde(default = "default_receipt_root")]
    receipt_root: String,
    /// The origin of the Galaxy Store Developer API.
    #[serde(default = "default_devapi_root")]
    devapi_root: String,
    /// The Tizen Store's verify URL (the app's `_ticketVerifyUrl`).
    #[serde(default = "default_tizen_verify_url")]
    tizen_verify_url: String,
    /// Whether purchases made in test mode are valid (with ENVIRONMENT_TEST).
    #[serde(default)]
    allow_test_purchases: bool,
    /// Items per Samsung catalog page fetched (`size`), 1 to 100.
    #[serde(default = "default_catalog_page_size")]
    catalog_page_size: u32,
    /// The subscriptions ListItems shows: Samsung's item API lists none.
    #[serde(default)]
    subscriptions: Vec<catalog::Subscription>,
    /// Retries of transient failures (5xx, 429, timeouts).
    #[serde(default)]
    retry: Retry,
}

fn default_receipt_root() -> String {
    "https://iap.samsungapps.com".to_owned()
}
fn default_devapi_root() -> String {
    "https://devapi.samsungapps.com".to_owned()
}
fn default_tizen_verify_url() -> String {
    "https://iap.tizenstore.com/appsItemVerifyIAPReceipt.as".to_owned()
}
fn default_catalog_page_size() -> u32 {
    MAX_CATALOG_PAGE_SIZE
}

impl Store for Samsung {
    const NAME: &'static CStr = c"samsung";
    const CAPABILITIES: u64 = CAP_VERIFY | CAP_ACKNOWLEDGE | CAP_CONSUME | CAP_LIST_ITEMS;
    type Config = Config;

    fn info() -> proto::PluginInfo {
        let tizen_origin = default_tizen_verify_url().trim_end_matches("/appsItemVerifyIAPReceipt.as").to_owned();
        proto::PluginInfo {
            display_name: "Samsung Galaxy Store and Tizen Store".into(),
            methods: vec![],
            allowed_origins: vec![default_receipt_root(), default_devapi_root(), tizen_origin],
            secrets: vec!["private_key".into()],
            proof_kinds: vec!["purchase_id".into()],
        }
    }

    fn new(config: Config, init: &InitContext) -> Result<Self, PluginError> {
        let store_id = init.store_id().to_owned();
        checks::packages_listed(&config.packages, &store_id)?;
        config.retry.check(&store_id)?;
        if !(1..=MAX_CATALOG_PAGE_SIZE).contains(&config.catalog_page_size) {
            return Err(PluginError::invalid_argument(format!(
                "config key `stores.{store_id}.config.catalog_page_size`: must be 1 to {MAX_CATALOG_PAGE_SIZE}"
            )));
        }
        if config.tizen_verify_url.contains(['?', '#']) {
            return Err(PluginError::invalid_argument(format!(
                "config key `stores.{store_id}.config.tizen_verify_url`: give the url without a query; iapd adds it"
            )));
        }
        let devapi = match config.service_account_id.as_deref() {
            None => None,
            Some("") => {
                return Err(PluginError::invalid_argument(format!(
                    "config key `stores.{store_id}.config.service_account_id`: is empty; remove it or name the service account"
                )));
            }
            Some(id) => Some(DevApi::new(&config.devapi_root, id, &init.secret("private_key")?)?),
        };
        Ok(Samsung { config, store_id, devapi, lookups: SingleFlight::new() })
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        let (purchase_id, ticket) = proof(request.proof.as_ref())?;
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        match ticket {
            None => {
                let url =
                    format!("{}/iap/v6/receipt?purchaseID={}", root(&self.config.receipt_root), segment(purchase_id));
                let response = self.get(cx, "receipt", &url).await?;
                receipt::galaxy_verdict(cx, &response, &request, self.config.allow_test_purchases)
            }
            Some(ticket) => {
                let url = format!("{}?{}", self.config.tizen_verify_url, ticket.query(purchase_id));
                let response = self.get(cx, "tizen ticket check", &url).await?;
                receipt::tizen_verdict(&response, &request.product_id, self.config.allow_test_purchases)
            }
        }
    }

    async fn acknowledge(
        &self,
        cx: &Ctx,
        request: proto::AcknowledgeRequest,
    ) -> Result<proto::AcknowledgeResponse, PluginError> {
        let purchase_id = self.devapi_target(request.proof.as_ref(), &request.app_id, "acknowledge")?;
        let already =
            self.devapi()?.update(cx, &self.config.retry, &request.app_id, purchase_id, Action::Acknowledge).await?;
        Ok(proto::AcknowledgeResponse { already_acknowledged: already })
    }

    async fn consume(&self, cx: &Ctx, request: proto::ConsumeRequest) -> Result<proto::ConsumeResponse, PluginError> {
        let purchase_id = self.devapi_target(request.proof.as_ref(), &request.app_id, "consume")?;
        let already =
            self.devapi()?.update(cx, &self.config.retry, &request.app_id, purchase_id, Action::Consume).await?;
        Ok(proto::ConsumeResponse { already_consumed: already })
    }

    async fn list_items(
        &self,
        cx: &Ctx,
        request: proto::ListItemsRequest,
    ) -> Result<proto::ListItemsResponse, PluginError> {
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        let kind = request.kind();
        let page_size = match request.page_size {
            size if size <= 0 => 50,
            size => usize::try_from(size.min(1000)).unwrap_or(50),
        };
        let mut pager =
            catalog::Pager::new(kind, &request.page_token, &self.config.subscriptions, self.config.catalog_page_size)?;
        while let Some(page) = pager.wanted_samsung_page(page_size) {
            let answer = self
                .devapi()?
                .items(cx, &self.config.retry, &request.app_id, page, self.config.catalog_page_size)
                .await?;
            pager.take_samsung_page(answer, page_size)?;
        }
        Ok(pager.finish())
    }
}

impl std::fmt::Debug for Samsung {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Samsung").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Samsung {
    fn devapi(&self) -> Result<&DevApi, PluginError> {
        self.devapi.as_ref().ok_or_else(|| {
            PluginError::failed_precondition(format!(
                "config key `stores.{}.config.service_account_id` is not set: acknowledge, consume and the catalog use samsung's developer api, which needs a service account",
                self.store_id
            ))
            .with_reason("SERVICE_ACCOUNT_NOT_CONFIGURED")
        })
    }

    /// The purchase id an acknowledge or consume acts on: a Galaxy Store
    /// purchase of an allowed package.
    fn devapi_target<'a>(
        &self,
        proof_field: Option<&'a proto::Proof>,
        app_id: &str,
        what: &str,
    ) -> Result<&'a str, PluginError> {
        let (purchase_id, ticket) = proof(proof_field)?;
        checks::allowed_package(&self.config.packages, app_id)?;
        if ticket.is_some() {
            return Err(PluginError::failed_precondition(format!(
                "the tizen store has no server-side {what}: a tizen ticket is only verified"
            ))
            .with_reason("OPERATION_NOT_SUPPORTED"));
        }
        Ok(purchase_id)
    }

    /// A GET of the unauthenticated verify APIs, retrying 429, 5xx and
    /// timeouts, shared by concurrent identical calls: each judges its own
    /// copy (package, item and user included).
    async fn get(&self, cx: &Ctx, what: &str, url: &str) -> Result<HttpResponse, PluginError> {
        self.lookups
            .run(url.to_owned(), || {
                with_retries(cx, &self.config.retry, what, || devapi::exchange(cx, HttpRequest::get(url), what))
            })
            .await
    }
}

/// The origin or URL prefix `value`, without a trailing `/`.
fn root(value: &str) -> &str {
    value.trim_end_matches('/')
}

/// The purchase id of `proof`, and the Tizen ticket parameters if it has any.
fn proof(proof: Option<&proto::Proof>) -> Result<(&str, Option<TizenTicket<'_>>), PluginError> {
    match proof.and_then(|proof| proof.kind.as_ref().map(|kind| (proof, kind))) {
        Some((proof, proto::proof::Kind::PurchaseId(id))) if !id.is_empty() => {
            Ok((id, TizenTicket::from_parameters(&proof.store_parameters)?))
        }
        _ => Err(PluginError::invalid_argument(
            "proof: samsung verifies a `purchase_id` (with `store_parameters` param1..param5 for a tizen ticket)",
        )
        .with_reason("UNSUPPORTED_PROOF")),
    }
}

export_store!(Samsung);

#[cfg(test)]
mod tests;
