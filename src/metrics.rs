//! Prometheus metrics for one server, and the guards that keep the leak gauges honest.
//!
//! Every live resource (actor, open file, queued or running job, child process) holds a
//! guard whose `Drop` decrements the gauge it incremented. Handlers never decrement by
//! hand, so a gauge that does not return to its start value is a real leak, not a
//! forgotten line. One `Metrics` exists per server (not a global), so tests that start
//! several servers in one process read their own numbers.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::lifecycle::ExitReason;

mod batching;
mod cluster;
mod heap;
mod latency;
pub use batching::{BatchingMetrics, LlmRole};
pub use cluster::ClusterMetrics;
pub use heap::HeapMetrics;
pub use latency::{LatencyMetrics, Preemptive, TurnStage};

/// Teardown histogram buckets in seconds: the target is p99 < 5 ms, so resolve well below it.
const TEARDOWN_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Actor kinds with a live gauge; the label values of `hearken_live_actors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Session,
    Conversation,
    Vad,
    Stt,
    Llm,
    Tts,
    Recorder,
}

impl ActorKind {
    pub const ALL: [ActorKind; 7] = [
        ActorKind::Session,
        ActorKind::Conversation,
        ActorKind::Vad,
        ActorKind::Stt,
        ActorKind::Llm,
        ActorKind::Tts,
        ActorKind::Recorder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Session => "session",
            ActorKind::Conversation => "conversation",
            ActorKind::Vad => "vad",
            ActorKind::Stt => "stt",
            ActorKind::Llm => "llm",
            ActorKind::Tts => "tts",
            ActorKind::Recorder => "recorder",
        }
    }
}

/// Kinds of bad client input, counted in `hearken_bad_input_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadInput {
    MalformedJson,
    UnknownEvent,
    OddLengthPcm,
    FrameTooLarge,
    BadOpus,
    UnsupportedSampleRate,
    BadQuery,
    TextInsteadOfAudio,
    /// Past the session's flood limit (closed with 1008).
    Flood,
    /// A `session.update` system prompt over `llm.max_system_prompt_bytes`.
    PromptTooLarge,
    /// Audio past the session's real-time budget (`session.max_audio_speed`).
    AudioTooFast,
    /// A session closed (1007) after more undecodable frames than `session.bad_audio_burst`.
    CorruptStream,
    /// A well-formed event with a bad field, or one the session's state does not allow.
    InvalidEvent,
    /// Audio in an event that is not valid base64.
    BadBase64,
    /// A binary frame where the protocol carries only JSON text.
    BinaryInsteadOfText,
    /// One event carrying more audio than `realtime.max_append_ms`.
    AudioTooLarge,
}

impl BadInput {
    pub fn as_str(self) -> &'static str {
        match self {
            BadInput::MalformedJson => "malformed_json",
            BadInput::UnknownEvent => "unknown_event",
            BadInput::OddLengthPcm => "odd_length_pcm",
            BadInput::FrameTooLarge => "frame_too_large",
            BadInput::BadOpus => "bad_opus",
            BadInput::UnsupportedSampleRate => "unsupported_sample_rate",
            BadInput::BadQuery => "bad_query",
            BadInput::TextInsteadOfAudio => "text_instead_of_audio",
            BadInput::Flood => "flood",
            BadInput::PromptTooLarge => "prompt_too_large",
            BadInput::AudioTooFast => "audio_too_fast",
            BadInput::CorruptStream => "corrupt_stream",
            BadInput::InvalidEvent => "invalid_event",
            BadInput::BadBase64 => "bad_base64",
            BadInput::BinaryInsteadOfText => "binary_instead_of_text",
            BadInput::AudioTooLarge => "audio_too_large",
        }
    }
}

