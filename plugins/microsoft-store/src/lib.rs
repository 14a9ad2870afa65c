//! The Microsoft Store: add-on purchases of Windows apps and games through
//! the Microsoft Store collections and purchase services.
//!
//! - The proof is the user's **Store ID key** (a collections key, from
//!   `GetCustomerCollectionsIdAsync` on the client): there is no receipt to
//!   check; Microsoft is asked what the key's account owns.
//! - Verify → `POST {collections_root}/v9.0/collections/publisherQuery` for the
//!   product (and SKU); the item's `status` (`Active`, `Expired`, `Revoked`,
//!   `Banned`), dates and `quantity` make the verdict. A subscription
//!   (`Pass`) is refined by its recurrence (`POST {purchase_root}/v8.0/b2b/recurrences/query`)
//!   when the proof carries the user's purchase key too.
//! - Consume → `POST {collections_root}/v8.0/collections/consume` with a
//!   `trackingId`: the same id on every retry, so a repeat never consumes
//!   twice. Developer-managed consumables get one derived from the purchase;
//!   store-managed ones (a balance) need the caller's.
//! - Microsoft has no acknowledge and no catalog service: ListItems serves
//!   the configured catalog.
//! - Every call carries an Entra ID client-credentials token for
//!   `https://onestore.microsoft.com`, cached, refreshed once after a 401.
//! - Concurrent identical lookups share one request.

#![forbid(unsafe_code)]

mod api;
mod auth;
pub mod clawback;
mod key;
mod verdict;

use std::collections::HashMap;

use iapd_sdk_plugin::catalog::{self, CatalogEntry};
use iapd_sdk_plugin::checks;
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, Environment, Verdict};
use iapd_sdk_plugin::retry::Retry;
use iapd_sdk_plugin::sync::SingleFlight;
use serde::Deserialize;

use crate::api::{Api, CollectionItem, Lookup, Recurrence, Reply};
use crate::key::{KeyKind, StoreIdKey};
use crate::verdict::{Consumability, Facts};

/// What Verify reads of `store_parameters`.
const VERIFY_PARAMETERS: &[&str] = &["sku_id", "purchase_key"];
/// What Consume reads of `store_parameters`.
const CONSUME_PARAMETERS: &[&str] = &["sku_id", "tracking_id", "quantity"];
/// Why nothing else is read.
const PARAMETERS_HINT: &str = "the services' urls and the sandbox come from the config";

/// The store.
pub struct MicrosoftStore {
    config: Config,
    api: Api,
    /// One collections query per (key, product, sku) at a time.
    lookups: SingleFlight<LookupKey, Result<Lookup<CollectionItem>, PluginError>>,
    /// One recurrences query per purchase key at a time.
    recurrences: SingleFlight<String, Result<Lookup<Recurrence>, PluginError>>,
}

/// A collections lookup: the user's key, the product, the SKU.
type LookupKey = (String, String, Option<String>);

/// `[stores.<id>.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Store IDs of the apps served (`app_id`).
    packages: Vec<String>,
    /// The Entra tenant of the app registration.
    tenant_id: String,
    /// The Entra application (client) id entered in Partner Center; its
    /// secret is the secret `client_secret`.
    client_id: String,
    /// The sandbox whose purchases this store sees: `RETAIL`, or a
    /// development sandbox such as `XDKS.1`.
    #[serde(default = "default_sandbox")]
    sandbox: String,
    /// What ListItems answers: Microsoft has no catalog service.
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
    /// Entra's origin.
    #[serde(default = "default_login_root")]
    login_root: String,
    /// The collections service's origin.
    #[serde(default = "default_collections_root")]
    collections_root: String,
    /// The purchase service's origin.
    #[serde(default = "default_purchase_root")]
    purchase_root: String,
    /// Retries of transient failures (429, 5xx, timeouts).
    #[serde(default)]
    retry: Retry,
}

fn default_sandbox() -> String {
    api::RETAIL.to_owned()
}
fn default_login_root() -> String {
    "https://login.microsoftonline.com".to_owned()
}
fn default_collections_root() -> String {
    "https://collections.mp.microsoft.com".to_owned()
}
fn default_purchase_root() -> String {
    "https://purchase.mp.microsoft.com".to_owned()
}

