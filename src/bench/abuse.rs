//! `hearken bench abuse`: real streaming sessions under attack. N sessions stream WAV
//! audio in real time exactly as `streams` runs them, while hostile clients
//! ([`super::attackers`]: slowloris heads, clients that never read, text flooders and
//! garbage-Opus senders) hammer the same server for the whole run. The report gives the
//! real sessions' figures as `streams` does (VAD decision lag, transcripts), how each
//! attacker's connections ended, the server's counters of what it refused, and, with
//! `--metrics-url` (and `--server-pid`), every gauge, FD and thread count before and
//! after. The verdict: the real sessions kept real time (p95 decision lag under
//! `--max-lag-ms`) and every transcript, none of them failed, and the server settled
//! back to its start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::attackers::{self, Attack, Force, KindReport, Target};
use super::audio_src::{AudioLoop, Codec};
use super::launcher::{join_all, status_line, Launcher, StreamOpts};
use super::leaks::{Baseline, LeakReport};
use super::metrics_scrape::{self, Scrape};
use super::progress::Progress;
use super::session::Shared;
use super::streams::{StreamsArgs, StreamsReport};

/// Counter families whose growth the report shows: what the server refused and why
/// sessions ended.
pub const ABUSE_COUNTERS: [&str; 6] = [
    "hearken_bad_input_total",
    "hearken_write_stalls_total",
    "hearken_disconnects_total",
    "hearken_rejected_connections_total",
    "hearken_audio_backpressure_total",
    "hearken_audio_frames_dropped_total",
];

#[derive(Debug, clap::Args)]
pub struct AbuseArgs {
    #[command(flatten)]
    pub stream: StreamOpts,
    /// Real streaming sessions.
    #[arg(long, default_value_t = 50)]
    pub sessions: usize,
    /// Seconds of attack after the real sessions have started.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Seconds over which real session starts are spread.
    #[arg(long, default_value_t = 5.0)]
    pub ramp_up: f64,
    /// Slowloris connections at once (request heads trickled, never finished).
    #[arg(long, default_value_t = 500)]
    pub slowloris: usize,
    /// WebSocket clients that stream and never read, at once.
    #[arg(long, default_value_t = 50)]
    pub never_reading: usize,
    /// Clients flooding text frames, at once.
    #[arg(long, default_value_t = 50)]
    pub flooders: usize,
    /// `codec=opus` sessions sending random bytes, at once.
    #[arg(long, default_value_t = 50)]
    pub garbage_opus: usize,
    /// Seconds an attacker waits after the server ended its connection before the next.
    #[arg(long, default_value_t = 1.0)]
    pub reconnect_delay: f64,
    /// The server's pid, to compare its FDs, threads and RSS before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Bound on waiting for the server to settle back after the run (s).
    #[arg(long, default_value_t = 30.0)]
    pub settle: f64,
    /// The real sessions must keep their p95 VAD decision lag under this (ms).
    #[arg(long, default_value_t = 200.0)]
    pub max_lag_ms: f64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The `abuse` report, printed and written as JSON.
#[derive(Debug, Serialize)]
pub struct AbuseReport {
    pub duration_s: f64,
    /// The real sessions, as `streams` reports them.
    pub real_sessions: StreamsReport,
    /// Per attacker kind: connections and how they ended.
    pub attackers: BTreeMap<String, KindReport>,
    /// Growth of the server's counters (`name{labels}`) over the run.
    pub server_counters: Option<BTreeMap<String, f64>>,
    /// Gauges, FDs and threads before and after (with `--metrics-url`).
    pub leaks: Option<LeakReport>,
    pub passed: bool,
    pub failures: Vec<String>,
}

pub async fn run(args: AbuseArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let metrics_url = args.stream.metrics_url.clone();
    let baseline = match &metrics_url {
        Some(url) => Some(Baseline::take(&http, url, args.server_pid).await?),
        None => None,
    };
    let target = Target::resolve(&args.stream.url).await?;
    let pcm = Arc::new(AudioLoop::load(&args.stream.audio, Codec::Pcm16, 16_000, 0.0)?.frames);
    let shared = Shared::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut launcher = Launcher::new(&args.stream, Arc::clone(&shared), stop_rx.clone())?;
    let force = Force {
        slowloris: args.slowloris,
        never_reading: args.never_reading,
        flooders: args.flooders,
        garbage_opus: args.garbage_opus,
    };
    let reconnect = Duration::from_secs_f64(args.reconnect_delay);
    let mut sessions = JoinSet::new();
    launcher
        .launch(
            &mut sessions,
            args.sessions,
            Duration::from_secs_f64(args.ramp_up),
        )
        .await?;
    let attack = Attack::start(&target, force, reconnect, pcm, &stop_rx);
    let progress = Progress::start("abuse", {
        let shared = Arc::clone(&shared);
        let ended = attack.counter();
        move || {
            format!(
                "{} | attacker connections ended {}",
                status_line(&shared),
                ended()
            )
        }
    });
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let _ = stop_tx.send(true);
    let drain = Duration::from_secs_f64(args.stream.drain) + Duration::from_secs(15);
    let (_, attackers) = tokio::join!(join_all(&mut sessions, drain), attack.finish(drain));
    progress.finish();

    let (server_counters, leaks) = match (&baseline, &metrics_url) {
        (Some(baseline), Some(url)) => {
            let leaks = baseline
                .settle(&http, url, Duration::from_secs_f64(args.settle))
                .await?;
            let after = Scrape::fetch(&http, url).await?;
            let counters = metrics_scrape::series_deltas(&baseline.scrape, &after, &ABUSE_COUNTERS);
            (Some(counters), Some(leaks))
        }
        _ => (None, None),
    };
    let streams_args = StreamsArgs {
        stream: args.stream.clone(),
        sessions: args.sessions,
        duration: args.duration,
        ramp_up: args.ramp_up,
        json: None,
        plot: None,
    };
    let rejected = server_counters.as_ref().map(|c| {
        c.iter()
            .filter_map(|(series, delta)| {
                let reason = series.strip_prefix("hearken_rejected_connections_total{reason=\"")?;
                Some((reason.trim_end_matches("\"}").to_string(), *delta))
            })
            .collect()
    });
    let real_sessions =
        shared.with_window(|w| StreamsReport::new(&streams_args, launcher.loop_ms(), w, rejected));
    let failures = verdict(&args, &real_sessions, leaks.as_ref());
    let report = AbuseReport {
        duration_s: args.duration,
        real_sessions,
        attackers,
        server_counters,
        leaks,
        passed: failures.is_empty(),
        failures,
    };
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report written to {}", path.display());
    }
    Ok(())
}

