//! `hearken bench idle`: opens N sessions that send nothing but a ping every few seconds
//! (to stay under the idle timeout), measures the server's resident memory per idle
//! session (with `--server-pid`), holds them, then ends them all at the same instant and
//! reads the teardown histogram and gauges from `/metrics` before and after.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{interval_at, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::metrics_scrape::{self, print_teardown, ProcSnapshot, Scrape};
use super::progress::Progress;
use super::stats::format_counts;
use super::wsconn::{self, stopped};

/// Bound on waiting for gauges to return to their baseline.
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// Bound on waiting for the server to answer our Close frame.
const CLOSE_ECHO_BOUND: Duration = Duration::from_secs(10);
/// Pause after the last session opened before reading RSS: lets lazy allocations land.
const RSS_SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// WebSocket endpoint of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    pub url: String,
    /// Idle sessions to open.
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Seconds the sessions are held open once all are up.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Prometheus endpoint of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080/metrics")]
    pub metrics_url: String,
    /// The server's pid, to read its RSS, threads and FDs from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// End the sessions with Close frames all at once and report teardown time; without
    /// it the client just drops every socket (TCP close) and reports memory only.
    #[arg(long)]
    pub teardown: bool,
    /// Seconds between pings of one session (stay under the server's idle timeout).
    #[arg(long, default_value_t = 10.0)]
    pub ping_every: f64,
    /// Sessions connecting at the same time.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// How one idle session went.
enum Outcome {
    Opened,
    Failed(String),
    /// The server closed it before the end (code).
    ClosedEarly(String),
    /// Our Close was answered with this code.
    Closed(String),
}

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let before = Scrape::fetch(&http, &args.metrics_url).await?;
    let proc_before = args.server_pid.map(ProcSnapshot::read).transpose()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    let opening = Instant::now();
    let ping_every = Duration::from_secs_f64(args.ping_every);
    for i in 0..args.sessions {
        let url = super::session_url(&args.url, &[("client_id", format!("idle-{i}"))])?;
        let first_ping = opening + ping_every.mul_f64(1.0 + i as f64 / args.sessions as f64);
        set.spawn(idle_session(IdlePlan {
            url,
            gate: Arc::clone(&gate),
            first_ping,
            ping_every,
            close_politely: args.teardown,
            stop: stop_rx.clone(),
            report: report_tx.clone(),
        }));
    }
    drop(report_tx);

    let (mut opened, mut failures, mut closes) = (0usize, BTreeMap::new(), BTreeMap::new());
    let progress = Progress::start("idle", || "opening sessions".to_string());
    while opened + (failures.values().sum::<u64>() as usize) < args.sessions {
        match reports.recv().await {
            Some(Outcome::Opened) => opened += 1,
            Some(Outcome::Failed(reason)) => *failures.entry(reason).or_default() += 1,
            Some(other) => tally(other, &mut failures, &mut closes),
            None => break,
        }
    }
    let open_time = opening.elapsed();
    progress.finish();
    println!(
        "opened {opened} of {} idle sessions in {:.1} s; failed: {}",
        args.sessions,
        open_time.as_secs_f64(),
        format_counts(&failures)
    );
    tokio::time::sleep(RSS_SETTLE).await;
    let open_scrape = Scrape::fetch(&http, &args.metrics_url).await?;
    println!(
        "server says: {} conversations, {} live session actors",
        open_scrape
            .value("hearken_conversations")
            .unwrap_or(f64::NAN),
        open_scrape
            .family("hearken_live_actors")
            .get("kind=\"session\"")
            .copied()
            .unwrap_or(f64::NAN)
    );
    if let (Some(pid), Some(base)) = (args.server_pid, proc_before) {
        let now = ProcSnapshot::read(pid)?;
        let per = (now.rss_kib as f64 - base.rss_kib as f64) / opened.max(1) as f64;
        println!(
            "server RSS {} KiB before, {} KiB with {opened} idle sessions: {per:.1} KiB per idle session \
             (threads {} -> {}, fds {} -> {})",
            base.rss_kib, now.rss_kib, base.threads, now.threads, base.fds, now.fds
        );
    }
    let progress = Progress::start("idle", || "holding".to_string());
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    progress.finish();
    if let (Some(pid), Some(base)) = (args.server_pid, proc_before) {
        let now = ProcSnapshot::read(pid)?;
        let per = (now.rss_kib as f64 - base.rss_kib as f64) / opened.max(1) as f64;
        println!(
            "after holding {} s: RSS {} KiB, {per:.1} KiB per idle session",
            args.hold, now.rss_kib
        );
    }

    // Every session ends at once.
    let closing = Instant::now();
    let _ = stop_tx.send(true);
    while let Some(outcome) = reports.recv().await {
        tally(outcome, &mut failures, &mut closes);
    }
    let _ = timeout(SETTLE_BOUND, async {
        while set.join_next().await.is_some() {}
    })
    .await;
    let (after, settled) =
        metrics_scrape::wait_settled(&http, &args.metrics_url, &before.gauges(), SETTLE_BOUND)
            .await?;
    let settle_time = closing.elapsed();
    println!(
        "closed all at once: close codes {}; gauges {} after {:.0} ms",
        format_counts(&closes),
        if settled {
            "back at baseline"
        } else {
            "NOT back at baseline"
        },
        settle_time.as_secs_f64() * 1000.0
    );
    if args.teardown {
        print_teardown(&before, &after);
    }
    metrics_scrape::print_gauge_deltas(&before.gauges(), &after.gauges());
    if let (Some(pid), Some(base)) = (args.server_pid, proc_before) {
        let now = ProcSnapshot::read(pid)?;
        println!(
            "after teardown: RSS {} KiB ({:+} KiB vs before), threads {} ({:+}), fds {} ({:+})",
            now.rss_kib,
            now.rss_kib as i64 - base.rss_kib as i64,
            now.threads,
            now.threads as i64 - base.threads as i64,
            now.fds,
            now.fds as i64 - base.fds as i64
        );
    }
    Ok(())
}