impl Store for MicrosoftStore {
    const NAME: &'static CStr = c"microsoft_store";
    const CAPABILITIES: u64 = CAP_VERIFY | CAP_CONSUME | CAP_LIST_ITEMS;
    type Config = Config;

    fn info() -> proto::PluginInfo {
        proto::PluginInfo {
            display_name: "Microsoft Store".into(),
            methods: vec![],
            allowed_origins: vec![default_login_root(), default_collections_root(), default_purchase_root()],
            secrets: vec!["client_secret".into()],
            proof_kinds: vec!["purchase_token".into()],
        }
    }

    fn new(config: Config, init: &InitContext) -> Result<Self, PluginError> {
        let store = init.store_id();
        checks::packages_listed(&config.packages, store)?;
        config.retry.check(store)?;
        for (key, value) in [("tenant_id", &config.tenant_id), ("client_id", &config.client_id)] {
            if value.trim().is_empty() {
                return Err(PluginError::invalid_argument(format!(
                    "config key `stores.{store}.config.{key}`: is empty; give the entra app registration's {key}"
                )));
            }
        }
        let sandbox_ok = !config.sandbox.is_empty()
            && config.sandbox.len() <= 64
            && config.sandbox.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !sandbox_ok {
            return Err(PluginError::invalid_argument(format!(
                "config key `stores.{store}.config.sandbox`: `RETAIL` or a sandbox id such as `XDKS.1`"
            )));
        }
        let entra =
            auth::Entra::new(&config.login_root, &config.tenant_id, &config.client_id, init.secret("client_secret")?);
        let api = Api {
            entra,
            collections_root: config.collections_root.trim_end_matches('/').to_owned(),
            purchase_root: config.purchase_root.trim_end_matches('/').to_owned(),
            sandbox: config.sandbox.clone(),
            retry: config.retry.clone(),
        };
        Ok(MicrosoftStore { config, api, lookups: SingleFlight::new(), recurrences: SingleFlight::new() })
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        let (key, parameters) = proof(request.proof.as_ref(), VERIFY_PARAMETERS)?;
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        let sku = parameter(parameters, "sku_id");
        let now = cx.now_unix_millis();
        let claims = match self.usable_key(key, KeyKind::Collections, now) {
            Ok(claims) => claims,
            Err(reason) => return Ok(invalid(reason)),
        };
        let items = match self.lookup(cx, key, &request.product_id, sku).await? {
            Lookup::Items(items) => items,
            Lookup::KeyRefused(error) => return Ok(invalid(key_refused(&error))),
        };
        let Some(found) = verdict::pick(&items, &request.product_id, sku) else {
            return Ok(proto::VerifyResponse {
                verdict: Verdict::NotFound.into(),
                verdict_reason: format!(
                    "microsoft's collections has no item of product `{}` for this store id key (sandbox {})",
                    request.product_id, self.config.sandbox
                ),
                purchase: None,
            });
        };
        let purchase_key = parameter(parameters, "purchase_key").filter(|_| found.item.product_kind == "Pass");
        let recurrence = match purchase_key {
            None => None,
            Some(purchase_key) => {
                if let Err(reason) = self.usable_key(purchase_key, KeyKind::Purchase, now) {
                    return Ok(invalid(format!("store_parameters.purchase_key: {reason}")));
                }
                match self.subscriptions(cx, purchase_key).await? {
                    Lookup::Items(recurrences) => verdict::recurrence_of(&found.item, &recurrences).cloned(),
                    Lookup::KeyRefused(error) => {
                        return Ok(invalid(format!("store_parameters.purchase_key: {}", key_refused(&error))));
                    }
                }
            }
        };
        let facts = Facts {
            now_millis: now,
            environment: self.environment(),
            binding: &claims.user_id,
            user_id: &request.user_id,
        };
        verdict::verify_response(found, recurrence.as_ref(), &facts)
    }

