//! The Silero VAD batcher: scores the audio of many conversations in one model call.
//!
//! Each job carries one conversation's [`Ingest`] state and the frames that arrived
//! since its last job. A batcher thread takes every job waiting in the queue (up to
//! `max_batch`), decodes each, then runs Silero in rounds: round `r` scores the `r`-th
//! pending window of every job that has one, all in a single `[batch, 576]` call with
//! the recurrent states stacked `[2, batch, 128]`. Under load, more conversations wait
//! in the queue, batches grow, and the cost per window falls (about 115 µs alone,
//! 65 µs at batch 32 on the reference machine). Jobs of ended conversations are dropped
//! unrun; a panic in one conversation's decoding fails only that job.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::cancel::CancelToken;
use super::pool::{panic_message, JobError};
use crate::audio::ingest::{Ingest, IngestOutput};
use crate::metrics::{GaugeGuard, Metrics};
use crate::models::{SileroJob, SileroVad};

pub type VadReply = Result<(Box<Ingest>, IngestOutput), JobError>;

struct VadJob {
    ingest: Box<Ingest>,
    frames: Vec<Bytes>,
    flush: bool,
    token: CancelToken,
    reply: oneshot::Sender<VadReply>,
    inflight: GaugeGuard,
    /// Dropped after the reply and the gauge: see `WorkerPool::submit`.
    hold: Box<dyn Any + Send>,
}

impl VadJob {
    /// Answer (the answer may hand the state back), then release the gauge and the hold.
    fn answer(self, with: impl FnOnce(Box<Ingest>) -> VadReply) {
        let VadJob {
            ingest,
            reply,
            inflight,
            hold,
            ..
        } = self;
        let _ = reply.send(with(ingest));
        drop(inflight);
        drop(hold);
    }
}

/// Dropping it closes the queue and joins every thread.
pub struct SileroBatcher {
    queue: Option<SyncSender<VadJob>>,
    threads: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl SileroBatcher {
    pub fn new(
        model: PathBuf,
        threads: usize,
        queue_depth: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
        on_ready: impl Fn(Result<(), String>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = sync_channel::<VadJob>(queue_depth);
        let jobs = Arc::new(Mutex::new(jobs));
        let on_ready = Arc::new(on_ready);
        let threads = (0..threads)
            .map(|i| {
                let (jobs, on_ready, model) =
                    (Arc::clone(&jobs), Arc::clone(&on_ready), model.clone());
                let metrics = Arc::clone(&metrics);
                std::thread::Builder::new()
                    .name(format!("hearken-silero-{i}"))
                    .spawn(move || match SileroVad::load(&model) {
                        Ok(mut vad) => {
                            on_ready(Ok(()));
                            while let Some(batch) = next_batch(&jobs, max_batch) {
                                run_batch(&mut vad, batch, &metrics);
                            }
                        }
                        Err(error) => {
                            tracing::error!(%error, "Silero worker could not load its model");
                            on_ready(Err(error.to_string()));
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(SileroBatcher {
            queue: Some(queue),
            threads,
            metrics,
        })
    }

    /// Queue one conversation's state and new frames; the state comes back with results.
    pub fn submit(
        &self,
        token: &CancelToken,
        hold: impl Any + Send,
        ingest: Box<Ingest>,
        frames: Vec<Bytes>,
        flush: bool,
    ) -> Result<oneshot::Receiver<VadReply>, JobError> {
        let closed = JobError::PoolClosed { pool: "silero" };
        let queue = self.queue.as_ref().ok_or(closed.clone())?;
        let (reply, answer) = oneshot::channel();
        let job = VadJob {
            ingest,
            frames,
            flush,
            token: token.clone(),
            reply,
            inflight: GaugeGuard::new(self.metrics.inflight_jobs.clone()),
            hold: Box::new(hold),
        };
        queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                self.metrics.overloaded.inc();
                JobError::Overloaded { pool: "silero" }
            }
            TrySendError::Disconnected(_) => closed,
        })?;
        Ok(answer)
    }
}

impl Drop for SileroBatcher {
    fn drop(&mut self) {
        self.queue = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Block for one job, then take whatever else is already waiting.
fn next_batch(jobs: &Mutex<Receiver<VadJob>>, max_batch: usize) -> Option<Vec<VadJob>> {
    let queue = match jobs.lock() {
        Ok(queue) => queue,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut batch = vec![queue.recv().ok()?];
    while batch.len() < max_batch {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    Some(batch)
}

/// A job that survived decoding, with its output and the scores of its windows.
struct Live {
    job: VadJob,
    out: IngestOutput,
    scores: Vec<f32>,
    failed: Option<String>,
}

fn run_batch(vad: &mut SileroVad, batch: Vec<VadJob>, metrics: &Metrics) {
    let mut live = Vec::with_capacity(batch.len());
    for mut job in batch {
        if job.token.is_cancelled() || job.reply.is_closed() {
            metrics.jobs_skipped.inc();
            job.answer(|_| Err(JobError::Cancelled));
            continue;
        }
        let mut out = IngestOutput::default();
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            job.ingest.process(&job.frames, &mut out)
        }));
        match decoded {
            Ok(()) => live.push(Live {
                job,
                out,
                scores: Vec::new(),
                failed: None,
            }),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                job.answer(|_| Err(JobError::Panicked(message)));
            }
        }
    }

    let rounds = live
        .iter()
        .map(|l| l.job.ingest.pending_windows())
        .max()
        .unwrap_or(0);
    for round in 0..rounds {
        let mut members = Vec::new();
        let mut windows = Vec::new();
        for (index, entry) in live.iter_mut().enumerate() {
            if entry.failed.is_some() {
                continue;
            }
            let (Some(state), pending) = entry.job.ingest.silero_work() else {
                continue;
            };
            if let Some(window) = pending.get(round) {
                members.push(index);
                windows.push(SileroJob::new(state, window));
            }
        }
        metrics.vad_batch_windows.observe(windows.len() as f64);
        let outcome = vad.infer_batch(&mut windows);
        let probabilities: Vec<f32> = windows.iter().map(|w| w.probability).collect();
        drop(windows);
        for (slot, index) in members.into_iter().enumerate() {
            match &outcome {
                Ok(()) => live[index].scores.push(probabilities[slot]),
                Err(error) => live[index].failed = Some(error.to_string()),
            }
        }
    }

    for entry in live {
        let Live {
            mut job,
            mut out,
            scores,
            failed,
        } = entry;
        if let Some(error) = failed {
            job.answer(|_| Err(JobError::Model(error)));
            continue;
        }
        job.ingest.apply_silero(&scores, &mut out);
        if job.flush {
            job.ingest.flush(&mut out);
        }
        job.answer(|ingest| Ok((ingest, out)));
    }
}
