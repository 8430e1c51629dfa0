//! Rate-limits repeated client notices (e.g. `overloaded`) so a struggling session is
//! told once a second, not once per dropped frame.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_notice_passes_then_repeats_are_held() {
        let mut throttle = NoticeThrottle::default();
        assert!(throttle.due());
        assert!(!throttle.due());
    }
}
