//! Huawei AppGallery's HMS Core IAP server APIs, as
//! `shared/reference/stores/huawei-appgallery.md` describes them:
//!
//! - `POST /oauth2/v3/token` (form `grant_type=client_credentials`,
//!   `client_id`, `client_secret`): an app-level access token,
//!   `{"access_token","expires_in":3600,"token_type":"Bearer"}`. A refusal is
//!   HTTP 400 `{"error":1101,"sub_error":20002|20003|12304,"error_description"}`
//!   (numbers): a malformed client id, an unknown one, a wrong secret.
//! - Every IAP call needs `Authorization: Basic base64("APPAT:" + token)`
//!   with a token this emulator issued and that has not expired (`AT:` only
//!   with `acceptAtPrefix`; `Bearer` never). Otherwise HTTP 401
//!   `{"responseCode":"6","responseMessage":…}`: Huawei does not document
//!   this answer, so the emulator's choice is the reference's.
//! - `POST /applications/purchases/tokens/verify` `{"purchaseToken","productId"}`:
//!   `{"responseCode":"0","purchaseTokenData":<JSON string>,"dataSignature":<Base64>}`,
//!   signed SHA256WithRSA, or RSA-PSS (and `"signatureAlgorithm":"SHA256WithRSA/PSS"`)
//!   when the request's `HW-IAP-APPINFO` header asks for it or the purchase
//!   was made with PSS. Business errors are HTTP 200 with a string
//!   `responseCode`: an unknown token `unknownTokenCode` ("12" by default), a
//!   token a newer purchase superseded "12", another product "8", a
//!   subscription token "6" `rights invalid`.
//! - `POST /applications/v2/purchases/confirm` `{"purchaseToken","productId"}`:
//!   "0" and the purchase consumed (consumables) or confirmed; again "9";
//!   an unknown or unpaid purchase "8".
//! - `POST /applications/v2/purchases/cancelledList` `{startAt, endAt, maxRows,
//!   type, continuationToken}` (numbers or numeric strings):
//!   `cancelledPurchaseList` is a JSON **string** of the purchases cancelled or
//!   refunded in the window, `continuationToken` set while more remain.
//! - `POST /sub/applications/v2/purchases/get` `{"subscriptionId","purchaseToken"}`:
//!   `inappPurchaseData` (a JSON string), `dataSignature`, `signatureAlgorithm`;
//!   `subIsvalid` follows `expirationDate` and `cancelTime` on the clock.
//! - An AppTouch purchase (`accountFlag` 1) is known only on the AppTouch
//!   hosts: a host name `orders-at-…`/`subscr-at-…`, or (over plain HTTP) a
//!   path under `/apptouch`; elsewhere it is "12". Which code Huawei answers
//!   there is not documented.
//! - The catalog, AppGallery Connect's Product Management API:
//!   `POST /api/oauth2/v1/token` (JSON client credentials of a Connect API
//!   client, `expires_in` 172800) and
//!   `POST /api/pms/product-price-service/v1/manage/product/list` with the
//!   headers `client_id`, `Authorization: Bearer`, `appId`, paged by
//!   `pageNum` (from 1) and `pageSize` (at most 100), filtered by
//!   `purchaseType`, answering `{"error":{"errorCode":0,"errorMsg":"success"},
//!   "products","totalNumber"}`. Refusals are HTTP 401/403 with that envelope
//!   (the codes are the emulator's own).
//!
//! Test controls as for the other emulators. Operations: `token`, `verify`,
//! `confirm`, `cancelledList`, `subscription.get`, `connect.token`,
//! `products.list`. A fault's `reason` is the `responseCode` to answer
//! ("6" if absent), `oauth:<error>/<sub_error>` for the token endpoint's body,
//! or `pms:<errorCode>` for the Connect API's.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::store::{self, Controls, StoreState};
use crate::{Emulator, Fault, Request, Response};

/// The state a new emulator starts with when none is given: the app
/// `com.example.game` (app ID 101486545), its Connect API client and catalog,
/// and a purchase for every verdict.
pub const DEFAULT_STATE: &str = include_str!("huawei_state.json");

