//! `hearken bench soak --duration 30m`: a long mixed load, to find what grows. For the
//! whole duration it runs streaming sessions (as `streams`), churn cycles in every leaving
//! style (as `churn`) and a few hostile clients of each kind (as `abuse`), and samples
//! the server every `--sample-every` (default one minute): RSS, FDs and threads from
//! `/proc/<pid>` and the leak gauges from `/metrics`, with how full the bounded caches
//! are (the LLM's kept attention state against its bound, the stored conversations). The
//! report gives the RSS slope after the warm-up (least squares, KiB per 10 minutes) and
//! over the last `--slope-window`, and, once the load has stopped and the server has
//! settled, what was left behind: live actors, in-flight jobs, open files, FDs and
//! threads against the start. `--json FILE` writes every figure and sample.
//!
//! RSS grows while the caches fill, by design, and that is no leak: by default
//! (`--warmup auto`) the warm-up lasts until the kept attention state has reached its
//! bound, so the slope after it is what the caches do not explain.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::attackers::{self, Attack, Force, KindReport, Target};
use super::audio_src::{AudioLoop, Codec};
use super::churn::{Cycle, Style};
use super::launcher::{join_all, status_line, Launcher, StreamOpts};
use super::leaks::{Baseline, LeakReport};
use super::metrics_scrape::{ProcSnapshot, Scrape};
use super::progress::Progress;
use super::session::Shared;
use super::stats::{format_counts, Summary};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub stream: StreamOpts,
    /// How long the load runs: `30m`, `90s`, `1h`, or plain seconds.
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    pub duration: Duration,
    /// Time between two samples of the server.
    #[arg(long, value_parser = parse_duration, default_value = "1m")]
    pub sample_every: Duration,
    /// Samples before this are left out of the RSS slope: `auto` until the LLM's kept
    /// attention state is at its bound (`hearken_llm_kv_cache_bytes` at 90 % of
    /// `hearken_llm_kv_cache_limit_bytes`; 5 minutes on a server without one), or a
    /// duration (`5m`).
    #[arg(long, value_parser = parse_warmup, default_value = "auto")]
    pub warmup: Warmup,
    /// Between two samples the RSS is read this often, for its floor (the lowest value
    /// since the previous sample).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub rss_probe_every: Duration,
    /// The RSS slope is also fitted over the samples of this last stretch of the run.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub slope_window: Duration,
    /// The server's pid (required: RSS, FDs and threads come from `/proc/<pid>`).
    #[arg(long)]
    pub server_pid: u32,
    /// Streaming sessions for the whole duration.
    #[arg(long, default_value_t = 2)]
    pub sessions: usize,
    /// Churn cycles in flight at once.
    #[arg(long, default_value_t = 2)]
    pub churn_concurrency: usize,
    /// Audio streamed per churn cycle (ms).
    #[arg(long, default_value_t = 300)]
    pub churn_stream_ms: u64,
    /// The server's `session.idle_timeout_ms`; adds the "idle until timeout" churn style.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Slowloris connections at once.
    #[arg(long, default_value_t = 20)]
    pub slowloris: usize,
    /// Never-reading clients at once.
    #[arg(long, default_value_t = 2)]
    pub never_reading: usize,
    /// Text flooders at once.
    #[arg(long, default_value_t = 2)]
    pub flooders: usize,
    /// Garbage-Opus senders at once.
    #[arg(long, default_value_t = 2)]
    pub garbage_opus: usize,
    /// Seconds an attacker waits after the server ended its connection before the next.
    #[arg(long, default_value_t = 5.0)]
    pub reconnect_delay: f64,
    /// Bound on waiting for the server to settle back after the load (s).
    #[arg(long, default_value_t = 60.0)]
    pub settle: f64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Where the RSS slope starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    /// Once the bounded caches are full.
    Auto,
    Fixed(Duration),
}

/// The LLM's kept attention state counts as full from this share of its bound: it
/// stays just under it (whole entries are evicted to make room).
const CACHE_FULL: f64 = 0.9;

/// The warm-up `auto` falls back to on a server without a kept attention state.
const FALLBACK_WARMUP: Duration = Duration::from_secs(300);

/// `auto` or a duration.
pub fn parse_warmup(text: &str) -> Result<Warmup, String> {
    match text.trim() {
        "auto" => Ok(Warmup::Auto),
        other => parse_duration(other).map(Warmup::Fixed),
    }
}

