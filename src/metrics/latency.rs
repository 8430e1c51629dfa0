//! Metrics of how fast hearken answers: each turn's stage times, what became of
//! speculative work (preemptive replies, end-of-turn decisions) and the attention
//! state kept between turns. Part of [`super::Metrics`].

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Stage-time buckets in seconds: the target is first audio in 0.6 s, so resolve
/// tens of milliseconds below a second and coarser above.
const STAGE_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0,
];

/// The stages of a turn, each timed from the end of the user's last voiced audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnStage {
    /// The turn was decided over (the segment ended).
    TurnDecided,
    /// The final transcript was ready.
    Transcript,
    /// The reply's first text.
    FirstToken,
    /// The reply's first clause was synthesised.
    FirstClause,
    /// The reply's first audio frame went to the client.
    FirstAudio,
}

impl TurnStage {
    pub const ALL: [TurnStage; 5] = [
        TurnStage::TurnDecided,
        TurnStage::Transcript,
        TurnStage::FirstToken,
        TurnStage::FirstClause,
        TurnStage::FirstAudio,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TurnStage::TurnDecided => "turn_decided",
            TurnStage::Transcript => "transcript",
            TurnStage::FirstToken => "first_token",
            TurnStage::FirstClause => "first_clause",
            TurnStage::FirstAudio => "first_audio",
        }
    }
}

/// What became of a reply started on a draft transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preemptive {
    Started,
    /// Its turn was confirmed with the same words: it is the answer.
    Used,
    /// Speech resumed or the words differed: dropped unseen.
    Discarded,
}

impl Preemptive {
    pub fn as_str(self) -> &'static str {
        match self {
            Preemptive::Started => "started",
            Preemptive::Used => "used",
            Preemptive::Discarded => "discarded",
        }
    }
}

pub struct LatencyMetrics {
    turn_stage_seconds: HistogramVec,
    preemptive_replies: IntCounterVec,
    turn_decisions: IntCounterVec,
    /// Seconds per Smart Turn inference (features and model).
    pub turn_model_seconds: Histogram,
    /// Bytes of LLM attention state kept between turns.
    pub llm_kv_cache_bytes: IntGauge,
    /// Its bound: `llm.kv_cache_mb` × LLM threads (0 without an embedded LLM).
    pub llm_kv_cache_limit_bytes: IntGauge,
    llm_prompt_tokens: IntCounterVec,
}

impl LatencyMetrics {
    pub fn new() -> Self {
        let turn_stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hearken_turn_stage_seconds",
                "Time from the end of the user's voiced audio to each stage of the reply",
            )
            .buckets(STAGE_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("static metric definition");
        for stage in TurnStage::ALL {
            let _ = turn_stage_seconds.with_label_values(&[stage.as_str()]);
        }
        let zero = |vec: &IntCounterVec, labels: &[&str]| {
            for label in labels {
                vec.with_label_values(&[label]).reset();
            }
        };
        let preemptive_replies = IntCounterVec::new(
            Opts::new(
                "hearken_preemptive_replies_total",
                "Replies started on a draft transcript (started), and what became of them \
                 (used, discarded)",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let turn_decisions = IntCounterVec::new(
            Opts::new(
                "hearken_turn_decisions_total",
                "End-of-turn model verdicts (complete, incomplete) and turns ended by \
                 silence alone (silence)",
            ),
            &["decision"],
        )
        .expect("static metric definition");
        let llm_prompt_tokens = IntCounterVec::new(
            Opts::new(
                "hearken_llm_prompt_tokens_total",
                "Prompt tokens of embedded replies: read by the model, or already in kept \
                 attention state (cached); read_ahead counts the user's words read while \
                 they were still speaking",
            ),
            &["source"],
        )
        .expect("static metric definition");
        zero(&preemptive_replies, &["started", "used", "discarded"]);
        zero(&turn_decisions, &["complete", "incomplete", "silence"]);
        zero(&llm_prompt_tokens, &["read", "cached", "read_ahead"]);
        LatencyMetrics {
            turn_stage_seconds,
            preemptive_replies,
            turn_decisions,
            turn_model_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "hearken_turn_model_seconds",
                    "Time per end-of-turn (Smart Turn) inference",
                )
                .buckets(vec![0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0]),
            )
            .expect("static metric definition"),
            llm_kv_cache_bytes: IntGauge::new(
                "hearken_llm_kv_cache_bytes",
                "Bytes of LLM attention state kept between turns",
            )
            .expect("static metric definition"),
            llm_kv_cache_limit_bytes: IntGauge::new(
                "hearken_llm_kv_cache_limit_bytes",
                "Bound of the LLM attention state kept between turns (llm.kv_cache_mb \
                 per LLM thread)",
            )
            .expect("static metric definition"),
            llm_prompt_tokens,
        }
    }

    pub fn register(&self, registry: &Registry) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.turn_stage_seconds.clone()),
            Box::new(self.preemptive_replies.clone()),
            Box::new(self.turn_decisions.clone()),
            Box::new(self.turn_model_seconds.clone()),
            Box::new(self.llm_kv_cache_bytes.clone()),
            Box::new(self.llm_kv_cache_limit_bytes.clone()),
            Box::new(self.llm_prompt_tokens.clone()),
        ];
        for collector in collectors {
            let _ = registry.register(collector);
        }
    }

    pub fn observe_stage(&self, stage: TurnStage, seconds: f64) {
        self.turn_stage_seconds
            .with_label_values(&[stage.as_str()])
            .observe(seconds);
    }

    /// A speculative reply started, became the answer, or was dropped.
    pub fn count_preemptive(&self, outcome: Preemptive) {
        self.preemptive_replies
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    pub fn preemptive(&self, outcome: Preemptive) -> u64 {
        self.preemptive_replies
            .with_label_values(&[outcome.as_str()])
            .get()
    }

    /// `complete`, `incomplete` or `silence`.
    pub fn count_turn_decision(&self, decision: &str) {
        self.turn_decisions.with_label_values(&[decision]).inc();
    }

    pub fn turn_decisions(&self, decision: &str) -> u64 {
        self.turn_decisions.with_label_values(&[decision]).get()
    }

    pub fn count_prompt_tokens(&self, read: usize, cached: usize) {
        self.llm_prompt_tokens
            .with_label_values(&["read"])
            .inc_by(read as u64);
        self.llm_prompt_tokens
            .with_label_values(&["cached"])
            .inc_by(cached as u64);
    }

    /// Tokens of a turn read ahead of its reply, from a partial transcript.
    pub fn count_read_ahead(&self, tokens: usize) {
        self.llm_prompt_tokens
            .with_label_values(&["read_ahead"])
            .inc_by(tokens as u64);
    }

    pub fn prompt_tokens(&self, source: &str) -> u64 {
        self.llm_prompt_tokens.with_label_values(&[source]).get()
    }
}

impl Default for LatencyMetrics {
    fn default() -> Self {
        Self::new()
    }
}