    async fn consume(&self, cx: &Ctx, request: proto::ConsumeRequest) -> Result<proto::ConsumeResponse, PluginError> {
        let (key, parameters) = proof(request.proof.as_ref(), CONSUME_PARAMETERS)?;
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        let sku = parameter(parameters, "sku_id");
        self.usable_key(key, KeyKind::Collections, cx.now_unix_millis()).map_err(|reason| {
            PluginError::invalid_argument(format!("proof: {reason}")).with_reason("INVALID_STORE_ID_KEY")
        })?;
        let items = match self.lookup(cx, key, &request.product_id, sku).await? {
            Lookup::Items(items) => items,
            Lookup::KeyRefused(error) => return Err(key_refused_error(&error)),
        };
        let Some(found) = verdict::pick(&items, &request.product_id, sku) else {
            return Err(PluginError::not_found(format!(
                "microsoft's collections has no item of product `{}` for this store id key",
                request.product_id
            ))
            .with_reason("PRODUCT_NOT_OWNED"));
        };
        let item = &found.item;
        match item.status.as_str() {
            "Active" => {}
            "Revoked" => {
                return Err(PluginError::failed_precondition("the purchase was revoked at microsoft (refunded)")
                    .with_reason("PURCHASE_REFUNDED"));
            }
            status => {
                return Err(PluginError::failed_precondition(format!(
                    "the purchase is not active at microsoft (status {status})"
                ))
                .with_reason("PURCHASE_NOT_ACTIVE"));
            }
        }
        let consumability = verdict::consumability(&item.product_kind);
        let (tracking_id, remove_quantity) = match consumability {
            Consumability::Not => {
                return Err(PluginError::failed_precondition(format!(
                    "product `{}` is a {}, which is never consumed",
                    request.product_id, item.product_kind
                ))
                .with_reason("NOT_CONSUMABLE"));
            }
            Consumability::DeveloperManaged => {
                if self.config.sandbox != api::RETAIL {
                    // Microsoft consumes developer-managed consumables in a
                    // development sandbox only with Xbox (XSTS) auth.
                    return Err(PluginError::failed_precondition(format!(
                        "microsoft does not consume developer-managed consumables in sandbox {} with a store id key",
                        self.config.sandbox
                    ))
                    .with_reason("SANDBOX_CONSUME_UNSUPPORTED"));
                }
                if parameter(parameters, "quantity").is_some_and(|quantity| quantity != "1") {
                    return Err(PluginError::invalid_argument(
                        "proof.store_parameters.quantity: a developer-managed consumable is consumed whole (1)",
                    )
                    .with_reason("INVALID_STORE_PARAMETER"));
                }
                let tracking_id = parameter(parameters, "tracking_id")
                    .map_or_else(|| derived_tracking_id(&request.product_id, item), str::to_owned);
                (tracking_id, None)
            }
            Consumability::StoreManaged => {
                // A balance has no purchase to derive an id from: the caller
                // names each consume, and replays it with the same id.
                let tracking_id = parameter(parameters, "tracking_id").ok_or_else(|| {
                    PluginError::invalid_argument(
                        "proof.store_parameters.tracking_id: a store-managed consumable needs a tracking id (a guid you keep until microsoft answers)",
                    )
                    .with_reason("MISSING_STORE_PARAMETER")
                })?;
                let quantity = match parameter(parameters, "quantity") {
                    None => 1,
                    Some(quantity) => {
                        quantity.parse::<i64>().ok().filter(|quantity| *quantity >= 1).ok_or_else(|| {
                            PluginError::invalid_argument("proof.store_parameters.quantity: a whole number, at least 1")
                                .with_reason("INVALID_STORE_PARAMETER")
                        })?
                    }
                };
                (tracking_id.to_owned(), Some(quantity))
            }
        };
        if !is_guid(&tracking_id) {
            return Err(PluginError::invalid_argument("proof.store_parameters.tracking_id: not a guid")
                .with_reason("INVALID_STORE_PARAMETER"));
        }
        match self.api.consume(cx, key, &item.product_id, &tracking_id, remove_quantity).await? {
            Reply::Success(response) => {
                let consumed: api::Consumed = response.json()?;
                cx.log(
                    iapd_sdk_plugin::log::Level::Debug,
                    &format!(
                        "microsoft consumed {} (tracking id {tracking_id}): {} left",
                        item.product_id, consumed.new_quantity
                    ),
                );
                // Microsoft answers a replayed developer-managed consume
                // without the orders it used: it was consumed before.
                let already =
                    consumability == Consumability::DeveloperManaged && consumed.order_transactions.is_empty();
                Ok(proto::ConsumeResponse { already_consumed: already })
            }
            Reply::KeyRefused(error) => Err(key_refused_error(&error)),
            // Fulfilled before, under another tracking id.
            Reply::Refused(400, _) if consumability == Consumability::DeveloperManaged && item.quantity == 0 => {
                Ok(proto::ConsumeResponse { already_consumed: true })
            }
            Reply::Refused(status, error) => {
                let code = match status {
                    400 | 409 => Code::FailedPrecondition,
                    status => Code::for_refusal(status),
                };
                Err(error.to_error(code, status, "consume"))
            }
        }
    }