/// `30m`, `90s`, `1h`, `500ms` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30m, 90s or 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit `{other}` (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

/// One look at the server.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    pub rss_kib: u64,
    /// The lowest RSS read since the previous sample (every `--rss-probe-every`, this
    /// sample's own reading included). The RSS of a moment holds whatever buffers the
    /// models have in flight (tens of MB that come and go); its floor is what stays.
    pub rss_floor_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// Sum of `hearken_live_actors` over every kind.
    pub live_actors: f64,
    pub conversations: f64,
    pub inflight_jobs: f64,
    pub open_files: f64,
    pub churn_cycles: usize,
    /// `hearken_llm_kv_cache_bytes`: the LLM's kept attention state.
    pub kv_cache_bytes: f64,
    /// `hearken_llm_kv_cache_limit_bytes`: its bound (0 without an embedded LLM).
    pub kv_cache_limit_bytes: f64,
    /// `hearken_stored_conversations`: histories kept for resumption (bounded by
    /// `llm.history_ttl_ms`, count and bytes).
    pub stored_conversations: f64,
    /// `hearken_heap_allocated_bytes`: what the process holds from malloc. Growing
    /// after the warm-up, with the caches full, it is a leak (or a cache unbounded).
    pub heap_allocated_bytes: f64,
    /// `hearken_heap_free_bytes`: free memory malloc keeps in its arenas. Growing, it is
    /// fragmentation.
    pub heap_free_bytes: f64,
}

impl Sample {
    fn kv_cache_full(&self) -> bool {
        self.kv_cache_limit_bytes > 0.0
            && self.kv_cache_bytes >= CACHE_FULL * self.kv_cache_limit_bytes
    }
}

/// Churn cycles by style.
#[derive(Debug, Default, Serialize)]
pub struct ChurnTally {
    pub ok: u64,
    pub failures: BTreeMap<String, u64>,
}

/// What the load left behind, by resource.
#[derive(Debug, Serialize)]
pub struct Leftovers {
    pub live_actors: f64,
    pub conversations: f64,
    pub inflight_jobs: f64,
    pub open_files: f64,
    pub fds: Option<i64>,
    pub threads: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub duration_s: f64,
    /// The warm-up the slope starts after (s); with `--warmup auto`, the first sample at
    /// which the kept attention state was full (the run's length when it never was).
    pub warmup_s: f64,
    /// `auto` or `fixed`.
    pub warmup_mode: &'static str,
    /// When the kept attention state first reached its bound (s), if it did.
    pub kv_cache_full_at_s: Option<f64>,
    pub samples: Vec<Sample>,
    /// Least-squares RSS slope over the samples after the warm-up (KiB per 10 minutes);
    /// `None` with fewer than two such samples.
    pub rss_slope_kib_per_10min: Option<f64>,
    /// Samples the slope was fitted to.
    pub slope_samples: usize,
    /// The same over the samples of the last `slope_window_s` of the run.
    pub rss_slope_last_window_kib_per_10min: Option<f64>,
    pub slope_window_s: f64,
    pub last_window_samples: usize,
    /// The two slopes fitted to the RSS floors (`Sample::rss_floor_kib`) instead: far
    /// less noisy, so the figure to judge a leak by.
    pub rss_floor_slope_kib_per_10min: Option<f64>,
    pub rss_floor_slope_last_window_kib_per_10min: Option<f64>,
    pub streams: StreamsFigures,
    pub churn: BTreeMap<String, ChurnTally>,
    pub attackers: BTreeMap<String, KindReport>,
    pub leftovers: Leftovers,
    pub leaks: LeakReport,
}

/// The streaming sessions' figures over the whole soak.
#[derive(Debug, Serialize)]
pub struct StreamsFigures {
    pub sessions_started: u64,
    pub sessions_failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub vad_decision_lag: Summary,
    pub transcript_after_last_voice: Summary,
    pub reply_audio_after_voice_end: Summary,
    pub transcripts: u64,
    pub speech_stops: u64,
    pub close_codes: BTreeMap<String, u64>,
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let metrics_url = args
        .stream
        .metrics_url
        .clone()
        .context("soak needs --metrics-url")?;
    anyhow::ensure!(
        !args.sample_every.is_zero() && !args.rss_probe_every.is_zero(),
        "--sample-every and --rss-probe-every must be positive"
    );
    let baseline = Baseline::take(&http, &metrics_url, Some(args.server_pid)).await?;
    let target = Target::resolve(&args.stream.url).await?;
    let pcm = Arc::new(AudioLoop::load(&args.stream.audio, Codec::Pcm16, 16_000, 0.0)?.frames);
    let shared = Shared::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut samples = vec![sample(&http, &metrics_url, args.server_pid, 0.0, 0).await?];

