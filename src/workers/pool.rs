//! A fixed pool of named OS threads fed by one bounded queue.
//!
//! Each thread may own a piece of state built on that thread at start (a model session:
//! ort's `Session::run` takes `&mut self`, so sessions are per thread, never shared);
//! jobs get `&mut` access to their thread's state. A plain pool has state `()`.
//!
//! Submitting never blocks: a full queue is an explicit `Overloaded` that the caller
//! reports. Each job holds an in-flight gauge guard and its conversation's cancel token;
//! a cancelled job is dropped unrun (and counted), and a panicking job is caught so the
//! thread lives on and the caller sees `JobError::Panicked`. Dropping the pool closes the
//! queue and joins every thread: no thread outlives its pool.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::cancel::CancelToken;
use super::denormals::flush_denormals;
use super::queue::{JobQueue, Priority, PushError, Skip};
use crate::metrics::{GaugeGuard, Metrics};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the {pool} pool is overloaded")]
    Overloaded { pool: &'static str },
    #[error("the job's conversation ended before it ran")]
    Cancelled,
    #[error("the job panicked: {0}")]
    Panicked(String),
    #[error("model inference failed: {0}")]
    Model(String),
    #[error("the {pool} pool has shut down")]
    PoolClosed { pool: &'static str },
}

/// The body of a queued job: given the worker's state to run, or `None` to answer it
/// unrun.
type TaskBody<S> = dyn FnOnce(Option<&mut S>) + Send + 'static;

struct Task<S>(Box<TaskBody<S>>);

impl<S> Skip for Task<S> {
    fn skip(self) {
        (self.0)(None)
    }
}

/// Builds one thread's state, on that thread.
pub type StateInit<S> = Arc<dyn Fn() -> Result<S, String> + Send + Sync>;

/// A pool's threads: those that take any job, in queue order, and those that take only
/// [`Priority::Urgent`] jobs. An urgent-only thread keeps what a listener waits for
/// from queueing behind work that is merely due (a reply's later speech), without
/// adding threads that compete for the cores with everything else: it sleeps unless
/// urgent work is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lanes {
    pub any: usize,
    pub urgent_only: usize,
}

impl From<usize> for Lanes {
    fn from(any: usize) -> Self {
        Lanes {
            any,
            urgent_only: 0,
        }
    }
}

impl Lanes {
    pub fn total(self) -> usize {
        self.any + self.urgent_only
    }
}

pub struct WorkerPool<S: 'static = ()> {
    name: &'static str,
    queue: Arc<JobQueue<Task<S>>>,
    threads: Vec<JoinHandle<()>>,
    /// Threads that take any job (the rest take only urgent ones).
    any_job_threads: usize,
    metrics: Arc<Metrics>,
    /// Jobs queued or running.
    pending: Arc<AtomicUsize>,
}

impl WorkerPool<()> {
    pub fn new(
        name: &'static str,
        threads: usize,
        queue_depth: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let init: StateInit<()> = Arc::new(|| Ok(()));
        Self::with_state(name, threads.into(), queue_depth, metrics, init, |_| {})
    }
}

