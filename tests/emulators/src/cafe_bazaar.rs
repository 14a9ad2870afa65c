//! The Cafe Bazaar Developer API v2, as `shared/reference/stores/cafe-bazaar.md`
//! and Bazaar's validation page (seed 004) describe it:
//!
//! - `POST /devapi/v2/auth/token/`: OAuth 2.0, `refresh_token` and
//!   `authorization_code` grants (form fields `client_id`, `client_secret`, …).
//! - `GET  /devapi/v2/api/validate/{package}/inapp/{product}/purchases/{token}/`:
//!   `{"consumptionState", "purchaseState", "kind", "developerPayload", "purchaseTime"}`,
//!   where **`consumptionState` 0 means consumed and 1 not consumed** (the
//!   opposite of Google's) and `purchaseState` 1 means refunded.
//! - `POST /devapi/v2/api/consume/{package}/purchases/` with `{"token"}`.
//!
//! Requests authenticate with an access token (`Authorization: Bearer`, a bare
//! `Authorization` value or `?access_token=`) or with the app's
//! `CAFEBAZAAR-PISHKHAN-API-SECRET` header. Errors are
//! `{"error", "error_description"}`; an unknown purchase is 404 `not_found`,
//! the one answer that proves a purchase never happened. Trailing slashes
//! are optional. Test controls as for Google Play: `/emulator/v1/purchases`,
//! `/emulator/v1/faults`, `/emulator/v1/tokens:revoke`, `/emulator/v1/stats`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::{self, Controls, StoreState};
use crate::{Emulator, Fault, Request, Response};

/// The state a new emulator starts with when none is given.
pub const DEFAULT_STATE: &str = include_str!("cafe_bazaar_state.json");

/// The emulator.
#[derive(Debug)]
pub struct CafeBazaar {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    clients: Vec<Client>,
    apps: BTreeMap<String, App>,
    purchases: HashMap<String, Purchase>,
    /// access token → expiry, unix seconds.
    access_tokens: HashMap<String, i64>,
    controls: Controls,
    tokens_issued: u64,
}

/// An emulator state file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// OAuth clients.
    #[serde(default)]
    pub clients: Vec<Client>,
    /// Apps.
    #[serde(default)]
    pub apps: Vec<App>,
    /// Purchases.
    #[serde(default)]
    pub purchases: Vec<Purchase>,
}

/// An OAuth client of the developer panel.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Client {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`.
    pub client_secret: String,
    /// Refresh tokens it has been granted.
    #[serde(default)]
    pub refresh_tokens: HashSet<String>,
    /// Authorization codes waiting to be exchanged.
    #[serde(default)]
    pub authorization_codes: HashSet<String>,
}

/// An app.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct App {
    /// The package name.
    pub package_name: String,
    /// Its Pishkhan API secret, if one was generated.
    #[serde(default)]
    pub pishkhan_api_secret: Option<String>,
    /// Its subscription products (they cannot be consumed).
    #[serde(default)]
    pub subscriptions: Vec<String>,
}

/// A purchase.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Purchase {
    /// The app.
    pub package_name: String,
    /// The product.
    pub product_id: String,
    /// The token.
    pub purchase_token: String,
    /// 0 purchased, 1 refunded.
    #[serde(default)]
    pub purchase_state: i64,
    /// 0 consumed, 1 not consumed.
    #[serde(default = "not_consumed")]
    pub consumption_state: i64,
    /// The app's payload.
    #[serde(default)]
    pub developer_payload: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub purchase_time: i64,
}

fn not_consumed() -> i64 {
    1
}

const ACCESS_TOKEN_LIFETIME_SECS: i64 = 3600;

impl CafeBazaar {
    /// An emulator with `seed`.
    pub fn new(seed: Seed) -> CafeBazaar {
        let state = State {
            clients: seed.clients,
            apps: seed.apps.into_iter().map(|app| (app.package_name.clone(), app)).collect(),
            purchases: seed.purchases.into_iter().map(|p| (p.purchase_token.clone(), p)).collect(),
            ..State::default()
        };
        CafeBazaar { state: Mutex::new(state) }
    }

