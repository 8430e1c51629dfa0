//! `hearken bench streams`: N sessions stream WAV audio in real time for a while; the
//! report gives VAD-event lag, end-of-speech → transcript and → reply latencies (first
//! text, `response.audio.started`, first audio frame), the server's own stage times of
//! each reply (`latency_ms`: turn decided, transcript, first token, first clause, first
//! audio, from the voice end as the server heard it), how replies ended, sessions refused
//! at the server's limits, errors, close codes and an explicit verdict on whether the
//! server keeps up with real time. `--plot` draws it as SVG.
//!
//! Lags are wall-clock arrival of an event minus the send time of the audio it names. A
//! `vad.speech_started` cannot come before `min_speech_ms` of voice after its `audio_ms`,
//! nor a `vad.speech_stopped` before `min_silence_ms` of silence, so the verdict uses the
//! *decision lag*, measured from the audio that completed the decision.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::launcher::{join_all, status_line, Launcher, StreamOpts};
use super::metrics_scrape::{self, format_deltas, REJECTED_COUNTER};
use super::plot::{self, StreamsPlot};
use super::progress::Progress;
use super::replies::{ReplyCounts, Stage};
use super::session::Shared;
use super::stats::{format_counts, print_table, StageSummaries, Summary, TimelinePoint, Window};

#[derive(Debug, clap::Args)]
pub struct StreamsArgs {
    #[command(flatten)]
    pub stream: StreamOpts,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 10)]
    pub sessions: usize,
    /// Seconds of streaming after the last session has started.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds over which session starts are spread.
    #[arg(long, default_value_t = 0.0)]
    pub ramp_up: f64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw latency percentiles and the lag timeline as an SVG chart here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub async fn run(args: StreamsArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let metrics_url = args.stream.metrics_url.as_deref();
    let before = metrics_scrape::scrape_optional(&http, metrics_url).await;
    let shared = Shared::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut launcher = Launcher::new(&args.stream, Arc::clone(&shared), stop_rx)?;
    let progress = Progress::start("streams", {
        let shared = Arc::clone(&shared);
        move || status_line(&shared)
    });
    let mut set = JoinSet::new();
    launcher
        .launch(
            &mut set,
            args.sessions,
            Duration::from_secs_f64(args.ramp_up),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let _ = stop_tx.send(true);
    join_all(
        &mut set,
        Duration::from_secs_f64(args.stream.drain) + Duration::from_secs(15),
    )
    .await;
    progress.finish();
    let server_rejections = metrics_scrape::rejections_since(&http, metrics_url, before).await;

    let report =
        shared.with_window(|w| StreamsReport::new(&args, launcher.loop_ms(), w, server_rejections));
    report.print();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        shared.with_window(|w| plot::streams(path, &streams_plot(&args, w)))?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}

fn streams_plot<'a>(args: &StreamsArgs, w: &'a Window) -> StreamsPlot<'a> {
    StreamsPlot {
        title: format!(
            "hearken bench streams: sessions {}, {} s, {} @ {} Hz",
            args.sessions,
            args.duration,
            args.stream.codec.as_str(),
            args.stream.rate()
        ),
        curves: vec![
            ("VAD decision lag", &w.lag_decision),
            ("transcript after voice end", &w.transcript_after_voice),
            (
                "reply first audio after voice end",
                &w.reply_audio_after_voice,
            ),
            (
                "reply first text after voice end",
                &w.reply_text_after_voice,
            ),
        ],
        timelines: vec![
            ("VAD decision lag", &w.timeline),
            ("transcript after speech_stopped", &w.transcript_timeline),
            ("reply first audio after voice end", &w.reply_timeline),
        ],
        stages: Stage::ALL
            .into_iter()
            .map(|stage| (stage.label(), w.reply_stages.get(stage)))
            .collect(),
    }
}

/// Reply audio the sessions received.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AudioReceived {
    pub frames: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// The `streams` report, printed as a table and written as JSON.
