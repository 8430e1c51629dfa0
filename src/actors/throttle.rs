//! Rate limits: [`NoticeThrottle`] tells a struggling session about repeated trouble
//! (e.g. `overloaded`) once a second, not once per dropped frame; [`TokenBucket`] is a
//! session's flood control over what a client can make the server do and say.

use std::time::{Duration, Instant};

/// At most one notice per this interval.
const NOTICE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct NoticeThrottle {
    last: Option<Instant>,
}

impl NoticeThrottle {
    /// True when a notice may go out now (and records that it did).
    pub fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|at| at.elapsed() >= NOTICE_INTERVAL);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }
}

/// A token bucket: holds up to `burst` tokens and refills at `per_s` tokens a second.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_s: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: f64, per_s: f64) -> Self {
        TokenBucket {
            tokens: burst,
            burst,
            per_s,
            refilled: Instant::now(),
        }
    }

    /// Take one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_many(1.0)
    }

    /// Take `amount` tokens if there are that many; otherwise take none.
    pub fn take_many(&mut self, amount: f64) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_s;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

/// How far ahead of the wall clock a client's audio may run: a bucket of milliseconds
/// of audio that refills at `max_audio_speed` ms per ms. Audio costs the models the
/// same whoever sends it, so a client sending faster than it could speak would take
/// other sessions' share; within the burst, catching up after a stall or sending a
/// short recording at once still works.
#[derive(Debug)]
pub struct AudioBudget {
    bucket: TokenBucket,
}

impl AudioBudget {
    pub fn new(max_audio_speed: f64, burst_ms: u32) -> Self {
        AudioBudget {
            bucket: TokenBucket::new(f64::from(burst_ms), 1000.0 * max_audio_speed),
        }
    }

    /// Admit `audio_ms` of audio, or refuse it whole (nothing is spent then).
    pub fn admit(&mut self, audio_ms: f64) -> bool {
        self.bucket.take_many(audio_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills() {
        // One token per thousand seconds: nothing refills while the test runs.
        let mut bucket = TokenBucket::new(3.0, 0.001);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take(), "burst spent");
        bucket.per_s = 1000.0;
        bucket.refilled = Instant::now() - Duration::from_millis(10);
        assert!(bucket.take(), "ten ms at 1000/s earned tokens");
    }

    #[test]
    fn audio_past_the_burst_is_refused_whole_until_the_clock_catches_up() {
        let mut budget = AudioBudget::new(1.0, 1000);
        assert!(budget.admit(600.0) && budget.admit(380.0));
        assert!(
            !budget.admit(60.0),
            "about 20 ms left, a 60 ms frame does not fit"
        );
        assert!(budget.admit(10.0), "a refused frame spent nothing");
        budget.bucket.refilled = Instant::now() - Duration::from_millis(100);
        assert!(
            budget.admit(60.0),
            "100 ms of wall clock earned 100 ms of audio"
        );
    }

    #[test]
    fn first_notice_passes_then_repeats_are_held() {
        let mut throttle = NoticeThrottle::default();
        assert!(throttle.due());
        assert!(!throttle.due());
    }
}
