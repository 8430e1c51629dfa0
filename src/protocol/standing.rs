//! A session's standing: whether its client has sent bad input lately.
//!
//! Recognition is the scarcest thing a voice server has (on two cores, about 40
//! speech-dense conversations). A client that keeps sending input the server must
//! refuse (unknown events, undecodable audio, odd-length PCM) is not behaving like a
//! user's app, so its speech waits behind the current turns of clients in good
//! standing and gets what capacity is left (docs/architecture.md, "Clients that
//! misbehave"). It is still transcribed: nothing is dropped for it, and standing comes
//! back [`GOOD_AGAIN_AFTER`] after the last bad input.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after its last bad input a session is back in good standing.
pub const GOOD_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// Shared by the session (which sees bad input) and the conversation's children (whose
/// work it ranks). Clones share one standing.
#[derive(Debug, Clone)]
pub struct Standing {
    since: Instant,
    /// Milliseconds after `since` of the last bad input, plus one (0: never).
    last_bad: Arc<AtomicU64>,
}

impl Default for Standing {
    fn default() -> Self {
        Standing {
            since: Instant::now(),
            last_bad: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Standing {
    /// The client sent input that was refused, at `now`.
    pub fn bad_input(&self, now: Instant) {
        let at = now.saturating_duration_since(self.since).as_millis();
        let at = u64::try_from(at).unwrap_or(u64::MAX - 1) + 1;
        self.last_bad.fetch_max(at, Ordering::Relaxed);
    }

    /// No bad input in the last [`GOOD_AGAIN_AFTER`] before `now`.
    pub fn is_good(&self, now: Instant) -> bool {
        match self.last_bad.load(Ordering::Relaxed) {
            0 => true,
            at => {
                let last = self.since + Duration::from_millis(at - 1);
                now.saturating_duration_since(last) >= GOOD_AGAIN_AFTER
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_session_is_in_good_standing() {
        assert!(Standing::default().is_good(Instant::now()));
    }

    #[test]
    fn bad_input_costs_standing_until_it_has_been_quiet_long_enough() {
        let standing = Standing::default();
        let seen_by_child = standing.clone();
        let at = Instant::now() + Duration::from_secs(5);
        standing.bad_input(at);
        assert!(!seen_by_child.is_good(at));
        assert!(!seen_by_child.is_good(at + GOOD_AGAIN_AFTER - Duration::from_millis(10)));
        assert!(seen_by_child.is_good(at + GOOD_AGAIN_AFTER));
        // A later bad input starts the wait again; an earlier one changes nothing.
        standing.bad_input(at + Duration::from_secs(20));
        standing.bad_input(at);
        assert!(!seen_by_child.is_good(at + GOOD_AGAIN_AFTER));
    }
}