/// The test-only IAP signing key (PKCS#8 PEM) the emulator signs with unless
/// told otherwise; `tests/fixtures/huawei/make-keys.sh` made it.
pub const FIXTURE_SIGNING_KEY: &str = include_str!("../../fixtures/huawei/iap-signing-key.pem");

/// `signatureAlgorithm` of an RSA-PSS signature.
pub const PSS: &str = "SHA256WithRSA/PSS";

const ACCESS_TOKEN_LIFETIME_SECS: i64 = 3600;
const CONNECT_TOKEN_LIFETIME_SECS: i64 = 172_800;
const MAX_CANCELLED_ROWS: i64 = 1000;
const MAX_PMS_PAGE_SIZE: i64 = 100;

/// The `Authorization` value of an IAP call with `access_token`: Basic, of
/// `APPAT:` and the token.
pub fn authorization(access_token: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("APPAT:{access_token}")))
}

/// The emulator.
#[derive(Debug)]
pub struct Huawei {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    key: RsaKeyPair,
    apps: Vec<App>,
    connect_clients: Vec<ConnectClient>,
    purchases: Vec<Purchase>,
    /// access token → (client id, expiry in unix millis).
    access_tokens: HashMap<String, (String, i64)>,
    /// Connect API token → (API client id, expiry in unix millis).
    connect_tokens: HashMap<String, (String, i64)>,
    /// Every token issued, for tests that look for leaks.
    issued: Vec<String>,
    unknown_token_code: String,
    accept_at_prefix: bool,
    controls: Controls,
}

/// An emulator state file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// Apps with their OAuth credentials and catalogs.
    #[serde(default)]
    pub apps: Vec<App>,
    /// Connect API clients (for the catalog).
    #[serde(default)]
    pub connect_clients: Vec<ConnectClient>,
    /// Purchases.
    #[serde(default)]
    pub purchases: Vec<Purchase>,
    /// The `responseCode` of verify for a token nobody issued: "12" if absent.
    #[serde(default)]
    pub unknown_token_code: Option<String>,
    /// Whether the short `AT:` Basic prefix is accepted besides `APPAT:`.
    #[serde(default)]
    pub accept_at_prefix: bool,
}

/// An app in AppGallery Connect.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct App {
    /// The app ID, which is its OAuth client id (numeric).
    pub client_id: String,
    /// Its app secret (the OAuth client secret).
    pub client_secret: String,
    /// The package name.
    pub package_name: String,
    /// PMS products (`productNo`, `productName`, `purchaseType`, `status`, `currency`, `price`, …), served as given.
    #[serde(default)]
    pub products: Vec<Value>,
}

/// An AppGallery Connect API client.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectClient {
    /// The API client id.
    pub client_id: String,
    /// Its key (the client secret).
    pub client_secret: String,
}

/// A purchase: the InAppPurchaseData Huawei signs, and how it is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Purchase {
    /// The purchase token.
    pub purchase_token: String,
    /// The InAppPurchaseData fields, with Huawei's types (`applicationId`, `productId`,
    /// `kind`, `purchaseState`, `consumptionState`, `confirmed`, `purchaseType`,
    /// `accountFlag`, `subscriptionId`, `expirationDate`, …), served as given.
    pub data: Map<String, Value>,
    /// `SHA256WithRSA/PSS` if the client asked for PSS at purchase.
    #[serde(default)]
    pub signature_algorithm: Option<String>,
    /// A newer purchase of the same product replaced it: only the latest verifies.
    #[serde(default)]
    pub superseded: bool,
    /// Signs other bytes than those served (a forged answer).
    #[serde(default)]
    pub forged_signature: bool,
    /// Its row in `cancelledList`, if it was cancelled or refunded.
    #[serde(default)]
    pub cancelled: Option<Cancellation>,
}

/// A `cancelledList` row's own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cancellation {
    /// When, unix millis.
    pub cancelled_time: i64,
    /// `0` other, `1` user repentance, … `6` chargeback, …
    #[serde(default)]
    pub cancelled_reason: i64,
    /// `0` user, `1` developer, `2` Huawei.
    #[serde(default)]
    pub cancelled_source: i64,
}

