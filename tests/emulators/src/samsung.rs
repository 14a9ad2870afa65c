//! Samsung's in-app purchase server APIs, as
//! `shared/reference/stores/samsung-tizen.md` and the Tizen IAP guide (seed
//! 003, section 4) describe them:
//!
//! - `GET /iap/v6/receipt?purchaseID=…`: the Galaxy Store receipt, no auth,
//!   every value a string. An unknown purchase is
//!   `{"status":"fail","errorCode":9135,"errorMessage":"not exist order"}`,
//!   a malformed id errorCode 9153. Samsung does not document the HTTP status
//!   of a fail answer; this emulator answers 200, as clients see it most.
//! - `GET /appsItemVerifyIAPReceipt.as?purchaseID=…&param1=…&param5=`: the
//!   legacy Tizen Store check. `{"status":"true", "paymentID", "itemID", …}`
//!   when the ticket and all five parameters match, `{"status":"false"}`
//!   otherwise.
//! - `POST /auth/accessToken` with `Authorization: Bearer <JWT>`: an RS256 JWT
//!   whose `iss` is a known service account, signed by its key, living at
//!   most 20 minutes, answers `{"ok":true,"createdItem":{"accessToken"}}`.
//!   The access token never expires (until revoked).
//! - Developer API calls need `Authorization: Bearer <access token>` and the
//!   token's `service-account-id` header, else 401
//!   `{"code":"AUTH_REQUIRE","message","from":"asgw"}`; a token without the
//!   `publishing` scope gets 403 `NO_PERMISSION`.
//! - `PATCH /iap/seller/v6/applications/{package}/purchases/{purchaseId}` with
//!   `{"action":"consume"|"acknowledge"}` (and optionally the batch's
//!   `purchasedIdList`, as strings or `{"purchaseId"}` objects) answers per
//!   item `statusCode` "0" success, "1" no such order, "2" not a successful
//!   order, "3" the wrong product type, "4" done already, "5" another
//!   seller's order, and flips the receipt's `consumeYN` / `acknowledgeYN`.
//! - `GET /iap/v6/applications/{package}/items?page=&size=`: the item
//!   catalog, `{"totalCount", "itemList"}`; `page` (1-based, as Samsung's
//!   example starts at 1) and `size` are required, else 400.
//!
//! Test controls as for the other emulators: `/emulator/v1/purchases` (a
//! receipt), `/emulator/v1/faults`, `/emulator/v1/tokens:revoke`,
//! `/emulator/v1/stats`. Operations: `receipt`, `tizen.verify`, `token`,
//! `purchases.update`, `items.list`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::store::{self, Controls, StoreState};
use crate::{Emulator, Fault, Request, Response};

/// The state a new emulator starts with when none is given: the app
/// `com.example.galaxy` with a catalog and a receipt for every verdict, two
/// Tizen tickets, and the service account of `tests/fixtures/samsung`.
pub const DEFAULT_STATE: &str = include_str!("samsung_state.json");

/// Samsung's longest JWT lifetime for `/auth/accessToken`, in seconds.
pub const MAX_JWT_LIFETIME_SECS: i64 = 1200;

/// The emulator.
#[derive(Debug)]
pub struct Samsung {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// service account id → (RSA public key, PKCS#1 DER; scopes granted).
    accounts: HashMap<String, (Vec<u8>, Vec<String>)>,
    /// access token → (service account id, scopes).
    access_tokens: HashMap<String, (String, Vec<String>)>,
    apps: BTreeMap<String, App>,
    receipts: HashMap<String, Receipt>,
    tickets: HashMap<String, TizenTicket>,
    controls: Controls,
    tokens_issued: u64,
}

/// An emulator state file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// Service accounts of the Seller Portal.
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccount>,
    /// Apps, with their item catalogs.
    #[serde(default)]
    pub apps: Vec<App>,
    /// Galaxy Store receipts.
    #[serde(default)]
    pub receipts: Vec<Receipt>,
    /// Tizen Store purchase tickets.
    #[serde(default)]
    pub tizen_tickets: Vec<TizenTicket>,
}

