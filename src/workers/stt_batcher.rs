//! The STT batcher: speech recognition of many conversations sharing passes of
//! Moonshine's decoder.
//!
//! Two stages. Encoder threads (`stt.threads`, each with its own ONNX Runtime
//! session) turn a segment's audio into hidden states; an encoder call already
//! reuses its weights across the segment's frames, so it runs one segment at a time.
//! The decoder thread then holds up to `stt.max_batch` segments of any conversations
//! and advances all of them in each pass (`BatchedDecoder::advance`): one token each,
//! or a whole guess checked at once for a segment decoded before. A segment that
//! arrives joins at the next pass, and one that ends, is stopped (a stale draft) or
//! whose conversation ends leaves at once. The weights are streamed once per pass
//! for everyone instead of once per token per conversation.
//!
//! Every job is answered exactly once: with its transcription, `Ok(None)` when its
//! stop flag was raised, or an error (cancelled, overloaded, failed, panicked). A
//! job dropped unanswered anywhere (skipped in a queue, a thread ending) answers
//! `Cancelled` from its `Drop`. Its gauge guard and `hold` are released after the
//! answer, so a supervisor waiting on `hold` knows the job is completely gone.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::cancel::CancelToken;
use super::denormals::flush_denormals;
use super::pool::{panic_message, JobError, StateInit, WorkerPool};
use super::queue::{JobQueue, Priority, PushError, Skip};
use crate::metrics::{GaugeGuard, Metrics};
use crate::models::moonshine::{
    max_tokens, piece_ranges, EncodedAudio, GuidedGreedy, MoonshineEncoder, MAX_PIECE_SAMPLES,
    MIN_PIECE_SAMPLES,
};
use crate::models::{BatchedDecoder, Decoding, Tokenizer};

/// A finished transcription and the time it took from the start of encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcribed {
    pub text: String,
    pub tokens: Vec<i64>,
    pub elapsed: Duration,
}

/// What a caller receives: `Ok(None)` if its stop flag ended the job.
pub type SttAnswer = Result<Option<Transcribed>, JobError>;

/// Produces a segment's 16 kHz mono samples in `[-1, 1]`, on an encoder thread (so
/// no arbiter converts or resamples audio), or says why there are none.
pub type SttAudio = Box<dyn FnOnce() -> Result<Vec<f32>, String> + Send>;

/// One segment to transcribe.
pub struct SttRequest {
    pub audio: SttAudio,
    /// Tokens of an earlier transcription of the start of this audio.
    pub guess: Vec<i64>,
    /// Raised to stop the job early (a draft gone stale); `None`: never.
    pub stop: Option<Arc<AtomicBool>>,
}

/// The answer channel; answers `Cancelled` if dropped unused.
struct Reply(Option<oneshot::Sender<SttAnswer>>);

impl Reply {
    fn send(&mut self, answer: SttAnswer) {
        if let Some(sender) = self.0.take() {
            let _ = sender.send(answer);
        }
    }

    fn is_closed(&self) -> bool {
        self.0.as_ref().is_none_or(|s| s.is_closed())
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.send(Err(JobError::Cancelled));
    }
}

/// A job between and inside the stages. Fields drop in order: the answer first,
/// then the gauge, then `hold`.
struct SttJob {
    reply: Reply,
    stop: Option<Arc<AtomicBool>>,
    owner: CancelToken,
    started: Instant,
    queued: Instant,
    /// Encoded pieces not yet begun (the first carries the guess).
    pieces: VecDeque<EncodedAudio>,
    guess: Vec<i64>,
    decoding: Option<Decoding>,
    tokens: Vec<i64>,
    texts: Vec<String>,
    _inflight: GaugeGuard,
    _hold: Box<dyn Any + Send>,
}

impl SttJob {
    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Acquire))
    }

    /// Answers a job that should not go on; true if it was answered.
    fn answer_if_over(&mut self) -> bool {
        if self.owner.is_cancelled() || self.reply.is_closed() {
            self.reply.send(Err(JobError::Cancelled));
            true
        } else if self.stopped() {
            self.reply.send(Ok(None));
            true
        } else {
            false
        }
    }
}

impl Skip for SttJob {
    fn skip(self) {
        drop(self);
    }
}

/// Dropping it closes both stages and joins their threads.
pub struct SttBatcher {
    decodes: Arc<JobQueue<SttJob>>,
    decoder: Option<JoinHandle<()>>,
    encoders: WorkerPool<MoonshineEncoder>,
    /// Segments in the decoder's batch.
    batch: Arc<AtomicUsize>,
    max_batch: usize,
    metrics: Arc<Metrics>,
}

/// Where the models are and how to run them.
pub struct SttModels {
    pub encoder: StateInit<MoonshineEncoder>,
    pub decoder: Arc<dyn Fn() -> Result<(BatchedDecoder, Tokenizer), String> + Send + Sync>,
}

