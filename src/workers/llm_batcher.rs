//! The LLM batcher: continuous batching of the embedded model across conversations.
//!
//! One thread holds the model and up to twice `max_batch` sequences (replies, tails and
//! read-aheads of any conversations). Every pass advances up to `max_batch` generating
//! replies by one token, those with the fewest tokens yet first (a reply further on is
//! already being spoken; a new one's listener waits for its first words), and reads one
//! chunk of prompt, all in a single forward pass
//! (`EmbeddedModel::step`): a new turn's prompt is read between everyone's tokens
//! instead of waiting for whole replies ahead of it, and the weights are streamed
//! once per pass, not once per reply. Jobs that arrive join at the next pass; a reply
//! that ends, is cancelled, or whose conversation ends leaves at once.
//!
//! Reading is shared out per pass in chunks (`PROMPT_CHUNK_TOKENS`), one per reply
//! waiting to start, up to `prompt_chunks` (so a burst of turns is read in a few wide
//! passes instead of one pass per turn, each paying for every generating reply's
//! token again): the newest turn's prompt first, then the tails that keep finished
//! replies' states for their next turn, then read-aheads, so guesswork never delays
//! a turn that is waiting. A reply whose actor has not taken its last events sits
//! passes out (backpressure), never blocking the others. A failed pass fails only
//! the replies in it; a panic is caught.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::{self, error::TrySendError};
use uuid::Uuid;

use super::cancel::CancelToken;
use super::denormals::flush_denormals;
use super::pool::{panic_message, JobError, StateInit};
use super::queue::{JobQueue, Priority, PushError, Skip};
use crate::llm::backend::{Completion, LlmEvent};
use crate::llm::embedded::PROMPT_CHUNK_TOKENS;
use crate::llm::{ChatMessage, EmbeddedModel, FinishReason, GenerationParams, Progress, Sequence};
use crate::metrics::{GaugeGuard, LlmRole, Metrics};

/// What a job asks of the model.
pub enum LlmWork {
    /// A reply to `messages`, streamed to `events`.
    Reply {
        messages: Vec<ChatMessage>,
        params: GenerationParams,
        events: mpsc::Sender<LlmEvent>,
    },
    /// The user's words so far, read into the conversation's kept state.
    ReadAhead {
        history: Vec<ChatMessage>,
        words: String,
    },
}

struct LlmJob {
    conversation: Uuid,
    work: LlmWork,
    /// Set when the caller drops its handle (a cancelled reply).
    stop: CancelToken,
    /// The conversation's token: its end stops the job too.
    owner: CancelToken,
    queued: Instant,
    inflight: GaugeGuard,
    /// Dropped last: a supervisor waiting on it knows the job is completely gone.
    hold: Box<dyn Any + Send>,
}

impl LlmJob {
    fn cancelled(&self) -> bool {
        self.stop.is_cancelled() || self.owner.is_cancelled()
    }
}

impl Skip for LlmJob {
    fn skip(self) {
        let LlmJob { inflight, hold, .. } = self;
        drop(inflight);
        drop(hold);
    }
}

/// What one pass of a batcher thread may hold.
#[derive(Clone, Copy, Debug)]
pub struct PassShape {
    /// Replies that take a token in one pass (`llm.max_batch`).
    pub rows: usize,
    /// Chunks of prompt read in one pass at most, one per reply waiting to start
    /// (`llm.prompt_chunks_per_pass`).
    pub prompt_chunks: usize,
}

/// Dropping it closes the queue and joins the threads.
pub struct LlmBatcher {
    queue: Arc<JobQueue<LlmJob>>,
    /// Replies admitted but still reading their prompts, over every thread's batch.
    starting: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    queue_depth: usize,
}