/// A service account: its id and the public half of its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccount {
    /// The service account id.
    pub id: String,
    /// The public key, PEM (`RSA PUBLIC KEY`, PKCS#1).
    pub public_key_pem: String,
    /// Scopes granted: `publishing`, `gss`.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// An app and its items, as the IAP Publish API shows them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct App {
    /// The package name.
    pub package_name: String,
    /// Item resources (`id`, `title`, `type`, `status`, `usdPrice`, `prices`, …), served as given.
    #[serde(default)]
    pub items: Vec<Value>,
}

/// A Galaxy Store receipt: its purchase id and the receipt's fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// The purchase id the app got from the IAP SDK.
    pub purchase_id: String,
    /// The receipt's fields (`packageName`, `itemId`, `status`, `mode`, `consumeYN`, …),
    /// all strings at Samsung, served as given.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// A Tizen Store purchase ticket: what the purchase AppControl returned.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TizenTicket {
    /// `_ticketPurchaseId`.
    pub purchase_id: String,
    /// `_ticketParam1`.
    pub param1: String,
    /// `_ticketParam2`.
    pub param2: String,
    /// `_ticketParam3`.
    pub param3: String,
    /// `_ticketParam4`.
    pub param4: String,
    /// `_ticketParam5`.
    pub param5: String,
    /// The fields of a successful check (`paymentID`, `itemID`, `purchaseDate`, `mode`, …).
    pub answer: Map<String, Value>,
}

impl Samsung {
    /// An emulator with `seed`. Fails on a service account key that is not
    /// an RSA public key in PEM.
    pub fn new(seed: Seed) -> Result<Samsung, String> {
        let mut state = State::default();
        for account in seed.service_accounts {
            let der = pem::parse(&account.public_key_pem)
                .map_err(|err| format!("service account {}: publicKeyPem: {err}", account.id))?;
            if der.tag() != "RSA PUBLIC KEY" {
                return Err(format!("service account {}: publicKeyPem is not an RSA PUBLIC KEY", account.id));
            }
            state.accounts.insert(account.id, (der.contents().to_vec(), account.scopes));
        }
        state.apps = seed.apps.into_iter().map(|app| (app.package_name.clone(), app)).collect();
        state.receipts = seed.receipts.into_iter().map(|receipt| (receipt.purchase_id.clone(), receipt)).collect();
        state.tickets = seed.tizen_tickets.into_iter().map(|ticket| (ticket.purchase_id.clone(), ticket)).collect();
        Ok(Samsung { state: Mutex::new(state) })
    }

    /// An emulator with [`DEFAULT_STATE`].
    pub fn with_default_state() -> Samsung {
        serde_json::from_str(DEFAULT_STATE)
            .map_err(|err| err.to_string())
            .and_then(Samsung::new)
            .unwrap_or_else(|err| panic!("the built-in samsung state is broken: {err}"))
    }

    /// Adds or replaces a receipt.
    pub fn add_receipt(&self, receipt: Receipt) {
        self.lock().add_purchase(receipt);
    }

    /// Queues a fault; faults hit requests in the order queued.
    pub fn inject(&self, fault: Fault) {
        self.lock().controls.inject(fault);
    }

    /// Revokes every access token issued so far (the API answers 401).
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

