//! A store's request quota: the calls to one store's plugin (one set of
//! credentials) are counted in windows aligned to the clock, at most
//! `requests` each, and a call over it waits for the next window while its
//! deadline allows. A call, not each HTTP request, is the unit: a plugin that
//! answers concurrent identical calls with one request (Google Play's does)
//! makes the count err high, so replicas stay under the store's quota; the
//! token exchanges, which stores count apart, are not counted. The count is this process's
//! alone, or shared by every replica through Redis (one key per store and
//! window, counted by a script on Redis's clock), so that N replicas
//! together stay under the store's quota. Redis unreachable, each replica
//! counts alone until it is back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// At most `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per window.
    pub requests: u32,
    /// The window, aligned to the Unix epoch.
    pub window: Duration,
}

/// Counts one window and returns the count and the milliseconds left in it,
/// by Redis's clock, so replicas whose clocks differ agree on the window. In
/// the window's tail (ARGV[2] ms) it counts nothing and answers 0: the call
/// waits for the next window.
const COUNT_SCRIPT: &str = r"
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local window_ms = tonumber(ARGV[1])
local into = now_ms % window_ms
if into >= window_ms - tonumber(ARGV[2]) then
  return {0, window_ms - into}
end
local key = KEYS[1] .. ':' .. math.floor(now_ms / window_ms)
local count = redis.call('INCR', key)
if count == 1 then
  redis.call('PEXPIRE', key, window_ms * 2)
end
return {count, window_ms - (now_ms % window_ms)}
";

/// No call starts in the last tenth of a window (at most this long), so that
/// its request reaches the store within the window it was counted in: one
/// counted at a window's very end would arrive in the next, beside that
/// window's own.
const TAIL_MAX: Duration = Duration::from_millis(100);

/// The quiet tail of a window of `window_ms`, in ms.
fn tail_ms(window_ms: u64) -> u64 {
    (window_ms / 10).min(TAIL_MAX.as_millis() as u64)
}

/// How often a replica tries Redis again while it is unreachable.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// One store's quota.
pub(crate) struct Quota {
    store: String,
    limit: RateLimit,
    /// (window index, requests counted in it), when counting alone.
    local: Mutex<(u64, u32)>,
    shared: Option<Shared>,
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota").field("store", &self.store).field("limit", &self.limit).finish_non_exhaustive()
    }
}

struct Shared {
    connection: redis::aio::ConnectionManager,
    key: String,
    script: redis::Script,
    /// When Redis last failed: it is not asked again for `RECONNECT_EVERY`.
    failed_at: Mutex<Option<Instant>>,
    /// Whether the last count was local because Redis could not be reached.
    alone: AtomicBool,
}

impl Quota {
    /// A quota counted here, or through `redis` (a connection made when
    /// first needed) under `key_prefix`.
    pub(crate) fn new(
        store: &str,
        limit: RateLimit,
        redis: Option<(&redis::Client, &str)>,
    ) -> Result<Quota, redis::RedisError> {
        let shared = match redis {
            None => None,
            Some((client, prefix)) => {
                // Short timeouts and one retry: while Redis is away, a request
                // is counted here rather than kept waiting.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_millis(500)))
                    .set_number_of_retries(1);
                Some(Shared {
                    connection: redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)?,
                    key: format!("{prefix}:quota:{store}"),
                    script: redis::Script::new(COUNT_SCRIPT),
                    failed_at: Mutex::new(None),
                    alone: AtomicBool::new(false),
                })
            }
        };
        Ok(Quota { store: store.to_owned(), limit, local: Mutex::new((0, 0)), shared })
    }

    /// The limit counted.
    pub(crate) fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Waits for a request slot until `deadline`: how long it waited, or,
    /// when none comes in time, how long until the next window.
    pub(crate) async fn take(&self, deadline: Instant) -> Result<Duration, Duration> {
        let started = Instant::now();
        loop {
            let (count, left) = self.count().await;
            // Zero: in a window's tail, where nothing is counted.
            if count > 0 && count <= self.limit.requests {
                return Ok(started.elapsed());
            }
            if Instant::now() + left >= deadline {
                return Err(left);
            }
            tokio::time::sleep(left).await;
        }
    }

    /// Counts one request in the current window: its number there (zero in
    /// the window's tail, where nothing is counted), and the time left in the
    /// window.
    async fn count(&self) -> (u32, Duration) {
        if let Some(shared) = &self.shared {
            match shared.count(self.limit.window).await {
                Ok(counted) => {
                    if shared.alone.swap(false, Ordering::Relaxed) {
                        tracing::info!(store = %self.store, "rate limit: counting with the other replicas again");
                    }
                    return counted;
                }
                Err(err) => {
                    if !shared.alone.swap(true, Ordering::Relaxed) {
                        tracing::warn!(store = %self.store, error = %err,
                            "rate limit: redis cannot be reached; this replica counts alone until it can");
                    }
                }
            }
        }
        self.count_here()
    }

    fn count_here(&self) -> (u32, Duration) {
        let window_ms = u64::try_from(self.limit.window.as_millis()).unwrap_or(u64::MAX).max(1);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let (window, into) = (now_ms / window_ms, now_ms % window_ms);
        if into >= window_ms - tail_ms(window_ms) {
            return (0, Duration::from_millis(window_ms - into));
        }
        let mut local = self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if local.0 != window {
            *local = (window, 0);
        }
        local.1 = local.1.saturating_add(1);
        (local.1, Duration::from_millis(window_ms - now_ms % window_ms))
    }
}

impl Shared {
    async fn count(&self, window: Duration) -> Result<(u32, Duration), redis::RedisError> {
        let recently_failed = self
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < RECONNECT_EVERY);
        if recently_failed {
            return Err(redis::RedisError::from((redis::ErrorKind::Io, "redis failed less than a second ago")));
        }
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut connection = self.connection.clone();
        let counted: Result<(u64, u64), _> =
            self.script.key(&self.key).arg(window_ms).arg(tail_ms(window_ms)).invoke_async(&mut connection).await;
        let mut failed_at = self.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match counted {
            Ok((count, left_ms)) => {
                *failed_at = None;
                Ok((u32::try_from(count).unwrap_or(u32::MAX), Duration::from_millis(left_ms)))
            }
            Err(err) => {
                *failed_at = Some(Instant::now());
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_over_the_window_wait_for_the_next_or_are_told_when() {
        let quota = Quota::new("test", RateLimit { requests: 3, window: Duration::from_millis(200) }, None).unwrap();
        let far = Instant::now() + Duration::from_secs(5);
        // From the start of a window: three pass in it, the fourth is told
        // when the next begins, or waits for it.
        let (_, left) = quota.count_here();
        tokio::time::sleep(left).await;
        for _ in 0..3 {
            assert!(quota.take(far).await.is_ok_and(|waited| waited < Duration::from_millis(50)));
        }
        let soon = Instant::now() + Duration::from_millis(1);
        let refused = quota.take(soon).await.expect_err("over the limit, and no time to wait");
        assert!(refused <= Duration::from_millis(200), "{refused:?}");
        // In a window's tail (its last 100 ms here) nothing starts, even under the limit.
        let quota = Quota::new("test", RateLimit { requests: 3, window: Duration::from_secs(1) }, None).unwrap();
        let (_, left) = quota.count_here();
        tokio::time::sleep(left + Duration::from_millis(940)).await;
        assert_eq!(quota.count_here().0, 0, "60 ms before the end of a 1 s window");
        let waited = quota.take(far).await.expect("the next window");
        assert!(waited > Duration::ZERO);
    }
}
