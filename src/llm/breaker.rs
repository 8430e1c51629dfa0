//! A circuit breaker for the remote LLM backend: after `threshold` consecutive failures
//! it opens and refuses requests at once (sessions get `llm_unavailable` instead of a
//! hung reply); after `cooldown` it lets one probe through (half-open), which closes it
//! on success or re-opens it on failure.
//!
//! Every request that goes out holds an [`Attempt`]. Its outcome is recorded by
//! consuming it ([`Attempt::succeeded`], [`Attempt::failed`]); an attempt dropped
//! without an outcome (the reply was cancelled by a barge-in, `response.cancel` or a
//! disconnect) records nothing, but if it was the half-open probe its `Drop` gives the
//! probe slot back. Before, a cancelled probe left the slot taken and the circuit
//! refused every later reply for good.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

struct Inner {
    failures: u32,
    opened_at: Option<Instant>,
    /// A half-open probe is out; only its [`Attempt`] clears this.
    probing: bool,
}

pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Arc<Self> {
        Arc::new(CircuitBreaker {
            threshold,
            cooldown,
            inner: Mutex::new(Inner {
                failures: 0,
                opened_at: None,
                probing: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.opened_at {
            None => BreakerState::Closed,
            Some(at) if at.elapsed() >= self.cooldown => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// May a request go out now? In half-open state only one probe at a time may.
    /// The returned attempt must travel with the request until its outcome is known.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Attempt> {
        let mut inner = self.lock();
        let probe = match inner.opened_at {
            None => false,
            Some(at) if at.elapsed() >= self.cooldown && !inner.probing => {
                inner.probing = true;
                true
            }
            Some(_) => return None,
        };
        Some(Attempt {
            breaker: Arc::clone(self),
            probe,
        })
    }
}

/// One request let through by the breaker. Consume it with its outcome; dropping it
/// unresolved releases a probe slot and records nothing.
pub struct Attempt {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
}

impl Attempt {
    /// Whether this attempt is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn succeeded(mut self) {
        let mut inner = self.breaker.lock();
        inner.failures = 0;
        inner.opened_at = None;
        if self.probe {
            inner.probing = false;
        }
        self.probe = false;
    }

    pub fn failed(mut self) {
        let mut inner = self.breaker.lock();
        inner.failures += 1;
        if self.probe || inner.failures >= self.breaker.threshold {
            inner.opened_at = Some(Instant::now());
        }
        if self.probe {
            inner.probing = false;
        }
        self.probe = false;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.probe {
            // Cancelled before it told us anything: the circuit stays half-open and
            // the next request may probe.
            self.breaker.lock().probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_recovers_through_a_probe() {
        let breaker = CircuitBreaker::new(2, Duration::from_millis(30));
        breaker.try_acquire().expect("closed").failed();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().expect("closed").failed();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_acquire().is_none());

        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.try_acquire().expect("one probe");
        assert!(probe.is_probe());
        assert!(breaker.try_acquire().is_none(), "only one probe at a time");
        probe.failed();
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "a failed probe re-opens"
        );

        std::thread::sleep(Duration::from_millis(40));
        breaker.try_acquire().expect("probe").succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_dropped_probe_releases_the_half_open_slot() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(10));
        breaker.try_acquire().expect("closed").failed();
        std::thread::sleep(Duration::from_millis(20));
        let probe = breaker.try_acquire().expect("probe");
        assert!(breaker.try_acquire().is_none());
        drop(probe); // cancelled mid-reply
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let again = breaker.try_acquire().expect("the slot is free again");
        assert!(again.is_probe());
        again.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_request_from_before_the_opening_does_not_free_the_probe_slot() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(10));
        let old = breaker.try_acquire().expect("closed");
        breaker.try_acquire().expect("closed").failed();
        std::thread::sleep(Duration::from_millis(20));
        let probe = breaker.try_acquire().expect("probe");
        old.failed(); // re-opens, but must not release the probe's slot
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.try_acquire().is_none(), "the probe still holds it");
        drop(probe);
        assert!(breaker.try_acquire().is_some());
    }
}