    /// A receipt's current fields.
    pub fn receipt(&self, purchase_id: &str) -> Option<Map<String, Value>> {
        self.lock().receipts.get(purchase_id).map(|receipt| receipt.fields.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Emulator for Samsung {
    fn handle(&self, request: &Request) -> Response {
        store::handle(&mut *self.lock(), request)
    }
}

impl StoreState for State {
    type Purchase = Receipt;

    fn controls(&mut self) -> &mut Controls {
        &mut self.controls
    }

    fn operation(method: &str, segments: &[&str]) -> &'static str {
        match (method, segments) {
            ("GET", ["iap", "v6", "receipt"]) => "receipt",
            ("GET", ["appsItemVerifyIAPReceipt.as"]) => "tizen.verify",
            ("POST", ["auth", "accessToken"]) => "token",
            ("PATCH", ["iap", "seller", "v6", "applications", _, "purchases", _]) => "purchases.update",
            ("GET", ["iap", "v6", "applications", _, "items"]) => "items.list",
            _ => "unknown",
        }
    }

    fn fault_error(status: u16, reason: Option<&str>) -> Response {
        let code = reason.unwrap_or(match status {
            401 => "AUTH_REQUIRE",
            403 => "NO_PERMISSION",
            429 => "TOO_MANY_REQUESTS",
            _ => "INTERNAL_SERVER_ERROR",
        });
        devapi_error(status, code, "Emulated error.")
    }

    fn serve(&mut self, request: &Request, segments: &[&str]) -> Response {
        match (Self::operation(&request.method, segments), segments) {
            ("receipt", _) => self.receipt(request),
            ("tizen.verify", _) => self.tizen_verify(request),
            ("token", _) => self.token(request),
            ("purchases.update", [.., package, "purchases", purchase_id]) => {
                self.authorize(request).unwrap_or_else(|| self.update(package, purchase_id, &request.body))
            }
            ("items.list", [.., package, "items"]) => {
                self.authorize(request).unwrap_or_else(|| self.items(request, package))
            }
            _ => devapi_error(404, "NOT_FOUND", "No such resource."),
        }
    }

    fn add_purchase(&mut self, receipt: Receipt) {
        self.receipts.insert(receipt.purchase_id.clone(), receipt);
    }

    fn revoke_tokens(&mut self) {
        self.access_tokens.clear();
    }
}

impl State {
    fn now_secs(&self) -> i64 {
        self.controls.now_millis().div_euclid(1000)
    }

    fn receipt(&self, request: &Request) -> Response {
        let purchase_id = request.query_value("purchaseID").unwrap_or_default();
        let well_formed = !purchase_id.is_empty()
            && purchase_id.len() <= 128
            && purchase_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !well_formed {
            return receipt_fail(9153, "invalid purchaseID");
        }
        match self.receipts.get(purchase_id) {
            Some(receipt) => Response::json(200, &Value::Object(receipt.fields.clone())),
            None => receipt_fail(9135, "not exist order"),
        }
    }

    fn tizen_verify(&self, request: &Request) -> Response {
        let ticket = request.query_value("purchaseID").and_then(|id| self.tickets.get(id));
        let matches = ticket.is_some_and(|ticket| {
            [&ticket.param1, &ticket.param2, &ticket.param3, &ticket.param4, &ticket.param5]
                .into_iter()
                .enumerate()
                .all(|(index, value)| request.query_value(&format!("param{}", index + 1)) == Some(value.as_str()))
        });
        match ticket.filter(|_| matches) {
            Some(ticket) => {
                let mut answer = ticket.answer.clone();
                answer.insert("status".to_owned(), json!("true"));
                Response::json(200, &Value::Object(answer))
            }
            None => Response::json(200, &json!({"status": "false"})),
        }
    }

    /// Exchanges a service account's JWT for an access token.
    fn token(&mut self, request: &Request) -> Response {
        let Some(jwt) = request.header_value("authorization").and_then(|value| value.strip_prefix("Bearer ")) else {
            return devapi_error(401, "AUTH_REQUIRE", "Authorization header is required");
        };
        let Some(account_id) = unverified_claims(jwt).and_then(|claims| claims["iss"].as_str().map(str::to_owned))
        else {
            return devapi_error(401, "AUTH_REQUIRE", "Invalid JWT");
        };
        let Some((public_key, granted)) = self.accounts.get(&account_id) else {
            return devapi_error(401, "AUTH_REQUIRE", "Not found service account by serviceAccountId");
        };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_exp = false; // checked below against the emulator's clock
        validation.required_spec_claims.clear();
        let key = jsonwebtoken::DecodingKey::from_rsa_der(public_key);
        let claims = match jsonwebtoken::decode::<Value>(jwt, &key, &validation) {
            Ok(data) => data.claims,
            Err(_) => return devapi_error(401, "AUTH_REQUIRE", "Invalid JWT signature"),
        };
        let now = self.now_secs();
        let (Some(issued), Some(expires)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
            return devapi_error(401, "AUTH_REQUIRE", "Invalid JWT: iat and exp are required");
        };
        if expires <= issued || expires - issued > MAX_JWT_LIFETIME_SECS {
            return devapi_error(401, "AUTH_REQUIRE", "Invalid JWT: the lifetime must be at most 20 minutes");
        }
        if expires <= now || issued > now + 60 {
            return devapi_error(401, "AUTH_REQUIRE", "Invalid JWT: expired or not yet valid");
        }
        let scopes: Vec<String> = claims["scopes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|scope| granted.iter().any(|granted| granted == scope))
            .map(str::to_owned)
            .collect();
        self.tokens_issued += 1;
        let access_token = format!("galaxy-access-{}-{now}", self.tokens_issued);
        self.access_tokens.insert(access_token.clone(), (account_id.clone(), scopes.clone()));
        Response::json(
            200,
            &json!({"ok": true, "createdItem": {
                "accessToken": access_token,
                "serviceAccountId": account_id,
                "scopes": scopes,
                "createdAt": now * 1000,
            }}),
        )
    }

    /// `None` if the request carries a live access token and its service
    /// account id; Samsung's refusal otherwise.
    fn authorize(&self, request: &Request) -> Option<Response> {
        let token = request.header_value("authorization").and_then(|value| value.strip_prefix("Bearer "));
        let Some((account_id, scopes)) = token.and_then(|token| self.access_tokens.get(token)) else {
            return Some(devapi_error(401, "AUTH_REQUIRE", "Invalid accessToken"));
        };
        if request.header_value("service-account-id") != Some(account_id.as_str()) {
            return Some(devapi_error(401, "AUTH_REQUIRE", "Not found service account by serviceAccountId"));
        }
        if !scopes.iter().any(|scope| scope == "publishing") {
            return Some(devapi_error(403, "NO_PERMISSION", "The service account has no publishing scope"));
        }
        None
    }

    fn update(&mut self, package: &str, purchase_id: &str, body: &[u8]) -> Response {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Update {
            action: String,
            #[serde(default)]
            purchased_id_list: Vec<Value>,
        }
        let update = match serde_json::from_slice::<Update>(body) {
            Ok(update) if update.action == "consume" || update.action == "acknowledge" => update,
            Ok(update) => {
                return devapi_error(400, "INVALID_PARAMETER", &format!("Unknown action: {}", update.action));
            }
            Err(err) => return devapi_error(400, "INVALID_PARAMETER", &format!("Invalid request body: {err}")),
        };
        // The path's purchase first, then the batch's others.
        let mut ids = vec![purchase_id.to_owned()];
        for listed in &update.purchased_id_list {
            let id = listed.as_str().or_else(|| listed["purchaseId"].as_str()).unwrap_or_default().to_owned();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let now = self.now_secs();
        let results: Vec<Value> = ids
            .iter()
            .map(|id| {
                let (code, text) = self.update_one(package, id, &update.action, now);
                json!({"purchaseId": id, "statusCode": code.to_string(), "statusString": text})
            })
            .collect();
        Response::json(200, &json!({"totalCount": results.len(), "purchaseItemList": results}))
    }

    /// One item's status code and string, as Samsung words them per action.
    fn update_one(&mut self, package: &str, purchase_id: &str, action: &str, now: i64) -> (u8, &'static str) {
        let consume = action == "consume";
        let Some(receipt) = self.receipts.get_mut(purchase_id) else {
            return (1, "Can't find an order with this purchaseId.");
        };
        let field = |name: &str| receipt.fields.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        if field("packageName") != package {
            return if consume {
                (5, "Can't consume this purchase because the user is not authorized to consume this order.")
            } else {
                (5, "This purchase is not authorized for this order.")
            };
        }
        if field("status") != "success" {
            return if consume {
                (2, "Can't consume this purchase because it's not a successful order.")
            } else {
                (2, "This is not a successful order.")
            };
        }
        // The receipt carries consumeYN for consumables only and
        // acknowledgeYN for non-consumables and subscriptions.
        let flag = if consume { "consumeYN" } else { "acknowledgeYN" };
        match field(flag).as_str() {
            "" if consume => (3, "This type of product is not a consumable item."),
            "" => (3, "This type of product is not a subscription."),
            "Y" if consume => (4, "This purchase has been consumed already."),
            "Y" => (4, "This purchase has been acknowledged already."),
            _ => {
                let (date, device) = if consume {
                    ("consumeDate", "consumeDeviceModel")
                } else {
                    ("acknowledgeDate", "acknowledgeDeviceModel")
                };
                receipt.fields.insert(flag.to_owned(), json!("Y"));
                receipt.fields.insert(date.to_owned(), json!(gmt_datetime(now)));
                receipt.fields.insert(device.to_owned(), json!("SERVER"));
                (0, "success.")
            }
        }
    }

    fn items(&self, request: &Request, package: &str) -> Response {
        let number = |name: &str| request.query_value(name).and_then(|value| value.parse::<usize>().ok());
        let (Some(page), Some(size)) = (number("page"), number("size")) else {
            return devapi_error(400, "INVALID_PARAMETER", "page and size are required numbers");
        };
        if page == 0 || size == 0 {
            return devapi_error(400, "INVALID_PARAMETER", "page and size start at 1");
        }
        let Some(app) = self.apps.get(package) else {
            return devapi_error(
                400,
                "106",
                "The IAP Publish API is not connected with this content in Seller Portal.",
            );
        };
        let start = (page - 1).saturating_mul(size).min(app.items.len());
        let end = start.saturating_add(size).min(app.items.len());
        Response::json(200, &json!({"totalCount": app.items.len(), "itemList": &app.items[start..end]}))
    }
}

/// The receipt API's failure body.
fn receipt_fail(code: u32, message: &str) -> Response {
    Response::json(200, &json!({"status": "fail", "errorCode": code, "errorMessage": message}))
}

/// The Developer API gateway's error body.
pub fn devapi_error(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, &json!({"code": code, "message": message, "from": "asgw"}))
}

fn unverified_claims(jwt: &str) -> Option<Value> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `YYYY-MM-DD HH:mm:ss` in GMT, as Samsung writes dates.
fn gmt_datetime(unix_secs: i64) -> String {
    let (days, secs) = (unix_secs.div_euclid(86_400), unix_secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_in_gmt() {
        assert_eq!(gmt_datetime(0), "1970-01-01 00:00:00");
        assert_eq!(gmt_datetime(1_767_225_600), "2026-01-01 00:00:00");
        assert_eq!(gmt_datetime(951_782_400 + 3_661), "2000-02-29 01:01:01");
    }

    #[test]
    fn items_need_page_and_size() {
        let emulator = Samsung::with_default_state();
        let state = emulator.lock();
        for query in ["", "?page=1", "?size=2", "?page=0&size=2", "?page=x&size=2"] {
            let request = Request::new("GET", &format!("/iap/v6/applications/com.example.galaxy/items{query}"));
            assert_eq!(state.items(&request, "com.example.galaxy").status, 400, "{query}");
        }
        let request = Request::new("GET", "/iap/v6/applications/com.example.galaxy/items?page=4&size=2");
        let answer = state.items(&request, "com.example.galaxy").json_body();
        assert_eq!(answer["totalCount"], 8);
        assert_eq!(answer["itemList"][1]["id"], "mystery");
    }

    #[test]
    fn a_fail_receipt_is_a_200_with_samsungs_body() {
        let emulator = Samsung::with_default_state();
        let answer = emulator.handle(&Request::new("GET", "/iap/v6/receipt?purchaseID=never-sold"));
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json_body(), json!({"status": "fail", "errorCode": 9135, "errorMessage": "not exist order"}));
        let answer = emulator.handle(&Request::new("GET", "/iap/v6/receipt?purchaseID=a%20b"));
        assert_eq!(answer.json_body()["errorCode"], 9153);
    }
}