impl SttBatcher {
    /// `encoder_threads` encoder threads and one decoder thread, each loading its
    /// model on that thread; `on_ready` hears from each (as for a worker pool).
    pub fn new(
        encoder_threads: usize,
        queue_depth: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
        models: SttModels,
        on_ready: impl Fn(Result<(), String>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let on_ready = Arc::new(on_ready);
        let decodes = JobQueue::new(queue_depth, metrics.jobs_skipped.clone());
        let batch = Arc::new(AtomicUsize::new(0));
        let max_batch = max_batch.max(1);
        let decoder = {
            let (jobs, batch, metrics) = (
                Arc::clone(&decodes),
                Arc::clone(&batch),
                Arc::clone(&metrics),
            );
            let (load, on_ready) = (Arc::clone(&models.decoder), Arc::clone(&on_ready));
            std::thread::Builder::new()
                .name("hearken-stt-decoder".into())
                .spawn(move || match load() {
                    Ok((decoder, tokenizer)) => {
                        flush_denormals();
                        on_ready(Ok(()));
                        let mut batch = Batch {
                            decoder,
                            tokenizer,
                            live: Vec::with_capacity(max_batch),
                            max: max_batch,
                            size: batch,
                        };
                        batch.run(&jobs, &metrics);
                    }
                    Err(error) => {
                        tracing::error!(%error, "the STT decoder could not load its model");
                        on_ready(Err(error));
                    }
                })?
        };
        let ready = Arc::clone(&on_ready);
        let encoders = WorkerPool::with_state(
            "stt",
            encoder_threads.into(),
            queue_depth,
            Arc::clone(&metrics),
            models.encoder,
            move |outcome| ready(outcome),
        )?;
        Ok(SttBatcher {
            decodes,
            decoder: Some(decoder),
            encoders,
            batch,
            max_batch,
            metrics,
        })
    }

    /// Queue a segment of `owner`'s conversation; its end withdraws the job, queued
    /// or running. `hold` is released once the job is gone.
    pub fn submit(
        &self,
        priority: Priority,
        owner: &CancelToken,
        hold: impl Any + Send,
        request: SttRequest,
    ) -> Result<oneshot::Receiver<SttAnswer>, JobError> {
        let (sender, answer) = oneshot::channel();
        let now = Instant::now();
        let job = SttJob {
            reply: Reply(Some(sender)),
            stop: request.stop,
            owner: owner.clone(),
            started: now,
            queued: now,
            pieces: VecDeque::new(),
            guess: request.guess,
            decoding: None,
            tokens: Vec::new(),
            texts: Vec::new(),
            _inflight: GaugeGuard::new(self.metrics.inflight_jobs.clone()),
            _hold: Box::new(hold),
        };
        let (decodes, metrics, audio) = (
            Arc::clone(&self.decodes),
            Arc::clone(&self.metrics),
            request.audio,
        );
        self.encoders
            .run_detached(priority, owner, move |encoder| {
                let Some(encoder) = encoder else {
                    return drop(job);
                };
                encode(encoder, job, audio, priority, &decodes, &metrics);
            })?;
        Ok(answer)
    }

    /// Whether optional work (a draft, a partial) is welcome: an encoder thread is
    /// free and the decoder's batch has room.
    pub fn has_room(&self) -> bool {
        self.encoders.has_idle_thread() && self.batch.load(Ordering::Acquire) < self.max_batch
    }
}

impl Drop for SttBatcher {
    fn drop(&mut self) {
        self.decodes.close();
        if let Some(thread) = self.decoder.take() {
            let _ = thread.join();
        }
        // The encoder pool is dropped next (a field), joining its threads; a job
        // they hand on meanwhile finds the decoder's queue closed and is answered.
    }
}

/// The encoder stage: every piece of the segment encoded, then on to the decoder.
fn encode(
    encoder: &mut MoonshineEncoder,
    mut job: SttJob,
    audio: SttAudio,
    priority: Priority,
    decodes: &JobQueue<SttJob>,
    metrics: &Metrics,
) {
    job.started = Instant::now();
    metrics
        .batching
        .observe_queue_wait("stt_encode", job.started - job.queued);
    if job.answer_if_over() {
        return;
    }
    let samples = match catch_unwind(AssertUnwindSafe(audio)) {
        Ok(Ok(samples)) => samples,
        Ok(Err(error)) => return job.reply.send(Err(JobError::Model(error))),
        Err(panic) => {
            return job
                .reply
                .send(Err(JobError::Panicked(panic_message(panic.as_ref()))))
        }
    };
    let ranges = piece_ranges(samples.len(), MAX_PIECE_SAMPLES);
    if ranges.len() > 1 {
        job.guess.clear(); // a guess covers single-piece audio only
    }
    for range in ranges {
        if job.answer_if_over() {
            return;
        }
        let piece = &samples[range];
        if piece.len() < MIN_PIECE_SAMPLES {
            continue; // too short for a frame: transcribes as nothing
        }
        match catch_unwind(AssertUnwindSafe(|| encoder.encode(piece))) {
            Ok(Ok(encoded)) => job.pieces.push_back(encoded),
            Ok(Err(error)) => return job.reply.send(Err(JobError::Model(error.to_string()))),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(%message, "the STT encoder panicked");
                return job.reply.send(Err(JobError::Panicked(message)));
            }
        }
    }
    if job.answer_if_over() {
        return;
    }
    if job.pieces.is_empty() {
        let elapsed = job.started.elapsed();
        return job.reply.send(Ok(Some(Transcribed {
            text: String::new(),
            tokens: Vec::new(),
            elapsed,
        })));
    }
    job.queued = Instant::now();
    let owner = job.owner.clone();
    match decodes.push_with(&owner, priority, job) {
        Ok(()) => {}
        Err(PushError::Full(mut job)) => {
            metrics.overloaded.inc();
            job.reply.send(Err(JobError::Overloaded { pool: "stt" }));
        }
        Err(PushError::Closed(mut job)) => {
            job.reply.send(Err(JobError::PoolClosed { pool: "stt" }));
        }
    }
}

