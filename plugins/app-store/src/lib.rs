//! The Apple App Store: three proofs, one set of rules.
//!
//! - `signed_transaction` (StoreKit 2): verified offline, no network ([`jws`]):
//!   ES256, the `x5c` chain to a trusted root (Apple Root CA - G3 unless
//!   configured), Apple's marker OIDs, every certificate valid at the
//!   transaction's `signedDate`.
//! - `transaction_id`: Get Transaction Info on the App Store Server API
//!   ([`api`]), production first, the sandbox on Apple's "not found" when
//!   sandbox data is allowed; the signed answer goes through the same
//!   offline verification.
//! - `receipt`: the legacy `verifyReceipt` ([`receipt`]), production first,
//!   the sandbox on status 21007.
//! - Concurrent identical lookups (a transaction id, a receipt) share one
//!   request to Apple; a signed transaction needs none.
//!
//! Then the same policy for all ([`Policy`]): the bundle id must be the
//! request's app and one the config lists, the environment one the config
//! accepts, the product the request's; a revocation is REFUNDED, an ended
//! subscription EXPIRED, and an `appAccountToken` that differs from the
//! caller's `user_id` USER_MISMATCH.
//!
//! Acknowledge is Apple's Finish Transaction. Apple has no server-side
//! consume and no catalog API in the App Store Server API: Consume is not a
//! capability, and ListItems serves the catalog declared in the config.

#![forbid(unsafe_code)]

mod api;
pub mod jws;
mod receipt;

use iapd_sdk_plugin::catalog::{self, CatalogEntry};
use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{
    self, AcknowledgementState, ConsumptionState, Environment, ProductKind, PurchaseState, Verdict,
};
use iapd_sdk_plugin::retry::Retry;
use iapd_sdk_plugin::sync::SingleFlight;
use iapd_sdk_plugin::{Secret, checks, region};
use serde::Deserialize;

use crate::api::ServerApi;
use crate::jws::Verifier;

/// The store.
#[derive(Debug)]
pub struct AppStore {
    config: Config,
    verifier: Verifier,
    api: Option<ServerApi>,
    shared_secret: Option<Secret>,
    /// One `verifyReceipt` lookup per receipt at a time.
    receipts: SingleFlight<String, receipt::Lookup>,
}

/// `[stores.<id>.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The bundle ids served.
    packages: Vec<String>,
    /// The environment this store serves: `production` or `sandbox`.
    #[serde(default)]
    environment: Served,
    /// In production, accept sandbox purchases too (App Review buys in the
    /// sandbox against the production build).
    #[serde(default)]
    allow_sandbox: bool,
    /// Root certificates (PEM) signed data must chain to; Apple Root CA - G3
    /// if empty.
    #[serde(default)]
    trusted_roots: Vec<String>,
    /// App Store Connect issuer id, for the App Store Server API.
    #[serde(default)]
    issuer_id: Option<String>,
    /// The In-App Purchase key's id; its `.p8` is the secret `private_key`.
    #[serde(default)]
    key_id: Option<String>,
    /// The Server API's production origin.
    #[serde(default = "default_api_root")]
    api_root: String,
    /// The Server API's sandbox origin.
    #[serde(default = "default_sandbox_api_root")]
    sandbox_api_root: String,
    /// `verifyReceipt` in production.
    #[serde(default = "default_receipt_url")]
    receipt_url: String,
    /// `verifyReceipt` in the sandbox.
    #[serde(default = "default_sandbox_receipt_url")]
    sandbox_receipt_url: String,
    /// What the apps sell (the Server API has no catalog).
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
    /// Retries of transient failures (429, 5xx, Apple's retryable codes).
    #[serde(default)]
    retry: Retry,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Served {
    #[default]
    Production,
    Sandbox,
}

fn default_api_root() -> String {
    "https://api.storekit.apple.com".to_owned()
}
fn default_sandbox_api_root() -> String {
    "https://api.storekit-sandbox.apple.com".to_owned()
}
fn default_receipt_url() -> String {
    "https://buy.itunes.apple.com/verifyReceipt".to_owned()
}
fn default_sandbox_receipt_url() -> String {
    "https://sandbox.itunes.apple.com/verifyReceipt".to_owned()
}

