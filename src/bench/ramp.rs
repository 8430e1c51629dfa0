//! `hearken bench ramp`: streaming sessions added step by step (the running ones keep
//! streaming), each step measured on its own, until the server falls behind, a session
//! fails, or the server's session limit refuses sessions while every admitted one keeps
//! up (the limit enforced: the ramp stops there, it has not fallen behind). Reports the
//! highest session count that kept p95 VAD decision lag under 200 ms with no failed
//! session (and, with `--max-transcript-p95-ms` / `--max-first-audio-p95-ms`, whose
//! replies kept those bounds: see [`LatencyBounds`]), and the p95 of the server's own
//! stage times of replies (`latency_ms`) at each step when the server reports them.
//! `--plot` draws the p95 latencies against the session count as SVG.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::launcher::{join_all, status_line, Launcher, StreamOpts};
use super::metrics_scrape::{self, format_deltas, REJECTED_COUNTER};
use super::plot::{self, LimitMark, RampPlot, RampPoint};
use super::progress::Progress;
use super::replies::Stage;
use super::session::Shared;
use super::stats::{format_counts, StageSummaries, Summary, Window, BEHIND_P95_MS};

mod bounds;

pub use bounds::LatencyBounds;

#[derive(Debug, clap::Args)]
pub struct RampArgs {
    #[command(flatten)]
    pub stream: StreamOpts,
    /// Sessions in the first step.
    #[arg(long, default_value_t = 50)]
    pub start: usize,
    /// Sessions added at each further step.
    #[arg(long, default_value_t = 50)]
    pub step: usize,
    /// Stop after the step reaching this many sessions.
    #[arg(long, default_value_t = 1000)]
    pub max: usize,
    /// Seconds measured at each session count.
    #[arg(long, default_value_t = 20.0)]
    pub step_duration: f64,
    /// Seconds over which a step's new sessions start (not measured).
    #[arg(long, default_value_t = 4.0)]
    pub step_ramp_up: f64,
    /// Seconds after the new sessions started before measuring (not measured).
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw p95 latencies against the session count as an SVG chart here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub bounds: LatencyBounds,
}

/// One step of the ramp.
#[derive(Debug, Serialize)]
pub struct Step {
    pub sessions: usize,
    pub live: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Sessions refused at the server's session limit, by status and reason.
    pub rejected: BTreeMap<String, u64>,
    pub vad_events: u64,
    pub vad_lag: Summary,
    pub vad_decision_lag: Summary,
    pub send_slip: Summary,
    pub transcript_after_speech_stopped: Summary,
    pub transcript_after_voice_end: Summary,
    pub reply_audio_after_voice_end: Summary,
    /// The server's stage times of the step's replies, from its own voice end.
    pub reply_stages: StageSummaries,
    pub errors: BTreeMap<String, u64>,
    /// Every admitted session kept up, with no failure and no error.
    pub pass: bool,
    /// `pass`, and the session limit refused the rest: the limit at work.
    pub limit_enforced: bool,
    pub reasons: Vec<String>,
}

impl Step {
    fn refused(&self) -> u64 {
        self.rejected.values().sum()
    }
}

#[derive(Debug, Serialize)]
struct RampReport {
    /// Highest session count that passed; `None` when the first step failed. When the
    /// session limit was enforced, the sessions it admitted.
    max_sustained_sessions: Option<usize>,
    /// The step where the server's session limit refused sessions while the admitted
    /// ones kept up.
    limit_enforced: Option<LimitReport>,
    /// The server's own count of refused upgrades over the ramp, by reason (with
    /// `--metrics-url`).
    server_rejected_connections: Option<BTreeMap<String, f64>>,
    steps: Vec<Step>,
}

#[derive(Debug, Serialize)]
struct LimitReport {
    at_sessions: usize,
    admitted: u64,
    rejected: BTreeMap<String, u64>,
    admitted_errors: u64,
    admitted_failed: u64,
    vad_decision_lag_p95_ms: f64,
}