    let mut launcher = Launcher::new(&args.stream, Arc::clone(&shared), stop_rx.clone())?;
    let mut sessions = JoinSet::new();
    launcher
        .launch(&mut sessions, args.sessions, Duration::from_secs(2))
        .await?;
    let churn = Churn::start(&args, Arc::clone(&pcm));
    let force = Force {
        slowloris: args.slowloris,
        never_reading: args.never_reading,
        flooders: args.flooders,
        garbage_opus: args.garbage_opus,
    };
    let reconnect = Duration::from_secs_f64(args.reconnect_delay);
    let attack = Attack::start(&target, force, reconnect, pcm, &stop_rx);
    let progress = Progress::start("soak", {
        let (shared, cycles, ended) = (Arc::clone(&shared), churn.counter(), attack.counter());
        move || {
            format!(
                "{} | churn cycles {} | attacker connections ended {}",
                status_line(&shared),
                cycles(),
                ended()
            )
        }
    });

    let end = start + args.duration;
    let mut tick = interval_at(start + args.sample_every, args.sample_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut probe = interval_at(start + args.rss_probe_every, args.rss_probe_every);
    probe.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut floor: Option<u64> = None;
    loop {
        // The sample due at the end is taken; then the end stops the loop.
        let at = tokio::select! {
            biased;
            at = tick.tick() => at,
            _ = probe.tick() => {
                if let Ok(now) = ProcSnapshot::read(args.server_pid) {
                    floor = Some(floor.map_or(now.rss_kib, |f| f.min(now.rss_kib)));
                }
                continue;
            }
            _ = tokio::time::sleep_until(end) => break,
            Some(_) = sessions.join_next() => {
                // A streaming session that ended early (an idle close after the machine
                // stalled, say) is replaced, so the load stays mixed for the whole soak.
                tokio::time::sleep(Duration::from_secs(1)).await;
                launcher.launch(&mut sessions, 1, Duration::ZERO).await?;
                continue;
            }
        };
        let t_s = at.duration_since(start).as_secs_f64();
        match sample(&http, &metrics_url, args.server_pid, t_s, churn.cycles()).await {
            Ok(mut s) => {
                s.rss_floor_kib = floor.take().map_or(s.rss_kib, |f| f.min(s.rss_kib));
                samples.push(s);
            }
            Err(error) => eprintln!("warning: sample at {t_s:.0} s failed: {error:#}"),
        }
    }
    let _ = stop_tx.send(true);
    let drain = Duration::from_secs_f64(args.stream.drain) + Duration::from_secs(15);
    let (_, attackers, churn) = tokio::join!(
        join_all(&mut sessions, drain),
        attack.finish(drain),
        churn.finish(drain)
    );
    progress.finish();

    let leaks = baseline
        .settle(&http, &metrics_url, Duration::from_secs_f64(args.settle))
        .await?;
    let duration_s = args.duration.as_secs_f64();
    let kv_cache_full_at_s = samples.iter().find(|s| s.kv_cache_full()).map(|s| s.t_s);
    let warmup_s = warmup_end(args.warmup, &samples, duration_s);
    let slope = |from_s: f64, rss: fn(&Sample) -> u64| {
        let fitted: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.t_s >= from_s)
            .map(|s| (s.t_s, rss(s) as f64))
            .collect();
        let per_10min = least_squares_slope(&fitted).map(|per_s| per_s * 600.0);
        (per_10min, fitted.len())
    };
    let now: fn(&Sample) -> u64 = |s| s.rss_kib;
    let floor: fn(&Sample) -> u64 = |s| s.rss_floor_kib;
    let (rss_slope_kib_per_10min, slope_samples) = slope(warmup_s, now);
    let last_t = samples.last().map_or(0.0, |s| s.t_s);
    let slope_window_s = args.slope_window.as_secs_f64();
    let window_start = last_t - slope_window_s;
    let (rss_slope_last_window_kib_per_10min, last_window_samples) = slope(window_start, now);
    let rss_floor_slope_kib_per_10min = slope(warmup_s, floor).0;
    let rss_floor_slope_last_window_kib_per_10min = slope(window_start, floor).0;
    let report = SoakReport {
        duration_s,
        warmup_s,
        warmup_mode: match args.warmup {
            Warmup::Auto => "auto",
            Warmup::Fixed(_) => "fixed",
        },
        kv_cache_full_at_s,
        rss_slope_kib_per_10min,
        slope_samples,
        rss_slope_last_window_kib_per_10min,
        slope_window_s,
        last_window_samples,
        rss_floor_slope_kib_per_10min,
        rss_floor_slope_last_window_kib_per_10min,
        samples,
        streams: shared.with_window(|w| {
            let count = |kind: &str| w.events.get(kind).copied().unwrap_or(0);
            StreamsFigures {
                sessions_started: w.sessions_started,
                sessions_failed: w.sessions_failed,
                failures: w.failures.clone(),
                vad_decision_lag: w.lag_decision.summary(),
                transcript_after_last_voice: w.transcript_after_voice.summary(),
                reply_audio_after_voice_end: w.reply_audio_after_voice.summary(),
                transcripts: count("transcript.final"),
                speech_stops: count("vad.speech_stopped"),
                close_codes: w.close_codes.clone(),
            }
        }),
        churn,
        attackers,
        leftovers: leftovers(&leaks),
        leaks,
    };
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report written to {}", path.display());
    }
    Ok(())
}

