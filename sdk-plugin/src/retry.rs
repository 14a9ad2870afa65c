//! Retrying transient store failures on the host's timers.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::{Code, Ctx, HttpResponse, PluginError};

/// The retryable error for a store's transient answer (409, 429, 5xx, or a
/// status the store documents as temporary): ABORTED for 409,
/// RESOURCE_EXHAUSTED for 429, UNAVAILABLE otherwise, with the HTTP status
/// and the store's `Retry-After`. Add the store's reason with `with_reason`.
pub fn transient(response: &HttpResponse, message: impl Into<String>) -> PluginError {
    let code = match response.status() {
        409 => Code::Aborted,
        429 => Code::ResourceExhausted,
        _ => Code::Unavailable,
    };
    let err = PluginError::new(code, message).with_http_status(response.status()).retryable(true);
    match response.retry_after() {
        Some(delay) => err.retry_after(delay),
        None => err,
    }
}

/// How transient failures are retried.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub max_attempts: usize,
    /// The first backoff; each next one doubles, with jitter.
    pub initial_backoff_ms: u64,
    /// The longest backoff.
    pub max_backoff_ms: u64,
    /// A `Retry-After` longer than this is not waited out: the call fails
    /// with RESOURCE_EXHAUSTED and the delay in `RetryInfo`.
    pub max_retry_after_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { max_attempts: 4, initial_backoff_ms: 100, max_backoff_ms: 2_000, max_retry_after_ms: 5_000 }
    }
}

impl Retry {
    /// Refuses settings that cannot work, naming the key under `stores.<store_id>.config`.
    pub fn check(&self, store_id: &str) -> Result<(), PluginError> {
        if self.max_attempts == 0 {
            return Err(PluginError::invalid_argument(format!(
                "config key `stores.{store_id}.config.retry.max_attempts`: must be at least 1"
            )));
        }
        Ok(())
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the retries run out.
/// Errors marked [`PluginError::retryable`] are retried with exponential
/// backoff and jitter; one with a [`PluginError::retry_after`] waits that
/// long instead, unless it exceeds `max_retry_after_ms`, in which case the
/// error goes to the caller at once. Waits use [`Ctx::sleep`], so no thread
/// blocks and no wait outlives the call's deadline.
pub async fn with_retries<T, F, Fut>(cx: &Ctx, retry: &Retry, what: &str, attempt: F) -> Result<T, PluginError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PluginError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(retry.initial_backoff_ms))
        .with_max_delay(Duration::from_millis(retry.max_backoff_ms))
        .with_max_times(retry.max_attempts.saturating_sub(1))
        .with_jitter();
    let sleeper = cx.clone();
    let max_retry_after = Duration::from_millis(retry.max_retry_after_ms);
    attempt
        .retry(backoff)
        .sleep(move |delay| {
            let cx = sleeper.clone();
            // A failed sleep means the call's deadline passed; the next
            // attempt then fails with DEADLINE_EXCEEDED on its own.
            async move { drop(cx.sleep(delay).await) }
        })
        .when(PluginError::is_retryable)
        .adjust(move |err, backoff| match (err.retry_after_delay(), backoff) {
            (Some(asked), Some(_)) if asked > max_retry_after => None,
            (Some(asked), Some(_)) => Some(asked),
            (None, backoff) => backoff,
            (Some(_), None) => None,
        })
        .notify(|err, delay| {
            cx.log(log::Level::Info, &format!("{what}: retrying in {} ms after {err}", delay.as_millis()))
        })
        .await
}

/// Sends `request` through the host for a store call that
/// [`with_retries`] retries: no answer in time is retryable, since the next
/// attempt may answer within the call's deadline. Any HTTP status is `Ok`.
pub async fn send(cx: &Ctx, request: crate::HttpRequest) -> Result<HttpResponse, PluginError> {
    cx.http(request).await.map_err(|err| {
        let retryable = err.is_retryable() || err.code() == Code::DeadlineExceeded;
        err.retryable(retryable)
    })
}