impl Huawei {
    /// An emulator with `seed` that signs with `signing_key_pem` (PKCS#8).
    pub fn new(seed: Seed, signing_key_pem: &str) -> Result<Huawei, String> {
        let der = pem::parse(signing_key_pem).map_err(|err| format!("signing key: {err}"))?;
        let key = RsaKeyPair::from_pkcs8(der.contents()).map_err(|err| format!("signing key: {err}"))?;
        let state = State {
            key,
            apps: seed.apps,
            connect_clients: seed.connect_clients,
            purchases: seed.purchases,
            access_tokens: HashMap::new(),
            connect_tokens: HashMap::new(),
            issued: Vec::new(),
            unknown_token_code: seed.unknown_token_code.unwrap_or_else(|| "12".to_owned()),
            accept_at_prefix: seed.accept_at_prefix,
            controls: Controls::default(),
        };
        Ok(Huawei { state: Mutex::new(state) })
    }

    /// An emulator with [`DEFAULT_STATE`] and [`FIXTURE_SIGNING_KEY`].
    pub fn with_default_state() -> Huawei {
        serde_json::from_str(DEFAULT_STATE)
            .map_err(|err| err.to_string())
            .and_then(|seed| Huawei::new(seed, FIXTURE_SIGNING_KEY))
            .unwrap_or_else(|err| panic!("the built-in huawei state is broken: {err}"))
    }

    /// Adds or replaces a purchase.
    pub fn add_purchase(&self, purchase: Purchase) {
        self.lock().add_purchase(purchase);
    }

    /// Queues a fault; faults hit requests in the order queued.
    pub fn inject(&self, fault: Fault) {
        self.lock().controls.inject(fault);
    }

    /// Invalidates every access token issued so far (IAP and Connect API).
    pub fn revoke_tokens(&self) {
        self.lock().revoke_tokens();
    }

    /// Freezes the clock at `unix_millis`.
    pub fn set_clock(&self, unix_millis: i64) {
        self.lock().controls.set_clock(unix_millis);
    }

    /// How many requests an operation received, faults included.
    pub fn count(&self, operation: &str) -> u64 {
        self.lock().controls.count(operation)
    }

    /// A purchase's InAppPurchaseData as the store has it now.
    pub fn purchase(&self, token: &str) -> Option<Map<String, Value>> {
        self.lock().purchases.iter().find(|p| p.purchase_token == token).map(|p| p.data.clone())
    }

    /// Every access token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().issued.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Emulator for Huawei {
    fn handle(&self, request: &Request) -> Response {
        store::handle(&mut *self.lock(), request)
    }
}

/// The path without the `/apptouch` prefix that marks the AppTouch hosts over plain HTTP.
fn without_site<'a>(segments: &'a [&'a str]) -> &'a [&'a str] {
    match segments {
        ["apptouch", rest @ ..] => rest,
        all => all,
    }
}

impl StoreState for State {
    type Purchase = Purchase;

    fn controls(&mut self) -> &mut Controls {
        &mut self.controls
    }

    fn operation(method: &str, segments: &[&str]) -> &'static str {
        match (method, without_site(segments)) {
            ("POST", ["oauth2", "v3", "token"]) => "token",
            ("POST", ["applications", "purchases", "tokens", "verify"]) => "verify",
            ("POST", ["applications", "v2", "purchases", "confirm"]) => "confirm",
            ("POST", ["applications", "v2", "purchases", "cancelledList"]) => "cancelledList",
            ("POST", ["sub", "applications", "v2", "purchases", "get"]) => "subscription.get",
            ("POST", ["api", "oauth2", "v1", "token"]) => "connect.token",
            ("POST", ["api", "pms", "product-price-service", "v1", "manage", "product", "list"]) => "products.list",
            _ => "unknown",
        }
    }

    fn fault_error(status: u16, reason: Option<&str>) -> Response {
        let reason = reason.unwrap_or("6");
        if let Some((error, sub_error)) = reason.strip_prefix("oauth:").and_then(|codes| codes.split_once('/')) {
            return oauth_error(status, number(error), number(sub_error), "emulated error");
        }
        if let Some(code) = reason.strip_prefix("pms:") {
            return pms_error(status, number(code), "emulated error");
        }
        iap_answer(status, reason, "emulated error")
    }

    fn serve(&mut self, request: &Request, segments: &[&str]) -> Response {
        let apptouch = matches!(segments.first(), Some(&"apptouch"))
            || request
                .header_value("host")
                .is_some_and(|host| host.starts_with("orders-at-") || host.starts_with("subscr-at-"));
        let operation = Self::operation(&request.method, segments);
        match operation {
            "token" => return self.token(request),
            "connect.token" => return self.connect_token(request),
            "products.list" => return self.products(request),
            "unknown" => return iap_answer(404, "6", "no such api"),
            _ => {}
        }
        let client = match self.authorized(request) {
            Ok(client) => client,
            Err(refusal) => return refusal,
        };
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return iap_answer(200, "6", "the request body is not json");
        };
        let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
        match operation {
            "verify" => {
                let pss = request.header_value("hw-iap-appinfo").is_some_and(|info| info.contains(PSS));
                self.verify(&client, &field("purchaseToken"), &field("productId"), apptouch, pss)
            }
            "confirm" => self.confirm(&client, &field("purchaseToken"), &field("productId"), apptouch),
            "cancelledList" => self.cancelled_list(&client, &body),
            "subscription.get" => {
                self.subscription(&client, &field("subscriptionId"), &field("purchaseToken"), apptouch)
            }
            _ => iap_answer(404, "6", "no such api"),
        }
    }

    fn add_purchase(&mut self, purchase: Purchase) {
        self.purchases.retain(|existing| existing.purchase_token != purchase.purchase_token);
        self.purchases.push(purchase);
    }

    fn revoke_tokens(&mut self) {
        self.access_tokens.clear();
        self.connect_tokens.clear();
    }
}