/// The decoder stage's state: the model and the segments in its batch.
struct Batch {
    decoder: BatchedDecoder,
    tokenizer: Tokenizer,
    live: Vec<SttJob>,
    max: usize,
    size: Arc<AtomicUsize>,
}

impl Batch {
    fn run(&mut self, jobs: &JobQueue<SttJob>, metrics: &Metrics) {
        loop {
            if self.live.is_empty() {
                self.size.store(0, Ordering::Release);
                let Some(job) = jobs.pop() else { return };
                self.admit(job, metrics);
            }
            while self.live.len() < self.max {
                let Some(job) = jobs.try_pop() else { break };
                self.admit(job, metrics);
            }
            self.live.retain_mut(|job| !job.answer_if_over());
            self.size.store(self.live.len(), Ordering::Release);
            if !self.live.is_empty() {
                self.pass(metrics);
            }
        }
    }

    /// Starts a job's first piece (its cross-attention caches).
    fn admit(&mut self, mut job: SttJob, metrics: &Metrics) {
        metrics
            .batching
            .observe_queue_wait("stt_decode", job.queued.elapsed());
        if job.answer_if_over() {
            return;
        }
        let guess = std::mem::take(&mut job.guess);
        if self.begin_next(&mut job, &guess) {
            self.live.push(job);
        }
    }

    /// Begins the job's next piece; false if it failed (and was answered).
    fn begin_next(&self, job: &mut SttJob, guess: &[i64]) -> bool {
        let Some(audio) = job.pieces.pop_front() else {
            return false;
        };
        match self.decoder.begin(&audio) {
            Ok(state) => {
                job.decoding = Some(Decoding {
                    state,
                    search: GuidedGreedy::new(guess, max_tokens(audio.samples)),
                });
                true
            }
            Err(error) => {
                job.reply.send(Err(JobError::Model(error.to_string())));
                false
            }
        }
    }

    /// One decoder pass over every segment in the batch, then the finished ones
    /// answered (or moved on to their next piece).
    fn pass(&mut self, metrics: &Metrics) {
        metrics.batching.observe_batch_size("stt", self.live.len());
        let outcome = {
            let mut batch: Vec<&mut Decoding> = self
                .live
                .iter_mut()
                .filter_map(|job| job.decoding.as_mut())
                .collect();
            let decoder = &self.decoder;
            catch_unwind(AssertUnwindSafe(|| decoder.advance(&mut batch)))
        };
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(JobError::Model(error.to_string())),
            Err(panic) => Some(JobError::Panicked(panic_message(panic.as_ref()))),
        };
        if let Some(failure) = failure {
            // A failed pass leaves no state to trust.
            tracing::warn!(error = %failure, "STT decoder pass failed");
            for mut job in self.live.drain(..) {
                job.reply.send(Err(failure.clone()));
            }
            return;
        }
        let mut live = std::mem::take(&mut self.live);
        live.retain_mut(|job| self.carry_on(job));
        self.live = live;
    }

    /// After a pass: a job whose piece is done takes its text and begins its next
    /// piece, or is answered. True while it stays in the batch.
    fn carry_on(&self, job: &mut SttJob) -> bool {
        if !job.decoding.as_ref().is_some_and(Decoding::is_done) {
            return true;
        }
        if let Some(done) = job.decoding.take() {
            let tokens = done.search.into_tokens();
            let text = self.tokenizer.decode(&tokens);
            if !text.is_empty() {
                job.texts.push(text);
            }
            job.tokens.extend(tokens);
        }
        if !job.pieces.is_empty() {
            return self.begin_next(job, &[]);
        }
        let answer = Transcribed {
            text: job.texts.join(" "),
            tokens: std::mem::take(&mut job.tokens),
            elapsed: job.started.elapsed(),
        };
        job.reply.send(Ok(Some(answer)));
        false
    }
}
