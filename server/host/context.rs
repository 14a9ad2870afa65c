//! What the host does for a plugin instance: the call registry, HTTP with the
//! origin allowlist, timers, logging with secret redaction, secrets. Reached
//! from the `extern "C"` callbacks in `ffi`; all safe code.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iapd_sdk_plugin::abi::{self, status};
use iapd_sdk_plugin::proto;
use prost::Message;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::ffi::{HttpDone, TimerDone};
use super::pool::PluginThreads;
use crate::config::Origin;

/// Work capped by a call's deadline (HTTP, timers) ends this long after it,
/// so that the caller deterministically gets the host's own deadline answer
/// rather than whichever of the two fires first.
const AFTER_DEADLINE: Duration = Duration::from_millis(25);

/// The largest HTTP answer body a plugin is given.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// How a call ended, as the plugin reported it.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) status: abi::Status,
    pub(crate) payload: Vec<u8>,
    /// The plugin refused the call synchronously; no completion followed.
    pub(crate) refused: bool,
}

struct PendingCall {
    sender: oneshot::Sender<Completion>,
    deadline: Instant,
    /// The call's span, the parent of its HTTP requests' spans.
    span: tracing::Span,
    /// HTTP requests sent so far, by method and URL without its query: a
    /// repeat is a retry.
    requests: HashMap<String, u32>,
    /// Timer delays the plugin asked for since its last HTTP request: the
    /// wait before a retry.
    waited: Duration,
}

/// Counters a test or metric can read.
#[derive(Debug, Default)]
pub struct HostCounters {
    /// HTTP requests sent for the plugin.
    pub http_requests: AtomicU64,
    /// HTTP requests refused by the origin allowlist.
    pub http_refused: AtomicU64,
    /// Completions that arrived for no pending call (late or duplicate).
    pub stray_completions: AtomicU64,
    /// Inline calls that ran past their budget.
    pub inline_overruns: AtomicU64,
}

/// The host side of one plugin instance.
pub(crate) struct HostContext {
    store_id: String,
    calls: Mutex<HashMap<u64, PendingCall>>,
    origins: Vec<Origin>,
    secrets: HashMap<Vec<u8>, Vec<u8>>,
    /// Secret values, to redact from what the plugin logs and answers.
    redactions: Vec<Vec<u8>>,
    http: reqwest::Client,
    http_timeout: Duration,
    runtime: tokio::runtime::Handle,
    threads: PluginThreads,
    pub(crate) counters: HostCounters,
}

pub(crate) struct ContextSettings {
    pub(crate) store_id: String,
    pub(crate) origins: Vec<Origin>,
    pub(crate) secrets: Vec<(String, Vec<u8>)>,
    pub(crate) http: reqwest::Client,
    pub(crate) http_timeout: Duration,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) threads: PluginThreads,
}

impl HostContext {
    pub(crate) fn new(settings: ContextSettings) -> Self {
        let redactions = redactions(settings.secrets.iter().map(|(_, value)| value.as_slice()));
        HostContext {
            store_id: settings.store_id,
            calls: Mutex::default(),
            origins: settings.origins,
            secrets: settings.secrets.into_iter().map(|(name, value)| (name.into_bytes(), value)).collect(),
            redactions,
            http: settings.http,
            http_timeout: settings.http_timeout,
            runtime: settings.runtime,
            threads: settings.threads,
            counters: HostCounters::default(),
        }
    }

    /// Registers a call before it is started, so a completion that arrives
    /// before `call` returns finds it. Its HTTP requests are traced under the
    /// current span.
    pub(crate) fn register(&self, call_id: u64, deadline: Instant) -> oneshot::Receiver<Completion> {
        let (sender, receiver) = oneshot::channel();
        let call = PendingCall {
            sender,
            deadline,
            span: tracing::Span::current(),
            requests: HashMap::new(),
            waited: Duration::ZERO,
        };
        lock(&self.calls).insert(call_id, call);
        receiver
    }

    /// Forgets a call; a later completion is dropped.
    pub(crate) fn unregister(&self, call_id: u64) {
        lock(&self.calls).remove(&call_id);
    }