impl State {
    fn now(&self) -> i64 {
        self.controls.now_millis()
    }

    fn issue(&mut self, prefix: &str) -> String {
        let token = format!("{prefix}{:04}x{}", self.issued.len() + 1, self.now() % 1_000_000);
        self.issued.push(token.clone());
        token
    }

    fn token(&mut self, request: &Request) -> Response {
        let form: HashMap<String, String> = form_urlencoded::parse(&request.body).into_owned().collect();
        let field = |name: &str| form.get(name).map_or("", String::as_str);
        if field("grant_type") != "client_credentials" {
            return oauth_error(400, 1101, 20001, "grant_type must be client_credentials");
        }
        let client_id = field("client_id");
        if client_id.is_empty() || !client_id.bytes().all(|b| b.is_ascii_digit()) {
            return oauth_error(400, 1101, 20002, "client_id format invalid");
        }
        let Some(app) = self.apps.iter().find(|app| app.client_id == client_id) else {
            return oauth_error(400, 1101, 20003, "client_id does not exist");
        };
        if app.client_secret != field("client_secret") {
            return oauth_error(400, 1101, 12304, "invalid client_secret");
        }
        let client_id = client_id.to_owned();
        let token = self.issue("CgB6e3x9");
        let expires = self.now() + ACCESS_TOKEN_LIFETIME_SECS * 1000;
        self.access_tokens.insert(token.clone(), (client_id, expires));
        Response::json(
            200,
            &json!({"access_token": token, "expires_in": ACCESS_TOKEN_LIFETIME_SECS, "token_type": "Bearer"}),
        )
    }

    /// The app whose access token the request carries, or the refusal.
    fn authorized(&self, request: &Request) -> Result<String, Response> {
        let refused = |message: &str| Err(iap_answer(401, "6", message));
        let Some(encoded) = request.header_value("authorization").and_then(|value| value.strip_prefix("Basic ")) else {
            return refused("the authorization header must be Basic base64(APPAT:<access token>)");
        };
        let Some(decoded) = BASE64.decode(encoded.trim()).ok().and_then(|bytes| String::from_utf8(bytes).ok()) else {
            return refused("the authorization header is not base64");
        };
        let token = match decoded.split_once(':') {
            Some(("APPAT", token)) => token,
            Some(("AT", token)) if self.accept_at_prefix => token,
            _ => return refused("the authorization header must carry APPAT:<access token>"),
        };
        match self.access_tokens.get(token) {
            Some((client, expires)) if *expires > self.now() => Ok(client.clone()),
            Some(_) => refused("the access token has expired"),
            None => refused("the access token is invalid"),
        }
    }

