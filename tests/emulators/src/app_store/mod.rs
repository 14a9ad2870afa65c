//! The Apple App Store's server side, as `shared/reference/stores/apple.md`
//! (Apple's App Store Server Library and API documentation) describes it:
//!
//! - `GET  /inApps/v1/transactions/{transactionId}` (Get Transaction Info):
//!   `{"signedTransactionInfo": "<JWS>"}`, the transaction signed by the
//!   emulator's own Apple-shaped chain ([`pki`]) at the time of the request.
//! - `POST /inApps/v1/transactions/{transactionId}/finish` (Finish Transaction):
//!   200 with no body, also on repeats.
//! - `POST /verifyReceipt`: the legacy receipt check, `status` 0 or 21000–21010.
//!
//! Production and sandbox are two hosts at Apple; here the sandbox is the same
//! paths under `/sandbox` (`/sandbox/inApps/v1/…`, `/sandbox/verifyReceipt`).
//! A transaction or receipt lives in one environment: production answers
//! 4040010 (Get Transaction Info) or 21007 (verifyReceipt) for a sandbox one.
//!
//! Requests to the Server API carry `Authorization: Bearer <JWT>`: ES256
//! with a registered key (`kid`), `iss` its issuer id, `aud`
//! `appstoreconnect-v1`, `bid` a known bundle id, `exp` at most an hour
//! ahead. Anything else is a 401 with an empty body, as Apple answers.
//! Errors are `{"errorCode", "errorMessage"}`. Test controls as for the other
//! emulators: `/emulator/v1/purchases` (a transaction payload), `faults`,
//! `tokens:revoke` (forgets nothing: Apple's JWTs are stateless), `stats`.

pub mod pki;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

pub use self::pki::{ChainOptions, SigningChain};
use crate::store::{self, Controls, StoreState};
use crate::{Emulator, Fault, Request, Response};

/// The state a new emulator starts with when none is given.
pub const DEFAULT_STATE: &str = include_str!("default-state.json");

/// Apple's audience for App Store Server API tokens.
const AUDIENCE: &str = "appstoreconnect-v1";
/// Apple refuses tokens that live longer than an hour.
const MAX_TOKEN_LIFETIME_SECS: i64 = 3600;

/// The emulator.
pub struct AppStore {
    state: Mutex<State>,
}

impl std::fmt::Debug for AppStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppStore").finish_non_exhaustive()
    }
}

/// An emulator state file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// The apps' bundle ids.
    #[serde(default)]
    pub bundle_ids: BTreeSet<String>,
    /// In-App Purchase keys allowed to call the Server API.
    #[serde(default)]
    pub keys: Vec<ApiKey>,
    /// The app-specific shared secret verifyReceipt checks when sent.
    #[serde(default)]
    pub shared_secret: Option<String>,
    /// Transactions: JWSTransactionDecodedPayload objects without `signedDate`.
    #[serde(default)]
    pub transactions: Vec<Value>,
    /// Legacy receipts.
    #[serde(default)]
    pub receipts: Vec<Receipt>,
}

/// An App Store Connect In-App Purchase key.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKey {
    /// The key id (`kid`).
    pub key_id: String,
    /// The team's issuer id (`iss`).
    pub issuer_id: String,
    /// The public key, PEM.
    pub public_key: String,
}

/// A legacy app receipt and what verifyReceipt says of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Receipt {
    /// The base64 receipt the app sends.
    pub receipt_data: String,
    /// `Production` or `Sandbox`.
    pub environment: String,
    /// The app.
    pub bundle_id: String,
    /// A status to answer instead of 0 (21005, 21006, 21009, 21010, …).
    #[serde(default)]
    pub status: Option<i64>,
    /// `in_app` entries, in Apple's all-strings form.
    #[serde(default)]
    pub in_app: Vec<Value>,
}

struct State {
    bundle_ids: BTreeSet<String>,
    keys: HashMap<String, (String, jsonwebtoken::DecodingKey)>,
    shared_secret: Option<String>,
    /// (sandbox?, transaction id) → payload.
    transactions: HashMap<(bool, String), Value>,
    finished: HashSet<String>,
    receipts: HashMap<String, Receipt>,
    chain: SigningChain,
    controls: Controls,
}

impl AppStore {
    /// An emulator with `seed` and a freshly generated signing chain. Errors
    /// name a key that is not a P-256 public key.
    pub fn new(seed: Seed) -> Result<AppStore, String> {
        let mut keys = HashMap::new();
        for key in seed.keys {
            let decoding = jsonwebtoken::DecodingKey::from_ec_pem(key.public_key.as_bytes())
                .map_err(|err| format!("key {}: not an ec public key in pem: {err}", key.key_id))?;
            keys.insert(key.key_id, (key.issuer_id, decoding));
        }
        let mut transactions = HashMap::new();
        for transaction in seed.transactions {
            let id = transaction["transactionId"].as_str().unwrap_or_default().to_owned();
            transactions.insert((transaction["environment"] == "Sandbox", id), transaction);
        }
        let state = State {
            bundle_ids: seed.bundle_ids,
            keys,
            shared_secret: seed.shared_secret,
            transactions,
            finished: HashSet::new(),
            receipts: seed.receipts.into_iter().map(|receipt| (receipt.receipt_data.clone(), receipt)).collect(),
            chain: SigningChain::generate(),
            controls: Controls::default(),
        };
        Ok(AppStore { state: Mutex::new(state) })
    }

