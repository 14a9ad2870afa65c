//! What every store emulator does the same way: count requests, serve the
//! queued faults, keep a test clock and answer the `/emulator/v1/…` controls.
//! A store supplies only its routes, its error body and its state.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde_json::json;

use crate::{Fault, Faults, Request, Response};

/// The test controls of one emulator.
#[derive(Debug, Default)]
pub(crate) struct Controls {
    faults: Faults,
    counts: BTreeMap<String, u64>,
    /// A fixed clock (unix millis) for tests; the system clock if `None`.
    clock: Option<i64>,
    /// The store's quota: at most this many requests per window (ms),
    /// windows aligned to the epoch; more are answered 429.
    quota: Option<(u64, u64)>,
    /// Requests received per window of the quota, by window index.
    windows: BTreeMap<u64, u64>,
    /// Requests answered 429 for the quota.
    over_quota: u64,
}

impl Controls {
    pub(crate) fn inject(&mut self, fault: Fault) {
        self.faults.inject(fault);
    }

    pub(crate) fn count(&self, operation: &str) -> u64 {
        self.counts.get(operation).copied().unwrap_or(0)
    }

    /// Enforces a quota of `requests` per `window_ms`, as the store does.
    pub(crate) fn set_quota(&mut self, requests: u64, window_ms: u64) {
        self.quota = Some((requests, window_ms.max(1)));
        self.windows.clear();
    }

    /// The most requests any one window of the quota received, and how many
    /// were answered 429 for it.
    pub(crate) fn quota_use(&self) -> (u64, u64) {
        (self.windows.values().copied().max().unwrap_or(0), self.over_quota)
    }

    /// Counts a request against the quota: false if it is over.
    fn within_quota(&mut self) -> bool {
        let Some((requests, window_ms)) = self.quota else { return true };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let count = self.windows.entry(now / window_ms).or_default();
        *count += 1;
        if *count > requests {
            self.over_quota += 1;
            return false;
        }
        true
    }

    pub(crate) fn set_clock(&mut self, unix_millis: i64) {
        self.clock = Some(unix_millis);
    }

    pub(crate) fn now_millis(&self) -> i64 {
        self.clock.unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        })
    }

    /// Counts a request for `operation` and takes the fault that hits it.
    fn hit(&mut self, operation: &str) -> Option<Fault> {
        *self.counts.entry(operation.to_owned()).or_default() += 1;
        self.faults.take(operation)
    }
}

/// A store's part of an emulator.
pub(crate) trait StoreState {
    /// What `POST /emulator/v1/purchases` takes.
    type Purchase: DeserializeOwned;
    /// Whether a path's trailing slash may be left out (Bazaar's paths end in one).
    const TRAILING_SLASH_OPTIONAL: bool = false;

    fn controls(&mut self) -> &mut Controls;
    /// The operation a request asks for, as faults and counts name it.
    fn operation(method: &str, segments: &[&str]) -> &'static str;
    /// The store's error body for an injected fault.
    fn fault_error(status: u16, reason: Option<&str>) -> Response;
    /// The store's normal answer.
    fn serve(&mut self, request: &Request, segments: &[&str]) -> Response;
    fn add_purchase(&mut self, purchase: Self::Purchase);
    fn revoke_tokens(&mut self);
}

/// Answers one request: a control, an injected fault, or the store's answer
/// (delayed if a fault says so).
pub(crate) fn handle<S: StoreState>(store: &mut S, request: &Request) -> Response {
    let mut segments = request.segments();
    if S::TRAILING_SLASH_OPTIONAL && segments.last().is_some_and(String::is_empty) {
        segments.pop();
    }
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if let ["emulator", "v1", control] = segments.as_slice() {
        return answer_control(store, request, control);
    }
    let operation = S::operation(&request.method, &segments);
    // A store's API quota does not count its token endpoint.
    if operation != "token" && !store.controls().within_quota() {
        return S::fault_error(429, Some("rateLimitExceeded"));
    }
    let fault = store.controls().hit(operation);
    if let Some(answer) = fault.as_ref().and_then(|fault| fault.answer(S::fault_error)) {
        return answer;
    }
    let mut response = store.serve(request, &segments);
    if let Some(fault) = fault {
        response.delay = fault.delay();
    }
    response
}

/// What `POST /emulator/v1/quota` takes: the store's quota, as
/// `{"requests": 3000, "windowMs": 60000}`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QuotaControl {
    requests: u64,
    window_ms: u64,
}

fn answer_control<S: StoreState>(store: &mut S, request: &Request, control: &str) -> Response {
    let ok = || Response::json(200, &json!({}));
    let bad = |err: serde_json::Error| Response::json(400, &json!({"error": err.to_string()}));
    match (request.method.as_str(), control) {
        ("POST", "purchases") => match serde_json::from_slice::<S::Purchase>(&request.body) {
            Ok(purchase) => {
                store.add_purchase(purchase);
                ok()
            }
            Err(err) => bad(err),
        },
        ("POST", "faults") => match serde_json::from_slice::<Fault>(&request.body) {
            Ok(fault) => {
                store.controls().inject(fault);
                ok()
            }
            Err(err) => bad(err),
        },
        ("POST", "tokens:revoke") => {
            store.revoke_tokens();
            ok()
        }
        ("POST", "quota") => match serde_json::from_slice::<QuotaControl>(&request.body) {
            Ok(quota) => {
                store.controls().set_quota(quota.requests, quota.window_ms);
                ok()
            }
            Err(err) => bad(err),
        },
        ("GET", "stats") => {
            let controls = store.controls();
            let (most, refused) = controls.quota_use();
            Response::json(
                200,
                &json!({"requests": controls.counts, "quota": {"mostInAWindow": most, "refused": refused}}),
            )
        }
        _ => Response::json(404, &json!({"error": format!("no control {} {control}", request.method)})),
    }
}