/// The decoded payload of a signed transaction (JWSTransactionDecodedPayload),
/// the fields iapd reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Transaction {
    #[serde(default)]
    transaction_id: String,
    #[serde(default)]
    bundle_id: String,
    #[serde(default)]
    product_id: String,
    #[serde(default)]
    purchase_date: i64,
    #[serde(default)]
    expires_date: Option<i64>,
    #[serde(default)]
    quantity: Option<i32>,
    #[serde(default, rename = "type")]
    product_type: String,
    #[serde(default)]
    app_account_token: Option<String>,
    #[serde(default)]
    revocation_date: Option<i64>,
    #[serde(default)]
    revocation_reason: Option<i64>,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    storefront: String,
}

impl Store for AppStore {
    const NAME: &'static CStr = c"app_store";
    const CAPABILITIES: u64 = CAP_VERIFY | CAP_ACKNOWLEDGE | CAP_LIST_ITEMS;
    type Config = Config;

    fn info() -> proto::PluginInfo {
        proto::PluginInfo {
            display_name: "Apple App Store".into(),
            methods: vec![],
            allowed_origins: vec![
                default_api_root(),
                default_sandbox_api_root(),
                "https://buy.itunes.apple.com".into(),
                "https://sandbox.itunes.apple.com".into(),
            ],
            secrets: vec!["private_key".into(), "shared_secret".into()],
            proof_kinds: vec!["signed_transaction".into(), "transaction_id".into(), "receipt".into()],
        }
    }

    fn new(config: Config, init: &InitContext) -> Result<Self, PluginError> {
        let store = init.store_id();
        checks::packages_listed(&config.packages, store)?;
        config.retry.check(store)?;
        let roots = if config.trusted_roots.is_empty() {
            vec![jws::APPLE_ROOT_CA_G3_PEM.to_owned()]
        } else {
            config.trusted_roots.clone()
        };
        let verifier = Verifier::new(&roots).map_err(|reason| {
            PluginError::invalid_argument(format!("config key `stores.{store}.config.trusted_roots`: {reason}"))
        })?;
        let api = match (&config.issuer_id, &config.key_id) {
            (Some(issuer_id), Some(key_id)) => Some(ServerApi::new(
                issuer_id,
                key_id,
                &init.secret("private_key")?,
                [&config.api_root, &config.sandbox_api_root],
                &config.packages,
            )?),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(PluginError::invalid_argument(format!(
                    "config keys `stores.{store}.config.issuer_id` and `key_id`: set both for the app store server api, or neither"
                )));
            }
        };
        // Optional: only auto-renewable subscriptions need it in verifyReceipt.
        let shared_secret = init.secret("shared_secret").ok();
        Ok(AppStore { config, verifier, api, shared_secret, receipts: SingleFlight::new() })
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        let policy = Policy { cx, config: &self.config, request: &request, now_millis: cx.now_unix_millis() };
        match request.proof.as_ref().and_then(|proof| proof.kind.as_ref()) {
            Some(proto::proof::Kind::SignedTransaction(jws)) => Ok(self.judge_signed(&policy, jws)),
            Some(proto::proof::Kind::TransactionId(id)) => {
                let api = self.server_api()?;
                match api.transaction_info(cx, &self.config.retry, &request.app_id, id, self.environments()).await? {
                    Some(jws) => Ok(self.judge_signed(&policy, &jws)),
                    None => Ok(proto::VerifyResponse {
                        verdict: Verdict::NotFound.into(),
                        verdict_reason: format!(
                            "the app store does not know transaction {id} (errorCode 4040010 in {})",
                            match self.environments() {
                                [false, true] => "production and the sandbox",
                                [true] => "the sandbox",
                                _ => "production",
                            }
                        ),
                        purchase: None,
                    }),
                }
            }
            Some(proto::proof::Kind::Receipt(data)) => receipt::verify(self, cx, &policy, data).await,
            _ => Err(PluginError::invalid_argument(
                "proof: the app store verifies a `signed_transaction`, a `transaction_id` or a legacy `receipt`",
            )
            .with_reason("UNSUPPORTED_PROOF")),
        }
    }

    async fn acknowledge(
        &self,
        cx: &Ctx,
        request: proto::AcknowledgeRequest,
    ) -> Result<proto::AcknowledgeResponse, PluginError> {
        checks::allowed_package(&self.config.packages, &request.app_id)?;
        let api = self.server_api()?;
        let (id, environments) = match request.proof.as_ref().and_then(|proof| proof.kind.as_ref()) {
            Some(proto::proof::Kind::TransactionId(id)) => (id.clone(), self.environments()),
            Some(proto::proof::Kind::SignedTransaction(jws)) => {
                let transaction = self.verified(jws).map_err(|reason| {
                    PluginError::failed_precondition(format!("proof.signed_transaction: {reason}"))
                        .with_reason("SIGNED_TRANSACTION_REFUSED")
                })?;
                let sandbox = transaction.environment == "Sandbox";
                if !self.environments().contains(&sandbox) {
                    return Err(PluginError::failed_precondition(format!(
                        "proof.signed_transaction: a {} purchase, which this store does not accept",
                        transaction.environment
                    ))
                    .with_reason("ENVIRONMENT_REFUSED"));
                }
                (transaction.transaction_id, if sandbox { &[true][..] } else { &[false][..] })
            }
            _ => {
                return Err(PluginError::invalid_argument(
                    "proof: finishing a transaction needs its `transaction_id` or `signed_transaction`",
                )
                .with_reason("UNSUPPORTED_PROOF"));
            }
        };
        api.finish(cx, &self.config.retry, &request.app_id, &id, environments).await?;
        // Apple answers a repeated Finish Transaction like the first one, so
        // iapd cannot tell the caller whether it was already finished.
        Ok(proto::AcknowledgeResponse { already_acknowledged: false })
    }

    async fn list_items(
        &self,
        _cx: &Ctx,
        request: proto::ListItemsRequest,
    ) -> Result<proto::ListItemsResponse, PluginError> {
        catalog::page(&self.config.catalog, &self.config.packages, &request)
    }
}

