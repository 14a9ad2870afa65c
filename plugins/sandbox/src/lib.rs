//! The sandbox store: a store that needs no credentials and no network, for
//! trying iapd and for testing a backend's handling of every outcome. It is
//! modelled on Tizen's developer mode, where payment always succeeds, but the
//! purchase token chooses the outcome:
//!
//! | token                  | Verify answers                                        |
//! |------------------------|-------------------------------------------------------|
//! | `purchased-…`          | VALID, not yet acknowledged or consumed                |
//! | `acknowledged-…`       | VALID, already acknowledged                            |
//! | `consumed-…`           | VALID, already consumed (consumables); already acknowledged (other kinds) |
//! | `pending-…`            | PENDING                                                |
//! | `canceled-…`           | CANCELED                                               |
//! | `refunded-…`           | REFUNDED                                               |
//! | `expired-…`            | EXPIRED (subscriptions), VALID otherwise               |
//! | `invalid-…`            | INVALID (the proof does not verify)                    |
//! | `notfound-…`           | NOT_FOUND (the store never saw it)                     |
//! | `owned-by-<account>-…` | VALID, bound to `<account>`: USER_MISMATCH for others  |
//! | `slow-<millis>-…`      | VALID, after `<millis>` ms                             |
//! | `error-<kind>-…`       | an upstream error: `unavailable`, `ratelimited`, `internal`, `denied`, `unauthenticated` |
//!
//! `…` is anything (so each test can use fresh tokens); a bare outcome such as
//! `purchased` works too. The product id must be in the catalog (ListItems);
//! its kind decides what can be consumed. Acknowledge and Consume change state
//! in memory, as the real stores do: consuming twice says it was already done,
//! acknowledging a consumed purchase is the store's invalid-state error, and an
//! `invalid-…` purchase (not a real one) can be neither acknowledged nor
//! consumed. An `expired-…` subscription is a real purchase that has ended: it
//! can still be acknowledged.
//!
//! Purchase times are deterministic per token and lie in the first 180 days of
//! 2025, so they are always in the past, and an `expired-…` subscription
//! expired 30 days after its purchase.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, AcknowledgementState, ConsumptionState, ProductKind, PurchaseState, Verdict};

/// The sandbox store.
#[derive(Debug, Default)]
pub struct Sandbox {
    /// Acknowledge/consume state by (app, product, token).
    states: Mutex<HashMap<(String, String, String), Flags>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Flags {
    acknowledged: bool,
    consumed: bool,
}

/// The sandbox store takes no settings; unknown keys are refused so typos
/// show at start-up.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

struct CatalogEntry {
    product_id: &'static str,
    kind: ProductKind,
    title: &'static str,
    price_micros: i64,
    active: bool,
}

const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        product_id: "coins_100",
        kind: ProductKind::Consumable,
        title: "100 coins",
        price_micros: 990_000,
        active: true,
    },
    CatalogEntry {
        product_id: "coins_500",
        kind: ProductKind::Consumable,
        title: "500 coins",
        price_micros: 3_990_000,
        active: true,
    },
    CatalogEntry {
        product_id: "remove_ads",
        kind: ProductKind::NonConsumable,
        title: "Remove ads",
        price_micros: 2_990_000,
        active: true,
    },
    CatalogEntry {
        product_id: "level_pack",
        kind: ProductKind::NonConsumable,
        title: "Level pack",
        price_micros: 1_990_000,
        active: false,
    },
    CatalogEntry {
        product_id: "vip_monthly",
        kind: ProductKind::Subscription,
        title: "VIP, monthly",
        price_micros: 4_990_000,
        active: true,
    },
    CatalogEntry {
        product_id: "vip_yearly",
        kind: ProductKind::Subscription,
        title: "VIP, yearly",
        price_micros: 39_990_000,
        active: true,
    },
];

/// The outcome a token selects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Purchased,
    Acknowledged,
    Consumed,
    Pending,
    Canceled,
    Refunded,
    Expired,
    Invalid,
    NotFound,
    OwnedBy(String),
    Slow(u64),
    Error(String),
}

fn parse_outcome(token: &str) -> Result<Outcome, PluginError> {
    let (word, rest) = token.split_once('-').unwrap_or((token, ""));
    let first_part = |rest: &str| rest.split('-').next().unwrap_or("").to_owned();
    Ok(match word {
        "purchased" => Outcome::Purchased,
        "acknowledged" => Outcome::Acknowledged,
        "consumed" => Outcome::Consumed,
        "pending" => Outcome::Pending,
        "canceled" => Outcome::Canceled,
        "refunded" => Outcome::Refunded,
        "expired" => Outcome::Expired,
        "invalid" => Outcome::Invalid,
        "notfound" => Outcome::NotFound,
        "owned" => match rest.strip_prefix("by-") {
            Some(rest) if !first_part(rest).is_empty() => Outcome::OwnedBy(first_part(rest)),
            _ => return Err(bad_token(token, "`owned-by-<account>-…` needs an account")),
        },
        "slow" => match first_part(rest).parse() {
            Ok(millis) if millis <= 600_000 => Outcome::Slow(millis),
            _ => return Err(bad_token(token, "`slow-<millis>-…` needs a delay of at most 600000 ms")),
        },
        "error" => Outcome::Error(first_part(rest)),
        _ => return Err(bad_token(token, "it must start with an outcome such as `purchased` (see the sandbox docs)")),
    })
}

