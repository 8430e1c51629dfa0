//! How well work of many conversations shares model calls, and what waiting for a
//! model costs: items per batched pass and time in each stage's queue, labelled by
//! stage (`stt`, `llm`; queue waits `stt_encode`, `stt_decode`, `llm` for replies,
//! `llm_read_ahead` for read-aheads, `tts_first_piece` and `tts` for speech), and what the LLM's passes spend their rows on. Part of
//! [`super::Metrics`]. Silero's own `hearken_vad_batch_windows` predates these and
//! counts windows, not conversations.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// What a sequence did in one LLM pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmRole {
    /// A reply still reading its prompt: its turn waits for the first token.
    Prompt,
    /// A reply taking its next token.
    Token,
    /// A finished reply reading its own text into the state kept for the next turn.
    Tail,
    /// The user's words so far, read before the turn ends.
    ReadAhead,
    /// In the batch but sitting the pass out: nothing to read this pass (one chunk per
    /// pass), or its actor has not taken its last events.
    Idle,
    /// A generating reply past the pass's row budget (`llm.max_batch`): one with more
    /// tokens than those that stepped.
    Deferred,
}

impl LlmRole {
    pub const ALL: [LlmRole; 6] = [
        LlmRole::Prompt,
        LlmRole::Token,
        LlmRole::Tail,
        LlmRole::ReadAhead,
        LlmRole::Idle,
        LlmRole::Deferred,
    ];

    fn as_str(self) -> &'static str {
        match self {
            LlmRole::Prompt => "prompt",
            LlmRole::Token => "token",
            LlmRole::Tail => "tail",
            LlmRole::ReadAhead => "read_ahead",
            LlmRole::Idle => "idle",
            LlmRole::Deferred => "deferred",
        }
    }
}

pub struct BatchingMetrics {
    batch_size: HistogramVec,
    queue_wait: HistogramVec,
    llm_sequences: IntCounterVec,
}

impl BatchingMetrics {
    pub fn new() -> Self {
        BatchingMetrics {
            batch_size: HistogramVec::new(
                HistogramOpts::new(
                    "hearken_batch_size",
                    "Sequences advanced together per batched model pass, by stage",
                )
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]),
                &["stage"],
            )
            .expect("static metric definition"),
            queue_wait: HistogramVec::new(
                HistogramOpts::new(
                    "hearken_queue_wait_seconds",
                    "Time a job waited in a stage's queue before a model took it, by stage",
                )
                .buckets(vec![0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]),
                &["stage"],
            )
            .expect("static metric definition"),
            llm_sequences: IntCounterVec::new(
                Opts::new(
                    "hearken_llm_pass_sequences_total",
                    "Sequences in the LLM batch at each pass, by what they did in it (divide \
                     by the llm passes for the mean per pass)",
                ),
                &["role"],
            )
            .expect("static metric definition"),
        }
    }

    /// One LLM pass: how many sequences had each role (in [`LlmRole::ALL`] order).
    pub fn observe_llm_pass(&self, counts: [u64; LlmRole::ALL.len()]) {
        for (role, count) in LlmRole::ALL.into_iter().zip(counts) {
            if count > 0 {
                self.llm_sequences
                    .with_label_values(&[role.as_str()])
                    .inc_by(count);
            }
        }
    }

    pub fn observe_batch_size(&self, stage: &str, sequences: usize) {
        self.batch_size
            .with_label_values(&[stage])
            .observe(sequences as f64);
    }

    pub fn observe_queue_wait(&self, stage: &str, waited: Duration) {
        self.queue_wait
            .with_label_values(&[stage])
            .observe(waited.as_secs_f64());
    }

    /// Passes observed for `stage` so far, and their summed sizes (for tests).
    pub fn batch_totals(&self, stage: &str) -> (u64, f64) {
        let histogram = self.batch_size.with_label_values(&[stage]);
        (histogram.get_sample_count(), histogram.get_sample_sum())
    }

    pub(super) fn register(&self, registry: &Registry) {
        // Names are static and unique, so registration cannot collide.
        let _ = registry.register(Box::new(self.batch_size.clone()));
        let _ = registry.register(Box::new(self.queue_wait.clone()));
        let _ = registry.register(Box::new(self.llm_sequences.clone()));
    }
}

impl Default for BatchingMetrics {
    fn default() -> Self {
        Self::new()
    }
}