    /// An emulator with [`DEFAULT_STATE`].
    pub fn with_default_state() -> AppStore {
        let seed = serde_json::from_str(DEFAULT_STATE).expect("the default state parses");
        AppStore::new(seed).expect("the default state's keys are p-256 public keys")
    }

    /// The root a verifier must trust, PEM.
    pub fn root_pem(&self) -> String {
        self.lock().chain.root_pem()
    }

    /// Signs `payload` with the emulator's chain, as Apple signs transactions.
    pub fn sign(&self, payload: &Value) -> String {
        self.lock().chain.sign(payload)
    }

    /// Signs `payload` under any header (tests make wrong ones).
    pub fn sign_with_header(&self, header: &Value, payload: &Value) -> String {
        self.lock().chain.sign_with_header(header, payload)
    }

    /// Signs with another chain from now on (a rotated or a flawed one).
    pub fn set_chain(&self, chain: SigningChain) {
        self.lock().chain = chain;
    }

    /// A stored transaction's payload, as signed now (with `signedDate`).
    pub fn transaction_payload(&self, transaction_id: &str) -> Option<Value> {
        let state = self.lock();
        let payload = state
            .transactions
            .get(&(false, transaction_id.to_owned()))
            .or_else(|| state.transactions.get(&(true, transaction_id.to_owned())))?;
        Some(state.dated(payload))
    }

    /// A stored transaction signed now: the `signedTransactionInfo` Apple
    /// would answer, which is also what StoreKit 2 hands the app.
    pub fn signed_transaction(&self, transaction_id: &str) -> Option<String> {
        let payload = self.transaction_payload(transaction_id)?;
        Some(self.sign(&payload))
    }

    /// Adds or replaces a transaction.
    pub fn add_transaction(&self, payload: Value) {
        self.lock().add_purchase(payload);
    }

    /// Whether Finish Transaction was called for a transaction.
    pub fn finished(&self, transaction_id: &str) -> bool {
        self.lock().finished.contains(transaction_id)
    }

    /// Queues a fault (operations: `transactions.get`, `transactions.finish`,
    /// `verifyReceipt`, and the same with a `sandbox.` prefix).
    pub fn inject(&self, fault: Fault) {
        self.lock().controls.inject(fault);
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

impl Emulator for AppStore {
    fn handle(&self, request: &Request) -> Response {
        store::handle(&mut *self.lock(), request)
    }
}

impl StoreState for State {
    type Purchase = Value;

    fn controls(&mut self) -> &mut Controls {
        &mut self.controls
    }

    fn operation(method: &str, segments: &[&str]) -> &'static str {
        let (sandbox, rest) = match segments {
            ["sandbox", rest @ ..] => (true, rest),
            rest => (false, rest),
        };
        let operation = match (method, rest) {
            ("GET", ["inApps", "v1", "transactions", _]) => "transactions.get",
            ("POST", ["inApps", "v1", "transactions", _, "finish"]) => "transactions.finish",
            ("POST", ["verifyReceipt"]) => "verifyReceipt",
            _ => return "unknown",
        };
        match (sandbox, operation) {
            (false, operation) => operation,
            (true, "transactions.get") => "sandbox.transactions.get",
            (true, "transactions.finish") => "sandbox.transactions.finish",
            (true, _) => "sandbox.verifyReceipt",
        }
    }

    fn fault_error(status: u16, reason: Option<&str>) -> Response {
        let code = reason.and_then(|reason| reason.parse::<i64>().ok()).unwrap_or(match status {
            429 => 4_290_000,
            404 => 4_040_010,
            400 => 4_000_000,
            _ => 5_000_000,
        });
        if status == 401 {
            return Response::empty(401);
        }
        api_error(status, code, "An emulated error.")
    }

    fn serve(&mut self, request: &Request, segments: &[&str]) -> Response {
        let sandbox = segments.first() == Some(&"sandbox");
        let rest = if sandbox { &segments[1..] } else { segments };
        match (Self::operation(&request.method, segments), rest) {
            (operation, ["inApps", "v1", "transactions", id, ..]) if operation.ends_with("transactions.get") => {
                self.authorized(request).unwrap_or_else(|| self.transaction_info(sandbox, id))
            }
            (operation, ["inApps", "v1", "transactions", id, "finish"]) if operation.ends_with("finish") => {
                self.authorized(request).unwrap_or_else(|| self.finish(sandbox, id))
            }
            (operation, _) if operation.ends_with("verifyReceipt") => self.verify_receipt(sandbox, &request.body),
            _ => api_error(404, 4_040_000, "Not found."),
        }
    }

    fn add_purchase(&mut self, payload: Value) {
        let id = payload["transactionId"].as_str().unwrap_or_default().to_owned();
        self.transactions.insert((payload["environment"] == "Sandbox", id), payload);
    }

    fn revoke_tokens(&mut self) {}
}

impl State {
    fn dated(&self, payload: &Value) -> Value {
        let mut payload = payload.clone();
        payload["signedDate"] = json!(self.controls.now_millis());
        payload
    }