    /// An emulator with [`DEFAULT_STATE`].
    pub fn with_default_state() -> CafeBazaar {
        CafeBazaar::new(serde_json::from_str(DEFAULT_STATE).unwrap_or_default())
    }

    /// Adds or replaces a purchase.
    pub fn add_purchase(&self, purchase: Purchase) {
        self.lock().purchases.insert(purchase.purchase_token.clone(), purchase);
    }

    /// Queues a fault (operations: `token`, `validate`, `consume`).
    pub fn inject(&self, fault: Fault) {
        self.lock().controls.inject(fault);
    }

    /// Invalidates every access token issued so far.
    pub fn revoke_tokens(&self) {
        self.lock().access_tokens.clear();
    }

    /// Freezes the clock at `unix_millis`.
    pub fn set_clock(&self, unix_millis: i64) {
        self.lock().controls.set_clock(unix_millis);
    }

    /// How many requests an operation received, faults included.
    pub fn count(&self, operation: &str) -> u64 {
        self.lock().controls.count(operation)
    }

    /// A purchase as the store has it now.
    pub fn purchase(&self, token: &str) -> Option<Purchase> {
        self.lock().purchases.get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Emulator for CafeBazaar {
    fn handle(&self, request: &Request) -> Response {
        store::handle(&mut *self.lock(), request)
    }
}

impl StoreState for State {
    type Purchase = Purchase;
    const TRAILING_SLASH_OPTIONAL: bool = true;

    fn controls(&mut self) -> &mut Controls {
        &mut self.controls
    }

    fn operation(method: &str, segments: &[&str]) -> &'static str {
        match (method, segments) {
            ("POST", ["devapi", "v2", "auth", "token"]) => "token",
            ("GET", ["devapi", "v2", "api", "validate", _, "inapp", _, "purchases", _]) => "validate",
            ("POST", ["devapi", "v2", "api", "consume", _, "purchases"]) => "consume",
            _ => "unknown",
        }
    }

    fn fault_error(status: u16, reason: Option<&str>) -> Response {
        bazaar_error(status, reason.unwrap_or(default_reason(status)), "Emulated error.")
    }

    fn serve(&mut self, request: &Request, segments: &[&str]) -> Response {
        match (Self::operation(&request.method, segments), segments) {
            ("token", _) => self.token(request),
            ("validate", [.., package, "inapp", product, "purchases", token]) => {
                self.authorized(request, package).unwrap_or_else(|| self.validate(package, product, token))
            }
            ("consume", [.., package, "purchases"]) => {
                self.authorized(request, package).unwrap_or_else(|| self.consume(package, &request.body))
            }
            _ => bazaar_error(404, "not_found", "The requested URL was not found on this server."),
        }
    }

    fn add_purchase(&mut self, purchase: Purchase) {
        self.purchases.insert(purchase.purchase_token.clone(), purchase);
    }

    fn revoke_tokens(&mut self) {
        self.access_tokens.clear();
    }
}

impl State {
    fn now_secs(&self) -> i64 {
        self.controls.now_millis() / 1000
    }

