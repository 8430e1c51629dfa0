//! Latency statistics for the bench: HDR histograms in microseconds, the per-window record
//! every streaming session writes into (the server's own stage times of replies among
//! them), and the "falling behind" verdict.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::audio_src::{Codec, FRAME_MS};
use super::replies::{ReplyCounts, ReplyNote, ReplyStages, Stage};

/// Longest latency a histogram resolves: 10 minutes, in microseconds.
const MAX_US: u64 = 600_000_000;

/// p95 VAD decision lag above which the server is falling behind real time (ms): a
/// listener notices turn-taking delays beyond ~200 ms.
pub const BEHIND_P95_MS: f64 = 200.0;
/// Growth of the median decision lag from the first to the last third of a run that
/// counts as "lag grows over the run" (ms).
pub const BEHIND_GROWTH_MS: f64 = 100.0;
/// Growth of the median transcript latency over a run that counts as the recogniser
/// falling behind (ms): one Moonshine segment takes a few hundred ms, a backlog grows by
/// whole segments.
pub const STT_GROWTH_MS: f64 = 1000.0;
/// Width of one timeline bucket in the JSON report (s).
const TIMELINE_BUCKET_S: f64 = 5.0;

/// A latency histogram in microseconds.
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds"))
    }
}

impl Hist {
    pub fn record(&mut self, latency: Duration) {
        self.record_us(latency.as_micros() as u64);
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn clear(&mut self) {
        self.0.reset();
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The latency at quantile `q` (0..=1), in ms; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn summary(&self) -> Summary {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.0.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p95_ms: ms(self.0.value_at_quantile(0.95)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            max_ms: ms(self.0.max()),
        }
    }
}

/// Quantiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The server's stage times of a window's replies (the `latency_ms` of their
/// `response.audio.started`), one histogram per stage, from the server's voice end.
#[derive(Default)]
pub struct StageHists {
    /// Replies whose `response.audio.started` carried `latency_ms`.
    pub reported: u64,
    hists: [Hist; Stage::ALL.len()],
}

impl StageHists {
    pub fn record(&mut self, stages: &ReplyStages) {
        self.reported += 1;
        for stage in Stage::ALL {
            if let Some(ms) = stages.get(stage) {
                self.hists[stage.index()].record(Duration::from_millis(ms));
            }
        }
    }

    pub fn get(&self, stage: Stage) -> &Hist {
        &self.hists[stage.index()]
    }

    pub fn summaries(&self) -> StageSummaries {
        let of = |stage| self.get(stage).summary();
        StageSummaries {
            reported: self.reported,
            turn_decided: of(Stage::TurnDecided),
            transcript: of(Stage::Transcript),
            first_token: of(Stage::FirstToken),
            first_clause: of(Stage::FirstClause),
            first_audio: of(Stage::FirstAudio),
        }
    }
}

/// Quantiles of each server stage time, in ms from the server's voice end (`reply_stages`
/// in the JSON reports). A stage's `count` is the replies that went through it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageSummaries {
    /// Replies whose `response.audio.started` carried `latency_ms`: 0 from a server
    /// without stage times.
    pub reported: u64,
    pub turn_decided: Summary,
    pub transcript: Summary,
    pub first_token: Summary,
    pub first_clause: Summary,
    pub first_audio: Summary,
}

impl StageSummaries {
    pub fn get(&self, stage: Stage) -> Summary {
        match stage {
            Stage::TurnDecided => self.turn_decided,
            Stage::Transcript => self.transcript,
            Stage::FirstToken => self.first_token,
            Stage::FirstClause => self.first_clause,
            Stage::FirstAudio => self.first_audio,
        }
    }
}

/// What all streaming sessions recorded during one window: a whole `streams` run, or one
/// `ramp` step. Sessions write into it under a mutex: a few events per second each.
#[derive(Default)]
pub struct Window {
    pub sessions_started: u64,
    pub sessions_failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Sessions the server refused at one of its session limits, by reason (e.g.
    /// `503 server_full`): the limit at work, not a failure.
    pub rejected: BTreeMap<String, u64>,
    /// Arrival of `vad.speech_started` minus the send time of the audio at its `audio_ms`.
    pub lag_started: Hist,
    /// The same for `vad.speech_stopped`.
    pub lag_stopped: Hist,
    /// Both kinds, measured from the send time of the audio that completed the decision
    /// (`audio_ms` + min_speech_ms, or + min_silence_ms): the server's own delay.
    pub lag_decision: Hist,
    /// `transcript.final` arrival minus `vad.speech_stopped` arrival.
    pub transcript_after_stop: Hist,
    /// `transcript.final` arrival minus the send time of the last voiced audio (the
    /// *voice end*: the frame holding the `audio_ms` of the matching `vad.speech_stopped`).
    pub transcript_after_voice: Hist,
    /// Voice end → first `response.text.delta` of the reply to that transcript.
    pub reply_text_after_voice: Hist,
    /// Voice end → `response.audio.started` of that reply.
    pub reply_started_after_voice: Hist,
    /// Voice end → first binary audio frame of that reply.
    pub reply_audio_after_voice: Hist,
    /// The server's stage times of every reply whose `response.audio.started` carries
    /// them (paired with a transcript or not: the server timed it from its own voice end).
    pub reply_stages: StageHists,
    /// Replies by how they ended (spoken, cut, cancelled before audio, ...).
    pub replies: ReplyCounts,
    /// Binary frames (reply audio) received, and their bytes.
    pub audio_frames_received: u64,
    pub audio_bytes_received: u64,
    /// Actual send time of each frame minus its real-time schedule (backpressure shows here).
    pub send_slip: Hist,
    pub frames_sent: u64,
    pub events: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    /// VAD events naming audio older than the send log keeps.
    pub stale_events: u64,
    /// (seconds since the run started, decision lag in µs) of every VAD event.
    pub timeline: Vec<(f64, u64)>,
    /// (seconds since the run started, latency after `vad.speech_stopped` in µs) of every
    /// transcript.
    pub transcript_timeline: Vec<(f64, u64)>,
    /// (seconds since the run started, voice end → first reply audio in µs) of every reply
    /// heard.
    pub reply_timeline: Vec<(f64, u64)>,
}

impl Window {
    pub fn count(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
        *map.entry(key.into()).or_default() += 1;
    }