pub async fn run(args: RampArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.start > 0 && args.step > 0,
        "--start and --step must be positive"
    );
    let http = reqwest::Client::new();
    let metrics_url = args.stream.metrics_url.as_deref();
    let before = metrics_scrape::scrape_optional(&http, metrics_url).await;
    let shared = Shared::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut launcher = Launcher::new(&args.stream, Arc::clone(&shared), stop_rx)?;
    let progress = Progress::start("ramp", {
        let shared = Arc::clone(&shared);
        move || status_line(&shared)
    });
    let mut set = JoinSet::new();
    let mut steps = Vec::new();
    let mut best = None;
    let mut target = args.start.min(args.max);
    loop {
        let take = || shared.with_window(std::mem::take::<Window>);
        take();
        launcher
            .launch(
                &mut set,
                target - launcher.started,
                Duration::from_secs_f64(args.step_ramp_up),
            )
            .await?;
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let warmup = take();
        tokio::time::sleep(Duration::from_secs_f64(args.step_duration)).await;
        let measured = take();
        let step = judge(
            target,
            shared.live.load(Ordering::Relaxed),
            &warmup,
            &measured,
            &args.bounds,
        );
        progress.println(step_line(&step));
        let (pass, limit, live) = (step.pass, step.limit_enforced, step.live as usize);
        steps.push(step);
        if !pass {
            break;
        }
        if limit {
            // The admitted sessions are what the server carried; it stops here by design.
            best = Some(best.map_or(live, |b: usize| b.max(live)));
            break;
        }
        best = Some(target);
        if target >= args.max {
            break;
        }
        target = (target + args.step).min(args.max);
    }
    let _ = stop_tx.send(true);
    join_all(
        &mut set,
        Duration::from_secs_f64(args.stream.drain) + Duration::from_secs(20),
    )
    .await;
    progress.finish();
    let server_rejections = metrics_scrape::rejections_since(&http, metrics_url, before).await;

    println!(
        "{:>8} {:>6} {:>6} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10}  verdict",
        "sessions",
        "live",
        "failed",
        "refused",
        "events",
        "raw p95",
        "dec p50",
        "dec p95",
        "slip p95"
    );
    for step in &steps {
        println!("{}", step_line(step));
    }
    for line in stage_table(&steps) {
        println!("{line}");
    }
    let limit = steps
        .iter()
        .find(|s| s.limit_enforced)
        .map(|s| LimitReport {
            at_sessions: s.sessions,
            admitted: s.live,
            rejected: s.rejected.clone(),
            admitted_errors: s.errors.values().sum(),
            admitted_failed: s.failed,
            vad_decision_lag_p95_ms: s.vad_decision_lag.p95_ms,
        });
    if let Some(limit) = &limit {
        println!(
            "limit enforced at {} sessions: {} rejected with {}; admitted sessions: {} live, \
             {} errors, {} failed, p95 VAD decision lag {:.0} ms",
            limit.at_sessions,
            limit.rejected.values().sum::<u64>(),
            format_counts(&limit.rejected),
            limit.admitted,
            limit.admitted_errors,
            limit.admitted_failed,
            limit.vad_decision_lag_p95_ms
        );
    }
    if let Some(server) = &server_rejections {
        println!(
            "server-side count of refused upgrades ({REJECTED_COUNTER} delta): {}",
            format_deltas(server)
        );
    }
    match (best, &limit) {
        (Some(n), Some(_)) => println!(
            "max sustained sessions: {n} (every session the server admitted kept up; its session limit refused the rest)"
        ),
        (Some(n), None) => println!(
            "max sustained sessions: {n} (p95 VAD decision lag < {BEHIND_P95_MS:.0} ms{}, no failed session)",
            args.bounds.describe()
        ),
        (None, _) => println!(
            "max sustained sessions: none: the first step ({}) already failed",
            args.start
        ),
    }
    if let Some(path) = &args.plot {
        plot::ramp(path, &ramp_plot(&args, &steps, best))?;
        println!("plot written to {}", path.display());
    }
    if let Some(path) = &args.json {
        let report = RampReport {
            max_sustained_sessions: best,
            limit_enforced: limit,
            server_rejected_connections: server_rejections,
            steps,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report written to {}", path.display());
    }
    Ok(())
}