fn bad_token(token: &str, why: &str) -> PluginError {
    PluginError::invalid_argument(format!("proof.purchase_token: sandbox token `{token}` is not understood: {why}"))
        .with_reason("UNKNOWN_TOKEN")
}

fn upstream_error(kind: &str) -> PluginError {
    match kind {
        "unavailable" => PluginError::unavailable("sandbox store is unavailable (simulated)").with_reason("BACKEND_ERROR"),
        "ratelimited" => PluginError::resource_exhausted("sandbox store rate limit reached (simulated)")
            .with_reason("RATE_LIMITED")
            .retry_after(Duration::from_secs(2)),
        "internal" => PluginError::internal("sandbox store failed (simulated)").with_reason("INTERNAL_ERROR"),
        "denied" => PluginError::permission_denied("sandbox store denies access to this app (simulated)")
            .with_reason("PERMISSION_DENIED"),
        "unauthenticated" => PluginError::unauthenticated("sandbox store rejected the credentials (simulated)")
            .with_reason("INVALID_CREDENTIALS"),
        other => PluginError::invalid_argument(format!(
            "proof.purchase_token: unknown simulated error `{other}`; use unavailable, ratelimited, internal, denied or unauthenticated"
        ))
        .with_reason("UNKNOWN_TOKEN"),
    }
}

fn token_of(proof: Option<&proto::Proof>) -> Result<&str, PluginError> {
    match proof.and_then(|proof| proof.kind.as_ref()) {
        Some(proto::proof::Kind::PurchaseToken(token)) => Ok(token),
        _ => Err(PluginError::invalid_argument("proof: the sandbox store takes a purchase_token")
            .with_reason("UNSUPPORTED_PROOF")),
    }
}

/// FNV-1a: a stable hash so that order ids and times are deterministic.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// 2025-01-01T00:00:00Z: purchase times are this plus up to 179 days, so they
/// are in the past on any clock after mid-2025.
const JANUARY_2025_MILLIS: i64 = 1_735_689_600_000;
const DAY_MILLIS: i64 = 86_400_000;

/// The deterministic purchase time of a token (its hash picks the day).
fn purchase_time_of(hash: u64) -> i64 {
    JANUARY_2025_MILLIS + i64::try_from(hash % 180).unwrap_or(0) * DAY_MILLIS
}

/// A purchase the sandbox store knows, or why it does not.
enum Lookup {
    Found { outcome: Outcome, entry: &'static CatalogEntry, key: (String, String, String) },
    NotFound(String),
}

impl Sandbox {
    /// Resolves a request: errors and delays first, then the purchase.
    async fn lookup(&self, cx: &Ctx, app_id: &str, product_id: &str, token: &str) -> Result<Lookup, PluginError> {
        let outcome = parse_outcome(token)?;
        match &outcome {
            Outcome::Error(kind) => return Err(upstream_error(kind)),
            Outcome::Slow(millis) => cx.sleep(Duration::from_millis(*millis)).await?,
            _ => {}
        }
        if outcome == Outcome::NotFound {
            return Ok(Lookup::NotFound(format!("the sandbox store has no purchase with token `{token}`")));
        }
        let Some(entry) = CATALOG.iter().find(|entry| entry.product_id == product_id) else {
            return Ok(Lookup::NotFound(format!("product `{product_id}` is not in the sandbox catalog")));
        };
        Ok(Lookup::Found { outcome, entry, key: (app_id.to_owned(), product_id.to_owned(), token.to_owned()) })
    }

    /// The purchase's flags: as changed by Acknowledge and Consume, or as the
    /// token starts. Only a consumable can be consumed: `consumed-…` on any
    /// other kind starts acknowledged, like `acknowledged-…`.
    fn flags(&self, key: &(String, String, String), outcome: &Outcome, kind: ProductKind) -> Flags {
        let stored = self.states.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied();
        stored.unwrap_or(Flags {
            acknowledged: matches!(outcome, Outcome::Acknowledged | Outcome::Consumed),
            consumed: *outcome == Outcome::Consumed && kind == ProductKind::Consumable,
        })
    }

    fn store_flags(&self, key: (String, String, String), flags: Flags) {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).insert(key, flags);
    }
}

