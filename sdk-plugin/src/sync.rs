//! Sharing work among concurrent calls, without an async runtime.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::runtime::lock;
use crate::{Ctx, PluginError};

/// Runs one piece of work per key at a time and hands its result to every
/// call that asked for the same key meanwhile: one token refresh for many
/// calls, one store request for many identical Verifies.
///
/// Nothing is cached: once the work finishes, the next call for the key
/// starts a new run. If the call leading a run is dropped (its client went
/// away), a waiting call takes over and runs the work itself, so no call
/// depends on another call's lifetime.
pub struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Arc<Flight<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { flights: Mutex::new(HashMap::new()) }
    }
}

impl<K, V> fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleFlight").field("in_flight", &lock(&self.flights).len()).finish()
    }
}

struct Flight<V> {
    state: Mutex<FlightState<V>>,
}

enum FlightState<V> {
    Running(Vec<Waker>),
    Done(V),
    Abandoned,
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// A new, empty set of flights.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` for `key` unless a run for `key` is in flight, in which
    /// case it waits for that run's result.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let mut work = Some(work);
        loop {
            let (flight, leads) = {
                let mut flights = lock(&self.flights);
                match flights.get(&key) {
                    Some(flight) => (flight.clone(), false),
                    None => {
                        let flight = Arc::new(Flight { state: Mutex::new(FlightState::Running(Vec::new())) });
                        flights.insert(key.clone(), flight.clone());
                        (flight, true)
                    }
                }
            };
            if leads {
                let mut lead = Lead { flights: &self.flights, key: &key, flight: &flight, value: None };
                let work = work.take().expect("a call leads at most once: it returns after leading");
                let value = work().await;
                lead.value = Some(value.clone());
                return value;
            }
            if let Some(value) = (Wait { flight: &flight }).await {
                return value;
            }
            // The leader was dropped before it finished: lead or follow anew.
        }
    }

    /// Runs in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }
}

/// An access token cache: a token is reused until shortly before it
/// expires (a minute early, or half its lifetime if that is shorter), and
/// only one refresh is ever in flight, whatever the number of calls.
pub struct TokenCache {
    cached: Mutex<Option<AccessToken>>,
    refresh: SingleFlight<(), Result<AccessToken, PluginError>>,
}

/// A token from a [`TokenCache`].
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The token itself.
    pub value: String,
    /// When the cache stops handing it out, unix millis.
    pub refresh_at_millis: i64,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken").field("refresh_at_millis", &self.refresh_at_millis).finish_non_exhaustive()
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache { cached: Mutex::new(None), refresh: SingleFlight::new() }
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache").field("cached", &*lock(&self.cached)).finish()
    }
}

impl TokenCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached token, or a new one from `fetch`, which answers the token
    /// and how long it lives.
    pub async fn get<F, Fut>(&self, cx: &Ctx, fetch: F) -> Result<AccessToken, PluginError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, std::time::Duration), PluginError>>,
    {
        let now = cx.now_unix_millis();
        if let Some(token) = lock(&self.cached).as_ref().filter(|token| now < token.refresh_at_millis) {
            return Ok(token.clone());
        }
        self.refresh
            .run((), || async {
                let requested_at = cx.now_unix_millis();
                let (value, lifetime) = fetch().await?;
                let lifetime = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX).max(1);
                let token = AccessToken {
                    value,
                    refresh_at_millis: requested_at.saturating_add(lifetime - (lifetime / 2).min(60_000)),
                };
                *lock(&self.cached) = Some(token.clone());
                Ok(token)
            })
            .await
    }

    /// Forgets `token` after the store refused it (revoked, or expired
    /// early), unless a newer one replaced it already.
    pub fn invalidate(&self, token: &AccessToken) {
        let mut cached = lock(&self.cached);
        if cached.as_ref() == Some(token) {
            *cached = None;
        }
    }
}

