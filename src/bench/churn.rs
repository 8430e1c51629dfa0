//! `hearken bench churn`: C cycles of connect / stream ~300 ms of audio / leave, K at a
//! time, the leaving style taken round-robin: a Close frame, a dropped TCP connection
//! (reset), going idle until the server's timeout (only with `--idle-timeout-ms`), and a
//! reconnect with the same `conversation_id` that must supersede the old socket (4001).
//! `/metrics` (and `/proc/<pid>` with `--server-pid`) are read before and, once the gauges
//! have settled (bounded), after: every gauge, disconnect counter and the teardown
//! histogram is reported as a delta, so a leak shows as a non-zero number. `--json FILE`
//! writes every printed figure as one JSON object ([`ChurnReport`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::SinkExt;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::{interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use super::audio_src::{AudioLoop, Codec, FRAME_MS};
use super::leaks::{gauge_deltas, GaugeDelta, ProcessReport};
use super::metrics_scrape::{
    self, bucket_delta, counter_delta, print_teardown, quantile, ProcSnapshot, Scrape,
    REJECTED_COUNTER, TEARDOWN_HISTOGRAM,
};
use super::progress::Progress;
use super::stats::format_counts;
use super::wsconn::{self, close_code, send_close, Ws};

/// Bound on waiting for a close the server owes us (echo, or 4001), beyond any timeout.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ChurnArgs {
    /// WebSocket endpoint of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    pub url: String,
    /// Prometheus endpoint of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080/metrics")]
    pub metrics_url: String,
    /// Connect / stream / leave cycles in all.
    #[arg(long, default_value_t = 100)]
    pub cycles: usize,
    /// Cycles in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// The server's pid, to compare its FDs, threads and RSS before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The server's `session.idle_timeout_ms`; enables the "idle until timeout" style.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// WAV files to take each cycle's audio from (16 kHz PCM16); silence without.
    #[arg(long, num_args = 1..)]
    pub audio: Vec<PathBuf>,
    /// Audio streamed per cycle before leaving (ms).
    #[arg(long, default_value_t = 300)]
    pub stream_ms: u64,
    /// Bound on waiting for the gauges to return to their start values (s).
    #[arg(long, default_value_t = 30.0)]
    pub settle: f64,
    /// Also write every figure of the report to this file as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Everything `bench churn` prints, for `--json`.
#[derive(Debug, Serialize)]
pub struct ChurnReport {
    pub cycles: usize,
    pub concurrency: usize,
    /// Per leaving style (`Close`, `TcpDrop`, `IdleTimeout`, `Supersede`).
    pub styles: BTreeMap<String, StyleReport>,
    /// The idle-timeout style was left out (no `--idle-timeout-ms`).
    pub idle_timeout_skipped: bool,
    pub sessions_attempted: u64,
    /// Growth of `hearken_disconnects_total`, all reasons.
    pub disconnect_events: f64,
    /// Whether every gauge returned to its start value within `--settle`.
    pub gauges_settled: bool,
    /// Per gauge series: before, after and delta.
    pub gauges: BTreeMap<String, GaugeDelta>,
    pub teardown: TeardownReport,
    /// Growth of `hearken_disconnects_total` by series.
    pub disconnects_by_reason: BTreeMap<String, f64>,
    /// Growth of `hearken_rejected_connections_total` by reason (unmoved ones left out).
    pub refused_upgrades: BTreeMap<String, f64>,
    /// With `--server-pid`: the server process before and after.
    pub server_process: Option<ProcessReport>,
}

