//! The Google Play Developer API (Android Publisher v3) and Google's OAuth
//! token endpoint, as the discovery document `androidpublisher.v3.json` and
//! `shared/reference/stores/google-play.md` describe them:
//!
//! - `POST /token`: the service-account JWT-bearer grant. The assertion must
//!   be RS256, signed by a known service account, with `aud` equal to this
//!   endpoint's own URL and a lifetime of at most an hour.
//! - `GET  /androidpublisher/v3/applications/{packageName}/purchases/products/{productId}/tokens/{token}`
//! - `POST …/tokens/{token}:acknowledge` (optional `{"developerPayload"}`) and `…:consume`
//! - `GET  /androidpublisher/v3/applications/{packageName}/oneTimeProducts` and `…/subscriptions`
//!   (`pageSize`, default 50, at most 1000; `pageToken`)
//!
//! Errors use Google's envelope `{"error":{"code","message","errors":[{"message","domain","reason"}],"status"}}`.
//! Acknowledging an acknowledged purchase is a no-op; acknowledging or
//! consuming a consumed or pending purchase is `invalidPurchaseState`; a
//! canceled one is `productNotOwnedByUser`; a token of another product or
//! package is `purchaseTokenDoesNotMatchProductId` / `…PackageName`; a
//! subscription token on the products API is `unsupportedIabType`.
//!
//! Test controls, in-process ([`GooglePlay`]'s methods) or over HTTP:
//! `POST /emulator/v1/purchases` (a purchase), `POST /emulator/v1/faults` (a
//! [`Fault`]), `POST /emulator/v1/tokens:revoke`, `GET /emulator/v1/stats`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::store::{self, Controls, StoreState};
use crate::{Emulator, Fault, Request, Response};

/// The audience Google's token endpoint expects.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// The OAuth scope the Android Publisher API requires.
pub const SCOPE: &str = "https://www.googleapis.com/auth/androidpublisher";

/// The state a new emulator starts with when none is given: one app,
/// `com.example.game`, with a catalog and a purchase for every state.
pub const DEFAULT_STATE: &str = include_str!("default-state.json");

/// The emulator. Cheap to share: all state sits behind one lock.
#[derive(Debug)]
pub struct GooglePlay {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// client_email → RSA public key (PKCS#1 DER).
    accounts: HashMap<String, Vec<u8>>,
    /// access token → (scope, expiry in unix seconds).
    access_tokens: HashMap<String, (String, i64)>,
    apps: BTreeMap<String, App>,
    purchases: HashMap<String, StoredPurchase>,
    controls: Controls,
    tokens_issued: u64,
    token_lifetime_secs: i64,
}

/// An emulator state file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// The apps, with their catalogs.
    #[serde(default)]
    pub apps: Vec<App>,
    /// The purchases.
    #[serde(default)]
    pub purchases: Vec<SeedPurchase>,
}

/// An app and its catalog, as `OneTimeProduct` and `Subscription` resources.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct App {
    /// The package name.
    pub package_name: String,
    /// `OneTimeProduct` resources.
    #[serde(default)]
    pub one_time_products: Vec<Value>,
    /// `Subscription` resources.
    #[serde(default)]
    pub subscriptions: Vec<Value>,
}

/// A purchase: where it belongs plus its `ProductPurchase` fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedPurchase {
    /// The app.
    pub package_name: String,
    /// The product (SKU).
    pub product_id: String,
    /// The purchase token.
    pub purchase_token: String,
    /// The `ProductPurchase` fields (`purchaseState`, `orderId`, …), served as given.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct StoredPurchase {
    package_name: String,
    product_id: String,
    fields: Map<String, Value>,
}

impl GooglePlay {
    /// An emulator with `seed` and no service accounts.
    pub fn new(seed: Seed) -> GooglePlay {
        let mut state = State { token_lifetime_secs: 3599, ..State::default() };
        for app in seed.apps {
            state.apps.insert(app.package_name.clone(), app);
        }
        for purchase in seed.purchases {
            state.insert_purchase(purchase);
        }
        GooglePlay { state: Mutex::new(state) }
    }

    /// An emulator with [`DEFAULT_STATE`].
    pub fn with_default_state() -> GooglePlay {
        GooglePlay::new(serde_json::from_str(DEFAULT_STATE).unwrap_or_default())
    }

