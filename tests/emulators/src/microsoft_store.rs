//! The Microsoft Store's server-to-server services, as
//! `shared/reference/stores/microsoft-store.md` describes them, on one origin
//! (Microsoft's hosts are told apart by path):
//!
//! - `POST /{tenant}/oauth2/token` (Entra v1: form `grant_type=client_credentials`,
//!   `client_id`, `client_secret`, `resource`) and `/{tenant}/oauth2/v2.0/token`
//!   (`scope=<audience>/.default`). The token is an RS256 JWT with `aud`,
//!   `appid` (v1) or `azp` (v2), `tid`, and `exp` an hour on; v1 answers
//!   `expires_in` and `expires_on` as strings, v2 `expires_in` as a number.
//!   Refusals are Entra's `{"error", "error_description": "AADSTS…", "error_codes", …}`.
//! - `POST /v9.0/collections/publisherQuery` (the last segment matched
//!   case-insensitively): the user's items for `productSkuIds` (1 to 100),
//!   `maxPageSize` at most 200, an opaque `continuationToken`, `validityType`,
//!   `sbx` (the sandbox; items of another are invisible).
//! - `POST /v8.0/collections/consume`: `beneficiary`, `productId`, a GUID
//!   `trackingId`, `removeQuantity` (store-managed `Consumable` only; refused
//!   for an `UnmanagedConsumable`), `includeOrderIds`. A repeat of a tracking
//!   id with the same body answers the current balance and deducts nothing
//!   (and a developer-managed repeat carries no `orderTransactions`).
//! - `POST /v8.0/b2b/recurrences/query` with `b2bKey` (a purchase key).
//! - `POST /v6.0/b2b/keys/renew` with `serviceTicket` and `key` (or `Key`).
//!
//! Every service call needs `Authorization: Bearer <token for
//! https://onestore.microsoft.com>`: none is 401 `PartnerAadTicketRequired`;
//! a bad, expired, revoked or wrong-audience token, or a Store ID key that is
//! forged, expired, revoked or of the wrong kind, is 401
//! `AuthenticationTokenInvalid`; a key made for another client than the
//! token's `appid` is 401 `InconsistentClientId`. Errors are Microsoft's
//! envelope `{"code", "data", "details", "innererror": {…}, "message", "source"}`,
//! and answers carry `MS-CorrelationId`, `MS-RequestId` and `MS-CV`. Each user
//! may query and consume 100 times in 5 minutes, then 429 `Throttled` with
//! `Retry-After`. JSON property names are matched case-insensitively.
//!
//! Where the reference is uncertain, this emulator chooses (and the README's
//! Microsoft section repeats): consume refusals are 400 `BadRequest` with
//! inner codes `ProductNotOwned`, `InsufficientBalance`, `ProductNotConsumable`,
//! `InvalidParameter` and `SandboxNotSupported`; a consumed developer-managed
//! consumable stays listed with `quantity` 0 until it is bought again.
//!
//! Test controls: `POST /emulator/v1/keys` (`{"account", "publisherUserId",
//! "kind": "collections"|"purchase", "serviceTicket"?, "clientId"?,
//! "lifetimeSecs"?}`) answers a Store ID key as plain text, standing in for
//! the Windows client; `POST /emulator/v1/keys:revoke` (`{"key"}`) revokes one
//! early; and as for the other emulators `/emulator/v1/purchases` (an item
//! with its `account`), `/emulator/v1/faults`, `/emulator/v1/tokens:revoke`,
//! `/emulator/v1/stats`. Operations: `token`, `collections.query`,
//! `collections.consume`, `recurrences.query`, `keys.renew`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::{self, Controls, StoreState};
use crate::{Emulator, Fault, Request, Response};

/// The state a new emulator starts with when none is given: one Entra
/// client and the account `demo-account` with an item for every verdict.
pub const DEFAULT_STATE: &str = include_str!("microsoft_store_state.json");

/// The audience of the token every service call carries.
pub const SERVICE_AUDIENCE: &str = "https://onestore.microsoft.com";
/// The audience of the token a client turns into a collections key.
pub const CREATE_COLLECTIONS_KEY: &str = "https://onestore.microsoft.com/b2b/keys/create/collections";
/// The audience of the token a client turns into a purchase key.
pub const CREATE_PURCHASE_KEY: &str = "https://onestore.microsoft.com/b2b/keys/create/purchase";
/// `aud` and `iss` of a collections key.
pub const COLLECTIONS_KEYS: &str = "https://collections.mp.microsoft.com/v6.0/keys";
/// `aud` and `iss` of a purchase key.
pub const PURCHASE_KEYS: &str = "https://purchase.mp.microsoft.com/v6.0/keys";
/// A Store ID key lives 30 days.
pub const KEY_LIFETIME_SECS: i64 = 30 * 86_400;
/// An Entra token lives an hour.
pub const TOKEN_LIFETIME_SECS: i64 = 3600;
/// Queries and consumes one user may make in [`THROTTLE_WINDOW_SECS`].
pub const THROTTLE_LIMIT: usize = 100;
/// The throttle's window.
pub const THROTTLE_WINDOW_SECS: i64 = 300;

const CLAIM: &str = "http://schemas.microsoft.com/marketplace/2015/08/claims/key/";
const SIGNING_KEY: &str = include_str!("../../fixtures/microsoft-store/emulator-signing-key.pem");
const VERIFYING_KEY: &str = include_str!("../../fixtures/microsoft-store/emulator-signing-key.pub.pem");

/// The emulator.
pub struct MicrosoftStore {
    state: Mutex<State>,
}

impl std::fmt::Debug for MicrosoftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicrosoftStore").finish_non_exhaustive()
    }
}

/// Which service a Store ID key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Collections: query and consume.
    Collections,
    /// Purchase: recurrences.
    Purchase,
}

impl KeyKind {
    fn audience(self) -> &'static str {
        match self {
            KeyKind::Collections => COLLECTIONS_KEYS,
            KeyKind::Purchase => PURCHASE_KEYS,
        }
    }
}