    pub fn fail(&mut self, reason: impl Into<String>) {
        self.sessions_failed += 1;
        Self::count(&mut self.failures, reason);
    }

    /// A session refused at a session limit (`reason` as the report shows it).
    pub fn reject(&mut self, reason: impl Into<String>) {
        Self::count(&mut self.rejected, reason);
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Record what the reply tracker noted, `elapsed` seconds into the run.
    pub fn note_reply(&mut self, note: ReplyNote, elapsed: f64) {
        match note {
            ReplyNote::FirstText(d) => self.reply_text_after_voice.record(d),
            ReplyNote::AudioStarted(d) => self.reply_started_after_voice.record(d),
            ReplyNote::FirstAudio(d) => {
                self.reply_audio_after_voice.record(d);
                self.reply_timeline.push((elapsed, d.as_micros() as u64));
            }
            _ => self.replies.count(note),
        }
    }

    /// Seconds of reply audio received: PCM16 from its bytes, Opus at one 20 ms packet
    /// per frame.
    pub fn audio_received_s(&self, codec: Codec, sample_rate: u32) -> f64 {
        match codec {
            Codec::Pcm16 => self.audio_bytes_received as f64 / (2.0 * sample_rate as f64),
            Codec::Opus => (self.audio_frames_received * FRAME_MS) as f64 / 1000.0,
        }
    }

    pub fn vad_events(&self) -> u64 {
        self.lag_decision.len()
    }

    /// Median decision lag in the first and last third of the run (ms).
    pub fn lag_trend(&self) -> Option<(f64, f64)> {
        trend(&self.timeline)
    }

    /// Median transcript latency in the first and last third of the run (ms).
    pub fn transcript_trend(&self) -> Option<(f64, f64)> {
        trend(&self.transcript_timeline)
    }

    /// Why the server is falling behind real time, if it is.
    pub fn behind_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let decision = self.lag_decision.summary();
        if decision.count > 0 && decision.p95_ms > BEHIND_P95_MS {
            reasons.push(format!(
                "p95 VAD decision lag {:.0} ms > {BEHIND_P95_MS:.0} ms",
                decision.p95_ms
            ));
        }
        let slip = self.send_slip.summary();
        if slip.count > 0 && slip.p95_ms > BEHIND_P95_MS {
            reasons.push(format!(
                "p95 send slip {:.0} ms > {BEHIND_P95_MS:.0} ms (the server stopped reading: backpressure)",
                slip.p95_ms
            ));
        }
        if let Some((first, last)) = self.lag_trend() {
            if last - first > BEHIND_GROWTH_MS {
                reasons.push(format!(
                    "VAD lag grows over the run: median {first:.0} ms in the first third, {last:.0} ms in the last"
                ));
            }
        }
        if let Some((first, last)) = self.transcript_trend() {
            if last - first > STT_GROWTH_MS {
                reasons.push(format!(
                    "transcripts fall behind: median latency {first:.0} ms in the first third, {last:.0} ms in the last"
                ));
            }
        }
        reasons
    }