async fn sample(
    http: &reqwest::Client,
    metrics_url: &str,
    pid: u32,
    t_s: f64,
    churn_cycles: usize,
) -> anyhow::Result<Sample> {
    let process = ProcSnapshot::read(pid)?;
    let scrape = Scrape::fetch(http, metrics_url).await?;
    let gauges = scrape.gauges();
    let sum = |prefix: &str| -> f64 {
        gauges
            .iter()
            .filter(|(series, _)| {
                series.as_str() == prefix || series.starts_with(&format!("{prefix}{{"))
            })
            .map(|(_, v)| v)
            .sum()
    };
    Ok(Sample {
        t_s,
        rss_kib: process.rss_kib,
        rss_floor_kib: process.rss_kib,
        fds: process.fds,
        threads: process.threads,
        live_actors: sum("hearken_live_actors"),
        conversations: sum("hearken_conversations"),
        inflight_jobs: sum("hearken_inflight_jobs"),
        open_files: sum("hearken_open_files"),
        churn_cycles,
        kv_cache_bytes: sum("hearken_llm_kv_cache_bytes"),
        kv_cache_limit_bytes: sum("hearken_llm_kv_cache_limit_bytes"),
        stored_conversations: sum("hearken_stored_conversations"),
        heap_allocated_bytes: sum("hearken_heap_allocated_bytes"),
        heap_free_bytes: sum("hearken_heap_free_bytes"),
    })
}

/// Where the slope starts (s since the load started): a fixed warm-up, or with `auto`
/// the first sample at which the kept attention state was full; `duration_s` (no slope)
/// when it never filled, and [`FALLBACK_WARMUP`] on a server that keeps none.
fn warmup_end(warmup: Warmup, samples: &[Sample], duration_s: f64) -> f64 {
    match warmup {
        Warmup::Fixed(d) => d.as_secs_f64(),
        Warmup::Auto if samples.iter().all(|s| s.kv_cache_limit_bytes <= 0.0) => {
            FALLBACK_WARMUP.as_secs_f64()
        }
        Warmup::Auto => samples
            .iter()
            .find(|s| s.kv_cache_full())
            .map_or(duration_s, |s| s.t_s),
    }
}

/// The slope of the least-squares line through `points` (y per unit of x); `None` with
/// fewer than two distinct x.
pub fn least_squares_slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Leak deltas by resource: gauge families summed over their labels.
fn leftovers(leaks: &LeakReport) -> Leftovers {
    let sum = |prefix: &str| -> f64 {
        leaks
            .gauges
            .iter()
            .filter(|(series, _)| {
                series.as_str() == prefix || series.starts_with(&format!("{prefix}{{"))
            })
            .map(|(_, g)| g.delta)
            .sum()
    };
    let deltas = leaks.fd_thread_deltas();
    Leftovers {
        live_actors: sum("hearken_live_actors"),
        conversations: sum("hearken_conversations"),
        inflight_jobs: sum("hearken_inflight_jobs"),
        open_files: sum("hearken_open_files"),
        fds: deltas.map(|d| d.0),
        threads: deltas.map(|d| d.1),
    }
}