struct State {
    clients: Vec<Client>,
    accounts: BTreeMap<String, Account>,
    /// Tokens issued and not revoked.
    live_tokens: HashSet<String>,
    revoked_keys: HashSet<String>,
    /// trackingId → the consume it named and its answer.
    consumes: HashMap<String, ConsumeRecord>,
    /// account → the times (unix seconds) of its recent queries and consumes.
    calls: HashMap<String, VecDeque<i64>>,
    /// The largest page served, whatever `maxPageSize` asks.
    page_size_limit: usize,
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
    controls: Controls,
    issued: u64,
}

struct ConsumeRecord {
    request: (String, String, Option<i64>, String),
    answer: Value,
}

/// An emulator state file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// Entra app registrations linked in Partner Center.
    #[serde(default)]
    pub clients: Vec<Client>,
    /// Microsoft accounts and what they own.
    #[serde(default)]
    pub accounts: Vec<Account>,
    /// The largest page a query answers (Microsoft: 200); lower it to test paging.
    #[serde(default)]
    pub page_size_limit: Option<usize>,
}

/// An Entra app registration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Client {
    /// The tenant.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
}

/// A Microsoft account (the one signed in to the Store app).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Account {
    /// How the tests name it.
    pub id: String,
    /// Its collection.
    #[serde(default)]
    pub items: Vec<Item>,
    /// Its subscriptions' recurrences (`RecurrenceItem`s, served as given
    /// except `sandbox`).
    #[serde(default)]
    pub recurrences: Vec<Value>,
}

/// A collection item (v9's `PublisherQueryItemContractV9`) and its sandbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Item {
    /// The collection item id (32 hex).
    pub id: String,
    /// The product's Store ID.
    pub product_id: String,
    /// The SKU.
    #[serde(default = "default_sku")]
    pub sku_id: String,
    /// `Application`, `Consumable`, `Durable`, `Game`, `Pass`, `UnmanagedConsumable`.
    pub product_kind: String,
    /// `Active`, `Expired`, `Revoked`, `Banned`, `Suspended`.
    pub status: String,
    /// `Single`, `Recurring`, `Conditional`.
    #[serde(default = "default_acquisition")]
    pub acquisition_type: String,
    /// ISO 8601.
    pub acquired_date: String,
    /// ISO 8601.
    pub start_date: String,
    /// ISO 8601; `9999-12-31T23:59:59.9999999+00:00` for never.
    pub end_date: String,
    /// ISO 8601; changes with a consumable's balance.
    pub modified_date: String,
    /// 1, or a consumable's balance.
    #[serde(default = "default_quantity")]
    pub quantity: i64,
    /// The order.
    pub transaction_id: String,
    /// The recurrence of a subscription's item.
    #[serde(default)]
    pub recurrence_data: Option<String>,
    /// Parent bundles and subscriptions.
    #[serde(default)]
    pub satisfied_by_product_ids: Vec<String>,
    /// `RETAIL`, or a development sandbox.
    #[serde(default = "retail")]
    pub sandbox: String,
}

fn default_sku() -> String {
    "0010".to_owned()
}
fn default_acquisition() -> String {
    "Single".to_owned()
}
fn default_quantity() -> i64 {
    1
}
fn retail() -> String {
    "RETAIL".to_owned()
}

/// What `POST /emulator/v1/purchases` takes: an item and whose it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedItem {
    /// The account.
    pub account: String,
    /// The item.
    #[serde(flatten)]
    pub item: Item,
}

impl Item {
    fn to_v9(&self) -> Value {
        let mut item = json!({
            "id": self.id, "productId": self.product_id, "skuId": self.sku_id,
            "productKind": self.product_kind, "status": self.status, "acquisitionType": self.acquisition_type,
            "acquiredDate": self.acquired_date, "startDate": self.start_date, "endDate": self.end_date,
            "modifiedDate": self.modified_date, "quantity": self.quantity, "transactionId": self.transaction_id,
            "satisfiedByProductIds": self.satisfied_by_product_ids, "tags": [],
        });
        if let Some(recurrence) = &self.recurrence_data {
            item["recurrenceData"] = json!(recurrence);
        }
        item
    }
}

impl MicrosoftStore {
    /// An emulator with `seed`.
    pub fn new(seed: Seed) -> Result<MicrosoftStore, String> {
        let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(SIGNING_KEY.as_bytes())
            .map_err(|err| format!("the emulator's signing key: {err}"))?;
        let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(VERIFYING_KEY.as_bytes())
            .map_err(|err| format!("the emulator's verifying key: {err}"))?;
        let state = State {
            clients: seed.clients,
            accounts: seed.accounts.into_iter().map(|account| (account.id.clone(), account)).collect(),
            live_tokens: HashSet::new(),
            revoked_keys: HashSet::new(),
            consumes: HashMap::new(),
            calls: HashMap::new(),
            page_size_limit: seed.page_size_limit.unwrap_or(200).max(1),
            encoding,
            decoding,
            controls: Controls::default(),
            issued: 0,
        };
        Ok(MicrosoftStore { state: Mutex::new(state) })
    }

    /// An emulator with [`DEFAULT_STATE`].
    pub fn with_default_state() -> MicrosoftStore {
        serde_json::from_str(DEFAULT_STATE)
            .map_err(|err| err.to_string())
            .and_then(MicrosoftStore::new)
            .unwrap_or_else(|err| panic!("the built-in microsoft store state is broken: {err}"))
    }

    /// A Store ID key of `account` bound to `user_id`, as the Windows client
    /// would get it, for the first client (or `client_id`), living `lifetime_secs`.
    pub fn key(&self, account: &str, user_id: &str, kind: KeyKind) -> String {
        self.key_with(account, user_id, kind, None, KEY_LIFETIME_SECS)
    }