    /// Trusts a service account, given its JSON key (the public half is
    /// derived from the private key, as Google keeps it).
    pub fn add_service_account(&self, key_json: &str) -> Result<(), String> {
        let key: Value = serde_json::from_str(key_json).map_err(|err| format!("service account key: {err}"))?;
        let email = key["client_email"].as_str().ok_or("service account key: no client_email")?;
        let pem = key["private_key"].as_str().ok_or("service account key: no private_key")?;
        let der = pem::parse(pem).map_err(|err| format!("service account key: private_key: {err}"))?;
        let pair = ring::signature::RsaKeyPair::from_pkcs8(der.contents())
            .map_err(|err| format!("service account key: private_key: {err}"))?;
        let public = ring::signature::KeyPair::public_key(&pair).as_ref().to_vec();
        self.lock().accounts.insert(email.to_owned(), public);
        Ok(())
    }

    /// Adds or replaces a purchase.
    pub fn add_purchase(&self, purchase: SeedPurchase) {
        self.lock().insert_purchase(purchase);
    }

    /// Queues a fault; faults hit requests in the order queued.
    pub fn inject(&self, fault: Fault) {
        self.lock().controls.inject(fault);
    }

    /// Invalidates every access token issued so far (the API answers 401).
    pub fn revoke_tokens(&self) {
        self.lock().access_tokens.clear();
    }

    /// Sets how long new access tokens live (Google: 3599 s).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.lock().token_lifetime_secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    }

    /// Freezes the clock at `unix_millis` (tests that move the plugin's clock).
    pub fn set_clock(&self, unix_millis: i64) {
        self.lock().controls.set_clock(unix_millis);
    }