/// Churn cycles, `concurrency` at a time, until the stop.
struct Churn {
    stop: Arc<AtomicBool>,
    cycles: Arc<AtomicUsize>,
    tallies: Arc<Mutex<BTreeMap<Style, ChurnTally>>>,
    set: JoinSet<()>,
}

impl Churn {
    fn start(args: &SoakArgs, frames: Arc<Vec<bytes::Bytes>>) -> Churn {
        let mut styles = vec![Style::Close, Style::TcpDrop, Style::Supersede];
        if args.idle_timeout_ms.is_some() {
            styles.insert(2, Style::IdleTimeout);
        }
        let mut churn = Churn {
            stop: Arc::default(),
            cycles: Arc::default(),
            tallies: Arc::default(),
            set: JoinSet::new(),
        };
        for _ in 0..args.churn_concurrency {
            let (stop, cycles, tallies, frames, styles) = (
                Arc::clone(&churn.stop),
                Arc::clone(&churn.cycles),
                Arc::clone(&churn.tallies),
                Arc::clone(&frames),
                styles.clone(),
            );
            let (url, stream_ms, idle) = (
                args.stream.url.clone(),
                args.churn_stream_ms,
                args.idle_timeout_ms,
            );
            churn.set.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let i = cycles.fetch_add(1, Ordering::Relaxed);
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
                        Ok(_) => tally.ok += 1,
                        Err(reason) => *tally.failures.entry(reason).or_default() += 1,
                    }
                }
            });
        }
        churn
    }

    fn cycles(&self) -> usize {
        self.cycles.load(Ordering::Relaxed)
    }

    fn counter(&self) -> impl Fn() -> usize + Send + 'static {
        let cycles = Arc::clone(&self.cycles);
        move || cycles.load(Ordering::Relaxed)
    }

    /// Let the cycles in flight finish (bounded), then report by style.
    async fn finish(mut self, bound: Duration) -> BTreeMap<String, ChurnTally> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(bound, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        self.set.abort_all();
        let mut tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *tallies)
            .into_iter()
            .map(|(style, tally)| (format!("{style:?}"), tally))
            .collect()
    }
}