fn tally(
    outcome: Outcome,
    failures: &mut BTreeMap<String, u64>,
    closes: &mut BTreeMap<String, u64>,
) {
    match outcome {
        Outcome::Opened => {}
        Outcome::Failed(reason) => *failures.entry(reason).or_default() += 1,
        Outcome::ClosedEarly(code) => {
            *failures.entry(format!("closed early: {code}")).or_default() += 1
        }
        Outcome::Closed(code) => *closes.entry(code).or_default() += 1,
    }
}

/// One idle session's orders.
struct IdlePlan {
    url: String,
    gate: Arc<Semaphore>,
    first_ping: Instant,
    ping_every: Duration,
    close_politely: bool,
    stop: watch::Receiver<bool>,
    report: mpsc::UnboundedSender<Outcome>,
}

/// One idle session: connect (gated), wait for `session.started`, report, ping until the
/// stop signal, then leave with a Close frame (or by dropping the socket).
async fn idle_session(plan: IdlePlan) {
    let IdlePlan {
        url,
        gate,
        first_ping,
        ping_every,
        close_politely,
        mut stop,
        report,
    } = plan;
    let outcome = |o: Outcome| drop(report.send(o));
    let permit = gate.acquire_owned().await;
    let mut ws = match wsconn::open(&url).await {
        Ok(ws) => ws,
        Err(error) => return outcome(Outcome::Failed(error.to_string())),
    };
    drop(permit);
    outcome(Outcome::Opened);
    let mut ping = interval_at(first_ping, ping_every);
    let ping_text = json!({ "type": "ping" }).to_string();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = ping.tick() => {
                if ws.send(Message::text(ping_text.clone())).await.is_err() {
                    return outcome(Outcome::ClosedEarly("send failed".into()));
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(frame))) => {
                    return outcome(Outcome::ClosedEarly(wsconn::code_of(frame)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return outcome(Outcome::ClosedEarly("none".into())),
            },
        }
    }
    if !close_politely {
        return outcome(Outcome::Closed("dropped (no Close frame)".into()));
    }
    let echo = match wsconn::send_close(&mut ws, "bench idle done").await {
        Ok(()) => wsconn::close_code(&mut ws, CLOSE_ECHO_BOUND).await,
        Err(reason) => reason,
    };
    outcome(Outcome::Closed(echo));
}