#[derive(Debug, Serialize)]
pub struct StyleReport {
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct TeardownReport {
    /// Conversations in the teardown histogram's delta.
    pub conversations: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Style {
    Close,
    TcpDrop,
    IdleTimeout,
    Supersede,
}

/// Per style: completed cycles, failures by reason, close codes seen.
#[derive(Default)]
struct Tally {
    ok: u64,
    failures: BTreeMap<String, u64>,
    codes: BTreeMap<String, u64>,
}

pub async fn run(args: ChurnArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut styles = vec![Style::Close, Style::TcpDrop, Style::Supersede];
    if args.idle_timeout_ms.is_some() {
        styles.insert(2, Style::IdleTimeout);
    }
    let frames: Arc<Vec<bytes::Bytes>> = Arc::new(if args.audio.is_empty() {
        vec![bytes::Bytes::from(vec![0u8; 640])]
    } else {
        AudioLoop::load(&args.audio, Codec::Pcm16, 16_000, 0.0)?.frames
    });
    let before = Scrape::fetch(&http, &args.metrics_url).await?;
    let proc_before = args.server_pid.map(ProcSnapshot::read).transpose()?;
    let next = Arc::new(AtomicUsize::new(0));
    let tallies: Arc<Mutex<BTreeMap<Style, Tally>>> = Arc::default();
    let progress = Progress::start("churn", {
        let (next, tallies) = (Arc::clone(&next), Arc::clone(&tallies));
        let cycles = args.cycles;
        move || {
            let t = tallies.lock().unwrap_or_else(|p| p.into_inner());
            let failed: u64 = t.values().flat_map(|t| t.failures.values()).sum();
            format!(
                "{} of {cycles} cycles started, {failed} failed",
                next.load(Ordering::Relaxed).min(cycles)
            )
        }
    });
    let mut set = JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (next, tallies, frames, styles) = (
            Arc::clone(&next),
            Arc::clone(&tallies),
            Arc::clone(&frames),
            styles.clone(),
        );
        let (url, cycles, stream_ms, idle) = (
            args.url.clone(),
            args.cycles,
            args.stream_ms,
            args.idle_timeout_ms,
        );
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cycles {
                    break;
                }
                let style = styles[i % styles.len()];
                let cycle = Cycle {
                    url: &url,
                    frames: &frames,
                    offset: i * 7,
                    stream_ms,
                    idle_timeout_ms: idle,
                };
                let result = cycle.run(style).await;
                let mut t = tallies.lock().unwrap_or_else(|p| p.into_inner());
                let tally = t.entry(style).or_default();
                match result {
                    Ok(codes) => {
                        tally.ok += 1;
                        for code in codes {
                            *tally.codes.entry(code).or_default() += 1;
                        }
                    }
                    Err(reason) => *tally.failures.entry(reason).or_default() += 1,
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    progress.finish();

    let (after, settled) = metrics_scrape::wait_settled(
        &http,
        &args.metrics_url,
        &before.gauges(),
        Duration::from_secs_f64(args.settle),
    )
    .await?;
    let tallies = tallies.lock().unwrap_or_else(|p| p.into_inner());
    let mut sessions = 0;
    let mut styles = BTreeMap::new();
    for (style, t) in tallies.iter() {
        let per_cycle = if *style == Style::Supersede { 2 } else { 1 };
        sessions += (t.ok + t.failures.values().sum::<u64>()) * per_cycle;
        styles.insert(
            format!("{style:?}"),
            StyleReport {
                ok: t.ok,
                failed: t.failures.values().sum(),
                failures: t.failures.clone(),
                close_codes: t.codes.clone(),
            },
        );
        println!(
            "{style:?}: ok {}, failed {} ({}), close codes {}",
            t.ok,
            t.failures.values().sum::<u64>(),
            format_counts(&t.failures),
            format_counts(&t.codes)
        );
    }
    if args.idle_timeout_ms.is_none() {
        println!("IdleTimeout: skipped (give --idle-timeout-ms to include it)");
    }
    let disconnects: f64 = after
        .family("hearken_disconnects_total")
        .values()
        .sum::<f64>()
        - before
            .family("hearken_disconnects_total")
            .values()
            .sum::<f64>();
    println!("sessions attempted {sessions}, disconnect events published {disconnects}");
    println!(
        "gauges {}",
        if settled {
            "settled back at their start values"
        } else {
            "did NOT settle within the bound"
        }
    );
    metrics_scrape::print_gauge_deltas(&before.gauges(), &after.gauges());
    print_teardown(&before, &after);
    let mut server_process = None;
    if let (Some(pid), Some(was)) = (args.server_pid, proc_before) {
        let now = ProcSnapshot::read(pid)?;
        server_process = Some(ProcessReport {
            before: was,
            after: now,
        });
        println!(
            "server process: fds {} -> {} ({:+}), threads {} -> {} ({:+}), RSS {} -> {} KiB ({:+} KiB)",
            was.fds,
            now.fds,
            now.fds as i64 - was.fds as i64,
            was.threads,
            now.threads,
            now.threads as i64 - was.threads as i64,
            was.rss_kib,
            now.rss_kib,
            now.rss_kib as i64 - was.rss_kib as i64
        );
    }
    if let Some(path) = &args.json {
        let report = ChurnReport {
            cycles: args.cycles,
            concurrency: args.concurrency,
            styles,
            idle_timeout_skipped: args.idle_timeout_ms.is_none(),
            sessions_attempted: sessions,
            disconnect_events: disconnects,
            gauges_settled: settled,
            gauges: gauge_deltas(&before, &after),
            teardown: teardown_report(&before, &after),
            disconnects_by_reason: family_delta(&before, &after, "hearken_disconnects_total"),
            refused_upgrades: counter_delta(&before, &after, REJECTED_COUNTER),
            server_process,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report written to {}", path.display());
    }
    Ok(())
}

/// The same figures `print_teardown` prints, from the histogram's delta.
fn teardown_report(before: &Scrape, after: &Scrape) -> TeardownReport {
    let delta = bucket_delta(
        &before.buckets(TEARDOWN_HISTOGRAM),
        &after.buckets(TEARDOWN_HISTOGRAM),
    );
    let ms = |q: f64| quantile(&delta, q).map(|s| s * 1000.0);
    TeardownReport {
        conversations: delta.last().map_or(0.0, |b| b.1),
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
    }
}

/// Growth of every series of a counter family, keyed by its labels (unmoved ones kept).
fn family_delta(before: &Scrape, after: &Scrape, name: &str) -> BTreeMap<String, f64> {
    let was = before.family(name);
    after
        .family(name)
        .into_iter()
        .map(|(labels, now)| {
            let delta = now - was.get(&labels).copied().unwrap_or(0.0);
            (labels, delta)
        })
        .collect()
}

/// One connect / stream / leave cycle.
pub(super) struct Cycle<'a> {
    pub url: &'a str,
    pub frames: &'a [bytes::Bytes],
    pub offset: usize,
    pub stream_ms: u64,
    pub idle_timeout_ms: Option<u64>,
}

impl Cycle<'_> {
    /// Close codes seen, or why the cycle failed.
    pub async fn run(&self, style: Style) -> Result<Vec<String>, String> {
        let conversation = uuid::Uuid::new_v4().to_string();
        let mut ws = self.open(&conversation).await?;
        self.stream(&mut ws).await?;
        match style {
            Style::Close => {
                send_close(&mut ws, "churn").await?;
                Ok(vec![close_code(&mut ws, CLOSE_BOUND).await])
            }
            Style::TcpDrop => {
                if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                    // A reset, not a FIN: the harshest way a client can vanish.
                    let _ = tcp.set_zero_linger();
                }
                drop(ws);
                Ok(vec!["dropped".into()])
            }
            Style::IdleTimeout => {
                let idle = Duration::from_millis(self.idle_timeout_ms.unwrap_or(0));
                expect_code(close_code(&mut ws, idle + CLOSE_BOUND).await, "4000")
            }
            Style::Supersede => {
                let mut newer = self.open(&conversation).await?;
                let old = expect_code(close_code(&mut ws, CLOSE_BOUND).await, "4001")?;
                let _ = send_close(&mut newer, "churn").await;
                let new = close_code(&mut newer, CLOSE_BOUND).await;
                Ok(old.into_iter().chain([new]).collect())
            }
        }
    }

    async fn open(&self, conversation: &str) -> Result<Ws, String> {
        let url = super::session_url(self.url, &[("conversation_id", conversation.to_string())])
            .map_err(|e| e.to_string())?;
        wsconn::open(&url).await.map_err(|e| e.to_string())
    }

    /// ~`stream_ms` of audio in real time.
    async fn stream(&self, ws: &mut Ws) -> Result<(), String> {
        let mut tick = interval(Duration::from_millis(FRAME_MS));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        for k in 0..self.stream_ms.div_ceil(FRAME_MS) as usize {
            tick.tick().await;
            let frame = self.frames[(self.offset + k) % self.frames.len()].clone();
            ws.send(Message::Binary(frame))
                .await
                .map_err(|e| format!("send audio: {e}"))?;
        }
        Ok(())
    }
}

fn expect_code(code: String, expected: &str) -> Result<Vec<String>, String> {
    if code == expected {
        Ok(vec![code])
    } else {
        Err(format!("expected close {expected}, got {code}"))
    }
}
