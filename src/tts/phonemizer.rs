//! A fixed-size pool of warm `espeak-ng` processes that turn text into IPA
//! phonemes (each one an `EspeakProcess` guard, see `espeak.rs`; the
//! gauge counts them). [`PhonemizerPool::phonemize`] blocks, so call it from
//! an inference worker thread: it checks out an idle process, waiting at most
//! the checkout timeout for one to come back, and a process that fails or
//! times out mid-request is killed (its answer may be half read) and a fresh
//! one started in its place. Dropping the pool kills and reaps them all.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use super::espeak::{input_lines, io_error, EspeakProcess};
use super::TtsError;

/// How the pool starts its processes and how long it waits for them.
#[derive(Debug, Clone)]
pub struct PhonemizerOptions {
    /// Program to run; `espeak-ng` from `$PATH` by default.
    pub program: String,
    /// Its arguments: quiet (no audio), IPA on stdout, US English voice.
    pub args: Vec<String>,
    /// Number of processes: one per inference worker thread is plenty
    /// (a sentence takes about 2 ms).
    pub size: usize,
    /// Longest wait for one request's answer before the process is replaced.
    pub request_timeout: Duration,
    /// Longest wait for an idle process before giving up.
    pub checkout_timeout: Duration,
    /// Longest wait for a new process to answer its first line (it loads its
    /// dictionary then: 30-70 ms warm, but seconds on a cold page cache while the
    /// server is reading its model files at start: 5 s once failed a fresh machine's
    /// first start).
    pub spawn_timeout: Duration,
}

impl Default for PhonemizerOptions {
    fn default() -> Self {
        Self {
            program: "espeak-ng".into(),
            args: ["-q", "--ipa", "-v", "en-us"].map(String::from).into(),
            size: 2,
            request_timeout: Duration::from_secs(2),
            checkout_timeout: Duration::from_secs(5),
            spawn_timeout: Duration::from_secs(30),
        }
    }
}

/// Idle processes and how many exist (idle or checked out).
struct PoolState {
    idle: Vec<EspeakProcess>,
    live: usize,
}

/// A fixed-size pool of warm `espeak-ng` processes, shared by `&self`.
pub struct PhonemizerPool {
    options: PhonemizerOptions,
    gauge: IntGauge,
    state: Mutex<PoolState>,
    returned: Condvar,
}

impl PhonemizerPool {
    /// Starts `size` (at least one) `espeak-ng` processes; `gauge` counts the
    /// live ones.
    pub fn new(size: usize, gauge: IntGauge) -> Result<Self, TtsError> {
        Self::with_options(
            PhonemizerOptions {
                size,
                ..PhonemizerOptions::default()
            },
            gauge,
        )
    }

    /// Starts a pool with explicit options. Fails if a process cannot start.
    pub fn with_options(mut options: PhonemizerOptions, gauge: IntGauge) -> Result<Self, TtsError> {
        options.size = options.size.max(1);
        let idle = (0..options.size)
            .map(|_| EspeakProcess::spawn(&options, &gauge))
            .collect::<Result<Vec<_>, _>>()?;
        let live = idle.len();
        Ok(Self {
            options,
            gauge,
            state: Mutex::new(PoolState { idle, live }),
            returned: Condvar::new(),
        })
    }

    /// IPA phonemes of `text`: espeak's output lines (one per clause it
    /// finds) joined by spaces, punctuation dropped. Blocks for a few ms.
    pub fn phonemize(&self, text: &str) -> Result<String, TtsError> {
        let lines = input_lines(text);
        if lines.is_empty() {
            return Ok(String::new());
        }
        let mut checkout = self.checkout()?;
        let process = checkout
            .process
            .as_mut()
            .ok_or_else(|| io_error("no process"))?;
        match process.request(&lines, self.options.request_timeout) {
            Ok(phonemes) => Ok(phonemes),
            Err(e) => {
                checkout.replace();
                Err(e)
            }
        }
    }

    /// Processes alive now (idle or in use).
    pub fn live(&self) -> usize {
        self.lock().live
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Poisoning carries no meaning: every update of the state is complete.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an idle process, starts one if a slot is free (after a failed
    /// replacement), or waits up to the checkout timeout for one to return.
    fn checkout(&self) -> Result<Checkout<'_>, TtsError> {
        let deadline = Instant::now() + self.options.checkout_timeout;
        let mut state = self.lock();
        loop {
            if let Some(process) = state.idle.pop() {
                return Ok(Checkout::new(self, process));
            }
            if state.live < self.options.size {
                state.live += 1;
                drop(state);
                return match EspeakProcess::spawn(&self.options, &self.gauge) {
                    Ok(process) => Ok(Checkout::new(self, process)),
                    Err(e) => {
                        self.lock().live -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TtsError::PoolExhausted {
                    size: self.options.size,
                    waited: self.options.checkout_timeout,
                });
            }
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A process taken from the pool; `Drop` gives it back and wakes a waiter.
struct Checkout<'a> {
    pool: &'a PhonemizerPool,
    process: Option<EspeakProcess>,
}

impl<'a> Checkout<'a> {
    fn new(pool: &'a PhonemizerPool, process: EspeakProcess) -> Self {
        Self {
            pool,
            process: Some(process),
        }
    }

    /// Kills the process (its output may be half read) and starts a fresh
    /// one in its place. If that fails the slot stays free and a later
    /// checkout starts it.
    fn replace(&mut self) {
        drop(self.process.take());
        match EspeakProcess::spawn(&self.pool.options, &self.pool.gauge) {
            Ok(fresh) => self.process = Some(fresh),
            Err(_) => self.pool.lock().live -= 1,
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let Some(process) = self.process.take() else {
            self.pool.returned.notify_one();
            return;
        };
        if thread::panicking() {
            // Unwinding mid-request: its answer may still be in the pipe.
            drop(process);
            self.pool.lock().live -= 1;
        } else {
            self.pool.lock().idle.push(process);
        }
        self.pool.returned.notify_one();
    }
}