    pub(crate) fn calls_in_flight(&self) -> usize {
        lock(&self.calls).len()
    }

    fn deadline_of(&self, call_id: u64) -> Option<Instant> {
        lock(&self.calls).get(&call_id).map(|call| call.deadline)
    }

    /// Runs plugin code (or a plugin callback) on the store's plugin threads.
    pub(crate) fn run_plugin_code(&self, job: impl FnOnce() + Send + 'static) {
        self.threads.run(job);
    }

    /// Ends a call the plugin refused synchronously (`call` returned non-OK).
    pub(crate) fn refuse(&self, call_id: u64, code: abi::Status) {
        if let Some(call) = lock(&self.calls).remove(&call_id) {
            let _ = call.sender.send(Completion { status: code, payload: Vec::new(), refused: true });
        }
    }

    pub(crate) fn complete(&self, call_id: u64, code: abi::Status, payload: &[u8]) {
        let pending = lock(&self.calls).remove(&call_id);
        match pending {
            Some(call) => {
                let _ = call.sender.send(Completion { status: code, payload: payload.to_vec(), refused: false });
            }
            None => {
                self.counters.stray_completions.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(store = %self.store_id, call_id, "dropped a completion for a call that is no longer pending");
            }
        }
    }

    pub(crate) fn log_max_level(&self) -> u32 {
        use tracing::level_filters::LevelFilter;
        match crate::telemetry::log_level() {
            LevelFilter::OFF => 0,
            LevelFilter::ERROR => 1,
            LevelFilter::WARN => 2,
            LevelFilter::INFO => 3,
            LevelFilter::DEBUG => 4,
            _ => 5,
        }
    }

    pub(crate) fn log(&self, level: u32, target: &[u8], message: &[u8], call_id: u64) {
        let target = String::from_utf8_lossy(target);
        let message = self.redact(&String::from_utf8_lossy(message));
        let store = &self.store_id;
        // In the call's span, so that the line carries the RPC's request and
        // trace ids (a line outside any call has none).
        let span = lock(&self.calls).get(&call_id).map_or_else(tracing::Span::none, |call| call.span.clone());
        match level {
            0 | 1 => tracing::error!(parent: &span, store, call_id, plugin_target = %target, "{message}"),
            2 => tracing::warn!(parent: &span, store, call_id, plugin_target = %target, "{message}"),
            3 => tracing::info!(parent: &span, store, call_id, plugin_target = %target, "{message}"),
            4 => tracing::debug!(parent: &span, store, call_id, plugin_target = %target, "{message}"),
            _ => tracing::trace!(parent: &span, store, call_id, plugin_target = %target, "{message}"),
        }
    }

    /// Replaces every configured secret value in `text`, also where it
    /// appears percent-encoded (see [`redact`]).
    pub(crate) fn redact(&self, text: &str) -> String {
        redact(text, &self.redactions)
    }

    pub(crate) fn secret(&self, name: &[u8]) -> Option<&[u8]> {
        self.secrets.get(name).map(Vec::as_slice)
    }

    fn origin_allowed(&self, url: &reqwest::Url) -> bool {
        Origin::of(url).is_some_and(|origin| self.origins.contains(&origin))
    }

    /// How long work for the call may last (see `AFTER_DEADLINE`), if the
    /// call is pending.
    fn time_left(&self, call_id: u64) -> Option<Duration> {
        self.deadline_of(call_id).map(|deadline| deadline.saturating_duration_since(Instant::now()) + AFTER_DEADLINE)
    }