fn judge(
    sessions: usize,
    live: u64,
    warmup: &Window,
    measured: &Window,
    bounds: &LatencyBounds,
) -> Step {
    let merged = |map: fn(&Window) -> &BTreeMap<String, u64>| {
        let mut all = map(warmup).clone();
        for (key, n) in map(measured) {
            *all.entry(key.clone()).or_default() += n;
        }
        all
    };
    let failures = merged(|w| &w.failures);
    let rejected = merged(|w| &w.rejected);
    let refused: u64 = rejected.values().sum();
    let failed = warmup.sessions_failed + measured.sessions_failed;
    let mut reasons = measured.behind_reasons();
    if failed > 0 {
        reasons.push(format!(
            "{failed} failed session(s): {}",
            format_counts(&failures)
        ));
    }
    let admitted = sessions.saturating_sub(refused as usize);
    if (live as usize) < admitted {
        reasons.push(format!("only {live} of {admitted} admitted sessions live"));
    }
    if !measured.errors.is_empty() {
        reasons.push(format!(
            "server errors: {}",
            format_counts(&measured.errors)
        ));
    }
    if measured.vad_events() == 0 {
        reasons.push("no VAD event arrived".into());
    }
    let transcript_after_voice_end = measured.transcript_after_voice.summary();
    let reply_audio_after_voice_end = measured.reply_audio_after_voice.summary();
    reasons.extend(bounds.broken(&transcript_after_voice_end, &reply_audio_after_voice_end));
    let mut raw = measured.lag_started.clone();
    raw.merge(&measured.lag_stopped);
    let pass = reasons.is_empty();
    Step {
        sessions,
        live,
        failed,
        failures,
        rejected,
        vad_events: measured.vad_events(),
        vad_lag: raw.summary(),
        vad_decision_lag: measured.lag_decision.summary(),
        send_slip: measured.send_slip.summary(),
        transcript_after_speech_stopped: measured.transcript_after_stop.summary(),
        transcript_after_voice_end,
        reply_audio_after_voice_end,
        reply_stages: measured.reply_stages.summaries(),
        errors: measured.errors.clone(),
        pass,
        limit_enforced: pass && refused > 0,
        reasons,
    }
}

fn step_line(step: &Step) -> String {
    let verdict = if step.limit_enforced {
        format!(
            "LIMIT ENFORCED: {} refused ({}), the {} admitted keep up",
            step.refused(),
            format_counts(&step.rejected),
            step.live
        )
    } else if step.pass {
        "ok".to_string()
    } else if step.refused() > 0 {
        format!(
            "FALLING BEHIND: {} (and {} refused at the limit)",
            step.reasons.join("; "),
            step.refused()
        )
    } else {
        format!("FALLING BEHIND: {}", step.reasons.join("; "))
    };
    format!(
        "{:>8} {:>6} {:>6} {:>7} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1}  {verdict}",
        step.sessions,
        step.live,
        step.failed,
        step.refused(),
        step.vad_events,
        step.vad_lag.p95_ms,
        step.vad_decision_lag.p50_ms,
        step.vad_decision_lag.p95_ms,
        step.send_slip.p95_ms,
    )
}

/// The p95 of the server's stage times at each step, as lines of a table; none when no
/// reply of the ramp carried them.
fn stage_table(steps: &[Step]) -> Vec<String> {
    if steps.iter().all(|s| s.reply_stages.reported == 0) {
        return Vec::new();
    }
    let mut header = format!("{:>8} {:>7}", "sessions", "replies");
    for stage in Stage::ALL {
        header.push_str(&format!(" {:>12}", stage.key()));
    }
    let mut lines = vec![
        "server stage times, p95 (ms from the voice end the server heard):".to_string(),
        header,
    ];
    for step in steps {
        let mut line = format!("{:>8} {:>7}", step.sessions, step.reply_stages.reported);
        for stage in Stage::ALL {
            let s = step.reply_stages.get(stage);
            if s.count > 0 {
                line.push_str(&format!(" {:>12.1}", s.p95_ms));
            } else {
                line.push_str(&format!(" {:>12}", "-"));
            }
        }
        lines.push(line);
    }
    lines
}

/// The chart of a ramp: each step at the sessions it carried (the admitted ones, where
/// the limit refused some).
fn ramp_plot(args: &RampArgs, steps: &[Step], best: Option<usize>) -> RampPlot {
    let p95 = |s: &Summary| (s.count > 0).then_some(s.p95_ms);
    RampPlot {
        title: format!(
            "hearken bench ramp: +{} sessions per step, {} s each",
            args.step, args.step_duration
        ),
        points: steps
            .iter()
            .map(|s| RampPoint {
                sessions: if s.limit_enforced {
                    s.live as usize
                } else {
                    s.sessions
                },
                decision_p95_ms: s.vad_decision_lag.p95_ms,
                transcript_p95_ms: p95(&s.transcript_after_voice_end),
                reply_audio_p95_ms: p95(&s.reply_audio_after_voice_end),
                stage_p95_ms: Stage::ALL.map(|stage| p95(&s.reply_stages.get(stage))),
                pass: s.pass,
            })
            .collect(),
        max_sustained: best,
        limit: steps.iter().find(|s| s.limit_enforced).map(|s| LimitMark {
            requested: s.sessions,
            admitted: s.live as usize,
            refused: s.refused(),
        }),
    }
}

#[cfg(test)]
mod tests;