impl SoakReport {
    fn print(&self) {
        println!(
            "{:>8} {:>10} {:>10} {:>6} {:>8} {:>7} {:>6} {:>6} {:>6} {:>8} {:>14} {:>7} {:>10} {:>10}",
            "t (s)",
            "RSS KiB",
            "floor KiB",
            "fds",
            "threads",
            "actors",
            "convs",
            "jobs",
            "files",
            "cycles",
            "KV cache MiB",
            "stored",
            "heap MiB",
            "free MiB"
        );
        let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
        for s in &self.samples {
            println!(
                "{:>8.0} {:>10} {:>10} {:>6} {:>8} {:>7} {:>6} {:>6} {:>6} {:>8} {:>14} {:>7} {:>10.1} {:>10.1}",
                s.t_s,
                s.rss_kib,
                s.rss_floor_kib,
                s.fds,
                s.threads,
                s.live_actors,
                s.conversations,
                s.inflight_jobs,
                s.open_files,
                s.churn_cycles,
                format!(
                    "{:.0}/{:.0}",
                    mib(s.kv_cache_bytes),
                    mib(s.kv_cache_limit_bytes)
                ),
                s.stored_conversations,
                mib(s.heap_allocated_bytes),
                mib(s.heap_free_bytes)
            );
        }
        let start = match (self.warmup_mode, self.kv_cache_full_at_s) {
            ("auto", Some(_)) => format!(
                "after the kept attention state filled ({:.0} s)",
                self.warmup_s
            ),
            ("auto", None) if self.warmup_s >= self.duration_s => {
                "after the kept attention state filled: it never did".to_string()
            }
            _ => format!("after {:.0} s of warm-up", self.warmup_s),
        };
        match self.rss_slope_kib_per_10min {
            Some(slope) => println!(
                "RSS slope {start}: {slope:+.0} KiB per 10 min ({} samples, least squares)",
                self.slope_samples
            ),
            None => println!("RSS slope {start}: too few samples"),
        }
        match self.rss_slope_last_window_kib_per_10min {
            Some(slope) => println!(
                "RSS slope over the last {:.0} s: {slope:+.0} KiB per 10 min ({} samples)",
                self.slope_window_s, self.last_window_samples
            ),
            None => println!(
                "RSS slope over the last {:.0} s: too few samples",
                self.slope_window_s
            ),
        }
        let kib = |slope: Option<f64>| slope.map_or("n/a".into(), |s| format!("{s:+.0}"));
        println!(
            "RSS floor slope (KiB per 10 min): {} {start}, {} over the last {:.0} s",
            kib(self.rss_floor_slope_kib_per_10min),
            kib(self.rss_floor_slope_last_window_kib_per_10min),
            self.slope_window_s
        );
        let s = &self.streams;
        println!(
            "streams: {} started, {} failed ({}); p95 VAD decision lag {:.0} ms; transcripts {} for {} speech stops; transcript p50 {:.0} ms; reply audio p50 {:.0} ms; close codes {}",
            s.sessions_started,
            s.sessions_failed,
            format_counts(&s.failures),
            s.vad_decision_lag.p95_ms,
            s.transcripts,
            s.speech_stops,
            s.transcript_after_last_voice.p50_ms,
            s.reply_audio_after_voice_end.p50_ms,
            format_counts(&s.close_codes)
        );
        for (style, t) in &self.churn {
            println!(
                "churn {style}: ok {}, failed {} ({})",
                t.ok,
                t.failures.values().sum::<u64>(),
                format_counts(&t.failures)
            );
        }
        attackers::print_reports(&self.attackers);
        self.leaks.print();
        let l = &self.leftovers;
        println!(
            "left behind: actors {:+}, conversations {:+}, jobs {:+}, files {:+}, fds {}, threads {}",
            l.live_actors,
            l.conversations,
            l.inflight_jobs,
            l.open_files,
            l.fds.map_or("n/a".into(), |d| format!("{d:+}")),
            l.threads.map_or("n/a".into(), |d| format!("{d:+}"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }

    fn sample(t_s: f64, kv: f64, limit: f64) -> Sample {
        Sample {
            t_s,
            rss_kib: 0,
            rss_floor_kib: 0,
            fds: 0,
            threads: 0,
            live_actors: 0.0,
            conversations: 0.0,
            inflight_jobs: 0.0,
            open_files: 0.0,
            churn_cycles: 0,
            kv_cache_bytes: kv,
            kv_cache_limit_bytes: limit,
            stored_conversations: 0.0,
            heap_allocated_bytes: 0.0,
            heap_free_bytes: 0.0,
        }
    }

    #[test]
    fn warmup_is_auto_or_a_duration() {
        assert_eq!(parse_warmup("auto"), Ok(Warmup::Auto));
        assert_eq!(
            parse_warmup("5m"),
            Ok(Warmup::Fixed(Duration::from_secs(300)))
        );
        assert!(parse_warmup("later").is_err());
    }

    #[test]
    fn the_auto_warmup_ends_when_the_kept_state_is_full() {
        let filling = [
            sample(0.0, 0.0, 100.0),
            sample(60.0, 50.0, 100.0),
            sample(120.0, 89.0, 100.0),
            sample(180.0, 95.0, 100.0),
            sample(240.0, 85.0, 100.0),
        ];
        assert_eq!(warmup_end(Warmup::Auto, &filling, 300.0), 180.0);
        assert_eq!(
            warmup_end(Warmup::Fixed(Duration::from_secs(60)), &filling, 300.0),
            60.0
        );
        let never = [sample(0.0, 0.0, 100.0), sample(60.0, 10.0, 100.0)];
        assert_eq!(warmup_end(Warmup::Auto, &never, 300.0), 300.0, "no slope");
        let no_llm = [sample(0.0, 0.0, 0.0), sample(60.0, 0.0, 0.0)];
        assert_eq!(warmup_end(Warmup::Auto, &no_llm, 900.0), 300.0);
    }

    #[test]
    fn the_slope_is_the_least_squares_line() {
        // 100 KiB a minute with noise that cancels: 1,000 KiB per 10 minutes.
        let points = [
            (0.0, 1000.0),
            (60.0, 1110.0),
            (120.0, 1190.0),
            (180.0, 1300.0),
        ];
        let per_10min = least_squares_slope(&points).unwrap() * 600.0;
        assert!((per_10min - 980.0).abs() < 1e-6, "{per_10min}");
        assert_eq!(least_squares_slope(&points[..1]), None);
        assert_eq!(least_squares_slope(&[(5.0, 1.0), (5.0, 2.0)]), None);
    }
}
