//! A circuit breaker per store: while a store fails (its plugin reports it
//! unavailable, as for a 5xx or an unreachable host, or out of time, as for
//! its HTTP timeout) beyond a threshold, its calls fail
//! fast instead of each waiting out a timeout and holding a slot of the
//! store's bulkhead; after a pause one call goes through as a probe, and its
//! success closes the circuit again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use iapd_sdk_plugin::abi::status;

use super::CallError;

/// When a store's circuit opens and for how long, from
/// `stores.<id>.circuit_breaker`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Failures within one window that open the circuit (with the ratio);
    /// zero turns the breaker off.
    pub failures: u32,
    /// The share of the window's calls that must have failed, 0 to 1.
    pub failure_ratio: f64,
    /// How long calls are counted together.
    pub window: Duration,
    /// How long the circuit stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 20,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Calls go through and are counted.
    Closed { since: Instant, calls: u32, failures: u32 },
    /// Calls fail fast until `until`.
    Open { until: Instant, calls: u32, failures: u32 },
    /// One probe may go through; `probing` while it is out.
    HalfOpen { probing: bool },
}

/// One store's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    store: String,
    settings: BreakerSettings,
    phase: Mutex<Phase>,
}

/// What a call's outcome says about the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The store answered (whatever it said).
    Answered,
    /// The store is failing: unavailable, or out of time.
    Failed,
    /// Says nothing about the store (the call was refused or dropped).
    Neither,
}

impl Outcome {
    pub(crate) fn of(result: &Result<Vec<u8>, CallError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Answered,
            Err(CallError::Failed { status, .. })
                if matches!(*status, status::UNAVAILABLE | status::DEADLINE_EXCEEDED) =>
            {
                Outcome::Failed
            }
            Err(CallError::Failed { .. }) => Outcome::Answered,
            // The caller's deadline, which may be shorter than any store
            // answers in: the store's own timeouts come back as failures.
            Err(CallError::DeadlineExceeded) => Outcome::Neither,
            Err(
                CallError::Refused { .. }
                | CallError::Overloaded { .. }
                | CallError::CircuitOpen { .. }
                | CallError::RateLimited { .. },
            )
            | Err(CallError::Internal(_)) => Outcome::Neither,
        }
    }
}

/// A call let through; its outcome must be told with [`Breaker::record`].
/// A probe dropped untold (its caller went away) lets the next call probe.
#[derive(Debug)]
pub(crate) struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
    told: bool,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.told {
            self.breaker.settle(self.probe, Outcome::Neither);
        }
    }
}