    /// Decision-lag quantiles per `TIMELINE_BUCKET_S` of the run.
    pub fn timeline_buckets(&self) -> Vec<TimelinePoint> {
        let mut buckets: BTreeMap<u64, Hist> = BTreeMap::new();
        for &(t, us) in &self.timeline {
            let bucket = (t / TIMELINE_BUCKET_S) as u64;
            buckets.entry(bucket).or_default().record_us(us);
        }
        buckets
            .into_iter()
            .map(|(bucket, hist)| {
                let s = hist.summary();
                TimelinePoint {
                    t_s: bucket as f64 * TIMELINE_BUCKET_S,
                    events: s.count,
                    p50_ms: s.p50_ms,
                    p95_ms: s.p95_ms,
                }
            })
            .collect()
    }
}

/// Median of the first and of the last third (by time) of `(seconds, µs)` points, in ms,
/// when both thirds hold points.
fn trend(timeline: &[(f64, u64)]) -> Option<(f64, f64)> {
    let first = timeline.first()?.0;
    let last = timeline.last()?.0;
    let third = (last - first) / 3.0;
    if third <= 0.0 {
        return None;
    }
    let median_of = |from: f64, to: f64| {
        let mut hist = Hist::default();
        for &(_, us) in timeline.iter().filter(|(t, _)| *t >= from && *t <= to) {
            hist.record_us(us);
        }
        (hist.len() > 0).then(|| hist.summary().p50_ms)
    };
    Some((
        median_of(first, first + third)?,
        median_of(last - third, last)?,
    ))
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    pub t_s: f64,
    pub events: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// Narrowest name column of a latency table (characters).
const NAME_WIDTH: usize = 34;

/// A latency table on stdout, its name column as wide as the longest name.
pub fn print_table(rows: &[(&str, Summary)]) {
    let width = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .fold(NAME_WIDTH, usize::max);
    println!(
        "{:<width$} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p95", "p99", "max"
    );
    for (name, s) in rows {
        println!(
            "{:<width$} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            name, s.count, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms
        );
    }
}

/// `key=value` pairs of a counter map, or "none".
pub fn format_counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_lag_is_reported() {
        let mut window = Window::default();
        for i in 0..90 {
            window.timeline.push((i as f64, 20_000 + i * 5_000));
            window.lag_decision.record_us(20_000);
        }
        let reasons = window.behind_reasons();
        assert!(reasons.iter().any(|r| r.contains("grows")), "{reasons:?}");
    }

    #[test]
    fn transcript_backlog_is_reported() {
        let mut window = Window::default();
        for i in 0..30 {
            window
                .transcript_timeline
                .push((i as f64, 500_000 + i * 200_000));
        }
        let reasons = window.behind_reasons();
        assert!(
            reasons.iter().any(|r| r.contains("transcripts")),
            "{reasons:?}"
        );
    }

    #[test]
    fn stage_times_go_to_their_own_histograms() {
        let mut stages = StageHists::default();
        for (decided, audio) in [(180, 450), (200, 500), (220, 550)] {
            stages.record(&ReplyStages::of(&[
                (Stage::TurnDecided, decided),
                (Stage::Transcript, decided + 60),
                (Stage::FirstAudio, audio),
            ]));
        }
        // A reply to no spoken turn's stages, or a report with none of them.
        stages.record(&ReplyStages::default());
        let s = stages.summaries();
        assert_eq!(s.reported, 4);
        assert_eq!(s.turn_decided.count, 3);
        assert_eq!(s.transcript.count, 3);
        assert_eq!(s.first_token.count, 0);
        assert_eq!(s.first_clause.count, 0);
        assert_eq!(s.first_audio.count, 3);
        assert!((s.turn_decided.p50_ms - 200.0).abs() < 0.5, "{s:?}");
        assert!((s.transcript.max_ms - 280.0).abs() < 0.5, "{s:?}");
        assert!(
            (s.get(Stage::FirstAudio).max_ms - 550.0).abs() < 0.5,
            "{s:?}"
        );
        assert_eq!(stages.get(Stage::FirstAudio).len(), 3);
    }

    #[test]
    fn stage_summaries_serialise_one_summary_per_stage() {
        let mut stages = StageHists::default();
        stages.record(&ReplyStages::of(&[(Stage::FirstClause, 420)]));
        let json = serde_json::to_value(stages.summaries()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut expected: Vec<&str> = Stage::ALL.iter().map(|s| s.key()).collect();
        expected.push("reported");
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["reported"], 1);
        assert_eq!(json["first_clause"]["count"], 1);
        let p95 = json["first_clause"]["p95_ms"].as_f64().unwrap();
        assert!((p95 - 420.0).abs() < 0.5, "{p95}");
        assert_eq!(json["first_audio"]["count"], 0);
        for field in ["count", "p50_ms", "p95_ms", "p99_ms", "max_ms"] {
            assert!(json["turn_decided"].get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn steady_low_lag_is_fine() {
        let mut window = Window::default();
        for i in 0..90 {
            window.timeline.push((i as f64, 30_000));
            window.lag_decision.record_us(30_000);
        }
        assert!(window.behind_reasons().is_empty());
        assert_eq!(window.lag_decision.summary().count, 90);
    }
}