#[derive(Debug, Serialize)]
pub struct StreamsReport {
    pub sessions_requested: usize,
    pub sessions_started: u64,
    pub sessions_failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Sessions the server refused at its session limits (not failures), by status and
    /// reason, e.g. `503 server_full`.
    pub sessions_rejected: BTreeMap<String, u64>,
    /// The server's own count of refused upgrades over the run, by reason (with
    /// `--metrics-url`).
    pub server_rejected_connections: Option<BTreeMap<String, f64>>,
    /// `native` or `realtime`.
    pub protocol: &'static str,
    pub codec: &'static str,
    pub sample_rate: u32,
    pub speed: f64,
    pub duration_s: f64,
    pub audio_loop_ms: u64,
    pub frames_sent: u64,
    pub vad_lag: Summary,
    pub vad_lag_started: Summary,
    pub vad_lag_stopped: Summary,
    pub vad_decision_lag: Summary,
    pub transcript_after_speech_stopped: Summary,
    pub transcript_after_last_voice: Summary,
    /// Voice end (as for `transcript_after_last_voice`) → first `response.text.delta`.
    pub reply_text_after_voice_end: Summary,
    /// Voice end → `response.audio.started`.
    pub reply_audio_started_after_voice_end: Summary,
    /// Voice end → first binary audio frame of the reply.
    pub reply_audio_after_voice_end: Summary,
    /// The server's stage times of the replies, from its own voice end (the `latency_ms`
    /// of `response.audio.started`): where the time of the client's figures goes.
    pub reply_stages: StageSummaries,
    pub replies: ReplyCounts,
    pub audio_received: AudioReceived,
    pub send_slip: Summary,
    pub events: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    pub stale_vad_events: u64,
    pub falling_behind: bool,
    pub behind_reasons: Vec<String>,
    /// Median decision lag in the first and the last third of the run (ms).
    pub lag_trend_ms: Option<(f64, f64)>,
    /// Median latency after `vad.speech_stopped` in the first and last third (ms).
    pub transcript_trend_ms: Option<(f64, f64)>,
    /// Speech stops with no transcript by the end (empty transcripts are not sent; the
    /// rest were still queued, or skipped as overloaded).
    pub stops_without_transcript: u64,
    pub timeline: Vec<TimelinePoint>,
}

impl StreamsReport {
    pub(super) fn new(
        args: &StreamsArgs,
        audio_loop_ms: u64,
        w: &Window,
        server_rejected_connections: Option<BTreeMap<String, f64>>,
    ) -> StreamsReport {
        let mut both = w.lag_started.clone();
        both.merge(&w.lag_stopped);
        let behind_reasons = w.behind_reasons();
        let count = |kind: &str| w.events.get(kind).copied().unwrap_or(0);
        let (stop_event, transcript_event) = args.stream.protocol.stop_and_transcript_events();
        StreamsReport {
            sessions_requested: args.sessions,
            sessions_started: w.sessions_started,
            sessions_failed: w.sessions_failed,
            failures: w.failures.clone(),
            sessions_rejected: w.rejected.clone(),
            server_rejected_connections,
            protocol: args.stream.protocol.as_str(),
            codec: args.stream.codec.as_str(),
            sample_rate: args.stream.rate(),
            speed: args.stream.speed,
            duration_s: args.duration,
            audio_loop_ms,
            frames_sent: w.frames_sent,
            vad_lag: both.summary(),
            vad_lag_started: w.lag_started.summary(),
            vad_lag_stopped: w.lag_stopped.summary(),
            vad_decision_lag: w.lag_decision.summary(),
            transcript_after_speech_stopped: w.transcript_after_stop.summary(),
            transcript_after_last_voice: w.transcript_after_voice.summary(),
            reply_text_after_voice_end: w.reply_text_after_voice.summary(),
            reply_audio_started_after_voice_end: w.reply_started_after_voice.summary(),
            reply_audio_after_voice_end: w.reply_audio_after_voice.summary(),
            reply_stages: w.reply_stages.summaries(),
            replies: w.replies,
            audio_received: AudioReceived {
                frames: w.audio_frames_received,
                bytes: w.audio_bytes_received,
                seconds: w.audio_received_s(args.stream.codec, args.stream.rate()),
            },
            send_slip: w.send_slip.summary(),
            events: w.events.clone(),
            errors: w.errors.clone(),
            close_codes: w.close_codes.clone(),
            stale_vad_events: w.stale_events,
            falling_behind: !behind_reasons.is_empty(),
            behind_reasons,
            lag_trend_ms: w.lag_trend(),
            transcript_trend_ms: w.transcript_trend(),
            stops_without_transcript: count(stop_event).saturating_sub(count(transcript_event)),
            timeline: w.timeline_buckets(),
        }
    }

