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
    /// Tokens cancelled with this one ([`CancelToken::child`]).
    children: Mutex<Vec<Weak<Inner>>>,
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

    /// Set the flag, then empty every queue of this token's waiting jobs, then cancel
    /// its children.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        let queues = std::mem::take(&mut *self.queues());
        for queue in queues.iter().filter_map(Weak::upgrade) {
            queue.purge_cancelled();
        }
        let children = std::mem::take(&mut *lock(&self.inner.children));
        for inner in children.iter().filter_map(Weak::upgrade) {
            CancelToken { inner }.cancel();
        }
    }

    /// A token cancelled with this one and also on its own: for part of a
    /// conversation's work that can be dropped early (the synthesis of a reply cut off
    /// by a barge-in) but never outlives the conversation.
    pub fn child(&self) -> CancelToken {
        let child = CancelToken::new();
        let mut children = lock(&self.inner.children);
        // Checked under the lock `cancel` takes after setting the flag: a child is
        // either seen by `cancel` or created cancelled.
        if self.is_cancelled() {
            drop(children);
            child.cancel();
            return child;
        }
        children.retain(|known| known.strong_count() > 0);
        children.push(Arc::downgrade(&child.inner));
        child
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
        lock(&self.inner.queues)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_cancelled_with_its_parent_but_not_the_other_way() {
        let parent = CancelToken::new();
        let (first, second) = (parent.child(), parent.child());
        first.cancel();
        assert!(first.is_cancelled());
        assert!(!parent.is_cancelled() && !second.is_cancelled());
        let grandchild = second.child();
        parent.cancel();
        assert!(second.is_cancelled() && grandchild.is_cancelled());
    }

    #[test]
    fn a_child_of_a_cancelled_token_starts_cancelled() {
        let parent = CancelToken::new();
        parent.cancel();
        assert!(parent.child().is_cancelled());
    }

    #[test]
    fn dropped_children_are_forgotten() {
        let parent = CancelToken::new();
        for _ in 0..100 {
            drop(parent.child());
        }
        let _kept = parent.child();
        assert_eq!(lock(&parent.inner.children).len(), 1);
    }
}