    /// The purchase with `token` of app `client`, as the host asked can see it.
    fn find(&self, client: &str, token: &str, apptouch: bool) -> Option<&Purchase> {
        self.purchases.iter().find(|purchase| {
            purchase.purchase_token == token
                && text(field(&purchase.data, "applicationId")) == client
                && (lenient(field(&purchase.data, "accountFlag")) == Some(1)) == apptouch
        })
    }

    fn verify(&self, client: &str, token: &str, product: &str, apptouch: bool, pss: bool) -> Response {
        let Some(purchase) = self.find(client, token, apptouch) else {
            return iap_answer(200, &self.unknown_token_code, "order record does not exist");
        };
        if lenient(field(&purchase.data, "kind")) == Some(2) {
            return iap_answer(200, "6", "rights invalid");
        }
        if purchase.superseded {
            return iap_answer(200, "12", "order record does not exist: a newer purchase replaced it");
        }
        if text(field(&purchase.data, "productId")) != product {
            return iap_answer(200, "8", "the user does not own this product");
        }
        let algorithm = if pss { Some(PSS) } else { purchase.signature_algorithm.as_deref() };
        let (data, signature, algorithm) = self.signed(purchase, algorithm);
        let mut answer = json!({
            "responseCode": "0",
            "responseMessage": "success",
            "purchaseTokenData": data,
            "dataSignature": signature,
        });
        if let Some(algorithm) = algorithm {
            answer["signatureAlgorithm"] = json!(algorithm);
        }
        Response::json(200, &answer)
    }

