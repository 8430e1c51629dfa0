//! A per-conversation cancellation flag. The conversation cancels it when its teardown
//! starts (and when it is dropped), so every job it queued is skipped by the worker that
//! picks it up, and every cooperative loop (decoders, generators) stops at its next check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    cancelled: Arc<AtomicBool>,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// Cancels its token when dropped: held by the conversation so that even a panic that
/// unwinds through it cancels the conversation's queued work.
#[derive(Debug)]
pub struct CancelOnDrop(pub CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}