    /// The latency table: the client's measurements, then the server's stage times when
    /// any reply carried them.
    fn table_rows(&self) -> Vec<(&'static str, Summary)> {
        let mut rows = vec![
            ("VAD event lag (raw, both kinds)", self.vad_lag),
            ("  vad.speech_started (raw)", self.vad_lag_started),
            ("  vad.speech_stopped (raw)", self.vad_lag_stopped),
            ("VAD decision lag (past hysteresis)", self.vad_decision_lag),
            (
                "transcript after speech_stopped",
                self.transcript_after_speech_stopped,
            ),
            (
                "transcript after last voiced audio",
                self.transcript_after_last_voice,
            ),
            (
                "reply first text after voice end",
                self.reply_text_after_voice_end,
            ),
            (
                "reply audio.started after voice end",
                self.reply_audio_started_after_voice_end,
            ),
            (
                "reply first audio after voice end",
                self.reply_audio_after_voice_end,
            ),
        ];
        if self.reply_stages.reported > 0 {
            rows.extend(
                Stage::ALL
                    .into_iter()
                    .map(|stage| (stage.row_label(), self.reply_stages.get(stage))),
            );
        }
        rows.push(("send slip vs real-time schedule", self.send_slip));
        rows
    }

    pub(super) fn print(&self) {
        println!(
            "sessions: requested {}, started {}, failed {} ({}), refused at the server's limit {} ({})",
            self.sessions_requested,
            self.sessions_started,
            self.sessions_failed,
            format_counts(&self.failures),
            self.sessions_rejected.values().sum::<u64>(),
            format_counts(&self.sessions_rejected)
        );
        if let Some(server) = &self.server_rejected_connections {
            println!(
                "server-side count of refused upgrades ({REJECTED_COUNTER} delta): {}",
                format_deltas(server)
            );
        }
        println!(
            "audio ({} protocol): {} @ {} Hz, speed {}x, loop {} ms, {} frames sent over {} s",
            self.protocol,
            self.codec,
            self.sample_rate,
            self.speed,
            self.audio_loop_ms,
            self.frames_sent,
            self.duration_s
        );
        print_table(&self.table_rows());
        let audio_started = self
            .events
            .get("response.audio.started")
            .copied()
            .unwrap_or(0);
        if self.reply_stages.reported > 0 {
            println!(
                "server stage times: from {} of {} response.audio.started (ms from the voice end \
                 as the server heard it; the client rows above also hold the network)",
                self.reply_stages.reported, audio_started
            );
        } else if audio_started > 0 {
            println!("server stage times: none (response.audio.started carries no latency_ms)");
        } else if self.protocol == "realtime" {
            println!("server stage times: not exposed by the Realtime API (client rows only)");
        }

        let r = &self.replies;
        if r.total() > 0 || r.transcripts_without_reply > 0 {
            println!(
                "replies: {} with audio ({} cut while speaking, {} still speaking at the end), \
                 {} cancelled before audio, {} finished without audio, {} unfinished at the end, \
                 {} unpaired; transcripts without a reply: {}",
                r.with_audio,
                r.cut_while_speaking,
                r.speaking_at_end,
                r.cancelled_before_audio,
                r.completed_without_audio,
                r.unfinished,
                r.unpaired,
                r.transcripts_without_reply
            );
        }
        println!(
            "reply audio received: {:.1} s ({} frames, {} bytes)",
            self.audio_received.seconds, self.audio_received.frames, self.audio_received.bytes
        );
        println!("events: {}", format_counts(&self.events));
        println!("errors: {}", format_counts(&self.errors));
        println!("close codes: {}", format_counts(&self.close_codes));
        if self.stale_vad_events > 0 {
            println!(
                "VAD events naming audio older than the send log: {}",
                self.stale_vad_events
            );
        }
        if let Some((first, last)) = self.lag_trend_ms {
            println!("median decision lag: first third {first:.1} ms, last third {last:.1} ms");
        }
        if let Some((first, last)) = self.transcript_trend_ms {
            println!(
                "median transcript latency: first third {first:.0} ms, last third {last:.0} ms; \
                 speech stops without a transcript at the end: {}",
                self.stops_without_transcript
            );
        }
        if self.falling_behind {
            println!("FALLING BEHIND: {}", self.behind_reasons.join("; "));
        } else if self.vad_decision_lag.count == 0 {
            println!("verdict: no VAD events arrived; cannot judge real-time behaviour");
        } else {
            println!("verdict: keeping up with real time");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::bench::replies::ReplyStages;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: StreamsArgs,
    }

    fn report(w: &Window) -> StreamsReport {
        let args = Cli::try_parse_from(["streams", "--audio", "speech.wav"])
            .expect("valid arguments")
            .args;
        StreamsReport::new(&args, 4_000, w, None)
    }

    #[test]
    fn stage_times_get_a_row_each_and_an_object_in_the_json() {
        let mut w = Window::default();
        w.reply_stages.record(&ReplyStages::of(&[
            (Stage::TurnDecided, 180),
            (Stage::FirstToken, 120),
            (Stage::FirstAudio, 450),
        ]));
        let report = report(&w);
        let rows = report.table_rows();
        let labels: Vec<&str> = rows.iter().map(|(label, _)| *label).collect();
        let stage_rows: Vec<&str> = Stage::ALL.iter().map(|s| s.row_label()).collect();
        // After the client's reply rows, before the send slip.
        let first = labels
            .iter()
            .position(|l| *l == stage_rows[0])
            .expect("stage rows");
        assert_eq!(labels[first..first + 5], stage_rows[..]);
        assert_eq!(labels[first - 1], "reply first audio after voice end");
        assert_eq!(labels.last(), Some(&"send slip vs real-time schedule"));
        let first_audio = rows[first + 4].1;
        assert_eq!(first_audio.count, 1);
        assert!((first_audio.p50_ms - 450.0).abs() < 0.5);
        assert_eq!(rows[first + 1].1.count, 0, "no transcript stage reported");

        let json = serde_json::to_value(&report).unwrap();
        let stages = &json["reply_stages"];
        assert_eq!(stages["reported"], 1);
        assert_eq!(stages["turn_decided"]["count"], 1);
        assert_eq!(stages["transcript"]["count"], 0);
        assert!((stages["first_token"]["max_ms"].as_f64().unwrap() - 120.0).abs() < 0.5);
        // The client's own measurements keep their keys.
        assert!(json["reply_audio_after_voice_end"]["p95_ms"].is_number());
    }

    #[test]
    fn a_server_without_stage_times_adds_no_rows() {
        let report = report(&Window::default());
        assert!(!report
            .table_rows()
            .iter()
            .any(|(label, _)| label.starts_with("server stage")));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["reply_stages"]["reported"], 0);
        assert_eq!(json["reply_stages"]["first_audio"]["count"], 0);
    }
}