/// Every way the run fell short; empty when it passed.
fn verdict(args: &AbuseArgs, real: &StreamsReport, leaks: Option<&LeakReport>) -> Vec<String> {
    let mut failures = Vec::new();
    let lag = real.vad_decision_lag;
    if lag.count == 0 {
        failures.push("the real sessions got no VAD events".to_string());
    } else if lag.p95_ms >= args.max_lag_ms {
        failures.push(format!(
            "real sessions' p95 VAD decision lag {:.0} ms >= {:.0} ms",
            lag.p95_ms, args.max_lag_ms
        ));
    }
    let transcripts = real.events.get("transcript.final").copied().unwrap_or(0);
    if transcripts == 0 {
        failures.push("no transcripts (is STT enabled on the server?)".to_string());
    } else if real.stops_without_transcript > 0 {
        failures.push(format!(
            "{} speech stops of the real sessions without a transcript",
            real.stops_without_transcript
        ));
    }
    if real.sessions_started < args.sessions as u64 || real.sessions_failed > 0 {
        failures.push(format!(
            "real sessions: {} of {} started, {} failed",
            real.sessions_started, args.sessions, real.sessions_failed
        ));
    }
    match leaks {
        Some(leaks) if !leaks.settled => failures.push(format!(
            "the server did not settle back: gauges {:?}, fds/threads {:?}",
            leaks.leaked_gauges,
            leaks.fd_thread_deltas()
        )),
        Some(_) => {}
        None => failures.push("no --metrics-url: leaks not checked".to_string()),
    }
    failures
}

impl AbuseReport {
    fn print(&self) {
        println!("== real sessions ==");
        self.real_sessions.print();
        println!("== attackers ==");
        attackers::print_reports(&self.attackers);
        if let Some(counters) = &self.server_counters {
            println!("== server counters (delta over the run) ==");
            for (series, delta) in counters {
                println!("{series:<60} {delta:>+10}");
            }
        }
        if let Some(leaks) = &self.leaks {
            println!("== leaks ==");
            leaks.print();
        }
        if self.passed {
            println!("ABUSE VERDICT: passed");
        } else {
            println!("ABUSE VERDICT: FAILED: {}", self.failures.join("; "));
        }
    }
}