    /// The purchase's data as a compact JSON string, its Base64 signature,
    /// and the algorithm to name (`None` for the default PKCS#1 v1.5).
    fn signed<'a>(&self, purchase: &Purchase, algorithm: Option<&'a str>) -> (String, String, Option<&'a str>) {
        let mut data = purchase.data.clone();
        data.entry("purchaseToken").or_insert_with(|| json!(purchase.purchase_token));
        let text = Value::Object(data).to_string();
        let signed = if purchase.forged_signature { format!("{text} ") } else { text.clone() };
        let padding: &dyn ring::signature::RsaEncoding =
            if algorithm == Some(PSS) { &RSA_PSS_SHA256 } else { &RSA_PKCS1_SHA256 };
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(padding, &ring::rand::SystemRandom::new(), signed.as_bytes(), &mut signature)
            .unwrap_or_else(|err| panic!("the emulator cannot sign: {err}"));
        (text, BASE64.encode(signature), algorithm)
    }

    fn confirm(&mut self, client: &str, token: &str, product: &str, apptouch: bool) -> Response {
        let Some(index) = self
            .find(client, token, apptouch)
            .map(|found| found.purchase_token.clone())
            .and_then(|token| self.purchases.iter().position(|purchase| purchase.purchase_token == token))
        else {
            return iap_answer(200, "8", "the user does not own this product");
        };
        let purchase = &mut self.purchases[index];
        let data = &mut purchase.data;
        if lenient(field(data, "kind")) == Some(2) {
            return iap_answer(200, "6", "rights invalid");
        }
        if text(field(data, "productId")) != product || lenient(field(data, "purchaseState")).unwrap_or(0) != 0 {
            return iap_answer(200, "8", "the user does not own this product");
        }
        let consumable = lenient(field(data, "kind")) == Some(0);
        let done = if consumable {
            lenient(field(data, "consumptionState")) == Some(1)
        } else {
            lenient(field(data, "confirmed")) == Some(1)
        };
        if done {
            return iap_answer(200, "9", "the product has been consumed or confirmed");
        }
        if consumable {
            data.insert("consumptionState".to_owned(), json!(1));
        }
        data.insert("confirmed".to_owned(), json!(1));
        iap_answer(200, "0", "success")
    }

    fn cancelled_list(&self, client: &str, body: &Value) -> Response {
        // A continuation token carries the query it continues; `type` is then ignored.
        let continuation = body["continuationToken"].as_str().filter(|token| !token.is_empty());
        let (offset, start, end, kind) = match continuation {
            Some(token) => match parse_continuation(token) {
                Some(query) => query,
                None => return iap_answer(200, "6", "invalid continuationToken"),
            },
            None => {
                let (Some(start), Some(end)) = (lenient(&body["startAt"]), lenient(&body["endAt"])) else {
                    return iap_answer(200, "6", "startAt and endAt are required");
                };
                (0, start, end, lenient(&body["type"]).unwrap_or(0))
            }
        };
        let max_rows = lenient(&body["maxRows"]).unwrap_or(MAX_CANCELLED_ROWS);
        if end <= start || !(1..=MAX_CANCELLED_ROWS).contains(&max_rows) || !(0..=1).contains(&kind) {
            return iap_answer(200, "6", "invalid parameter: endAt > startAt, maxRows 1 to 1000, type 0 or 1");
        }
        let mut rows: Vec<(i64, Value)> = self
            .purchases
            .iter()
            .filter(|purchase| text(field(&purchase.data, "applicationId")) == client)
            .filter(|purchase| kind == 1 || lenient(field(&purchase.data, "kind")) != Some(2))
            .filter_map(|purchase| {
                let cancelled = purchase.cancelled.as_ref()?;
                (start..end).contains(&cancelled.cancelled_time).then(|| {
                    let row = json!({
                        "orderId": field(&purchase.data, "orderId"),
                        "productId": field(&purchase.data, "productId"),
                        "purchaseToken": purchase.purchase_token,
                        "purchaseTime": field(&purchase.data, "purchaseTime"),
                        "cancelledTime": cancelled.cancelled_time,
                        "cancelledSource": cancelled.cancelled_source,
                        "cancelledReason": cancelled.cancelled_reason,
                    });
                    (cancelled.cancelled_time, row)
                })
            })
            .collect();
        rows.sort_by_key(|(time, _)| *time);
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let rows_wanted = usize::try_from(max_rows).unwrap_or(1000);
        let page: Vec<Value> = rows.iter().skip(offset).take(rows_wanted).map(|(_, row)| row.clone()).collect();
        let next = offset + page.len();
        let mut answer = json!({
            "responseCode": "0",
            "responseMessage": "success",
            "cancelledPurchaseList": Value::Array(page).to_string(),
        });
        if next < rows.len() {
            answer["continuationToken"] = json!(format!("ct.{next}.{start}.{end}.{kind}"));
        }
        Response::json(200, &answer)
    }

    fn subscription(&self, client: &str, subscription_id: &str, token: &str, apptouch: bool) -> Response {
        let Some(purchase) = self.find(client, token, apptouch) else {
            return iap_answer(200, "12", "subscription record does not exist");
        };
        if lenient(field(&purchase.data, "kind")) != Some(2) {
            return iap_answer(200, "6", "rights invalid");
        }
        if text(field(&purchase.data, "subscriptionId")) != subscription_id {
            return iap_answer(200, "12", "subscription record does not exist");
        }
        let mut purchase = purchase.clone();
        if let Some(expires) = purchase.data.get("expirationDate").and_then(Value::as_i64) {
            let revoked = purchase.data.get("cancelTime").is_some_and(|time| !time.is_null());
            purchase.data.insert("subIsvalid".to_owned(), json!(expires > self.now() && !revoked));
        }
        let algorithm = purchase.signature_algorithm.clone();
        let (data, signature, _) = self.signed(&purchase, algorithm.as_deref());
        Response::json(
            200,
            &json!({
                "responseCode": "0",
                "responseMessage": "success",
                "inappPurchaseData": data,
                "dataSignature": signature,
                "signatureAlgorithm": algorithm.as_deref().unwrap_or("SHA256WithRSA"),
            }),
        )
    }

    fn connect_token(&mut self, request: &Request) -> Response {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let known = self.connect_clients.iter().any(|client| {
            body["grant_type"] == "client_credentials"
                && body["client_id"] == client.client_id.as_str()
                && body["client_secret"] == client.client_secret.as_str()
        });
        if !known {
            return pms_error(401, 401, "client_id or client_secret is invalid");
        }
        let client_id = text(&body["client_id"]);
        let token = self.issue("eyJhbGciOiJIUzUxMiJ9.");
        let expires = self.now() + CONNECT_TOKEN_LIFETIME_SECS * 1000;
        self.connect_tokens.insert(token.clone(), (client_id, expires));
        Response::json(200, &json!({"access_token": token, "expires_in": CONNECT_TOKEN_LIFETIME_SECS}))
    }

    fn products(&self, request: &Request) -> Response {
        let token = request.header_value("authorization").and_then(|value| value.strip_prefix("Bearer "));
        let client =
            token.and_then(|token| self.connect_tokens.get(token)).filter(|(_, expires)| *expires > self.now());
        match client {
            Some((client, _)) if request.header_value("client_id") == Some(client.as_str()) => {}
            _ => return pms_error(401, 401, "the client_id header and the bearer token must match a valid token"),
        }
        let Some(app) = self.apps.iter().find(|app| request.header_value("appid") == Some(app.client_id.as_str()))
        else {
            return pms_error(403, 403, "the appId header names no app this client may manage");
        };
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let page_num = lenient(&body["pageNum"]).unwrap_or(1);
        let page_size = lenient(&body["pageSize"]).unwrap_or(MAX_PMS_PAGE_SIZE);
        if page_num < 1 || !(1..=MAX_PMS_PAGE_SIZE).contains(&page_size) {
            return pms_error(200, 400, "pageNum starts at 1; pageSize is 1 to 100");
        }
        let kind = body["purchaseType"].as_str().filter(|kind| !kind.is_empty());
        let matching: Vec<&Value> =
            app.products.iter().filter(|product| kind.is_none_or(|kind| product["purchaseType"] == kind)).collect();
        let skip = usize::try_from((page_num - 1) * page_size).unwrap_or(usize::MAX);
        let take = usize::try_from(page_size).unwrap_or(0);
        let products: Vec<&Value> = matching.iter().skip(skip).take(take).copied().collect();
        Response::json(
            200,
            &json!({
                "error": {"errorCode": 0, "errorMsg": "success"},
                "products": products,
                "totalNumber": matching.len(),
            }),
        )
    }
}