    /// [`MicrosoftStore::key`] for another client or lifetime.
    pub fn key_with(
        &self,
        account: &str,
        user_id: &str,
        kind: KeyKind,
        client_id: Option<&str>,
        lifetime_secs: i64,
    ) -> String {
        let mut state = self.lock();
        let client =
            client_id.map_or_else(|| state.clients.first().map(|c| c.client_id.clone()), |id| Some(id.to_owned()));
        state.mint_key(account, user_id, kind, &client.unwrap_or_default(), lifetime_secs)
    }

    /// Revokes a Store ID key before it expires.
    pub fn revoke_key(&self, key: &str) {
        self.lock().revoked_keys.insert(key.to_owned());
    }

    /// Adds or replaces an item of `account`.
    pub fn add_item(&self, account: &str, item: Item) {
        self.lock().add_purchase(OwnedItem { account: account.to_owned(), item });
    }

    /// Adds a recurrence to `account`.
    pub fn add_recurrence(&self, account: &str, recurrence: Value) {
        if let Some(account) = self.lock().accounts.get_mut(account) {
            account.recurrences.push(recurrence);
        }
    }

    /// An item as the v9 query shows it.
    pub fn item(&self, account: &str, product_id: &str) -> Option<Value> {
        let state = self.lock();
        let item = state.accounts.get(account)?.items.iter().find(|item| item.product_id == product_id)?;
        Some(item.to_v9())
    }

    /// Queues a fault; faults hit requests in the order queued.
    pub fn inject(&self, fault: Fault) {
        self.lock().controls.inject(fault);
    }

    /// Revokes every Entra token issued so far (the services answer 401).
    pub fn revoke_tokens(&self) {
        self.lock().revoke_tokens();
    }

    /// Every Entra token issued and not revoked.
    pub fn live_tokens(&self) -> Vec<String> {
        self.lock().live_tokens.iter().cloned().collect()
    }

    /// Freezes the clock at `unix_millis`.
    pub fn set_clock(&self, unix_millis: i64) {
        self.lock().controls.set_clock(unix_millis);
    }

    /// How many requests an operation received, faults included.
    pub fn count(&self, operation: &str) -> u64 {
        self.lock().controls.count(operation)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Emulator for MicrosoftStore {
    fn handle(&self, request: &Request) -> Response {
        let mut state = self.lock();
        // The key controls are this emulator's own; the others are shared.
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/emulator/v1/keys") => state.mint_control(&request.body),
            ("POST", "/emulator/v1/keys:revoke") => {
                let body = lowercase_keys(serde_json::from_slice(&request.body).unwrap_or(Value::Null));
                match body["key"].as_str() {
                    Some(key) => {
                        state.revoked_keys.insert(key.to_owned());
                        Response::json(200, &json!({}))
                    }
                    None => Response::json(400, &json!({"error": "give the key to revoke as {\"key\"}"})),
                }
            }
            _ => store::handle(&mut *state, request),
        }
    }
}

impl StoreState for State {
    type Purchase = OwnedItem;

    fn controls(&mut self) -> &mut Controls {
        &mut self.controls
    }

    fn operation(method: &str, segments: &[&str]) -> &'static str {
        match (method, segments) {
            ("POST", [_, "oauth2", "token"] | [_, "oauth2", "v2.0", "token"]) => "token",
            ("POST", ["v9.0", "collections", query]) if query.eq_ignore_ascii_case("publisherQuery") => {
                "collections.query"
            }
            ("POST", ["v8.0", "collections", "consume"]) => "collections.consume",
            ("POST", ["v8.0", "b2b", "recurrences", "query"]) => "recurrences.query",
            ("POST", ["v6.0", "b2b", "keys", "renew"]) => "keys.renew",
            _ => "unknown",
        }
    }

    fn fault_error(status: u16, reason: Option<&str>) -> Response {
        let (code, inner) = match status {
            400 => ("BadRequest", "InvalidParameter"),
            401 => ("Unauthorized", "AuthenticationTokenInvalid"),
            403 => ("Forbidden", "Forbidden"),
            404 => ("NotFound", "NotFound"),
            429 => ("Throttled", "Throttled"),
            503 => ("ServiceUnavailable", "ServiceUnavailable"),
            _ => ("InternalServerError", "InternalServerError"),
        };
        service_error(status, code, reason.unwrap_or(inner), "Emulated error.")
    }

    fn serve(&mut self, request: &Request, segments: &[&str]) -> Response {
        let operation = Self::operation(&request.method, segments);
        if operation == "token" {
            return self.token(segments[0], request, segments.len() == 4);
        }
        let mut response = match operation {
            "unknown" => service_error(404, "NotFound", "NotFound", "No such resource."),
            "keys.renew" => self.renew(request),
            _ => match self.service_token(request) {
                Err(refusal) => refusal,
                Ok(appid) => match serde_json::from_slice::<Value>(&request.body) {
                    Err(_) => service_error(400, "BadRequest", "InvalidParameter", "The request body is not JSON."),
                    Ok(body) => {
                        let body = lowercase_keys(body);
                        match operation {
                            "collections.query" => self.query(&appid, &body),
                            "collections.consume" => self.consume(&appid, &body),
                            _ => self.recurrences(&appid, &body),
                        }
                    }
                },
            },
        };
        self.issued += 1;
        let id = format!("{:08x}-0000-4000-8000-{:012x}", self.issued, self.controls.now_millis());
        for (name, value) in
            [("MS-CorrelationId", id.clone()), ("MS-RequestId", id.clone()), ("MS-CV", format!("{id}.0"))]
        {
            response.headers.push((name.to_owned(), value));
        }
        response
    }

    fn add_purchase(&mut self, owned: OwnedItem) {
        let account = self.accounts.entry(owned.account.clone()).or_insert_with(|| Account {
            id: owned.account.clone(),
            items: Vec::new(),
            recurrences: Vec::new(),
        });
        let new = &owned.item;
        account.items.retain(|item| {
            !(item.product_id == new.product_id && item.sku_id == new.sku_id && item.sandbox == new.sandbox)
        });
        account.items.push(owned.item);
    }