impl Breaker {
    pub(crate) fn new(store: &str, settings: BreakerSettings) -> Breaker {
        Breaker {
            store: store.to_owned(),
            settings,
            phase: Mutex::new(Phase::Closed { since: Instant::now(), calls: 0, failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets a call through, or says how long until the store is tried again.
    pub(crate) fn pass(&self) -> Result<Pass<'_>, CallError> {
        if self.settings.failures == 0 {
            return Ok(Pass { breaker: self, probe: false, told: true });
        }
        let now = Instant::now();
        let mut phase = self.lock();
        let probe = match &*phase {
            Phase::Closed { .. } => false,
            Phase::Open { until, calls, failures } if now < *until => {
                return Err(CallError::CircuitOpen { retry_after: *until - now, failures: *failures, calls: *calls });
            }
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                *phase = Phase::HalfOpen { probing: true };
                true
            }
            Phase::HalfOpen { probing: true } => {
                // The probe's answer is due within its deadline.
                return Err(CallError::CircuitOpen { retry_after: Duration::from_secs(1), failures: 0, calls: 0 });
            }
        };
        Ok(Pass { breaker: self, probe, told: false })
    }

    /// Tells the breaker how a call it let through went.
    pub(crate) fn record(&self, mut pass: Pass<'_>, outcome: Outcome) {
        pass.told = true;
        self.settle(pass.probe, outcome);
    }

    fn settle(&self, probe: bool, outcome: Outcome) {
        if self.settings.failures == 0 {
            return;
        }
        let now = Instant::now();
        let mut phase = self.lock();
        match (&mut *phase, probe) {
            (Phase::HalfOpen { probing }, true) => match outcome {
                Outcome::Answered => {
                    tracing::info!(store = %self.store, "circuit closed: the probe call was answered");
                    *phase = Phase::Closed { since: now, calls: 0, failures: 0 };
                }
                Outcome::Failed => {
                    tracing::warn!(store = %self.store, open_ms = self.settings.open_for.as_millis() as u64,
                        "circuit stays open: the probe call failed");
                    *phase = Phase::Open { until: now + self.settings.open_for, calls: 1, failures: 1 };
                }
                Outcome::Neither => *probing = false,
            },
            (Phase::Closed { since, calls, failures }, false) => {
                if now.duration_since(*since) >= self.settings.window {
                    (*since, *calls, *failures) = (now, 0, 0);
                }
                match outcome {
                    Outcome::Neither => return,
                    Outcome::Answered => *calls += 1,
                    Outcome::Failed => {
                        *calls += 1;
                        *failures += 1;
                    }
                }
                let ratio = f64::from(*failures) / f64::from(*calls);
                if *failures >= self.settings.failures && ratio >= self.settings.failure_ratio {
                    let (calls, failures) = (*calls, *failures);
                    tracing::warn!(store = %self.store, failures, calls, open_ms = self.settings.open_for.as_millis() as u64,
                        "circuit opened: the store is failing; its calls fail fast until a probe is answered");
                    *phase = Phase::Open { until: now + self.settings.open_for, calls, failures };
                }
            }
            // Calls let through before the circuit opened, or answers after
            // another probe settled it: the store's state is known already.
            _ => {}
        }
    }

    /// Whether calls fail fast now (open, or waiting for a probe's answer).
    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.lock(), Phase::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> Breaker {
        Breaker::new(
            "test",
            BreakerSettings { failures: 3, failure_ratio: 0.5, window: Duration::from_secs(60), open_for },
        )
    }

    fn call(breaker: &Breaker, outcome: Outcome) -> bool {
        match breaker.pass() {
            Ok(pass) => {
                breaker.record(pass, outcome);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn opens_on_failures_above_the_ratio_and_a_probe_closes_it() {
        let breaker = breaker(Duration::from_millis(30));
        for _ in 0..4 {
            assert!(call(&breaker, Outcome::Answered));
        }
        for _ in 0..3 {
            assert!(call(&breaker, Outcome::Failed));
        }
        assert!(!breaker.is_open(), "3 of 7 failed: under half");
        assert!(call(&breaker, Outcome::Failed), "the fourth failure is let through");
        assert!(breaker.is_open(), "4 of 8 failed");
        assert!(!call(&breaker, Outcome::Answered), "fails fast while open");
        std::thread::sleep(Duration::from_millis(40));
        let probe = breaker.pass().expect("a probe after the pause");
        assert!(breaker.pass().is_err(), "one probe at a time");
        breaker.record(probe, Outcome::Failed);
        assert!(breaker.is_open() && breaker.pass().is_err(), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(40));
        assert!(call(&breaker, Outcome::Answered), "the probe");
        assert!(!breaker.is_open(), "its success closes the circuit");
        assert!(call(&breaker, Outcome::Failed), "counting starts again");
    }

    #[test]
    fn a_probe_dropped_untold_lets_the_next_call_probe() {
        let breaker = breaker(Duration::ZERO);
        for _ in 0..3 {
            call(&breaker, Outcome::Failed);
        }
        drop(breaker.pass().expect("probe"));
        assert!(breaker.pass().is_ok(), "the next call probes");
    }

    #[test]
    fn outcomes_that_say_nothing_of_the_store_are_not_counted() {
        let breaker = breaker(Duration::from_secs(60));
        for _ in 0..10 {
            call(&breaker, Outcome::Neither);
        }
        assert!(!breaker.is_open());
        let off = Breaker::new("test", BreakerSettings { failures: 0, ..BreakerSettings::default() });
        for _ in 0..100 {
            assert!(call(&off, Outcome::Failed));
        }
        assert!(!off.is_open(), "failures = 0 turns it off");
    }
}