fn parse_continuation(token: &str) -> Option<(i64, i64, i64, i64)> {
    let mut parts = token.strip_prefix("ct.")?.split('.').map(|part| part.parse::<i64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??, parts.next()??))
}

/// A field of purchase data; null when absent.
fn field<'a>(data: &'a Map<String, Value>, name: &str) -> &'a Value {
    data.get(name).unwrap_or(&Value::Null)
}

/// A number sent as a JSON number or a numeric string (Huawei's own clients send both).
fn lenient(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str().and_then(|text| text.parse().ok()))
}

/// A value as text: a string as is, a number in digits (`applicationId` comes both ways).
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn number(text: &str) -> i64 {
    text.parse().unwrap_or(0)
}

/// The IAP envelope: `responseCode` is a string.
fn iap_answer(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, &json!({"responseCode": code, "responseMessage": message}))
}

/// The OAuth token endpoint's error: `error` and `sub_error` are numbers.
fn oauth_error(status: u16, error: i64, sub_error: i64, description: &str) -> Response {
    Response::json(status, &json!({"error": error, "sub_error": sub_error, "error_description": description}))
}

/// The Connect API's envelope.
fn pms_error(status: u16, code: i64, message: &str) -> Response {
    Response::json(status, &json!({"error": {"errorCode": code, "errorMsg": message}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(emulator: &Huawei) -> String {
        let form = "grant_type=client_credentials&client_id=101486545&client_secret=hw-demo-app-secret-6c1f";
        let answer = emulator.handle(&Request::new("POST", "/oauth2/v3/token").body(form));
        assert_eq!(answer.status, 200);
        answer.json_body()["access_token"].as_str().unwrap_or_default().to_owned()
    }

    fn call(emulator: &Huawei, path: &str, authorization: &str, body: Value) -> Response {
        let request =
            Request::new("POST", path).header("authorization", authorization).body(body.to_string().into_bytes());
        emulator.handle(&request)
    }

    #[test]
    fn token_refusals_are_http_400_with_numeric_codes() {
        let emulator = Huawei::with_default_state();
        for (form, sub_error) in [
            ("grant_type=client_credentials&client_id=abc&client_secret=x", 20002),
            ("grant_type=client_credentials&client_id=100000001&client_secret=x", 20003),
            ("grant_type=client_credentials&client_id=101486545&client_secret=wrong", 12304),
        ] {
            let answer = emulator.handle(&Request::new("POST", "/oauth2/v3/token").body(form));
            assert_eq!(answer.status, 400, "{form}");
            assert_eq!(answer.json_body()["error"], 1101, "a number, not a string");
            assert_eq!(answer.json_body()["sub_error"], sub_error, "{form}");
        }
        let answer = &emulator.handle(
            &Request::new("POST", "/oauth2/v3/token")
                .body("grant_type=client_credentials&client_id=101486545&client_secret=hw-demo-app-secret-6c1f"),
        );
        assert_eq!(answer.json_body()["expires_in"], 3600);
    }

    #[test]
    fn only_the_appat_basic_header_is_accepted() {
        let emulator = Huawei::with_default_state();
        let token = token(&emulator);
        let body = json!({"purchaseToken": "hw-purchased", "productId": "coins_100"});
        let path = "/applications/purchases/tokens/verify";
        let answer = call(&emulator, path, &authorization(&token), body.clone());
        assert_eq!((answer.status, answer.json_body()["responseCode"].clone()), (200, json!("0")));
        let short = format!("Basic {}", BASE64.encode(format!("AT:{token}")));
        for refused in [format!("Bearer {token}"), short.clone(), authorization("made-up"), "Basic %%%".to_owned()] {
            let answer = call(&emulator, path, &refused, body.clone());
            assert_eq!(answer.status, 401, "{refused}");
            assert_eq!(answer.json_body()["responseCode"], "6", "{refused}");
        }
        let lenient = Huawei::new(
            Seed { accept_at_prefix: true, ..serde_json::from_str(DEFAULT_STATE).unwrap() },
            FIXTURE_SIGNING_KEY,
        )
        .unwrap();
        let token = self::token(&lenient);
        let short = format!("Basic {}", BASE64.encode(format!("AT:{token}")));
        assert_eq!(call(&lenient, path, &short, body).status, 200, "AT: with acceptAtPrefix");
    }

    #[test]
    fn the_cancelled_list_is_a_json_string_and_takes_numeric_strings() {
        let emulator = Huawei::with_default_state();
        let auth = authorization(&token(&emulator));
        let path = "/applications/v2/purchases/cancelledList";
        let answer = call(
            &emulator,
            path,
            &auth,
            json!({"startAt": "1767225600000", "endAt": "1780272000000", "maxRows": "1000", "type": "0"}),
        );
        let list = answer.json_body()["cancelledPurchaseList"].as_str().map(str::to_owned).unwrap_or_default();
        let rows: Vec<Value> = serde_json::from_str(&list).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0]["purchaseToken"].as_str(), rows[0]["cancelledReason"].as_i64()),
            (Some("hw-charged-back"), Some(6))
        );
        for bad in
            [json!({"startAt": 2, "endAt": 1}), json!({"startAt": 1, "endAt": 2, "maxRows": 1001}), json!({"endAt": 2})]
        {
            assert_eq!(call(&emulator, path, &auth, bad.clone()).json_body()["responseCode"], "6", "{bad}");
        }
    }

    #[test]
    fn the_product_api_needs_its_own_token_and_client_id() {
        let emulator = Huawei::with_default_state();
        let path = "/api/pms/product-price-service/v1/manage/product/list";
        let iap_token = token(&emulator);
        let request = Request::new("POST", path)
            .header("authorization", &format!("Bearer {iap_token}"))
            .header("client_id", "hw-connect-demo")
            .header("appid", "101486545");
        assert_eq!(emulator.handle(&request).status, 401, "an app-level token is not a connect api token");
        let body = json!({"grant_type": "client_credentials", "client_id": "hw-connect-demo", "client_secret": "hw-demo-connect-key-93ab"});
        let answer = emulator.handle(&Request::new("POST", "/api/oauth2/v1/token").body(body.to_string().into_bytes()));
        assert_eq!(answer.json_body()["expires_in"], 172_800);
        let connect = answer.json_body()["access_token"].as_str().unwrap_or_default().to_owned();
        let list = |client: &str| {
            emulator.handle(
                &Request::new("POST", path)
                    .header("authorization", &format!("Bearer {connect}"))
                    .header("client_id", client)
                    .header("appid", "101486545")
                    .body(b"{}".to_vec()),
            )
        };
        assert_eq!(list("someone-else").status, 401);
        let answer = list("hw-connect-demo").json_body();
        assert_eq!((answer["error"]["errorCode"].as_i64(), answer["totalNumber"].as_i64()), (Some(0), Some(5)));
    }
}