    fn revoke_tokens(&mut self) {
        self.live_tokens.clear();
    }
}

/// What a valid Store ID key says.
struct KeyClaims {
    account: String,
    user_id: String,
    client_id: String,
    kind: KeyKind,
}

impl State {
    fn now_secs(&self) -> i64 {
        self.controls.now_millis().div_euclid(1000)
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t = Some("iapd-emulator".to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_default()
    }

    /// The claims of a JWT this emulator signed, unless it has expired.
    fn verified(&self, jwt: &str) -> Option<Value> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_exp = false; // checked below against the emulator's clock
        validation.validate_aud = false; // each caller checks the audience it needs
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Value>(jwt, &self.decoding, &validation).ok()?.claims;
        (claims["exp"].as_i64()? > self.now_secs()).then_some(claims)
    }

    fn mint_key(&mut self, account: &str, user_id: &str, kind: KeyKind, client_id: &str, lifetime_secs: i64) -> String {
        self.issued += 1;
        let now = self.now_secs();
        let payload = base64::engine::general_purpose::STANDARD
            .encode(json!({"account": account, "nonce": self.issued}).to_string());
        let renew = match kind {
            KeyKind::Collections => "https://collections.mp.microsoft.com/v6.0/b2b/keys/renew",
            KeyKind::Purchase => "https://purchase.mp.microsoft.com/v6.0/b2b/keys/renew",
        };
        self.sign(&json!({
            "iat": now, "nbf": now, "exp": now + lifetime_secs,
            "iss": kind.audience(), "aud": kind.audience(),
            format!("{CLAIM}clientId"): client_id.replace('-', ""),
            format!("{CLAIM}payload"): payload,
            format!("{CLAIM}refreshUri"): renew,
            format!("{CLAIM}userId"): user_id,
        }))
    }