    /// `None` if the request's JWT is one Apple would accept; the 401 otherwise.
    fn authorized(&self, request: &Request) -> Option<Response> {
        let refuse = || Some(Response::empty(401));
        let Some(token) = request.header_value("authorization").and_then(|value| value.strip_prefix("Bearer ")) else {
            return refuse();
        };
        let Ok(header) = jsonwebtoken::decode_header(token) else { return refuse() };
        if header.alg != jsonwebtoken::Algorithm::ES256 {
            return refuse();
        }
        let Some((issuer, key)) = header.kid.as_ref().and_then(|kid| self.keys.get(kid)) else { return refuse() };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.validate_exp = false; // checked below against the emulator's clock
        let Ok(claims) = jsonwebtoken::decode::<Value>(token, key, &validation) else { return refuse() };
        let now = self.controls.now_millis() / 1000;
        let exp = claims.claims["exp"].as_i64().unwrap_or(0);
        let bid = claims.claims["bid"].as_str().unwrap_or_default();
        if exp <= now || exp > now + MAX_TOKEN_LIFETIME_SECS + 60 || !self.bundle_ids.contains(bid) {
            return refuse();
        }
        None
    }

    fn transaction_info(&self, sandbox: bool, id: &str) -> Response {
        if id.is_empty() || !id.bytes().all(|byte| byte.is_ascii_digit()) {
            return api_error(400, 4_000_006, "Invalid transaction id.");
        }
        match self.transactions.get(&(sandbox, id.to_owned())) {
            Some(payload) => {
                Response::json(200, &json!({"signedTransactionInfo": self.chain.sign(&self.dated(payload))}))
            }
            None => api_error(404, 4_040_010, "Transaction id not found."),
        }
    }

    fn finish(&mut self, sandbox: bool, id: &str) -> Response {
        if !self.transactions.contains_key(&(sandbox, id.to_owned())) {
            return api_error(404, 4_040_010, "Transaction id not found.");
        }
        self.finished.insert(id.to_owned());
        Response::empty(200)
    }

    fn verify_receipt(&self, sandbox: bool, body: &[u8]) -> Response {
        let status = |status: i64| {
            let mut body = json!({"status": status});
            if matches!(status, 21005 | 21009 | 21100..=21199) {
                body["is-retryable"] = json!(true);
            }
            Response::json(200, &body)
        };
        let Ok(request) = serde_json::from_slice::<Value>(body) else { return status(21000) };
        let Some(data) = request["receipt-data"].as_str().filter(|data| STANDARD.decode(data).is_ok()) else {
            return status(21002);
        };
        let Some(receipt) = self.receipts.get(data) else { return status(21003) };
        match (receipt.environment == "Sandbox", sandbox) {
            (true, false) => return status(21007),
            (false, true) => return status(21008),
            _ => {}
        }
        if let (Some(sent), Some(secret)) = (request["password"].as_str(), &self.shared_secret)
            && sent != secret
        {
            return status(21004);
        }
        if let Some(code) = receipt.status {
            return status(code);
        }
        Response::json(
            200,
            &json!({
                "status": 0,
                "environment": receipt.environment,
                "receipt": {
                    "receipt_type": if sandbox { "ProductionSandbox" } else { "Production" },
                    "bundle_id": receipt.bundle_id,
                    "application_version": "1",
                    "in_app": receipt.in_app,
                },
                "latest_receipt_info": receipt.in_app,
                "latest_receipt": data,
            }),
        )
    }
}

/// A Server API token (ES256 JWT) for `bundle_id`, signed with an In-App
/// Purchase key (`.p8` PEM) as Apple's libraries sign it, so a client other
/// than the plugin (a benchmark's direct call) can call the API.
pub fn api_token(
    private_key_pem: &str,
    key_id: &str,
    issuer_id: &str,
    bundle_id: &str,
    now_secs: i64,
) -> Result<String, String> {
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(private_key_pem.as_bytes())
        .map_err(|err| format!("not an ec private key in pem: {err}"))?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key_id.to_owned());
    let exp = now_secs + MAX_TOKEN_LIFETIME_SECS;
    let claims = json!({"iss": issuer_id, "iat": now_secs, "exp": exp, "aud": AUDIENCE, "bid": bundle_id});
    jsonwebtoken::encode(&header, &claims, &signing).map_err(|err| format!("cannot sign the token: {err}"))
}

/// Apple's error body: `{"errorCode", "errorMessage"}`, typed exactly
/// `application/json` (Apple's library reads the body only then).
pub fn api_error(status: u16, code: i64, message: &str) -> Response {
    let mut response = Response::json(status, &json!({"errorCode": code, "errorMessage": message}));
    response.headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    response
}