impl AppStore {
    fn server_api(&self) -> Result<&ServerApi, PluginError> {
        self.api.as_ref().ok_or_else(|| {
            PluginError::failed_precondition(
                "the app store server api is not configured: set `issuer_id`, `key_id` and the secret `private_key`",
            )
            .with_reason("SERVER_API_NOT_CONFIGURED")
        })
    }

    /// The environments whose data this store accepts, in the order to ask
    /// them (false = production, true = sandbox): asking the sandbox is
    /// worth it only when its answer can be accepted.
    fn environments(&self) -> &'static [bool] {
        match (self.config.environment, self.config.allow_sandbox) {
            (Served::Sandbox, _) => &[true],
            (Served::Production, true) => &[false, true],
            (Served::Production, false) => &[false],
        }
    }

    fn verified(&self, jws: &str) -> Result<Transaction, String> {
        let payload = self.verifier.verify(jws).map_err(|rejection| format!("{rejection} ({})", rejection.code()))?;
        serde_json::from_slice(&payload).map_err(|err| format!("the payload is not a transaction: {err}"))
    }

    /// The verdict on a signed transaction: verified, then judged.
    fn judge_signed(&self, policy: &Policy<'_>, jws: &str) -> proto::VerifyResponse {
        match self.verifier.verify(jws) {
            Err(rejection) => invalid(format!("signed transaction refused ({}): {rejection}", rejection.code()), None),
            Ok(payload) => match serde_json::from_slice::<Transaction>(&payload) {
                Ok(transaction) => policy.judge(&transaction, String::from_utf8_lossy(&payload).into_owned()),
                Err(err) => {
                    invalid(format!("signed transaction refused: the payload is not a transaction: {err}"), None)
                }
            },
        }
    }
}

/// The rules every proof's transaction is judged by.
pub(crate) struct Policy<'a> {
    cx: &'a Ctx,
    config: &'a Config,
    request: &'a proto::VerifyRequest,
    now_millis: i64,
}

