//! The bounded job queue under every worker pool.
//!
//! Each job is queued with its conversation's [`CancelToken`]. When that token is
//! cancelled, the conversation's waiting jobs are taken out at once and answered as
//! skipped, on the cancelling thread: a conversation that ends while its jobs wait
//! behind other conversations' work is torn down in microseconds instead of when a
//! worker reaches them (measured before: one second and more with ten busy sessions).
//!
//! Three classes: work the listener is waiting for right now (the current turn's
//! transcript, a reply's first clause) is [`Priority::Urgent`] and goes first; work due
//! at a known instant ([`Priority::By`]) comes next, earliest deadline first; then
//! [`Priority::Normal`] work (the rest of a reply, guidance decodes). First come first
//! served within `Urgent` and `Normal`, and among equal deadlines. Speech synthesis
//! queues a reply's later pieces by deadline: each is due when the audio before it
//! runs dry.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use prometheus::IntCounter;

use super::cancel::{CancelToken, Purge};

/// A queued job that can be answered without running (its owner went away).
pub(crate) trait Skip: Send {
    fn skip(self);
}

/// Where a job joins the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// The listener waits for it now: ahead of every other job.
    Urgent,
    /// Due at this instant: after urgent jobs, earliest first, before normal ones.
    By(Instant),
    #[default]
    Normal,
}

impl Priority {
    /// Queue order: lower goes first.
    fn rank(self) -> (u8, Option<Instant>) {
        match self {
            Priority::Urgent => (0, None),
            Priority::By(due) => (1, Some(due)),
            Priority::Normal => (2, None),
        }
    }
}

pub(crate) enum PushError<T> {
    Full(T),
    Closed(T),
}

struct Queued<T> {
    owner: CancelToken,
    priority: Priority,
    job: T,
}

struct State<T> {
    /// In queue order (see [`Priority::rank`]).
    jobs: VecDeque<Queued<T>>,
    closed: bool,
}

impl<T> State<T> {
    fn pop(&mut self) -> Option<T> {
        Some(self.jobs.pop_front()?.job)
    }

    /// Behind every job that goes first or ties with it.
    fn insert(&mut self, queued: Queued<T>) {
        let rank = queued.priority.rank();
        let at = self
            .jobs
            .iter()
            .rposition(|q| q.priority.rank() <= rank)
            .map_or(0, |i| i + 1);
        self.jobs.insert(at, queued);
    }
}

pub(crate) struct JobQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    /// Signalled for urgent jobs only: what urgent-only workers wait on.
    urgent: Condvar,
    capacity: usize,
    /// Counts jobs answered without running.
    skipped: IntCounter,
    /// Itself, for the tokens' purge lists.
    this: Weak<JobQueue<T>>,
}