fn purchase_state(outcome: &Outcome) -> PurchaseState {
    match outcome {
        Outcome::Pending => PurchaseState::Pending,
        Outcome::Canceled => PurchaseState::Canceled,
        Outcome::Refunded => PurchaseState::Refunded,
        _ => PurchaseState::Purchased,
    }
}

impl Store for Sandbox {
    const NAME: &'static CStr = c"sandbox";
    const CAPABILITIES: u64 = CAP_VERIFY | CAP_ACKNOWLEDGE | CAP_CONSUME | CAP_LIST_ITEMS;
    // Every answer comes from memory: no call waits for anything.
    const NONBLOCKING_CALL: bool = true;
    type Config = Config;

    fn info() -> proto::PluginInfo {
        proto::PluginInfo {
            display_name: "Sandbox".to_owned(),
            methods: [
                iapd_sdk_plugin::abi::method::VERIFY,
                iapd_sdk_plugin::abi::method::ACKNOWLEDGE,
                iapd_sdk_plugin::abi::method::CONSUME,
                iapd_sdk_plugin::abi::method::LIST_ITEMS,
            ]
            .map(str::to_owned)
            .to_vec(),
            allowed_origins: Vec::new(),
            secrets: Vec::new(),
            proof_kinds: vec!["purchase_token".to_owned()],
        }
    }

    fn new(_config: Config, init: &InitContext) -> Result<Self, PluginError> {
        iapd_sdk_plugin::log::info!("sandbox store `{}` ready", init.store_id());
        Ok(Sandbox::default())
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        let token = token_of(request.proof.as_ref())?;
        let (outcome, entry, key) = match self.lookup(cx, &request.app_id, &request.product_id, token).await? {
            Lookup::NotFound(reason) => {
                return Ok(proto::VerifyResponse {
                    verdict: Verdict::NotFound.into(),
                    verdict_reason: reason,
                    purchase: None,
                });
            }
            Lookup::Found { outcome, entry, key } => (outcome, entry, key),
        };
        let flags = self.flags(&key, &outcome, entry.kind);
        let hash = fnv1a(token);
        let purchase_time = purchase_time_of(hash);
        let subscription = entry.kind == ProductKind::Subscription;
        let expiry_time = match (subscription, &outcome) {
            (false, _) => 0,
            (true, Outcome::Expired) => purchase_time + 30 * DAY_MILLIS,
            (true, _) => cx.now_unix_millis() + 30 * DAY_MILLIS,
        };
        let account_binding = match &outcome {
            Outcome::OwnedBy(account) => account.clone(),
            _ => String::new(),
        };
        let (verdict, verdict_reason) = match &outcome {
            Outcome::Pending => (Verdict::Pending, "payment is pending".to_owned()),
            Outcome::Canceled => (Verdict::Canceled, "purchase was canceled".to_owned()),
            Outcome::Refunded => (Verdict::Refunded, "purchase was refunded".to_owned()),
            Outcome::Invalid => (Verdict::Invalid, "purchase token signature does not verify (simulated)".to_owned()),
            Outcome::Expired if subscription => (Verdict::Expired, "subscription has expired".to_owned()),
            Outcome::OwnedBy(account) if !request.user_id.is_empty() && *account != request.user_id => {
                (Verdict::UserMismatch, format!("purchase belongs to account `{account}`, not `{}`", request.user_id))
            }
            _ => (Verdict::Valid, "purchase is paid for".to_owned()),
        };
        let consumption_state = match (entry.kind, flags.consumed) {
            (ProductKind::Consumable, true) => ConsumptionState::Consumed,
            (ProductKind::Consumable, false) => ConsumptionState::NotConsumed,
            _ => ConsumptionState::NotApplicable,
        };
        let acknowledgement_state =
            if flags.acknowledged { AcknowledgementState::Acknowledged } else { AcknowledgementState::NotAcknowledged };
        let raw = serde_json::json!({
            "token": token,
            "productId": entry.product_id,
            "outcome": format!("{outcome:?}"),
            "acknowledged": flags.acknowledged,
            "consumed": flags.consumed,
        });
        Ok(proto::VerifyResponse {
            verdict: verdict.into(),
            verdict_reason,
            purchase: Some(proto::Purchase {
                state: purchase_state(&outcome).into(),
                consumption_state: consumption_state.into(),
                acknowledgement_state: acknowledgement_state.into(),
                order_id: format!("SANDBOX.{hash:016X}"),
                transaction_id: String::new(),
                purchase_time_unix_millis: purchase_time,
                expiry_time_unix_millis: expiry_time,
                quantity: 1,
                kind: entry.kind.into(),
                environment: proto::Environment::Sandbox.into(),
                developer_payload: String::new(),
                region_code: "US".to_owned(),
                account_binding,
                raw_store_response: raw.to_string(),
            }),
        })
    }