/// The leading call's duty: publish the result, or on drop without one, let
/// the waiters take over.
struct Lead<'a, K: Eq + Hash, V> {
    flights: &'a Mutex<HashMap<K, Arc<Flight<V>>>>,
    key: &'a K,
    flight: &'a Arc<Flight<V>>,
    value: Option<V>,
}

impl<K: Eq + Hash, V> Drop for Lead<'_, K, V> {
    fn drop(&mut self) {
        {
            let mut flights = lock(self.flights);
            if flights.get(self.key).is_some_and(|current| Arc::ptr_eq(current, self.flight)) {
                flights.remove(self.key);
            }
        }
        let next = match self.value.take() {
            Some(value) => FlightState::Done(value),
            None => FlightState::Abandoned,
        };
        let previous = std::mem::replace(&mut *lock(&self.flight.state), next);
        // Woken outside the lock: a waker may poll its task right here.
        if let FlightState::Running(wakers) = previous {
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

struct Wait<'a, V> {
    flight: &'a Flight<V>,
}

impl<V: Clone> Future for Wait<'_, V> {
    type Output = Option<V>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<V>> {
        let mut state = lock(&self.flight.state);
        match &mut *state {
            FlightState::Done(value) => Poll::Ready(Some(value.clone())),
            FlightState::Abandoned => Poll::Ready(None),
            FlightState::Running(wakers) => {
                if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::SingleFlight;

    /// A gate the test opens by hand: pending until `open` is set.
    struct Gate<'a>(&'a Cell<bool>);

    impl Future for Gate<'_> {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            if self.0.get() { Poll::Ready(()) } else { Poll::Pending }
        }
    }

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn concurrent_calls_share_one_run_and_later_calls_start_another() {
        let flights = SingleFlight::<&str, u32>::new();
        let runs = Cell::new(0);
        let open = Cell::new(false);
        let work = || async {
            runs.set(runs.get() + 1);
            Gate(&open).await;
            runs.get() * 10
        };
        let woken = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut leader = pin!(flights.run("token", work));
        let mut follower = pin!(flights.run("token", work));
        let mut other_key = pin!(flights.run("other", work));
        assert!(leader.as_mut().poll(&mut cx).is_pending());
        assert!(follower.as_mut().poll(&mut cx).is_pending());
        assert!(other_key.as_mut().poll(&mut cx).is_pending());
        assert_eq!(runs.get(), 2, "one run per key");
        assert_eq!(flights.in_flight(), 2);
        open.set(true);
        assert_eq!(leader.as_mut().poll(&mut cx), Poll::Ready(20));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the waiting follower was woken once");
        assert_eq!(follower.as_mut().poll(&mut cx), Poll::Ready(20), "the follower gets the leader's value");
        assert_eq!(other_key.as_mut().poll(&mut cx), Poll::Ready(20));
        assert_eq!(flights.in_flight(), 0);
        let again = pin!(flights.run("token", work));
        assert_eq!(again.poll(&mut cx), Poll::Ready(30), "nothing is cached after a run ends");
    }

    #[test]
    fn a_follower_takes_over_when_the_leader_is_dropped() {
        let flights = SingleFlight::<u8, &str>::new();
        let runs = Cell::new(0);
        let open = Cell::new(false);
        let work = || async {
            runs.set(runs.get() + 1);
            Gate(&open).await;
            "done"
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut follower = Box::pin(flights.run(1, work));
        {
            let mut leader = Box::pin(flights.run(1, work));
            assert!(leader.as_mut().poll(&mut cx).is_pending());
            assert!(follower.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(flights.in_flight(), 0, "a dropped leader leaves no flight behind");
        assert!(follower.as_mut().poll(&mut cx).is_pending(), "the follower now leads a run of its own");
        assert_eq!(runs.get(), 2);
        open.set(true);
        assert_eq!(follower.as_mut().poll(&mut cx), Poll::Ready("done"));
    }
}