    /// A Store ID key's claims, if this emulator minted it, it is live and
    /// of `kind` (any kind if `None`).
    fn key_claims(&self, key: &str, kind: Option<KeyKind>) -> Option<KeyClaims> {
        if self.revoked_keys.contains(key) {
            return None;
        }
        let claims = self.verified(key)?;
        let key_kind = [KeyKind::Collections, KeyKind::Purchase]
            .into_iter()
            .find(|kind| claims["aud"].as_str() == Some(kind.audience()))?;
        if kind.is_some_and(|kind| kind != key_kind) {
            return None;
        }
        let payload = base64::engine::general_purpose::STANDARD
            .decode(claims[format!("{CLAIM}payload")].as_str()?)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())?;
        Some(KeyClaims {
            account: payload["account"].as_str()?.to_owned(),
            user_id: claims[format!("{CLAIM}userId")].as_str().unwrap_or_default().to_owned(),
            client_id: claims[format!("{CLAIM}clientId")].as_str().unwrap_or_default().to_owned(),
            kind: key_kind,
        })
    }

    /// The `appid` of a live Entra token for `audience`.
    fn token_appid(&self, token: &str, audience: &str) -> Option<String> {
        if !self.live_tokens.contains(token) {
            return None;
        }
        let claims = self.verified(token)?;
        if claims["aud"].as_str() != Some(audience) {
            return None;
        }
        claims["appid"].as_str().or(claims["azp"].as_str()).map(str::to_owned)
    }

    /// The caller's `appid`, or Microsoft's 401.
    fn service_token(&self, request: &Request) -> Result<String, Response> {
        let Some(token) = request.header_value("authorization").and_then(|value| value.strip_prefix("Bearer ")) else {
            return Err(service_error(
                401,
                "Unauthorized",
                "PartnerAadTicketRequired",
                "An Azure AD access token is required in the Authorization header.",
            ));
        };
        self.token_appid(token.trim(), SERVICE_AUDIENCE).ok_or_else(|| {
            service_error(
                401,
                "Unauthorized",
                "AuthenticationTokenInvalid",
                "The Azure AD access token is invalid, expired, or has no appid claim.",
            )
        })
    }

    /// The account of a Store ID key sent by client `appid`, or Microsoft's 401.
    fn user(&self, key: Option<&str>, kind: KeyKind, appid: &str) -> Result<KeyClaims, Response> {
        let claims = key.and_then(|key| self.key_claims(key, Some(kind))).ok_or_else(|| {
            service_error(
                401,
                "Unauthorized",
                "AuthenticationTokenInvalid",
                "The Microsoft Store ID key is invalid or expired.",
            )
        })?;
        if !same_client(&claims.client_id, appid) {
            return Err(service_error(
                401,
                "Unauthorized",
                "InconsistentClientId",
                "The clientId claim of the Microsoft Store ID key does not match the appid claim of the Azure AD access token.",
            ));
        }
        Ok(claims)
    }

    /// Counts a query or consume of `account`; 429 past the limit.
    fn throttle(&mut self, account: &str) -> Option<Response> {
        let now = self.now_secs();
        let calls = self.calls.entry(account.to_owned()).or_default();
        while calls.front().is_some_and(|at| *at <= now - THROTTLE_WINDOW_SECS) {
            calls.pop_front();
        }
        if calls.len() >= THROTTLE_LIMIT {
            let wait = calls.front().map_or(1, |first| first + THROTTLE_WINDOW_SECS - now).max(1);
            let mut response = service_error(
                429,
                "Throttled",
                "Throttled",
                &format!("Too many requests for this user; try again in {wait} seconds."),
            );
            response.headers.push(("retry-after".to_owned(), wait.to_string()));
            return Some(response);
        }
        calls.push_back(now);
        None
    }

    fn token(&mut self, tenant: &str, request: &Request, v2: bool) -> Response {
        let form: HashMap<String, String> = form_urlencoded::parse(&request.body).into_owned().collect();
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        if field("grant_type") != "client_credentials" {
            return entra_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.");
        }
        if !self.clients.iter().any(|client| client.tenant_id == tenant) {
            return entra_error(400, "invalid_request", 90002, &format!("Tenant '{tenant}' not found."));
        }
        let Some(client) =
            self.clients.iter().find(|client| client.tenant_id == tenant && client.client_id == field("client_id"))
        else {
            return entra_error(
                400,
                "unauthorized_client",
                700016,
                &format!("Application with identifier '{}' was not found in the directory.", field("client_id")),
            );
        };
        if client.client_secret != field("client_secret") {
            return entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            );
        }
        let audience = if v2 { field("scope").trim_end_matches("/.default") } else { field("resource") };
        if ![SERVICE_AUDIENCE, CREATE_COLLECTIONS_KEY, CREATE_PURCHASE_KEY].contains(&audience) {
            return entra_error(
                400,
                "invalid_resource",
                500011,
                &format!("The resource principal named {audience} was not found in the tenant."),
            );
        }
        let client_id = client.client_id.clone();
        self.issued += 1;
        let now = self.now_secs();
        let expires = now + TOKEN_LIFETIME_SECS;
        let mut claims = json!({
            "aud": audience, "iss": format!("https://sts.windows.net/{tenant}/"), "iat": now, "nbf": now,
            "exp": expires, "tid": tenant, "uti": format!("emulated-{}", self.issued),
            "ver": if v2 { "2.0" } else { "1.0" },
        });
        claims[if v2 { "azp" } else { "appid" }] = json!(client_id);
        let token = self.sign(&claims);
        self.live_tokens.insert(token.clone());
        let lifetime = TOKEN_LIFETIME_SECS - 1;
        if v2 {
            Response::json(
                200,
                &json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
            )
        } else {
            // v1 sends its numbers as strings.
            Response::json(
                200,
                &json!({
                    "token_type": "Bearer", "expires_in": lifetime.to_string(), "ext_expires_in": lifetime.to_string(),
                    "expires_on": expires.to_string(), "not_before": now.to_string(), "resource": audience,
                    "access_token": token,
                }),
            )
        }
    }

    fn query(&mut self, appid: &str, body: &Value) -> Response {
        let key = body["beneficiaries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|identity| identity["identitytype"].as_str().is_some_and(|kind| kind.eq_ignore_ascii_case("b2b")))
            .and_then(|identity| identity["identityvalue"].as_str());
        let claims = match self.user(key, KeyKind::Collections, appid) {
            Ok(claims) => claims,
            Err(refusal) => return refusal,
        };
        if let Some(throttled) = self.throttle(&claims.account) {
            return throttled;
        }
        let wanted: Vec<(String, Option<String>)> = body["productskuids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let product = entry["productid"].as_str()?.to_owned();
                Some((product, entry["skuid"].as_str().map(str::to_owned)))
            })
            .collect();
        if wanted.is_empty() || wanted.len() > 100 {
            return invalid_parameter("productSkuIds must list 1 to 100 products.");
        }
        let page_size = match body["maxpagesize"].as_u64() {
            None => 100,
            Some(size @ 1..=200) => usize::try_from(size).unwrap_or(100),
            Some(_) => return invalid_parameter("maxPageSize must be 1 to 200."),
        };
        let validity = body["validitytype"].as_str().unwrap_or("All");
        if !["All", "Valid", "Invalid"].contains(&validity) {
            return invalid_parameter("validityType must be All, Valid or Invalid.");
        }
        let sandbox = body["sbx"].as_str().unwrap_or("RETAIL");
        let offset = match body["continuationtoken"].as_str() {
            None => 0,
            Some(token) => match serde_json::from_str::<Value>(token).ok().and_then(|token| token["offset"].as_u64()) {
                Some(offset) => usize::try_from(offset).unwrap_or(usize::MAX),
                None => return invalid_parameter("continuationToken is not one this service issued."),
            },
        };
        let now = self.controls.now_millis();
        let items: Vec<Value> = self
            .accounts
            .get(&claims.account)
            .map(|account| account.items.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|item| item.sandbox == sandbox)
            .filter(|item| {
                wanted.iter().any(|(product, sku)| {
                    item.product_id.eq_ignore_ascii_case(product)
                        && sku.as_ref().is_none_or(|sku| item.sku_id.eq_ignore_ascii_case(sku))
                })
            })
            .filter(|item| match validity {
                "All" => true,
                valid => (valid == "Valid") == is_valid(item, now),
            })
            .map(Item::to_v9)
            .collect();
        let end = items.len().min(offset.saturating_add(page_size.min(self.page_size_limit)));
        let mut answer = json!({"items": items.get(offset..end).unwrap_or_default()});
        if end < items.len() {
            answer["continuationToken"] = json!(json!({"offset": end}).to_string());
        }
        Response::json(200, &answer)
    }

    fn consume(&mut self, appid: &str, body: &Value) -> Response {
        let key = body["beneficiary"]["identityvalue"].as_str();
        let claims = match self.user(key, KeyKind::Collections, appid) {
            Ok(claims) => claims,
            Err(refusal) => return refusal,
        };
        if let Some(throttled) = self.throttle(&claims.account) {
            return throttled;
        }
        let Some(product) = body["productid"].as_str().map(str::to_owned) else {
            return invalid_parameter("productId is required.");
        };
        let Some(tracking_id) = body["trackingid"].as_str().filter(|id| is_guid(id)).map(str::to_owned) else {
            return invalid_parameter("trackingId must be a GUID.");
        };
        let remove = match &body["removequantity"] {
            Value::Null => None,
            value => match value.as_i64().filter(|quantity| *quantity >= 1) {
                Some(quantity) => Some(quantity),
                None => return invalid_parameter("removeQuantity must be a whole number, at least 1."),
            },
        };
        let sandbox = body["sbx"].as_str().unwrap_or("RETAIL").to_owned();
        let include_orders = body["includeorderids"].as_bool().unwrap_or(false);
        let request = (claims.account.clone(), product.clone(), remove, sandbox.clone());
        if let Some(record) = self.consumes.get(&tracking_id) {
            if record.request != request {
                return invalid_parameter("trackingId was already used for another consume request.");
            }
            // A replay: nothing more is deducted; the current balance is relayed.
            let mut answer = record.answer.clone();
            let current = self.find_item(&claims.account, &product, &sandbox).map(|item| item.quantity);
            answer["newQuantity"] = json!(current.unwrap_or(0));
            if remove.is_none() {
                answer.as_object_mut().map(|answer| answer.remove("orderTransactions"));
            }
            return Response::json(200, &answer);
        }
        let now = iso(self.controls.now_millis());
        let Some(item) = self.find_item_mut(&claims.account, &product, &sandbox) else {
            return consume_refused("ProductNotOwned", "The user does not own an active entitlement to this product.");
        };
        let consumed = match (item.product_kind.as_str(), remove) {
            ("UnmanagedConsumable", Some(_)) => {
                return invalid_parameter("removeQuantity applies to store-managed consumables only.");
            }
            ("UnmanagedConsumable", None) if sandbox != "RETAIL" => {
                return consume_refused(
                    "SandboxNotSupported",
                    "Developer-managed consumables in a development sandbox are consumed with XSTS authentication only.",
                );
            }
            ("UnmanagedConsumable", None) => 1,
            ("Consumable", None) => {
                return invalid_parameter("removeQuantity is required for a store-managed consumable.");
            }
            ("Consumable", Some(quantity)) => quantity,
            _ => return consume_refused("ProductNotConsumable", "This product is not a consumable."),
        };
        if item.quantity < consumed {
            return consume_refused("InsufficientBalance", "The user's balance is lower than the quantity to remove.");
        }
        item.quantity -= consumed;
        item.modified_date = now;
        let mut answer = json!({
            "newQuantity": item.quantity, "itemId": item.id, "trackingId": tracking_id, "productId": item.product_id,
        });
        if include_orders {
            let line = format!("{}-line", item.transaction_id);
            answer["orderTransactions"] =
                json!([{"orderId": item.transaction_id, "orderLineItemId": line, "quantityConsumed": consumed}]);
        }
        self.consumes.insert(tracking_id, ConsumeRecord { request, answer: answer.clone() });
        Response::json(200, &answer)
    }

    fn find_item(&self, account: &str, product: &str, sandbox: &str) -> Option<&Item> {
        self.accounts.get(account)?.items.iter().find(|item| {
            item.product_id.eq_ignore_ascii_case(product) && item.sandbox == sandbox && item.status == "Active"
        })
    }

    fn find_item_mut(&mut self, account: &str, product: &str, sandbox: &str) -> Option<&mut Item> {
        self.accounts.get_mut(account)?.items.iter_mut().find(|item| {
            item.product_id.eq_ignore_ascii_case(product) && item.sandbox == sandbox && item.status == "Active"
        })
    }

    fn recurrences(&mut self, appid: &str, body: &Value) -> Response {
        let claims = match self.user(body["b2bkey"].as_str(), KeyKind::Purchase, appid) {
            Ok(claims) => claims,
            Err(refusal) => return refusal,
        };
        let sandbox = body["sbx"].as_str().unwrap_or("RETAIL");
        let items: Vec<Value> = self
            .accounts
            .get(&claims.account)
            .map(|account| account.recurrences.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|recurrence| recurrence["sandbox"].as_str().unwrap_or("RETAIL") == sandbox)
            .map(|recurrence| {
                let mut recurrence = recurrence.clone();
                recurrence.as_object_mut().map(|fields| fields.remove("sandbox"));
                recurrence
            })
            .collect();
        Response::json(200, &json!({"items": items}))
    }

    fn renew(&mut self, request: &Request) -> Response {
        let body = lowercase_keys(serde_json::from_slice(&request.body).unwrap_or(Value::Null));
        let refused = || {
            service_error(
                401,
                "Unauthorized",
                "AuthenticationTokenInvalid",
                "The service ticket or the key is invalid or expired.",
            )
        };
        let Some(appid) = body["serviceticket"].as_str().and_then(|ticket| self.token_appid(ticket, SERVICE_AUDIENCE))
        else {
            return refused();
        };
        let Some(claims) = body["key"].as_str().and_then(|key| self.key_claims(key, None)) else {
            return refused();
        };
        // On Microsoft's hosts each service renews its own kind of key.
        let host = request.header_value("host").unwrap_or_default();
        let wrong_host = (host.starts_with("collections.") && claims.kind != KeyKind::Collections)
            || (host.starts_with("purchase.") && claims.kind != KeyKind::Purchase);
        if wrong_host {
            return refused();
        }
        if !same_client(&claims.client_id, &appid) {
            return service_error(
                401,
                "Unauthorized",
                "InconsistentClientId",
                "The key's clientId does not match the service ticket's appid.",
            );
        }
        let key = self.mint_key(&claims.account, &claims.user_id, claims.kind, &claims.client_id, KEY_LIFETIME_SECS);
        Response::json(200, &json!({"key": key}))
    }

    /// `POST /emulator/v1/keys`: what the Windows client's
    /// `GetCustomerCollectionsIdAsync` / `GetCustomerPurchaseIdAsync` answer.
    fn mint_control(&mut self, body: &[u8]) -> Response {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Mint {
            account: String,
            #[serde(default)]
            publisher_user_id: String,
            #[serde(default = "collections")]
            kind: KeyKind,
            #[serde(default)]
            service_ticket: Option<String>,
            #[serde(default)]
            client_id: Option<String>,
            #[serde(default)]
            lifetime_secs: Option<i64>,
        }
        fn collections() -> KeyKind {
            KeyKind::Collections
        }
        let mint: Mint = match serde_json::from_slice(body) {
            Ok(mint) => mint,
            Err(err) => return Response::json(400, &json!({"error": err.to_string()})),
        };
        if !self.accounts.contains_key(&mint.account) {
            return Response::json(404, &json!({"error": format!("no account {}", mint.account)}));
        }
        let client_id = match (&mint.service_ticket, &mint.client_id) {
            (Some(ticket), _) => {
                let audience = match mint.kind {
                    KeyKind::Collections => CREATE_COLLECTIONS_KEY,
                    KeyKind::Purchase => CREATE_PURCHASE_KEY,
                };
                match self.token_appid(ticket, audience) {
                    Some(appid) => appid,
                    None => {
                        return service_error(
                            401,
                            "Unauthorized",
                            "AuthenticationTokenInvalid",
                            "The service ticket is not a live token for the key's create audience.",
                        );
                    }
                }
            }
            (None, Some(client_id)) => client_id.clone(),
            (None, None) => self.clients.first().map(|client| client.client_id.clone()).unwrap_or_default(),
        };
        let lifetime = mint.lifetime_secs.unwrap_or(KEY_LIFETIME_SECS);
        let key = self.mint_key(&mint.account, &mint.publisher_user_id, mint.kind, &client_id, lifetime);
        Response {
            status: 200,
            headers: vec![("content-type".to_owned(), "text/plain; charset=utf-8".to_owned())],
            body: key.into_bytes(),
            delay: std::time::Duration::ZERO,
        }
    }
}