    fn token(&mut self, request: &Request) -> Response {
        let form: HashMap<String, String> = form_urlencoded::parse(&request.body).into_owned().collect();
        let field = |name: &str| form.get(name).map_or("", String::as_str);
        let Some(client) = self
            .clients
            .iter_mut()
            .find(|client| client.client_id == field("client_id") && client.client_secret == field("client_secret"))
        else {
            return bazaar_error(401, "invalid_client", "Client authentication failed.");
        };
        let refresh_token = match field("grant_type") {
            "refresh_token" if client.refresh_tokens.contains(field("refresh_token")) => None,
            "authorization_code" if client.authorization_codes.remove(field("code")) => {
                let refresh_token = format!("bazaar-refresh-{}", client.refresh_tokens.len() + 1);
                client.refresh_tokens.insert(refresh_token.clone());
                Some(refresh_token)
            }
            "refresh_token" | "authorization_code" => {
                return bazaar_error(400, "invalid_grant", "Invalid credentials given.");
            }
            other => return bazaar_error(400, "unsupported_grant_type", &format!("Unsupported grant type: {other}")),
        };
        self.tokens_issued += 1;
        let access_token = format!("bazaar-access-{}", self.tokens_issued);
        self.access_tokens.insert(access_token.clone(), self.now_secs() + ACCESS_TOKEN_LIFETIME_SECS);
        let mut body = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_LIFETIME_SECS,
            "scope": "androidpublisher",
        });
        if let Some(refresh_token) = refresh_token {
            body["refresh_token"] = json!(refresh_token);
        }
        Response::json(200, &body)
    }

    /// `None` if the request may act on `package`; the refusal otherwise.
    fn authorized(&self, request: &Request, package: &str) -> Option<Response> {
        let Some(app) = self.apps.get(package) else {
            return Some(bazaar_error(403, "forbidden", "You do not have access to this application."));
        };
        if let Some(secret) = request.header_value("cafebazaar-pishkhan-api-secret") {
            return (app.pishkhan_api_secret.as_deref() != Some(secret))
                .then(|| bazaar_error(401, "unauthorized", "Invalid Pishkhan API secret."));
        }
        let token = request.query_value("access_token").or_else(|| {
            request.header_value("authorization").map(|value| value.strip_prefix("Bearer ").unwrap_or(value))
        });
        match token.and_then(|token| self.access_tokens.get(token)) {
            Some(expires) if *expires > self.now_secs() => None,
            Some(_) => Some(bazaar_error(401, "unauthorized", "The access token has expired.")),
            None => {
                Some(bazaar_error(401, "unauthorized", "Authentication credentials were not provided or are invalid."))
            }
        }
    }

    fn validate(&self, package: &str, product: &str, token: &str) -> Response {
        match self.purchases.get(token) {
            Some(purchase) if purchase.package_name == package && purchase.product_id == product => Response::json(
                200,
                &json!({
                    "consumptionState": purchase.consumption_state,
                    "purchaseState": purchase.purchase_state,
                    "kind": "androidpublisher#inappPurchase",
                    "developerPayload": purchase.developer_payload,
                    "purchaseTime": purchase.purchase_time,
                }),
            ),
            _ => bazaar_error(404, "not_found", "The requested purchase is not found!"),
        }
    }

    fn consume(&mut self, package: &str, body: &[u8]) -> Response {
        let Some(token) =
            serde_json::from_slice::<Value>(body).ok().and_then(|body| body["token"].as_str().map(str::to_owned))
        else {
            return bazaar_error(400, "invalid_value", "The token field is required.");
        };
        let subscriptions = self.apps.get(package).map(|app| app.subscriptions.clone()).unwrap_or_default();
        let Some(purchase) = self.purchases.get_mut(&token).filter(|purchase| purchase.package_name == package) else {
            return bazaar_error(404, "not_found", "The requested purchase is not found!");
        };
        if subscriptions.contains(&purchase.product_id) {
            return bazaar_error(400, "invalid_value", "Subscriptions cannot be consumed.");
        }
        if purchase.purchase_state != 0 {
            return bazaar_error(400, "invalid_value", "The purchase is refunded.");
        }
        if purchase.consumption_state == 0 {
            return bazaar_error(400, "invalid_value", "The purchase is already consumed.");
        }
        purchase.consumption_state = 0;
        Response::json(200, &json!({}))
    }
}

/// Bazaar's error body: `{"error", "error_description"}`.
pub fn bazaar_error(status: u16, error: &str, description: &str) -> Response {
    Response::json(status, &json!({"error": error, "error_description": description}))
}

fn default_reason(status: u16) -> &'static str {
    match status {
        400 => "invalid_value",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        429 => "too_many_requests",
        _ => "server_error",
    }
}