    /// Enforces a quota of `requests` per `window` (windows aligned to the
    /// epoch), answering 429 `rateLimitExceeded` over it, as Google does per
    /// quota bucket.
    pub fn set_quota(&self, requests: u64, window: Duration) {
        self.lock().controls.set_quota(requests, u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
    }

    /// The most requests any one quota window received, and how many were
    /// answered 429 for the quota.
    pub fn quota_use(&self) -> (u64, u64) {
        self.lock().controls.quota_use()
    }

    /// How many requests an operation received, faults included.
    pub fn count(&self, operation: &str) -> u64 {
        self.lock().controls.count(operation)
    }

    /// A purchase's current `ProductPurchase` fields.
    pub fn purchase(&self, token: &str) -> Option<Map<String, Value>> {
        self.lock().purchases.get(token).map(|purchase| purchase.fields.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Emulator for GooglePlay {
    fn handle(&self, request: &Request) -> Response {
        store::handle(&mut *self.lock(), request)
    }
}

impl StoreState for State {
    type Purchase = SeedPurchase;

    fn controls(&mut self) -> &mut Controls {
        &mut self.controls
    }

    fn operation(method: &str, segments: &[&str]) -> &'static str {
        Route::of(method, segments).operation()
    }

    fn fault_error(status: u16, reason: Option<&str>) -> Response {
        let reason = reason.unwrap_or_else(|| default_reason(status));
        google_error(status, reason, &default_message(reason))
    }

    fn serve(&mut self, request: &Request, segments: &[&str]) -> Response {
        self.route(request, Route::of(&request.method, segments))
    }

    fn add_purchase(&mut self, purchase: SeedPurchase) {
        self.insert_purchase(purchase);
    }

    fn revoke_tokens(&mut self) {
        self.access_tokens.clear();
    }
}

/// What a request asks for.
enum Route<'a> {
    Token,
    Get { package: &'a str, product: &'a str, token: &'a str },
    Acknowledge { package: &'a str, product: &'a str, token: &'a str },
    Consume { package: &'a str, product: &'a str, token: &'a str },
    OneTimeProducts { package: &'a str },
    Subscriptions { package: &'a str },
    Unknown,
}

impl<'a> Route<'a> {
    fn of(method: &str, segments: &[&'a str]) -> Route<'a> {
        match (method, segments) {
            ("POST", ["token"]) => Route::Token,
            (
                "GET",
                ["androidpublisher", "v3", "applications", package, "purchases", "products", product, "tokens", token],
            ) => Route::Get { package, product, token },
            (
                "POST",
                ["androidpublisher", "v3", "applications", package, "purchases", "products", product, "tokens", last],
            ) => match last.rsplit_once(':') {
                Some((token, "acknowledge")) => Route::Acknowledge { package, product, token },
                Some((token, "consume")) => Route::Consume { package, product, token },
                _ => Route::Unknown,
            },
            ("GET", ["androidpublisher", "v3", "applications", package, "oneTimeProducts"]) => {
                Route::OneTimeProducts { package }
            }
            ("GET", ["androidpublisher", "v3", "applications", package, "subscriptions"]) => {
                Route::Subscriptions { package }
            }
            _ => Route::Unknown,
        }
    }

    fn operation(&self) -> &'static str {
        match self {
            Route::Token => "token",
            Route::Get { .. } => "products.get",
            Route::Acknowledge { .. } => "products.acknowledge",
            Route::Consume { .. } => "products.consume",
            Route::OneTimeProducts { .. } => "oneTimeProducts.list",
            Route::Subscriptions { .. } => "subscriptions.list",
            Route::Unknown => "unknown",
        }
    }
}

impl State {
    fn insert_purchase(&mut self, purchase: SeedPurchase) {
        let mut fields = Map::new();
        fields.insert("kind".to_owned(), json!("androidpublisher#productPurchase"));
        fields.extend(purchase.fields);
        self.purchases.insert(
            purchase.purchase_token,
            StoredPurchase { package_name: purchase.package_name, product_id: purchase.product_id, fields },
        );
    }

    fn route(&mut self, request: &Request, route: Route<'_>) -> Response {
        if let Route::Token = route {
            return self.token(request);
        }
        if let Route::Unknown = route {
            return Response {
                status: 404,
                headers: vec![("content-type".to_owned(), "text/html; charset=UTF-8".to_owned())],
                body: b"<!DOCTYPE html>\n<html lang=en><title>Error 404 (Not Found)!!1</title><p><b>404.</b> That\xe2\x80\x99s an error.".to_vec(),
                delay: Duration::ZERO,
            };
        }
        if let Err(response) = self.authorize(request) {
            return response;
        }
        match route {
            Route::Get { package, product, token } => self.with_purchase(package, product, token, |purchase| {
                Response::json(200, &Value::Object(purchase.fields.clone()))
            }),
            Route::Acknowledge { package, product, token } => {
                let payload = match parse_acknowledge_body(&request.body) {
                    Ok(payload) => payload,
                    Err(response) => return response,
                };
                self.with_purchase(package, product, token, |purchase| {
                    if let Some(refusal) = refuse_change(&purchase.fields) {
                        return refusal;
                    }
                    if int_field(&purchase.fields, "acknowledgementState") != 1 {
                        purchase.fields.insert("acknowledgementState".to_owned(), json!(1));
                        if let Some(payload) = payload {
                            purchase.fields.insert("developerPayload".to_owned(), json!(payload));
                        }
                    }
                    Response::empty(204)
                })
            }
            Route::Consume { package, product, token } => self.with_purchase(package, product, token, |purchase| {
                if let Some(refusal) = refuse_change(&purchase.fields) {
                    return refusal;
                }
                purchase.fields.insert("consumptionState".to_owned(), json!(1));
                purchase.fields.insert("acknowledgementState".to_owned(), json!(1));
                Response::empty(204)
            }),
            Route::OneTimeProducts { package } => {
                self.list(request, package, "oneTimeProducts", |app| &app.one_time_products)
            }
            Route::Subscriptions { package } => self.list(request, package, "subscriptions", |app| &app.subscriptions),
            Route::Token | Route::Unknown => Response::empty(500),
        }
    }

    /// The JWT-bearer grant of Google's OAuth 2.0 for server-to-server apps.
    fn token(&mut self, request: &Request) -> Response {
        let form: HashMap<String, String> = form_urlencoded::parse(&request.body).into_owned().collect();
        let grant_type = form.get("grant_type").map_or("", String::as_str);
        if grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
            return oauth_error("unsupported_grant_type", &format!("Invalid grant_type: {grant_type}"));
        }
        let Some(assertion) = form.get("assertion") else {
            return oauth_error("invalid_request", "Missing required parameter: assertion");
        };
        if !jsonwebtoken::decode_header(assertion).is_ok_and(|header| header.alg == jsonwebtoken::Algorithm::RS256) {
            return oauth_error("invalid_grant", "Invalid JWT Signature.");
        }
        let Some(issuer) = unverified_claim(assertion, "iss") else {
            return oauth_error("invalid_grant", "Invalid JWT: no issuer.");
        };
        let Some(public_key) = self.accounts.get(&issuer) else {
            return oauth_error("invalid_grant", "Invalid grant: account not found");
        };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_exp = false; // checked below against the emulator's clock
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let key = jsonwebtoken::DecodingKey::from_rsa_der(public_key);
        let claims = match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
            Ok(data) => data.claims,
            Err(_) => return oauth_error("invalid_grant", "Invalid JWT Signature."),
        };
        // Google's token endpoint URL, as Google's own libraries send it, or
        // this emulator's, as a key whose `token_uri` names it may.
        let own_url = format!("http://{}/token", request.header_value("host").unwrap_or("127.0.0.1"));
        let audience = claims["aud"].as_str().unwrap_or_default();
        if audience != GOOGLE_TOKEN_URL && audience != own_url {
            return oauth_error("invalid_grant", "Invalid JWT: Failed audience check.");
        }
        let now = self.controls.now_millis() / 1000;
        let (Some(issued), Some(expires)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
            return oauth_error("invalid_grant", "Invalid JWT: iat and exp are required.");
        };
        // Google allows a few minutes of clock skew and at most an hour of lifetime.
        if expires - issued > 3600 || expires <= issued || issued > now + 300 || expires < now - 300 {
            return oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
            );
        }
        self.tokens_issued += 1;
        let access_token = format!("ya29.emulated-{}-{}", self.tokens_issued, now);
        let scope = claims["scope"].as_str().unwrap_or_default().to_owned();
        self.access_tokens.insert(access_token.clone(), (scope, now + self.token_lifetime_secs));
        Response::json(
            200,
            &json!({"access_token": access_token, "expires_in": self.token_lifetime_secs, "token_type": "Bearer"}),
        )
    }

    fn authorize(&self, request: &Request) -> Result<(), Response> {
        let token = request
            .header_value("authorization")
            .and_then(|value| value.strip_prefix("Bearer "))
            .or_else(|| request.query_value("access_token"));
        let Some(token) = token else {
            return Err(google_error(
                401,
                "required",
                "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            ));
        };
        match self.access_tokens.get(token) {
            Some((_, expires)) if *expires > self.controls.now_millis() / 1000 => {}
            _ => {
                return Err(google_error(
                    401,
                    "authError",
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                ));
            }
        }
        if !self.access_tokens.get(token).is_some_and(|(scope, _)| scope.split(' ').any(|s| s == SCOPE)) {
            return Err(google_error(
                403,
                "insufficientPermissions",
                "Request had insufficient authentication scopes.",
            ));
        }
        Ok(())
    }

    fn with_purchase(
        &mut self,
        package: &str,
        product: &str,
        token: &str,
        answer: impl FnOnce(&mut StoredPurchase) -> Response,
    ) -> Response {
        if !self.apps.contains_key(package) {
            return google_error(404, "applicationNotFound", "No application was found for the given package name.");
        }
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return google_error(400, "invalidValue", "Invalid Value");
        }
        let subscription = self
            .apps
            .get(package)
            .is_some_and(|app| app.subscriptions.iter().any(|sub| sub["productId"].as_str() == Some(product)));
        let Some(purchase) = self.purchases.get_mut(token) else {
            return google_error(404, "notFound", "The purchase token was not found.");
        };
        if purchase.package_name != package {
            return google_error(
                400,
                "purchaseTokenDoesNotMatchPackageName",
                "The purchase token does not match the package name.",
            );
        }
        if purchase.product_id != product {
            return google_error(
                400,
                "purchaseTokenDoesNotMatchProductId",
                "The purchase token does not match the product ID.",
            );
        }
        if subscription {
            return google_error(
                400,
                "unsupportedIabType",
                "The operation is not supported for the given In-App Billing type.",
            );
        }
        answer(purchase)
    }

    fn list(&self, request: &Request, package: &str, field: &str, items: impl Fn(&App) -> &Vec<Value>) -> Response {
        let Some(app) = self.apps.get(package) else {
            return google_error(404, "applicationNotFound", "No application was found for the given package name.");
        };
        let page_size = match request.query_value("pageSize").map(str::parse::<i64>) {
            None => 50,
            Some(Ok(size)) if size >= 0 => size.clamp(1, 1000),
            Some(_) => return google_error(400, "invalidValue", "Invalid value for pageSize."),
        };
        let start = match request.query_value("pageToken").filter(|token| !token.is_empty()) {
            None => 0,
            Some(token) => match token.strip_prefix("pt.").and_then(|offset| offset.parse::<usize>().ok()) {
                Some(offset) => offset,
                None => return google_error(400, "invalidValue", "Invalid page token."),
            },
        };
        let all = items(app);
        let end = all.len().min(start + usize::try_from(page_size).unwrap_or(50));
        let mut body = Map::new();
        body.insert(field.to_owned(), Value::Array(all.get(start..end).unwrap_or_default().to_vec()));
        if end < all.len() {
            body.insert("nextPageToken".to_owned(), json!(format!("pt.{end}")));
        }
        Response::json(200, &Value::Object(body))
    }
}

/// Acknowledge and consume are refused for purchases not (or no longer) owned.
fn refuse_change(fields: &Map<String, Value>) -> Option<Response> {
    match int_field(fields, "purchaseState") {
        0 if int_field(fields, "consumptionState") == 1 => Some(google_error(
            400,
            "invalidPurchaseState",
            "The purchase is not in a valid state to perform the desired operation.",
        )),
        0 => None,
        2 => Some(google_error(
            400,
            "invalidPurchaseState",
            "The purchase is not in a valid state to perform the desired operation.",
        )),
        _ => Some(google_error(400, "productNotOwnedByUser", "The product purchase is not owned by the user.")),
    }
}

fn parse_acknowledge_body(body: &[u8]) -> Result<Option<String>, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct AcknowledgeRequest {
        developer_payload: Option<String>,
    }
    serde_json::from_slice::<AcknowledgeRequest>(body)
        .map(|request| request.developer_payload)
        .map_err(|err| google_error(400, "parseError", &format!("Invalid JSON payload received. {err}")))
}

fn int_field(fields: &Map<String, Value>, name: &str) -> i64 {
    fields.get(name).and_then(Value::as_i64).unwrap_or(0)
}

fn unverified_claim(jwt: &str, name: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims[name].as_str().map(str::to_owned)
}

/// A JWT-bearer assertion for `POST /token`, signed with the service
/// account's key (`key_json`) as Google's client libraries sign it, so a
/// client other than the plugin (a benchmark's direct call) can get a token.
pub fn assertion(key_json: &str, now_secs: i64) -> Result<String, String> {
    let key: Value = serde_json::from_str(key_json).map_err(|err| format!("service account key: {err}"))?;
    let email = key["client_email"].as_str().ok_or("service account key: no client_email")?;
    let pem = key["private_key"].as_str().ok_or("service account key: no private_key")?;
    let signing = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|err| format!("service account key: private_key: {err}"))?;
    let claims =
        json!({"iss": email, "scope": SCOPE, "aud": GOOGLE_TOKEN_URL, "iat": now_secs, "exp": now_secs + 3600});
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &signing)
        .map_err(|err| format!("cannot sign the assertion: {err}"))
}

/// Google's JSON error envelope.
pub fn google_error(code: u16, reason: &str, message: &str) -> Response {
    let domain = match reason {
        "authError" | "required" | "notFound" | "insufficientPermissions" | "backendError" => "global",
        "rateLimitExceeded" | "userRateLimitExceeded" => "usageLimits",
        _ => "androidpublisher",
    };
    let status = match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 | 410 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    let mut response = Response::json(
        code,
        &json!({"error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
            "status": status,
        }}),
    );
    // Google's answer to a refused access token says so in the header too;
    // its 401 `permissionDenied` (an account not linked to the app) does not.
    if code == 401 && reason == "authError" {
        response.headers.push((
            "www-authenticate".to_owned(),
            "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"".to_owned(),
        ));
    }
    response
}

fn oauth_error(error: &str, description: &str) -> Response {
    Response::json(400, &json!({"error": error, "error_description": description}))
}

fn default_reason(status: u16) -> &'static str {
    match status {
        400 => "invalidValue",
        401 => "authError",
        403 => "userInsufficientPermission",
        404 => "notFound",
        409 => "concurrentUpdate",
        410 => "purchaseTokenNoLongerValid",
        429 => "rateLimitExceeded",
        _ => "backendError",
    }
}

/// Google's messages for the reasons of the seed's error table; a generic
/// one for others.
fn default_message(reason: &str) -> String {
    match reason {
        "invalidPurchaseState" => "The purchase is not in a valid state to perform the desired operation.",
        "invalidValue" | "invalid" => "Invalid Value",
        "productNotOwnedByUser" => "The product purchase is not owned by the user.",
        "purchaseTokenMismatch" => {
            "The provided purchase token does not match the purchase, package name, subscription ID or product ID."
        }
        "required" => "Required parameter: token",
        "unsupportedIabType" => "The operation is not supported for the given In-App Billing type.",
        "userInsufficientPermission" | "permissionDenied" => {
            "The current user has insufficient permissions to perform the requested operation."
        }
        "notFound" => "The purchase token was not found.",
        "concurrentUpdate" => {
            "The operation could not be performed since the object was already in the process of being updated."
        }
        "purchaseTokenNoLongerValid" => "The purchase token is no longer valid.",
        "rateLimitExceeded" => "Rate Limit Exceeded",
        "backendError" => "Backend Error",
        other => return format!("Emulated error: {other}"),
    }
    .to_owned()
}