    pub(crate) fn http_send(self: Arc<Self>, call_id: u64, request: &[u8], done: HttpDone) -> abi::Status {
        let Ok(request) = proto::HttpRequest::decode(request) else { return status::INVALID_ARGUMENT };
        let Ok(url) = reqwest::Url::parse(&request.url) else { return status::INVALID_ARGUMENT };
        if !self.origin_allowed(&url) {
            self.counters.http_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(store = %self.store_id, call_id, origin = %url.origin().ascii_serialization(), "refused an http request to an origin not allowed for this store");
            return status::PERMISSION_DENIED;
        }
        let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
            return status::INVALID_ARGUMENT;
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for header in &request.headers {
            let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(header.name.as_bytes()),
                reqwest::header::HeaderValue::from_bytes(&header.value),
            ) else {
                return status::INVALID_ARGUMENT;
            };
            headers.append(name, value);
        }
        let asked = match request.timeout_millis {
            0 => self.http_timeout,
            millis => Duration::from_millis(u64::from(millis)),
        };
        // Never wait past the call's deadline: nobody would read the answer.
        let timeout = self.time_left(call_id).map_or(asked, |left| asked.min(left));
        self.counters.http_requests.fetch_add(1, Ordering::Relaxed);
        // The path may hold a secret (Amazon's is a path segment); the query is left out.
        let path = self.redact(url.path());
        let host = url.host_str().unwrap_or_default().to_owned();
        let (parent, attempt, retry_wait) = {
            let mut calls = lock(&self.calls);
            match calls.get_mut(&call_id) {
                Some(call) => {
                    let attempt = call.requests.entry(format!("{method} {host}{path}")).or_insert(0);
                    *attempt += 1;
                    (call.span.clone(), *attempt, std::mem::take(&mut call.waited))
                }
                None => (tracing::Span::none(), 1, Duration::ZERO),
            }
        };
        let span = tracing::debug_span!(
            parent: &parent,
            "upstream",
            otel.kind = "client",
            store = %self.store_id,
            http.request.method = %method,
            server.address = %host,
            url.path = %path,
            attempt,
            retry_wait_ms = retry_wait.as_millis() as u64,
            http.response.status_code = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let metrics = &crate::telemetry::METRICS;
        let store_label = opentelemetry::KeyValue::new("store", self.store_id.clone());
        if attempt > 1 {
            metrics.upstream_retries.add(1, std::slice::from_ref(&store_label));
            metrics.upstream_retry_wait.record(retry_wait.as_secs_f64(), std::slice::from_ref(&store_label));
        }
        let method_label = opentelemetry::KeyValue::new("http.request.method", method.to_string());
        let builder = self.http.request(method, url).headers(headers).body(request.body).timeout(timeout);
        let context = self.clone();
        let traced = span.clone();
        self.runtime.spawn(async move {
            let started = Instant::now();
            let (code, body, outcome) = match execute(builder).instrument(traced.clone()).await {
                Ok(response) => {
                    traced.record("http.response.status_code", response.status);
                    (status::OK, response.encode_to_vec(), response.status.to_string())
                }
                Err(code) => {
                    let error = match code {
                        status::DEADLINE_EXCEEDED => "timeout",
                        status::UNAVAILABLE => "unreachable",
                        _ => "answer_too_large",
                    };
                    traced.record("error", error);
                    (code, Vec::new(), error.to_owned())
                }
            };
            metrics.upstream_duration.record(
                started.elapsed().as_secs_f64(),
                &[store_label, method_label, opentelemetry::KeyValue::new("http.response.status_code", outcome)],
            );
            drop(traced);
            tracing::trace!(store = %context.store_id, call_id, code, "http answer delivered to the plugin");
            // Delivered later, never inside http_send, and on the plugin
            // threads: the plugin's code runs in `done`.
            context.run_plugin_code(move || done.deliver(code, &body));
        });
        status::OK
    }

    pub(crate) fn timer_start(self: Arc<Self>, call_id: u64, delay_millis: u64, done: TimerDone) -> abi::Status {
        let delay = Duration::from_millis(delay_millis);
        // A timer that would outlive its call's deadline ends at the deadline.
        let (delay, code) = match self.time_left(call_id) {
            Some(left) if left < delay => (left, status::DEADLINE_EXCEEDED),
            _ => (delay, status::OK),
        };
        if let Some(call) = lock(&self.calls).get_mut(&call_id) {
            call.waited += delay;
        }
        let context = self.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            context.run_plugin_code(move || done.deliver(code));
        });
        status::OK
    }
}