    async fn list_items(
        &self,
        _cx: &Ctx,
        request: proto::ListItemsRequest,
    ) -> Result<proto::ListItemsResponse, PluginError> {
        catalog::page(&self.config.catalog, &self.config.packages, &request)
    }
}

impl std::fmt::Debug for MicrosoftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicrosoftStore").field("config", &self.config).finish_non_exhaustive()
    }
}

impl MicrosoftStore {
    fn environment(&self) -> Environment {
        if self.config.sandbox == api::RETAIL { Environment::Production } else { Environment::Sandbox }
    }

    /// The key's claims, or why Microsoft would refuse it.
    fn usable_key(&self, key: &str, kind: KeyKind, now_millis: i64) -> Result<StoreIdKey, String> {
        let claims =
            StoreIdKey::read(key).map_err(|why| format!("the proof is not a microsoft store id key: {why}"))?;
        match claims.refusal(kind, &self.config.client_id, now_millis.div_euclid(1000)) {
            Some(reason) => Err(reason),
            None => Ok(claims),
        }
    }

    /// The collections query, shared by concurrent identical calls; each
    /// judges its own copy (its user included).
    async fn lookup(
        &self,
        cx: &Ctx,
        key: &str,
        product: &str,
        sku: Option<&str>,
    ) -> Result<Lookup<CollectionItem>, PluginError> {
        let flight = (key.to_owned(), product.to_owned(), sku.map(str::to_owned));
        self.lookups.run(flight, || self.api.query(cx, key, product, sku)).await
    }

    async fn subscriptions(&self, cx: &Ctx, purchase_key: &str) -> Result<Lookup<Recurrence>, PluginError> {
        self.recurrences.run(purchase_key.to_owned(), || self.api.recurrences(cx, purchase_key)).await
    }
}

/// The proof's collections key and its `store_parameters`, of which only `allowed` may appear.
fn proof<'a>(
    proof: Option<&'a proto::Proof>,
    allowed: &[&str],
) -> Result<(&'a str, &'a HashMap<String, String>), PluginError> {
    let key = checks::purchase_token(proof, "microsoft store (the user's collections store id key)")?;
    let parameters = &proof.expect("a purchase token is in a proof").store_parameters;
    checks::only_store_parameters(parameters, allowed, PARAMETERS_HINT)?;
    Ok((key, parameters))
}

fn parameter<'a>(parameters: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    parameters.get(name).map(String::as_str).filter(|value| !value.is_empty())
}

fn invalid(reason: String) -> proto::VerifyResponse {
    proto::VerifyResponse { verdict: Verdict::Invalid.into(), verdict_reason: reason, purchase: None }
}

fn key_refused(error: &api::ServiceError) -> String {
    format!("microsoft refused the store id key ({}): {}; the client must get a new key", error.reason(), error.message)
}

fn key_refused_error(error: &api::ServiceError) -> PluginError {
    PluginError::invalid_argument(format!("proof: {}", key_refused(error))).with_reason(error.reason())
}

/// The tracking id of consuming one developer-managed purchase: the same
/// for every consume of that purchase (its order), so a repeat is one
/// consume at Microsoft, and a new purchase of the product gets a new one.
fn derived_tracking_id(product: &str, item: &CollectionItem) -> String {
    let input = format!("iapd microsoft-store consume\n{product}\n{}\n{}", item.transaction_id, item.id);
    let digest = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    // RFC 9562 version 8 (custom), variant 10.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn is_guid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

export_store!(MicrosoftStore);

#[cfg(test)]
mod tests;