    async fn acknowledge(
        &self,
        cx: &Ctx,
        request: proto::AcknowledgeRequest,
    ) -> Result<proto::AcknowledgeResponse, PluginError> {
        let token = token_of(request.proof.as_ref())?;
        let (outcome, entry, key) = self.found(cx, &request.app_id, &request.product_id, token).await?;
        let mut flags = self.flags(&key, &outcome, entry.kind);
        if flags.consumed {
            return Err(PluginError::failed_precondition("purchase is consumed and cannot be acknowledged")
                .with_reason("PURCHASE_CONSUMED"));
        }
        if flags.acknowledged {
            return Ok(proto::AcknowledgeResponse { already_acknowledged: true });
        }
        flags.acknowledged = true;
        self.store_flags(key, flags);
        Ok(proto::AcknowledgeResponse { already_acknowledged: false })
    }

    async fn consume(&self, cx: &Ctx, request: proto::ConsumeRequest) -> Result<proto::ConsumeResponse, PluginError> {
        let token = token_of(request.proof.as_ref())?;
        let (outcome, entry, key) = self.found(cx, &request.app_id, &request.product_id, token).await?;
        if entry.kind != ProductKind::Consumable {
            return Err(PluginError::failed_precondition(format!(
                "product `{}` is not consumable",
                request.product_id
            ))
            .with_reason("PRODUCT_NOT_CONSUMABLE"));
        }
        let mut flags = self.flags(&key, &outcome, entry.kind);
        if flags.consumed {
            return Ok(proto::ConsumeResponse { already_consumed: true });
        }
        flags.consumed = true;
        flags.acknowledged = true;
        self.store_flags(key, flags);
        Ok(proto::ConsumeResponse { already_consumed: false })
    }

    async fn list_items(
        &self,
        _cx: &Ctx,
        request: proto::ListItemsRequest,
    ) -> Result<proto::ListItemsResponse, PluginError> {
        const DEFAULT_PAGE_SIZE: usize = 50;
        let wanted = ProductKind::try_from(request.kind).unwrap_or(ProductKind::Unspecified);
        // Tokens this store issues are plain decimal offsets: `parse` alone
        // would also take a sign (`+2`).
        let offset: usize = if request.page_token.is_empty() {
            0
        } else {
            Some(&request.page_token)
                .filter(|token| token.bytes().all(|byte| byte.is_ascii_digit()))
                .and_then(|token| token.parse().ok())
                .ok_or_else(|| {
                    PluginError::invalid_argument(format!(
                        "page_token: `{}` is not a token this store issued",
                        request.page_token
                    ))
                    .with_reason("INVALID_PAGE_TOKEN")
                })?
        };
        let page_size = usize::try_from(request.page_size).ok().filter(|&size| size > 0).unwrap_or(DEFAULT_PAGE_SIZE);
        let matching: Vec<&CatalogEntry> =
            CATALOG.iter().filter(|entry| wanted == ProductKind::Unspecified || entry.kind == wanted).collect();
        let items = matching
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|entry| proto::CatalogItem {
                product_id: entry.product_id.to_owned(),
                kind: entry.kind.into(),
                title: entry.title.to_owned(),
                description: format!("{} (sandbox)", entry.title),
                price_currency_code: "USD".to_owned(),
                price_amount_micros: entry.price_micros,
                active: entry.active,
            })
            .collect();
        let next = offset.saturating_add(page_size);
        let next_page_token = if next < matching.len() { next.to_string() } else { String::new() };
        Ok(proto::ListItemsResponse { items, next_page_token })
    }
}

impl Sandbox {
    /// Like `lookup`, for operations that need an existing, real, paid
    /// purchase.
    async fn found(
        &self,
        cx: &Ctx,
        app_id: &str,
        product_id: &str,
        token: &str,
    ) -> Result<(Outcome, &'static CatalogEntry, (String, String, String)), PluginError> {
        match self.lookup(cx, app_id, product_id, token).await? {
            Lookup::NotFound(reason) => Err(PluginError::not_found(reason).with_reason("PURCHASE_NOT_FOUND")),
            Lookup::Found { outcome: Outcome::Invalid, .. } => Err(PluginError::failed_precondition(
                "purchase is invalid (its token does not verify) and cannot be acknowledged or consumed",
            )
            .with_reason("INVALID_PURCHASE")),
            Lookup::Found { outcome, entry, key } => match purchase_state(&outcome) {
                PurchaseState::Purchased => Ok((outcome, entry, key)),
                state => Err(PluginError::failed_precondition(format!(
                    "purchase is {} and cannot change",
                    state.as_str_name().trim_start_matches("PURCHASE_STATE_").to_lowercase()
                ))
                .with_reason("INVALID_PURCHASE_STATE")),
            },
        }
    }
}

export_store!(Sandbox);

#[cfg(test)]
mod tests;
