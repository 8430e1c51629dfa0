//! `hearken bench ramp`: streaming sessions added step by step (the running ones keep
//! streaming), each step measured on its own, until the server falls behind or a session
//! fails. Reports the highest session count that kept p95 VAD decision lag under 200 ms
//! with no failed session.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::launcher::{join_all, status_line, Launcher, Shared, StreamOpts};
use super::progress::Progress;
use super::stats::{format_counts, Summary, Window};

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
}

/// One step of the ramp.
#[derive(Debug, Serialize)]
pub struct Step {
    pub sessions: usize,
    pub live: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub vad_events: u64,
    pub vad_lag: Summary,
    pub vad_decision_lag: Summary,
    pub send_slip: Summary,
    pub transcript_after_speech_stopped: Summary,
    pub errors: BTreeMap<String, u64>,
    pub pass: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Serialize)]
struct RampReport {
    /// Highest session count that passed; `None` when the first step failed.
    max_sustained_sessions: Option<usize>,
    steps: Vec<Step>,
}

pub async fn run(args: RampArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.start > 0 && args.step > 0,
        "--start and --step must be positive"
    );
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
        );
        progress.println(step_line(&step));
        let pass = step.pass;
        steps.push(step);
        if !pass {
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

    println!(
        "{:>8} {:>6} {:>6} {:>7} {:>10} {:>10} {:>10} {:>10}  verdict",
        "sessions", "live", "failed", "events", "raw p95", "dec p50", "dec p95", "slip p95"
    );
    for step in &steps {
        println!("{}", step_line(step));
    }
    match best {
        Some(n) => println!(
            "max sustained sessions: {n} (p95 VAD decision lag < 200 ms, no failed session)"
        ),
        None => println!(
            "max sustained sessions: none: the first step ({}) already failed",
            args.start
        ),
    }
    if let Some(path) = &args.json {
        let report = RampReport {
            max_sustained_sessions: best,
            steps,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report written to {}", path.display());
    }
    Ok(())
}

fn judge(sessions: usize, live: u64, warmup: &Window, measured: &Window) -> Step {
    let mut failures = warmup.failures.clone();
    for (reason, n) in &measured.failures {
        *failures.entry(reason.clone()).or_default() += n;
    }
    let failed = warmup.sessions_failed + measured.sessions_failed;
    let mut reasons = measured.behind_reasons();
    if failed > 0 {
        reasons.push(format!(
            "{failed} failed session(s): {}",
            format_counts(&failures)
        ));
    }
    if (live as usize) < sessions {
        reasons.push(format!("only {live} of {sessions} sessions live"));
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
    let mut raw = measured.lag_started.clone();
    raw.merge(&measured.lag_stopped);
    Step {
        sessions,
        live,
        failed,
        failures,
        vad_events: measured.vad_events(),
        vad_lag: raw.summary(),
        vad_decision_lag: measured.lag_decision.summary(),
        send_slip: measured.send_slip.summary(),
        transcript_after_speech_stopped: measured.transcript_after_stop.summary(),
        errors: measured.errors.clone(),
        pass: reasons.is_empty(),
        reasons,
    }
}

fn step_line(step: &Step) -> String {
    format!(
        "{:>8} {:>6} {:>6} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1}  {}",
        step.sessions,
        step.live,
        step.failed,
        step.vad_events,
        step.vad_lag.p95_ms,
        step.vad_decision_lag.p50_ms,
        step.vad_decision_lag.p95_ms,
        step.send_slip.p95_ms,
        if step.pass {
            "ok".to_string()
        } else {
            format!("FALLING BEHIND: {}", step.reasons.join("; "))
        }
    )
}