/// Whether `item` is owned now: `Active`, started and not ended.
fn is_valid(item: &Item, now_millis: i64) -> bool {
    let millis = |value: &str| {
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
            .map(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
            .ok()
    };
    item.status == "Active"
        && millis(&item.start_date).is_none_or(|start| start <= now_millis)
        && millis(&item.end_date).is_none_or(|end| now_millis < end)
}

/// Client ids compare without dashes and case (a key's claim has none).
fn same_client(a: &str, b: &str) -> bool {
    let normal = |id: &str| id.replace('-', "").to_ascii_lowercase();
    !a.is_empty() && normal(a) == normal(b)
}

fn is_guid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Every object key in lowercase: Microsoft matches property names
/// case-insensitively (its own examples send `identitytype` and `Key`).
fn lowercase_keys(value: Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields.into_iter().map(|(key, value)| (key.to_ascii_lowercase(), lowercase_keys(value))).collect(),
        ),
        Value::Array(values) => Value::Array(values.into_iter().map(lowercase_keys).collect()),
        other => other,
    }
}

/// `unix_millis` as Microsoft writes times: seven fractional digits, `+00:00`.
fn iso(unix_millis: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_millis) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}+00:00",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond() / 100
    )
}

/// Microsoft's service error envelope.
pub fn service_error(status: u16, code: &str, inner_code: &str, message: &str) -> Response {
    Response::json(
        status,
        &json!({
            "code": code, "data": [], "details": [],
            "innererror": {"code": inner_code, "data": [], "details": [], "message": message, "source": "iapd-emulator"},
            "message": message, "source": "iapd-emulator",
        }),
    )
}