impl Policy<'_> {
    /// The verdict on a transaction Apple vouched for.
    fn judge(&self, transaction: &Transaction, raw: String) -> proto::VerifyResponse {
        let revoked = transaction.revocation_date.is_some();
        let purchase = proto::Purchase {
            state: if revoked { PurchaseState::Refunded } else { PurchaseState::Purchased }.into(),
            consumption_state: ConsumptionState::NotApplicable.into(),
            // Apple has Finish Transaction but never says whether it happened.
            acknowledgement_state: AcknowledgementState::Unspecified.into(),
            transaction_id: transaction.transaction_id.clone(),
            purchase_time_unix_millis: transaction.purchase_date,
            expiry_time_unix_millis: transaction.expires_date.unwrap_or(0),
            quantity: transaction.quantity.unwrap_or(1),
            kind: match product_kind(&transaction.product_type) {
                // Legacy receipts do not say; the configured catalog may.
                ProductKind::Unspecified => catalog::kind_of(&self.config.catalog, &transaction.product_id),
                kind => kind,
            }
            .into(),
            environment: environment(&transaction.environment).into(),
            // Apple's storefront is alpha-3 (`USA`); the raw answer keeps it.
            region_code: region::region_code(self.cx, "the app store", &transaction.storefront),
            account_binding: transaction.app_account_token.clone().unwrap_or_default(),
            raw_store_response: raw,
            ..Default::default()
        };
        let verdict = |verdict: Verdict, reason: String| proto::VerifyResponse {
            verdict: verdict.into(),
            verdict_reason: reason,
            purchase: Some(purchase.clone()),
        };
        if let Err(reason) = self.check_environment(&transaction.environment) {
            return verdict(Verdict::Invalid, reason);
        }
        if transaction.bundle_id != self.request.app_id {
            return verdict(
                Verdict::Invalid,
                format!("the transaction is for bundle {:?}, not {:?}", transaction.bundle_id, self.request.app_id),
            );
        }
        if transaction.product_id != self.request.product_id {
            return verdict(
                Verdict::Invalid,
                format!(
                    "the transaction is for product {:?}, not {:?}",
                    transaction.product_id, self.request.product_id
                ),
            );
        }
        if let Some(reason) = user_mismatch(transaction.app_account_token.as_deref(), &self.request.user_id) {
            return verdict(Verdict::UserMismatch, reason);
        }
        if let Some(revoked_at) = transaction.revocation_date {
            let why = match transaction.revocation_reason {
                Some(1) => "refunded for an issue in the app (revocationReason 1)",
                Some(0) => "refunded for another reason (revocationReason 0)",
                _ => "revoked",
            };
            return verdict(Verdict::Refunded, format!("{why}, revoked at {revoked_at} (unix millis)"));
        }
        if let Some(expires) = transaction.expires_date.filter(|expires| *expires <= self.now_millis) {
            return verdict(Verdict::Expired, format!("the subscription expired at {expires} (unix millis)"));
        }
        verdict(Verdict::Valid, String::new())
    }

    /// Whether data from `environment` (Apple's spelling) may be accepted.
    fn check_environment(&self, environment: &str) -> Result<(), String> {
        match (self.config.environment, environment) {
            (Served::Production, "Production") | (Served::Sandbox, "Sandbox") => Ok(()),
            (Served::Production, "Sandbox") if self.config.allow_sandbox => Ok(()),
            (Served::Production, "Sandbox") => {
                Err("a sandbox purchase, refused in production (set `allow_sandbox` to accept App Review's purchases)"
                    .to_owned())
            }
            (Served::Sandbox, "Production") => {
                Err("a production purchase, refused by a store configured for the sandbox".to_owned())
            }
            (_, other) => Err(format!(
                "environment {other:?} cannot be trusted (Xcode and local testing data are not signed by apple)"
            )),
        }
    }
}

/// The reason for USER_MISMATCH, if the purchase's `appAccountToken` (a
/// UUID, compared case-insensitively) is not the caller's user.
fn user_mismatch(app_account_token: Option<&str>, user_id: &str) -> Option<String> {
    let token = app_account_token.filter(|token| !token.is_empty())?;
    (!user_id.is_empty() && !token.eq_ignore_ascii_case(user_id))
        .then(|| format!("the purchase's appAccountToken {token} is not the caller's user_id"))
}

fn invalid(reason: String, purchase: Option<proto::Purchase>) -> proto::VerifyResponse {
    proto::VerifyResponse { verdict: Verdict::Invalid.into(), verdict_reason: reason, purchase }
}

fn product_kind(apple_type: &str) -> ProductKind {
    match apple_type {
        "Consumable" => ProductKind::Consumable,
        "Non-Consumable" => ProductKind::NonConsumable,
        "Auto-Renewable Subscription" | "Non-Renewing Subscription" => ProductKind::Subscription,
        _ => ProductKind::Unspecified,
    }
}

fn environment(apple_environment: &str) -> Environment {
    match apple_environment {
        "Production" => Environment::Production,
        "Sandbox" => Environment::Sandbox,
        _ => Environment::Unspecified,
    }
}

export_store!(AppStore);

#[cfg(test)]
mod tests;