/// What to redact for these secret values: each one, and each one without
/// surrounding whitespace (a secret file's final newline is rarely part of
/// what a plugin sends), if at least 4 bytes long; shorter ones would redact
/// ordinary words.
fn redactions<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    let mut redactions: Vec<Vec<u8>> = values
        .flat_map(|value| [value, value.trim_ascii()])
        .filter(|value| value.len() >= 4)
        .map(<[u8]>::to_vec)
        .collect();
    redactions.sort();
    redactions.dedup();
    redactions
}

/// `text` with every occurrence of each secret replaced by `[redacted]`,
/// where each of the secret's bytes may appear as it is, percent-encoded
/// (`%2F` or `%2f`), or for a space as `+`: plugins put secrets in URLs
/// (Amazon's shared secret is a path segment) and form bodies, and a URL can
/// end up in a log line or an error message.
fn redact(text: &str, secrets: &[Vec<u8>]) -> String {
    let bytes = text.as_bytes();
    let mut redacted = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match secrets.iter().filter_map(|secret| secret_end(bytes, at, secret)).max() {
            Some(end) => {
                redacted.extend_from_slice(b"[redacted]");
                at = end;
            }
            None => {
                redacted.push(bytes[at]);
                at += 1;
            }
        }
    }
    // Cuts fall on character boundaries (a secret is matched whole), so this
    // is lossless; lossy only as a fallback.
    String::from_utf8(redacted).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

/// Where `secret`, spelled as [`redact`] allows, ends in `text` if it starts
/// at `start`.
fn secret_end(text: &[u8], start: usize, secret: &[u8]) -> Option<usize> {
    let hex = |digit: Option<&u8>| digit.and_then(|digit| char::from(*digit).to_digit(16));
    let mut at = start;
    for &byte in secret {
        match text.get(at) {
            Some(found) if *found == byte => at += 1,
            Some(b'+') if byte == b' ' => at += 1,
            Some(b'%')
                if hex(text.get(at + 1)).zip(hex(text.get(at + 2))).map(|(high, low)| high * 16 + low)
                    == Some(u32::from(byte)) =>
            {
                at += 3
            }
            _ => return None,
        }
    }
    Some(at)
}

async fn execute(builder: reqwest::RequestBuilder) -> Result<proto::HttpResponse, abi::Status> {
    let mut response = builder.send().await.map_err(|err| transport_status(&err))?;
    let status_code = u32::from(response.status().as_u16());
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| proto::Header { name: name.as_str().to_owned(), value: value.as_bytes().to_vec() })
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| transport_status(&err))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(status::RESOURCE_EXHAUSTED);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(proto::HttpResponse { status: status_code, headers, body })
}

fn transport_status(err: &reqwest::Error) -> abi::Status {
    if err.is_timeout() { status::DEADLINE_EXCEEDED } else { status::UNAVAILABLE }
}

pub(crate) fn now_unix_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::{redact, redactions};

    #[test]
    fn secrets_are_redacted_raw_percent_encoded_and_trimmed() {
        let secrets = redactions(["2:ab/c+d=\n".as_bytes(), b"s3cr3t value", b"abc"].into_iter());
        let cases = [
            // Raw, as the configured value and without its final newline.
            ("key 2:ab/c+d=\n and 2:ab/c+d= end", "key [redacted] and [redacted] end"),
            // In a URL path, encoded in whole or in part, in either case.
            (
                "GET https://store.example/developer/2%3Aab%2Fc%2Bd%3D/user/u",
                "GET https://store.example/developer/[redacted]/user/u",
            ),
            ("/developer/2:ab%2fc+d=/user", "/developer/[redacted]/user"),
            // Form-encoded, a space as `+`.
            ("secret=s3cr3t+value&x=1", "secret=[redacted]&x=1"),
            ("secret=s3cr3t%20value", "secret=[redacted]"),
            // Near misses and short values stay.
            ("2:ab/c+d and 2%3Aab%2Fc%2Bd%3", "2:ab/c+d and 2%3Aab%2Fc%2Bd%3"),
            ("abc abc", "abc abc"),
            ("é 2:ab/c+d= é", "é [redacted] é"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text, &secrets), expected, "{text}");
        }
        assert_eq!(redact("nothing to hide", &[]), "nothing to hide");
    }
}
