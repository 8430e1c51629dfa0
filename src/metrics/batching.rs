//! How well work of many conversations shares model calls, and what waiting for a
//! model costs: items per batched pass and time in each stage's queue, labelled by
//! stage (`stt`, `llm`; queue waits `stt_encode`, `stt_decode`, `llm`). Part of
//! [`super::Metrics`]. Silero's own `hearken_vad_batch_windows` predates these and
//! counts windows, not conversations.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, Registry};

pub struct BatchingMetrics {
    batch_size: HistogramVec,
    queue_wait: HistogramVec,
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
    }
}

impl Default for BatchingMetrics {
    fn default() -> Self {
        Self::new()
    }
}