impl<S: 'static> WorkerPool<S> {
    /// A pool whose threads each build their state with `init`; `on_ready(Ok|Err)` is
    /// called on each thread once its state is built (or failed to build, in which case
    /// the thread exits and the pool has one thread fewer).
    pub fn with_state(
        name: &'static str,
        threads: Lanes,
        queue_depth: usize,
        metrics: Arc<Metrics>,
        init: StateInit<S>,
        on_ready: impl Fn(Result<(), String>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let queue = JobQueue::new(queue_depth, metrics.jobs_skipped.clone());
        let on_ready = Arc::new(on_ready);
        let any_job_threads = threads.any;
        let threads = (0..threads.total())
            .map(|i| {
                let jobs = Arc::clone(&queue);
                let init = Arc::clone(&init);
                let on_ready = Arc::clone(&on_ready);
                let urgent_only = i >= threads.any;
                let thread_name = if urgent_only {
                    format!("hearken-{name}-u{}", i - threads.any)
                } else {
                    format!("hearken-{name}-{i}")
                };
                std::thread::Builder::new()
                    .name(thread_name)
                    .spawn(move || match init() {
                        Ok(mut state) => {
                            flush_denormals();
                            on_ready(Ok(()));
                            run_worker(&jobs, &mut state, urgent_only);
                        }
                        Err(error) => {
                            tracing::error!(pool = name, %error, "worker could not start");
                            on_ready(Err(error));
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(WorkerPool {
            name,
            queue,
            threads,
            any_job_threads,
            metrics,
            pending: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Queue `work` for `token`'s conversation; the answer arrives on the returned channel.
    ///
    /// `hold` is dropped last, after the answer was delivered (or dropped, if nobody
    /// listens any more) and the in-flight gauge fell: a supervisor waiting on it knows
    /// the job is completely gone.
    pub fn submit<T, F, H>(
        &self,
        token: &CancelToken,
        hold: H,
        work: F,
    ) -> Result<oneshot::Receiver<Result<T, JobError>>, JobError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> T + Send + 'static,
        H: Send + 'static,
    {
        self.submit_with(Priority::Normal, token, hold, work)
    }

    /// [`submit`](Self::submit) with a priority: urgent jobs go ahead of normal ones.
    pub fn submit_with<T, F, H>(
        &self,
        priority: Priority,
        token: &CancelToken,
        hold: H,
        work: F,
    ) -> Result<oneshot::Receiver<Result<T, JobError>>, JobError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> T + Send + 'static,
        H: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let inflight = GaugeGuard::new(self.metrics.inflight_jobs.clone());
        let metrics = Arc::clone(&self.metrics);
        let token_of_job = token;
        let token = token.clone();
        let pending = PendingGuard::new(&self.pending);
        let task = Task(Box::new(move |state: Option<&mut S>| {
            let outcome = match state {
                Some(state) if !token.is_cancelled() && !reply.is_closed() => {
                    catch_unwind(AssertUnwindSafe(|| work(state))).map_err(|panic| {
                        let message = panic_message(panic.as_ref());
                        tracing::error!(%message, "worker job panicked");
                        JobError::Panicked(message)
                    })
                }
                Some(_) => {
                    metrics.jobs_skipped.inc();
                    Err(JobError::Cancelled)
                }
                // Taken out of the queue by its conversation's end (counted there).
                None => Err(JobError::Cancelled),
            };
            let _ = reply.send(outcome);
            drop(pending);
            drop(inflight);
            drop(hold);
        }));
        self.push(token_of_job, priority, task)?;
        Ok(answer)
    }

    /// Queue `work` with no answer channel: it is given `Some(state)` to run, or `None`
    /// when its conversation ended before it ran (it then only releases what it holds).
    /// The work carries its own in-flight gauge guard and hold, released in the order
    /// it chooses (a job handed on to another stage keeps them). A panic is caught and
    /// logged; work that must report one catches it itself.
    pub fn run_detached<F>(
        &self,
        priority: Priority,
        token: &CancelToken,
        work: F,
    ) -> Result<(), JobError>
    where
        F: FnOnce(Option<&mut S>) + Send + 'static,
    {
        let pending = PendingGuard::new(&self.pending);
        let task = Task(Box::new(move |state: Option<&mut S>| {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| work(state))) {
                let message = panic_message(panic.as_ref());
                tracing::error!(%message, "worker job panicked");
            }
            drop(pending);
        }));
        self.push(token, priority, task)
    }

    /// Queues a task; a full or closed queue is the caller's error (and a full one
    /// is counted as overload).
    fn push(&self, token: &CancelToken, priority: Priority, task: Task<S>) -> Result<(), JobError> {
        self.queue
            .push_with(token, priority, task)
            .map_err(|e| match e {
                PushError::Full(_) => {
                    self.metrics.overloaded.inc();
                    JobError::Overloaded { pool: self.name }
                }
                PushError::Closed(_) => JobError::PoolClosed { pool: self.name },
            })
    }

    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Whether a thread that takes any job is free: optional work (speculation) only
    /// goes to an idle pool.
    pub fn has_idle_thread(&self) -> bool {
        self.pending.load(Ordering::Acquire) < self.any_job_threads
    }

    /// A check, usable from inside a job, of whether some job waits for a thread:
    /// optional work that is running stops early so the waiting one starts.
    pub fn waiting_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let (pending, threads) = (Arc::clone(&self.pending), self.threads.len());
        move || pending.load(Ordering::Acquire) > threads
    }
}

/// Counts one job as pending from submission until it is answered or dropped unrun.
struct PendingGuard(Arc<AtomicUsize>);

impl PendingGuard {
    fn new(pending: &Arc<AtomicUsize>) -> Self {
        pending.fetch_add(1, Ordering::AcqRel);
        PendingGuard(Arc::clone(pending))
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn run_worker<S: 'static>(jobs: &JobQueue<Task<S>>, state: &mut S, urgent_only: bool) {
    let next = || {
        if urgent_only {
            jobs.pop_urgent()
        } else {
            jobs.pop()
        }
    };
    while let Some(task) = next() {
        (task.0)(Some(state));
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl<S: 'static> Drop for WorkerPool<S> {
    fn drop(&mut self) {
        self.queue.close();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(depth: usize) -> (WorkerPool, Arc<Metrics>) {
        let metrics = Metrics::new();
        let pool = WorkerPool::new("test", 1, depth, Arc::clone(&metrics)).unwrap();
        (pool, metrics)
    }

    #[test]
    fn runs_jobs_and_returns_results() {
        let (pool, metrics) = pool(4);
        let answer = pool.submit(&CancelToken::new(), (), |_| 6 * 7).unwrap();
        assert_eq!(answer.blocking_recv().unwrap(), Ok(42));
        drop(pool);
        assert_eq!(metrics.inflight_jobs.get(), 0);
    }

    /// With the one any-job thread busy, an urgent job runs at once on the urgent-only
    /// thread; a normal one waits for the busy thread.
    #[test]
    fn an_urgent_lane_runs_urgent_jobs_beside_a_busy_thread() {
        let metrics = Metrics::new();
        let lanes = Lanes {
            any: 1,
            urgent_only: 1,
        };
        let init: StateInit<()> = Arc::new(|| Ok(()));
        let pool =
            WorkerPool::with_state("test", lanes, 8, Arc::clone(&metrics), init, |_| {}).unwrap();
        assert_eq!(pool.threads(), 2);
        let token = CancelToken::new();
        let gate = Arc::new(std::sync::Barrier::new(2));
        let hold = Arc::clone(&gate);
        let (started_tx, started) = std::sync::mpsc::channel();
        let busy = pool
            .submit(&token, (), move |_| {
                let _ = started_tx.send(());
                hold.wait();
            })
            .unwrap();
        started.recv().unwrap();
        let mut urgent = pool
            .submit_with(Priority::Urgent, &token, (), |_| "urgent")
            .unwrap();
        // Bounded: without the lane the answer would never come while `busy` holds.
        let mut answer = None;
        for _ in 0..1000 {
            if let Ok(result) = urgent.try_recv() {
                answer = Some(result);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let normal = pool.submit(&token, (), |_| "normal").unwrap();
        gate.wait();
        assert_eq!(
            answer,
            Some(Ok("urgent")),
            "the urgent job ran beside the busy one"
        );
        assert!(busy.blocking_recv().unwrap().is_ok());
        assert_eq!(normal.blocking_recv().unwrap(), Ok("normal"));
        drop(pool);
        assert_eq!(metrics.inflight_jobs.get(), 0);
    }

    #[test]
    fn cancelled_jobs_are_skipped_and_counted() {
        let (pool, metrics) = pool(4);
        let token = CancelToken::new();
        let gate = Arc::new(std::sync::Barrier::new(2));
        let hold = Arc::clone(&gate);
        let (started_tx, started) = std::sync::mpsc::channel();
        let first = pool
            .submit(&CancelToken::new(), (), move |_| {
                let _ = started_tx.send(());
                hold.wait();
            })
            .unwrap();
        started.recv().unwrap(); // the only worker is now busy
        let second = pool.submit(&token, (), |_| "should not run").unwrap();
        token.cancel();
        gate.wait();
        assert!(first.blocking_recv().unwrap().is_ok());
        assert_eq!(second.blocking_recv().unwrap(), Err(JobError::Cancelled));
        assert_eq!(metrics.jobs_skipped.get(), 1);
    }

    #[test]
    fn full_queue_is_overloaded_not_blocking() {
        let (pool, metrics) = pool(1);
        let token = CancelToken::new();
        let gate = Arc::new(std::sync::Barrier::new(2));
        let hold = Arc::clone(&gate);
        let (started_tx, started) = std::sync::mpsc::channel();
        let _running = pool
            .submit(&token, (), move |_| {
                let _ = started_tx.send(());
                hold.wait();
            })
            .unwrap();
        started.recv().unwrap();
        // One job fits in the queue; the next is refused.
        let mut refused = None;
        let mut queued = Vec::new();
        for _ in 0..3 {
            match pool.submit(&token, (), |_| ()) {
                Ok(rx) => queued.push(rx),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        assert_eq!(refused, Some(JobError::Overloaded { pool: "test" }));
        assert_eq!(metrics.overloaded.get(), 1);
        gate.wait();
    }

    #[test]
    fn a_panicking_job_leaves_the_worker_alive() {
        let (pool, _) = pool(4);
        let token = CancelToken::new();
        let bad = pool.submit(&token, (), |_| panic!("boom")).unwrap();
        assert!(matches!(bad.blocking_recv().unwrap(), Err(JobError::Panicked(m)) if m == "boom"));
        let good = pool.submit(&token, (), |_| 1).unwrap();
        assert_eq!(good.blocking_recv().unwrap(), Ok(1));
    }
}