fn invalid_parameter(message: &str) -> Response {
    service_error(400, "BadRequest", "InvalidParameter", message)
}

fn consume_refused(inner_code: &str, message: &str) -> Response {
    service_error(400, "BadRequest", inner_code, message)
}

/// Entra's error body.
fn entra_error(status: u16, error: &str, code: u32, message: &str) -> Response {
    let trace = "00000000-0000-4000-8000-000000000000";
    Response::json(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {message}\r\nTrace ID: {trace}\r\nCorrelation ID: {trace}\r\nTimestamp: 2026-01-01 00:00:00Z"),
            "error_codes": [code], "timestamp": "2026-01-01 00:00:00Z", "trace_id": trace, "correlation_id": trace,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "8f2c6e1a-0b5d-4c3e-9a71-5d2e0f4b6c10";
    const CLIENT: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";

    fn token_request(path: &str, form: &str) -> Request {
        Request::new("POST", path).body(form.as_bytes().to_vec())
    }

    #[test]
    fn v1_tokens_have_string_lifetimes_and_v2_numbers() {
        let emulator = MicrosoftStore::with_default_state();
        let v1 = emulator.handle(&token_request(
            &format!("/{TENANT}/oauth2/token"),
            &format!("grant_type=client_credentials&client_id={CLIENT}&client_secret=demo-client-secret&resource=https%3A%2F%2Fonestore.microsoft.com"),
        ));
        assert_eq!(v1.status, 200);
        assert_eq!(v1.json_body()["expires_in"], "3599");
        assert_eq!(v1.json_body()["resource"], SERVICE_AUDIENCE);
        let v2 = emulator.handle(&token_request(
            &format!("/{TENANT}/oauth2/v2.0/token"),
            &format!("grant_type=client_credentials&client_id={CLIENT}&client_secret=demo-client-secret&scope=https%3A%2F%2Fonestore.microsoft.com%2F.default"),
        ));
        assert_eq!(v2.json_body()["expires_in"], 3599);
        let wrong = emulator.handle(&token_request(
            &format!("/{TENANT}/oauth2/token"),
            &format!("grant_type=client_credentials&client_id={CLIENT}&client_secret=nope&resource=https%3A%2F%2Fonestore.microsoft.com"),
        ));
        assert_eq!((wrong.status, wrong.json_body()["error"].as_str()), (401, Some("invalid_client")));
        assert_eq!(emulator.count("token"), 3);
    }

    #[test]
    fn property_names_match_in_any_case_and_keys_renew() {
        let emulator = MicrosoftStore::with_default_state();
        let token = emulator.handle(&token_request(
            &format!("/{TENANT}/oauth2/token"),
            &format!("grant_type=client_credentials&client_id={CLIENT}&client_secret=demo-client-secret&resource=https%3A%2F%2Fonestore.microsoft.com"),
        ));
        let token = token.json_body()["access_token"].as_str().unwrap_or_default().to_owned();
        let key = emulator.key("demo-account", "user-42", KeyKind::Collections);
        let query = Request::new("POST", "/v9.0/collections/PublisherQuery")
            .header("authorization", &format!("Bearer {token}"))
            .body(
                json!({"Beneficiaries": [{"identitytype": "b2b", "IdentityValue": key}], "productSkuIds": [{"productId": "9NBLGGH42CFD"}]})
                    .to_string(),
            );
        let answer = emulator.handle(&query);
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        assert_eq!(answer.json_body()["items"][0]["status"], "Active");
        assert!(answer.headers.iter().any(|(name, _)| name == "MS-CorrelationId"));
        let renew = emulator.handle(
            &Request::new("POST", "/v6.0/b2b/keys/renew").body(json!({"serviceTicket": token, "Key": key}).to_string()),
        );
        assert_eq!(renew.status, 200);
        let renewed = renew.json_body()["key"].as_str().unwrap_or_default().to_owned();
        assert_ne!(renewed, key);
        emulator.revoke_key(&renewed);
        let refused = emulator.handle(
            &Request::new("POST", "/v6.0/b2b/keys/renew")
                .body(json!({"serviceTicket": token, "key": renewed}).to_string()),
        );
        assert_eq!(
            (refused.status, refused.json_body()["innererror"]["code"].as_str()),
            (401, Some("AuthenticationTokenInvalid"))
        );
    }

    #[test]
    fn tokens_and_keys_are_refused_as_microsoft_refuses_them() {
        let emulator = MicrosoftStore::with_default_state();
        let token = |audience: &str| {
            let form = format!(
                "grant_type=client_credentials&client_id={CLIENT}&client_secret=demo-client-secret&resource={}",
                audience.replace(':', "%3A").replace('/', "%2F")
            );
            let answer = emulator.handle(&token_request(&format!("/{TENANT}/oauth2/token"), &form));
            answer.json_body()["access_token"].as_str().unwrap_or_default().to_owned()
        };
        let service = token(SERVICE_AUDIENCE);
        let create = token(CREATE_COLLECTIONS_KEY);
        let key = emulator.key("demo-account", "user-42", KeyKind::Collections);
        let query = |bearer: Option<&str>, key: &str| {
            let mut request = Request::new("POST", "/v9.0/collections/publisherQuery").body(
                json!({"beneficiaries": [{"identityType": "b2b", "identityValue": key}], "productSkuIds": [{"productId": "9NBLGGH42CFD"}]})
                    .to_string(),
            );
            if let Some(bearer) = bearer {
                request = request.header("authorization", &format!("Bearer {bearer}"));
            }
            let answer = emulator.handle(&request);
            (answer.status, answer.json_body()["innererror"]["code"].as_str().unwrap_or_default().to_owned())
        };
        let other_client = emulator.key_with("demo-account", "u", KeyKind::Collections, Some("ffff"), 3600);
        let expired = emulator.key_with("demo-account", "u", KeyKind::Collections, None, 0);
        let purchase = emulator.key("demo-account", "u", KeyKind::Purchase);
        for (bearer, key, expected) in [
            (None, key.as_str(), "PartnerAadTicketRequired"),
            (Some(create.as_str()), key.as_str(), "AuthenticationTokenInvalid"),
            (Some("not-a-token"), key.as_str(), "AuthenticationTokenInvalid"),
            (Some(service.as_str()), purchase.as_str(), "AuthenticationTokenInvalid"),
            (Some(service.as_str()), expired.as_str(), "AuthenticationTokenInvalid"),
            (Some(service.as_str()), other_client.as_str(), "InconsistentClientId"),
        ] {
            assert_eq!(query(bearer, key), (401, expected.to_owned()), "{expected}");
        }
        assert_eq!(query(Some(&service), &key).0, 200);
        emulator.revoke_tokens();
        assert_eq!(query(Some(&service), &key), (401, "AuthenticationTokenInvalid".to_owned()), "a revoked token");

        // Consume: removeQuantity is for store-managed consumables, a tracking id names one request.
        let service = token(SERVICE_AUDIENCE);
        let consume = |body: Value| {
            let request = Request::new("POST", "/v8.0/collections/consume")
                .header("authorization", &format!("Bearer {service}"))
                .body(body.to_string());
            let answer = emulator.handle(&request);
            (answer.status, answer.json_body())
        };
        let beneficiary = json!({"identityType": "b2b", "identityValue": key});
        let tracking = "1b3afaa8-2c4d-4e5f-8a9b-0c1d2e3f4a5b";
        let (status, body) = consume(
            json!({"beneficiary": beneficiary, "productId": "9NCOINS00100", "trackingId": tracking, "removeQuantity": 1}),
        );
        assert_eq!((status, body["innererror"]["code"].as_str()), (400, Some("InvalidParameter")));
        let (status, body) = consume(
            json!({"beneficiary": beneficiary, "productId": "9NGEMS000500", "trackingId": tracking, "removeQuantity": 1}),
        );
        assert_eq!((status, body["newQuantity"].as_i64()), (200, Some(4)));
        let (status, body) = consume(
            json!({"beneficiary": beneficiary, "productId": "9NGEMS000500", "trackingId": tracking, "removeQuantity": 2}),
        );
        assert_eq!((status, body["innererror"]["code"].as_str()), (400, Some("InvalidParameter")), "another body");
        let (status, body) = consume(
            json!({"beneficiary": beneficiary, "productId": "9NBLGGH42CFD", "trackingId": "2b3afaa8-2c4d-4e5f-8a9b-0c1d2e3f4a5b"}),
        );
        assert_eq!((status, body["innererror"]["code"].as_str()), (400, Some("ProductNotConsumable")));
    }

    #[test]
    fn times_are_written_with_seven_digits() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.0000000+00:00");
        assert_eq!(iso(1_767_225_600_123), "2026-01-01T00:00:00.1230000+00:00");
    }
}
