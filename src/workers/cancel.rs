//! A per-conversation cancellation flag. The conversation cancels it when its teardown
//! starts (and when it is dropped). Cancelling takes every job of the conversation still
//! waiting in a worker queue out at once (see [`JobQueue`](super::queue::JobQueue)), so
//! a teardown never waits behind other conversations' work, and every cooperative loop
//! (decoders, generators) stops at its next check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// A queue that can drop the waiting jobs of cancelled owners.
pub(crate) trait Purge: Send + Sync {
    fn purge_cancelled(&self);
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Queues holding (or having held) jobs of this token, purged on cancel.
    queues: Mutex<Vec<Weak<dyn Purge>>>,
}

#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the flag, then empty every queue of this token's waiting jobs.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        let queues = std::mem::take(&mut *self.queues());
        for queue in queues.iter().filter_map(Weak::upgrade) {
            queue.purge_cancelled();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Remember `queue` so that cancelling purges it (once per queue).
    pub(crate) fn watch(&self, queue: Weak<dyn Purge>) {
        let mut queues = self.queues();
        if !queues.iter().any(|known| Weak::ptr_eq(known, &queue)) {
            queues.push(queue);
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn Purge>>> {
        self.inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