impl LlmBatcher {
    /// `threads` batcher threads, each with its own model (built by `init` on that
    /// thread) and its own batch; `on_ready` as for a worker pool.
    pub fn new(
        threads: usize,
        queue_depth: usize,
        shape: PassShape,
        metrics: Arc<Metrics>,
        init: StateInit<EmbeddedModel>,
        on_ready: impl Fn(Result<(), String>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let queue = JobQueue::new(queue_depth, metrics.jobs_skipped.clone());
        let starting = Arc::new(AtomicUsize::new(0));
        let on_ready = Arc::new(on_ready);
        let threads = (0..threads)
            .map(|i| {
                let (jobs, init, on_ready) =
                    (Arc::clone(&queue), Arc::clone(&init), Arc::clone(&on_ready));
                let metrics = Arc::clone(&metrics);
                let starting = Arc::clone(&starting);
                std::thread::Builder::new()
                    .name(format!("hearken-llm-{i}"))
                    .spawn(move || match init() {
                        Ok(mut model) => {
                            flush_denormals();
                            on_ready(Ok(()));
                            Batch::new(shape, starting).run(&mut model, &jobs, &metrics);
                        }
                        Err(error) => {
                            tracing::error!(%error, "LLM batcher could not load its model");
                            on_ready(Err(error));
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(LlmBatcher {
            queue,
            starting,
            threads,
            metrics,
            queue_depth,
        })
    }

    /// Queue work for `conversation`; `stop` (and the conversation's `owner` token)
    /// withdraw it, queued or running. `hold` is released once the job is gone.
    pub fn submit(
        &self,
        priority: Priority,
        conversation: Uuid,
        owner: &CancelToken,
        stop: CancelToken,
        hold: Box<dyn Any + Send>,
        work: LlmWork,
    ) -> Result<(), JobError> {
        let job = LlmJob {
            conversation,
            work,
            stop,
            owner: owner.clone(),
            queued: Instant::now(),
            inflight: GaugeGuard::new(self.metrics.inflight_jobs.clone()),
            hold,
        };
        self.queue
            .push_with(owner, priority, job)
            .map_err(|e| match e {
                PushError::Full(_) => {
                    self.metrics.overloaded.inc();
                    JobError::Overloaded { pool: "llm" }
                }
                PushError::Closed(_) => JobError::PoolClosed { pool: "llm" },
            })
    }

    /// Whether optional work (a read-ahead) is welcome: the queue is at most half full.
    pub fn has_room(&self) -> bool {
        self.queue.len() * 2 < self.queue_depth
    }

    /// Whether a reply waits to start: queued (replies go ahead of read-aheads, so any
    /// queued job means the batch is full), or in a batch still reading its prompt.
    pub fn replies_waiting(&self) -> bool {
        self.queue.len() > 0 || self.starting.load(Ordering::Relaxed) > 0
    }
}

impl Drop for LlmBatcher {
    fn drop(&mut self) {
        self.queue.close();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A job in the batch with its sequence.
struct Live {
    job: LlmJob,
    sequence: Sequence,
    /// Events the reply's actor has not taken yet (its channel was full).
    outbox: VecDeque<LlmEvent>,
    /// The reply's text is over (only its tail may still be read).
    answered: bool,
    /// When it joined the batch, and the passes it has stepped in since.
    admitted: Instant,
    passes: u32,
    first_piece_logged: bool,
}

impl Live {
    fn events(&self) -> Option<&mpsc::Sender<LlmEvent>> {
        match &self.job.work {
            LlmWork::Reply { events, .. } => Some(events),
            LlmWork::ReadAhead { .. } => None,
        }
    }

    /// Hand on what the actor has room for; false if the actor is gone.
    fn flush(&mut self) -> bool {
        let Some(events) = self.events().cloned() else {
            return true;
        };
        while let Some(event) = self.outbox.pop_front() {
            match events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Whether it stays: not cancelled (a reply whose text is over keeps reading its
    /// tail unless its conversation ended) and its actor still listening.
    fn keep(&mut self) -> bool {
        let cancelled = if self.answered {
            self.job.owner.is_cancelled()
        } else {
            self.job.cancelled()
        };
        !cancelled && (self.flush() || self.answered)
    }

    /// Order of reading within a pass: the newest turn's prompt, then tails, then
    /// read-aheads (generating replies read one token each, always).
    fn rank(&self) -> u8 {
        match (&self.job.work, self.answered) {
            _ if self.sequence.is_decoding() => 0,
            (LlmWork::Reply { .. }, false) => 1,
            (LlmWork::Reply { .. }, true) => 2,
            (LlmWork::ReadAhead { .. }, _) => 3,
        }
    }
}

/// How many sequences a batch holds per row of its passes: the rest read their prompts,
/// tails and read-aheads or wait their turn to generate, which costs no pass any time.
const HELD_PER_ROW: usize = 2;

struct Batch {
    live: Vec<Live>,
    /// Replies that take a token in one pass (`llm.max_batch`): what a pass costs.
    rows: usize,
    /// Prompt chunks one pass reads at most.
    prompt_chunks: usize,
    /// Sequences held (their attention states): what the batch costs in memory.
    held: usize,
    /// This batch's replies still reading their prompts, published for the others.
    starting: Arc<AtomicUsize>,
    published: usize,
}

impl Batch {
    fn new(shape: PassShape, starting: Arc<AtomicUsize>) -> Self {
        let rows = shape.rows.max(1);
        Batch {
            live: Vec::with_capacity(rows * HELD_PER_ROW),
            rows,
            prompt_chunks: shape.prompt_chunks.max(1),
            held: rows * HELD_PER_ROW,
            starting,
            published: 0,
        }
    }

    /// Publish how many of this batch's replies still read their prompts.
    fn publish_starting(&mut self) {
        let now = self
            .live
            .iter()
            .filter(|l| l.role_if_stepped() == LlmRole::Prompt)
            .count();
        if now != self.published {
            self.starting.fetch_add(now, Ordering::Relaxed);
            self.starting.fetch_sub(self.published, Ordering::Relaxed);
            self.published = now;
        }
    }

    fn run(&mut self, model: &mut EmbeddedModel, jobs: &JobQueue<LlmJob>, metrics: &Metrics) {
        loop {
            if self.live.is_empty() {
                self.publish_starting();
                let Some(job) = jobs.pop() else { return };
                self.admit(model, job, metrics);
            }
            while self.live.len() < self.held {
                let Some(job) = jobs.try_pop() else { break };
                self.admit(model, job, metrics);
            }
            self.live.retain_mut(Live::keep);
            self.publish_starting();
            if self.live.iter().all(|l| !l.outbox.is_empty()) {
                if !self.live.is_empty() {
                    // Every actor is behind: give them a moment rather than spin.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                continue;
            }
            self.pass(model, metrics);
        }
    }

    /// Start a job's sequence (from the kept state that covers the most of its prompt).
    fn admit(&mut self, model: &mut EmbeddedModel, job: LlmJob, metrics: &Metrics) {
        let stage = match job.work {
            LlmWork::Reply { .. } => "llm",
            LlmWork::ReadAhead { .. } => "llm_read_ahead",
        };
        metrics
            .batching
            .observe_queue_wait(stage, job.queued.elapsed());
        if job.cancelled() {
            metrics.jobs_skipped.inc();
            return job.skip();
        }
        let started = match &job.work {
            LlmWork::Reply {
                messages, params, ..
            } => model
                .begin_reply(Some(job.conversation), messages, params)
                .map(Some),
            LlmWork::ReadAhead { history, words } => {
                Ok(model.begin_read_ahead(job.conversation, history, words))
            }
        };
        match started {
            Ok(Some(sequence)) => self.live.push(Live {
                job,
                sequence,
                outbox: VecDeque::new(),
                answered: false,
                admitted: Instant::now(),
                passes: 0,
                first_piece_logged: false,
            }),
            Ok(None) => job.skip(), // nothing worth reading ahead
            Err(error) => {
                if let LlmWork::Reply { events, .. } = &job.work {
                    let _ = events.try_send(LlmEvent::Failed(error.to_string()));
                }
                job.skip();
            }
        }
    }

    /// One forward pass over every sequence whose actor keeps up, with at most `rows`
    /// replies taking a token: those with the fewest tokens yet, whose listeners wait
    /// for their first words, while replies further on (already speaking) sit it out.
    /// It reads a chunk of each reply waiting to start, up to `prompt_chunks`.
    fn pass(&mut self, model: &mut EmbeddedModel, metrics: &Metrics) {
        self.live
            .sort_by_key(|l| (l.rank(), l.sequence.tokens_generated()));
        let stepping = choose_stepping(
            self.live
                .iter()
                .map(|l| (l.outbox.is_empty(), l.sequence.is_decoding())),
            self.rows,
        );
        let waiting_to_start = self
            .live
            .iter()
            .zip(&stepping)
            .filter(|(l, stepping)| **stepping && l.role_if_stepped() == LlmRole::Prompt)
            .count();
        let read_budget = PROMPT_CHUNK_TOKENS * waiting_to_start.clamp(1, self.prompt_chunks);
        let kept_before = model.kv_cache_bytes();
        let before: Vec<(LlmRole, usize)> = self
            .live
            .iter()
            .zip(&stepping)
            .filter(|(_, stepping)| **stepping)
            .map(|(l, _)| (l.role_if_stepped(), l.sequence.tokens_read()))
            .collect();
        let pass_started;
        let outcome = {
            let mut batch: Vec<&mut Sequence> = self
                .live
                .iter_mut()
                .zip(&stepping)
                .filter(|(_, stepping)| **stepping)
                .map(|(l, _)| &mut l.sequence)
                .collect();
            metrics.batching.observe_batch_size("llm", batch.len());
            pass_started = (Instant::now(), thread_cpu_ms());
            catch_unwind(AssertUnwindSafe(|| model.step(&mut batch, read_budget)))
        };
        let kept = model.kv_cache_bytes() as i64 - kept_before as i64;
        metrics.latency.llm_kv_cache_bytes.add(kept);
        let progress = match outcome {
            Ok(Ok(progress)) => progress,
            Ok(Err(error)) => return self.fail_all(&error.to_string()),
            Err(panic) => {
                return self
                    .fail_all(&JobError::Panicked(panic_message(panic.as_ref())).to_string())
            }
        };
        let mut roles = [0u64; LlmRole::ALL.len()];
        for (live, _) in self.live.iter().zip(&stepping).filter(|(_, s)| !**s) {
            let deferred = live.outbox.is_empty() && live.sequence.is_decoding();
            roles[if deferred {
                LlmRole::Deferred
            } else {
                LlmRole::Idle
            } as usize] += 1;
        }
        let stepped = self
            .live
            .iter_mut()
            .zip(&stepping)
            .filter(|(_, stepping)| **stepping)
            .map(|(l, _)| l);
        let mut read = [0usize; LlmRole::ALL.len()];
        for ((live, progress), (role, read_before)) in stepped.zip(progress).zip(before) {
            live.passes += 1;
            read[role as usize] += live.sequence.tokens_read().saturating_sub(read_before);
            let moved = role == LlmRole::Token || live.sequence.tokens_read() != read_before;
            roles[if moved { role } else { LlmRole::Idle } as usize] += 1;
            live.on_progress(progress, metrics);
        }
        metrics.batching.observe_llm_pass(roles);
        tracing::trace!(
            tokens = roles[LlmRole::Token as usize],
            read = read.iter().sum::<usize>(),
            read_prompt = read[LlmRole::Prompt as usize],
            read_tail = read[LlmRole::Tail as usize],
            read_ahead = read[LlmRole::ReadAhead as usize],
            held = self.live.len(),
            pass_ms = pass_started.0.elapsed().as_secs_f64() * 1e3,
            cpu_ms = thread_cpu_ms() - pass_started.1,
            "llm pass"
        );
        self.live
            .retain(|l| !(l.sequence.is_done() && l.outbox.is_empty()));
    }

    /// Fail every reply in the batch: a pass that failed leaves no state to trust.
    fn fail_all(&mut self, message: &str) {
        tracing::warn!(error = message, "LLM pass failed");
        for live in self.live.drain(..) {
            if let (Some(events), false) = (live.events(), live.answered) {
                let _ = events.try_send(LlmEvent::Failed(message.to_string()));
            }
        }
    }
}

/// CPU time this thread has used, in ms: a pass's CPU against its wall time shows
/// when the thread was waiting for a core rather than computing.
fn thread_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the clock id is a constant Linux knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

/// A trace line per sequence as it leaves, so a run's log shows what each reply cost.
impl Drop for Live {
    fn drop(&mut self) {
        tracing::trace!(
            conversation_id = %self.job.conversation,
            reply = matches!(self.job.work, LlmWork::Reply { .. }),
            read = self.sequence.tokens_read(),
            positions = self.sequence.positions(),
            generated = self.sequence.tokens_generated(),
            spoke = self.first_piece_logged,
            passes = self.passes,
            cancelled = self.job.cancelled(),
            "left the batch"
        );
    }
}

/// Which sequences (each `(ready, generating)`, in pass order) step in a pass: every
/// ready one, except generating ones past the first `rows`. A sequence whose actor is
/// behind (not ready) sits out.
fn choose_stepping(sequences: impl Iterator<Item = (bool, bool)>, rows: usize) -> Vec<bool> {
    let mut generating = 0;
    sequences
        .map(|(ready, decoding)| {
            generating += usize::from(ready && decoding);
            ready && (!decoding || generating <= rows)
        })
        .collect()
}

impl Live {
    /// What it does in the next pass if it gets to read (decoding replies always step).
    fn role_if_stepped(&self) -> LlmRole {
        match &self.job.work {
            _ if self.sequence.is_decoding() => LlmRole::Token,
            LlmWork::Reply { .. } if self.sequence.is_reply() => LlmRole::Prompt,
            LlmWork::Reply { .. } => LlmRole::Tail,
            LlmWork::ReadAhead { .. } => LlmRole::ReadAhead,
        }
    }

    fn on_progress(&mut self, progress: Progress, metrics: &Metrics) {
        match progress {
            Progress::Reading => {}
            Progress::Piece(piece) => {
                if !self.first_piece_logged {
                    self.first_piece_logged = true;
                    tracing::debug!(
                        conversation_id = %self.job.conversation,
                        queued_ms = (self.admitted - self.job.queued).as_millis() as u64,
                        in_batch_ms = self.admitted.elapsed().as_millis() as u64,
                        passes = self.passes,
                        read = self.sequence.tokens_read(),
                        positions = self.sequence.positions(),
                        "first piece"
                    );
                }
                self.outbox.push_back(LlmEvent::Delta(piece))
            }
            Progress::Finished { tail, outcome } => {
                self.answered = true;
                if !tail.is_empty() {
                    self.outbox.push_back(LlmEvent::Delta(tail));
                }
                let cached = outcome.cached_tokens;
                metrics
                    .latency
                    .count_prompt_tokens(outcome.prompt_tokens - cached, cached);
                tracing::debug!(
                    conversation_id = %self.job.conversation,
                    prompt_tokens = outcome.prompt_tokens,
                    cached_tokens = cached,
                    first_token_ms = outcome.first_token_ms,
                    tokens = outcome.tokens,
                    total_ms = outcome.total_ms,
                    "reply generated"
                );
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                self.outbox.push_back(LlmEvent::Finished(Completion {
                    input_tokens: count(outcome.prompt_tokens),
                    cached_tokens: count(cached),
                    output_tokens: count(outcome.tokens),
                    length_limited: outcome.finish_reason == FinishReason::Length,
                }));
            }
            Progress::Done => {
                if let LlmWork::ReadAhead { .. } = self.job.work {
                    metrics.latency.count_read_ahead(self.sequence.read_len());
                }
            }
        }
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generating_replies_past_the_row_budget_sit_the_pass_out() {
        // Sorted: three generating replies (fewest tokens first), then two readers.
        let sequences = [
            (true, true),
            (false, true), // its actor is behind: sits out, takes no row
            (true, true),
            (true, true),
            (true, false),
            (true, false),
        ];
        assert_eq!(
            choose_stepping(sequences.into_iter(), 2),
            [true, false, true, false, true, true]
        );
        assert_eq!(
            choose_stepping(sequences.into_iter(), 8),
            [true, false, true, true, true, true]
        );
    }
}