impl<T: Skip + 'static> JobQueue<T> {
    pub fn new(capacity: usize, skipped: IntCounter) -> Arc<Self> {
        Arc::new_cyclic(|this| JobQueue {
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(capacity.min(1024)),
                closed: false,
            }),
            ready: Condvar::new(),
            urgent: Condvar::new(),
            capacity,
            skipped,
            this: this.clone(),
        })
    }

    pub fn push(&self, owner: &CancelToken, job: T) -> Result<(), PushError<T>> {
        self.push_with(owner, Priority::Normal, job)
    }

    pub fn push_with(
        &self,
        owner: &CancelToken,
        priority: Priority,
        job: T,
    ) -> Result<(), PushError<T>> {
        let this: Weak<dyn Purge> = self.this.clone();
        owner.watch(this);
        {
            let mut state = self.lock();
            if state.closed {
                return Err(PushError::Closed(job));
            }
            if state.jobs.len() >= self.capacity {
                return Err(PushError::Full(job));
            }
            let queued = Queued {
                owner: owner.clone(),
                priority,
                job,
            };
            state.insert(queued);
        }
        self.ready.notify_one();
        if priority == Priority::Urgent {
            self.urgent.notify_one();
        }
        // Cancelled between `watch` and the push: `cancel` may have purged already.
        if owner.is_cancelled() {
            self.purge_cancelled();
        }
        Ok(())
    }

    /// The next job; waits for one. `None` once closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.pop() {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next urgent job; waits for one (other jobs are left to other workers).
    /// `None` once closed: the workers that take every job drain the rest.
    pub fn pop_urgent(&self) -> Option<T> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if state
                .jobs
                .front()
                .is_some_and(|q| q.priority == Priority::Urgent)
            {
                return state.pop();
            }
            state = self
                .urgent
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// The next job if one is waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.lock().pop()
    }

    /// No more jobs; workers drain what is queued and then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.urgent.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Skip + 'static> Purge for JobQueue<T> {
    fn purge_cancelled(&self) {
        let gone: Vec<T> = {
            let mut state = self.lock();
            let (gone, kept) = std::mem::take(&mut state.jobs)
                .into_iter()
                .partition::<Vec<_>, _>(|queued| queued.owner.is_cancelled());
            state.jobs = kept.into();
            gone.into_iter().map(|queued| queued.job).collect()
        };
        // Answered outside the lock: answering drops holds, which may wake actors.
        for job in gone {
            self.skipped.inc();
            job.skip();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Job(Arc<AtomicUsize>);

    impl Skip for Job {
        fn skip(self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("skipped", "skipped").unwrap()
    }

    #[test]
    fn cancelling_takes_only_that_owners_waiting_jobs_out_at_once() {
        let queue = JobQueue::new(8, counter());
        let skipped = Arc::new(AtomicUsize::new(0));
        let (leaving, staying) = (CancelToken::new(), CancelToken::new());
        for owner in [&staying, &leaving, &staying, &leaving] {
            assert!(queue.push(owner, Job(Arc::clone(&skipped))).is_ok());
        }
        leaving.cancel();
        assert_eq!(skipped.load(Ordering::SeqCst), 2);
        assert!(queue.try_pop().is_some());
        assert!(queue.try_pop().is_some());
        assert!(queue.try_pop().is_none());
        assert_eq!(queue.skipped.get(), 2);
    }

    #[test]
    fn an_urgent_only_worker_takes_urgent_jobs_and_leaves_the_rest() {
        let queue = JobQueue::new(8, counter());
        let owner = CancelToken::new();
        let waiting = Arc::new(AtomicUsize::new(0));
        let taker = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                let mut taken = 0;
                while queue.pop_urgent().is_some() {
                    taken += 1;
                }
                taken
            })
        };
        assert!(queue
            .push_with(&owner, Priority::Normal, Job(Arc::clone(&waiting)))
            .is_ok());
        assert!(queue
            .push_with(&owner, Priority::Urgent, Job(Arc::clone(&waiting)))
            .is_ok());
        // The urgent one is taken; the normal one stays for a worker that takes any job.
        for _ in 0..2000 {
            if queue.len() == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(queue.len(), 1);
        queue.close();
        assert_eq!(
            taker.join().unwrap(),
            1,
            "the urgent-only worker stops at close"
        );
        assert!(
            queue.try_pop().is_some(),
            "the normal job is still there to drain"
        );
    }

    #[test]
    fn urgent_jobs_go_first_in_arrival_order() {
        let queue = JobQueue::new(8, counter());
        let owner = CancelToken::new();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Named(usize, Arc<std::sync::Mutex<Vec<usize>>>);
        impl Skip for Named {
            fn skip(self) {}
        }
        let jobs = [
            (1, Priority::Normal),
            (2, Priority::Urgent),
            (3, Priority::Normal),
            (4, Priority::Urgent),
        ];
        for (n, priority) in jobs {
            assert!(queue
                .push_with(&owner, priority, Named(n, Arc::clone(&order)))
                .is_ok());
        }
        while let Some(Named(n, log)) = queue.try_pop() {
            log.lock().unwrap_or_else(PoisonError::into_inner).push(n);
        }
        let order = order.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(order, [2, 4, 1, 3]);
    }

    #[test]
    fn deadlines_go_between_urgent_and_normal_jobs_earliest_first() {
        let queue = JobQueue::new(8, counter());
        let owner = CancelToken::new();
        struct Named(usize);
        impl Skip for Named {
            fn skip(self) {}
        }
        let now = Instant::now();
        let at = |ms| Priority::By(now + std::time::Duration::from_millis(ms));
        let jobs = [
            (1, Priority::Normal),
            (2, at(300)),
            (3, Priority::Urgent),
            (4, at(100)),
            (5, at(300)),
            (6, Priority::Urgent),
            (7, at(200)),
        ];
        for (n, priority) in jobs {
            assert!(queue.push_with(&owner, priority, Named(n)).is_ok());
        }
        let mut order = Vec::new();
        while let Some(Named(n)) = queue.try_pop() {
            order.push(n);
        }
        assert_eq!(order, [3, 6, 4, 7, 2, 5, 1]);
    }

    #[test]
    fn purging_keeps_the_queue_order() {
        let queue = JobQueue::new(8, counter());
        let skipped = Arc::new(AtomicUsize::new(0));
        let (leaving, staying) = (CancelToken::new(), CancelToken::new());
        let push = |owner: &CancelToken, priority| {
            assert!(queue
                .push_with(owner, priority, Job(Arc::clone(&skipped)))
                .is_ok());
        };
        push(&leaving, Priority::Urgent);
        push(&staying, Priority::Urgent);
        push(&staying, Priority::Normal);
        leaving.cancel();
        push(&staying, Priority::Urgent);
        assert_eq!(
            queue
                .lock()
                .jobs
                .iter()
                .map(|q| q.priority)
                .collect::<Vec<_>>(),
            [Priority::Urgent, Priority::Urgent, Priority::Normal]
        );
    }

    #[test]
    fn a_full_queue_refuses_and_a_closed_one_drains_then_ends() {
        let queue = JobQueue::new(1, counter());
        let count = Arc::new(AtomicUsize::new(0));
        let owner = CancelToken::new();
        assert!(queue.push(&owner, Job(Arc::clone(&count))).is_ok());
        assert!(matches!(
            queue.push(&owner, Job(Arc::clone(&count))),
            Err(PushError::Full(_))
        ));
        queue.close();
        assert!(matches!(
            queue.push(&owner, Job(Arc::clone(&count))),
            Err(PushError::Closed(_))
        ));
        assert!(queue.pop().is_some());
        assert!(queue.pop().is_none());
    }

    #[test]
    fn a_job_pushed_for_a_cancelled_owner_is_skipped_at_once() {
        let queue = JobQueue::new(4, counter());
        let skipped = Arc::new(AtomicUsize::new(0));
        let owner = CancelToken::new();
        owner.cancel();
        assert!(queue.push(&owner, Job(Arc::clone(&skipped))).is_ok());
        assert_eq!(skipped.load(Ordering::SeqCst), 1);
        assert!(queue.try_pop().is_none());
    }
}