/// All metrics of one server.
pub struct Metrics {
    registry: Registry,
    live_actors: IntGaugeVec,
    pub conversations: IntGauge,
    pub open_files: IntGauge,
    pub inflight_jobs: IntGauge,
    pub llm_inflight: IntGauge,
    pub tts_queue_depth: IntGauge,
    pub child_processes: IntGauge,
    pub stored_conversations: IntGauge,
    pub event_subscribers: IntGauge,
    disconnects: IntCounterVec,
    pub teardown_seconds: Histogram,
    bad_input: IntCounterVec,
    rejected: IntCounterVec,
    pub audio_frames_dropped: IntCounter,
    pub audio_backpressure: IntCounter,
    pub jobs_skipped: IntCounter,
    pub overloaded: IntCounter,
    /// Times a reply's audio ran dry before its end (synthesis fell behind playback).
    tts_underruns: IntCounterVec,
    /// 20 ms frames of reply audio synthesised, and sent: the difference is speech
    /// made and never heard (replies cut off).
    pub tts_frames_synthesized: IntCounter,
    pub tts_frames_sent: IntCounter,
    pub child_restarts: IntCounter,
    pub duplicate_disconnects: IntCounter,
    /// Windows per Silero model call: how well batching across conversations works.
    pub vad_batch_windows: Histogram,
    /// Sequences per batched pass and queue waits, by stage.
    pub batching: BatchingMetrics,
    pub transcripts: IntCounter,
    /// Speculative transcriptions whose result became the final transcript.
    pub stt_drafts_used: IntCounter,
    /// Speculative transcriptions dropped because speech resumed.
    pub stt_drafts_dropped: IntCounter,
    pub stt_seconds: Histogram,
    /// Turn stage times, speculative work, kept LLM state.
    pub latency: LatencyMetrics,
    /// Sessions ended because their client stopped reading (`session.write_stall_ms`).
    pub write_stalls: IntCounter,
    /// Conversation histories evicted to stay within the store's bounds.
    pub history_evictions: IntCounter,
    /// The Redis bridge, leases and heartbeats (zero when the cluster is off).
    pub cluster: ClusterMetrics,
    /// The allocator's own figures, read at each scrape, and its trims.
    pub heap: HeapMetrics,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let live_actors = IntGaugeVec::new(
            Opts::new("hearken_live_actors", "Live actors by kind"),
            &["kind"],
        )
        .expect("static metric definition");
        for kind in ActorKind::ALL {
            live_actors.with_label_values(&[kind.as_str()]).set(0);
        }
        let disconnects = IntCounterVec::new(
            Opts::new(
                "hearken_disconnects_total",
                "Published connection_disconnected events by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        for reason in ExitReason::ALL {
            disconnects.with_label_values(&[reason.as_str()]).reset();
        }
        // What a reply's audio ran dry waiting for: the model's next words ("text"), or
        // the synthesis of words already written ("speech").
        let tts_underruns = IntCounterVec::new(
            Opts::new(
                "hearken_tts_underruns_total",
                "Times a reply's audio ran dry before its end, by what it waited for",
            ),
            &["waiting_for"],
        )
        .expect("static metric definition");
        for waiting_for in ["text", "speech"] {
            tts_underruns.with_label_values(&[waiting_for]).reset();
        }
        let metrics = Metrics {
            live_actors,
            conversations: gauge("hearken_conversations", "Registered live conversations"),
            open_files: gauge("hearken_open_files", "Files held open by actors"),
            inflight_jobs: gauge(
                "hearken_inflight_jobs",
                "Worker-pool jobs queued or running",
            ),
            llm_inflight: gauge("hearken_llm_inflight", "Replies being generated"),
            tts_queue_depth: gauge(
                "hearken_tts_queue_depth",
                "Sentences queued or being synthesised",
            ),
            child_processes: gauge(
                "hearken_child_processes",
                "Helper processes alive (espeak-ng phonemizers)",
            ),
            stored_conversations: gauge(
                "hearken_stored_conversations",
                "Conversations whose history is kept for resumption",
            ),
            event_subscribers: gauge("hearken_event_subscribers", "Open /v1/events streams"),
            disconnects,
            teardown_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "hearken_teardown_seconds",
                    "Time from the end of a session to its disconnect event",
                )
                .buckets(TEARDOWN_BUCKETS.to_vec()),
            )
            .expect("static metric definition"),
            bad_input: IntCounterVec::new(
                Opts::new("hearken_bad_input_total", "Rejected client input by kind"),
                &["kind"],
            )
            .expect("static metric definition"),
            rejected: IntCounterVec::new(
                Opts::new(
                    "hearken_rejected_connections_total",
                    "WebSocket upgrades refused before a tree started, by reason",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            audio_frames_dropped: counter(
                "hearken_audio_frames_dropped_total",
                "Audio frames dropped because a conversation was behind",
            ),
            audio_backpressure: counter(
                "hearken_audio_backpressure_total",
                "Times a session paused reading because its conversation was behind",
            ),
            jobs_skipped: counter(
                "hearken_jobs_skipped_total",
                "Queued jobs skipped because their conversation had ended",
            ),
            overloaded: counter(
                "hearken_overloaded_total",
                "Work refused because a bounded queue was full",
            ),
            tts_underruns,
            tts_frames_synthesized: counter(
                "hearken_tts_frames_synthesized_total",
                "20 ms frames of reply audio synthesised",
            ),
            tts_frames_sent: counter(
                "hearken_tts_frames_sent_total",
                "20 ms frames of reply audio sent to clients",
            ),
            child_restarts: counter(
                "hearken_child_restarts_total",
                "Child actors restarted by their conversation",
            ),
            duplicate_disconnects: counter(
                "hearken_duplicate_disconnects_total",
                "Disconnects ignored as duplicate or for unknown conversations",
            ),
            vad_batch_windows: Histogram::with_opts(
                HistogramOpts::new(
                    "hearken_vad_batch_windows",
                    "Windows scored per Silero model call",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            )
            .expect("static metric definition"),
            batching: BatchingMetrics::new(),
            transcripts: counter("hearken_transcripts_total", "Final transcripts produced"),
            stt_drafts_used: counter(
                "hearken_stt_drafts_used_total",
                "Speculative transcriptions that became the final transcript",
            ),
            stt_drafts_dropped: counter(
                "hearken_stt_drafts_dropped_total",
                "Speculative transcriptions dropped because speech resumed",
            ),
            stt_seconds: Histogram::with_opts(
                HistogramOpts::new("hearken_stt_seconds", "Recogniser time per speech segment")
                    .buckets(vec![0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4]),
            )
            .expect("static metric definition"),
            latency: LatencyMetrics::new(),
            write_stalls: counter(
                "hearken_write_stalls_total",
                "Sessions ended because the client left their output unread too long",
            ),
            history_evictions: counter(
                "hearken_history_evictions_total",
                "Conversation histories evicted to stay within the store's bounds",
            ),
            cluster: ClusterMetrics::new(),
            heap: HeapMetrics::new(),
            registry,
        };
        metrics.register_all();
        Arc::new(metrics)
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.live_actors.clone()),
            Box::new(self.conversations.clone()),
            Box::new(self.open_files.clone()),
            Box::new(self.inflight_jobs.clone()),
            Box::new(self.llm_inflight.clone()),
            Box::new(self.tts_queue_depth.clone()),
            Box::new(self.child_processes.clone()),
            Box::new(self.stored_conversations.clone()),
            Box::new(self.event_subscribers.clone()),
            Box::new(self.disconnects.clone()),
            Box::new(self.teardown_seconds.clone()),
            Box::new(self.bad_input.clone()),
            Box::new(self.rejected.clone()),
            Box::new(self.audio_frames_dropped.clone()),
            Box::new(self.audio_backpressure.clone()),
            Box::new(self.jobs_skipped.clone()),
            Box::new(self.overloaded.clone()),
            Box::new(self.tts_underruns.clone()),
            Box::new(self.tts_frames_synthesized.clone()),
            Box::new(self.tts_frames_sent.clone()),
            Box::new(self.child_restarts.clone()),
            Box::new(self.duplicate_disconnects.clone()),
            Box::new(self.vad_batch_windows.clone()),
            Box::new(self.transcripts.clone()),
            Box::new(self.stt_drafts_used.clone()),
            Box::new(self.stt_drafts_dropped.clone()),
            Box::new(self.stt_seconds.clone()),
            Box::new(self.write_stalls.clone()),
            Box::new(self.history_evictions.clone()),
        ];
        for collector in collectors {
            // Names are static and unique, so registration cannot collide.
            let _ = self.registry.register(collector);
        }
        self.latency.register(&self.registry);
        self.batching.register(&self.registry);
        self.cluster.register(&self.registry);
        self.heap.register(&self.registry);
    }

    /// Live actors of one kind (for tests and the bench client's summaries).
    pub fn live_actors(&self, kind: ActorKind) -> i64 {
        self.live_actors.with_label_values(&[kind.as_str()]).get()
    }

    pub fn disconnects(&self, reason: ExitReason) -> u64 {
        self.disconnects.with_label_values(&[reason.as_str()]).get()
    }

    /// A reply's audio ran dry: waiting for the model's next words (`text`) or for
    /// speech of words already written.
    pub fn count_underrun(&self, waiting_for_text: bool) {
        let waiting_for = if waiting_for_text { "text" } else { "speech" };
        self.tts_underruns.with_label_values(&[waiting_for]).inc();
    }

    pub fn count_disconnect(&self, reason: ExitReason, teardown_secs: f64) {
        self.disconnects.with_label_values(&[reason.as_str()]).inc();
        self.teardown_seconds.observe(teardown_secs);
    }

    pub fn count_bad_input(&self, kind: BadInput) {
        self.bad_input.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn bad_input(&self, kind: BadInput) -> u64 {
        self.bad_input.with_label_values(&[kind.as_str()]).get()
    }

    pub fn count_rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// A guard that counts one live actor of `kind` until it is dropped.
    pub fn actor_guard(&self, kind: ActorKind) -> GaugeGuard {
        GaugeGuard::new(self.live_actors.with_label_values(&[kind.as_str()]))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.heap.refresh();
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("static metric definition")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("static metric definition")
}

/// Increments a gauge on creation and decrements it on drop: the only way hearken
/// moves a leak gauge.
#[derive(Debug)]
pub struct GaugeGuard {
    gauge: IntGauge,
}

impl GaugeGuard {
    pub fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        GaugeGuard { gauge }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_moves_gauge_up_then_back() {
        let metrics = Metrics::new();
        let guard = metrics.actor_guard(ActorKind::Vad);
        assert_eq!(metrics.live_actors(ActorKind::Vad), 1);
        drop(guard);
        assert_eq!(metrics.live_actors(ActorKind::Vad), 0);
    }

    #[test]
    fn render_names_every_leak_gauge() {
        let metrics = Metrics::new();
        let text = metrics.render();
        for name in [
            "hearken_live_actors",
            "hearken_conversations",
            "hearken_open_files",
            "hearken_inflight_jobs",
            "hearken_disconnects_total",
            "hearken_teardown_seconds",
        ] {
            assert!(text.contains(name), "{name} missing from /metrics");
        }
    }
}
