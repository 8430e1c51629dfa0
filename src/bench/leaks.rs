//! Before and after a run: every gauge of `GET /metrics` and, given the server's pid, its
//! FDs, threads and RSS from `/proc`. A [`Baseline`] is taken before the load starts;
//! [`Baseline::settle`] waits (bounded) until every gauge, the FD count and the thread
//! count are back at their start values and reports each as before / after / delta, so
//! whatever the run left behind shows as a non-zero number. `churn`, `abuse` and `soak`
//! share it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::{sleep, Instant};

use super::metrics_scrape::{ProcSnapshot, Scrape};

/// Gauges of state the server keeps beyond a session by design (bounded caches: the
/// LLM's kept attention state and its bound, the stored conversations) and of its heap:
/// reported, but left out of the verdict and of the leaked gauges.
const NOT_LEAKS: &[&str] = &[
    "hearken_llm_kv_cache_bytes",
    "hearken_llm_kv_cache_limit_bytes",
    "hearken_stored_conversations",
    "hearken_heap_",
];

/// Whether `series` is a gauge whose change after a run is a leak.
pub fn is_leak_gauge(series: &str) -> bool {
    !NOT_LEAKS.iter().any(|name| series.starts_with(name))
}

/// No more FDs or threads than at the start. Fewer is no leak: a connection open when
/// the baseline was taken may close later (a 150-minute soak ended at 28 FDs from 29).
fn nothing_added(was: &ProcSnapshot, now: &ProcSnapshot) -> bool {
    now.fds <= was.fds && now.threads <= was.threads
}

/// Pause between two looks while waiting for the server to settle.
const SETTLE_POLL: Duration = Duration::from_millis(250);

/// One gauge series before and after a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GaugeDelta {
    pub before: f64,
    pub after: f64,
    pub delta: f64,
}

/// The server process before and after a run.
#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub before: ProcSnapshot,
    pub after: ProcSnapshot,
}

/// Every gauge series of `after`, with its value in `before` (0 when it was absent).
pub fn gauge_deltas(before: &Scrape, after: &Scrape) -> BTreeMap<String, GaugeDelta> {
    let was = before.gauges();
    after
        .gauges()
        .into_iter()
        .map(|(series, after)| {
            let before = was.get(&series).copied().unwrap_or(0.0);
            let delta = after - before;
            (
                series,
                GaugeDelta {
                    before,
                    after,
                    delta,
                },
            )
        })
        .collect()
}

/// What the server looked like before the load.
pub struct Baseline {
    pub scrape: Scrape,
    pub process: Option<ProcSnapshot>,
    pid: Option<u32>,
}

/// What a run left behind, once the server had `--settle` seconds to let go.
#[derive(Debug, Serialize)]
pub struct LeakReport {
    /// Every leak gauge ([`is_leak_gauge`]), the FD count and the thread count back at
    /// their start values.
    pub settled: bool,
    /// Seconds from the end of the load until the server settled (or gave up).
    pub settle_s: f64,
    pub gauges: BTreeMap<String, GaugeDelta>,
    /// Leak gauge series whose value differs from the start (the leaks, by name).
    pub leaked_gauges: BTreeMap<String, f64>,
    pub server_process: Option<ProcessReport>,
}

impl LeakReport {
    /// FD and thread deltas, when the pid was given.
    pub fn fd_thread_deltas(&self) -> Option<(i64, i64)> {
        self.server_process.as_ref().map(|p| {
            (
                p.after.fds as i64 - p.before.fds as i64,
                p.after.threads as i64 - p.before.threads as i64,
            )
        })
    }

    pub fn print(&self) {
        println!(
            "server after the run: {} ({:.1} s after the load ended)",
            if self.settled {
                "every leak gauge, FD and thread count back at its start value (caches and heap gauges aside)"
            } else {
                "did NOT settle within the bound"
            },
            self.settle_s
        );
        println!(
            "{:<44} {:>10} {:>10} {:>8}",
            "gauge", "before", "after", "delta"
        );
        for (series, g) in &self.gauges {
            println!(
                "{:<44} {:>10} {:>10} {:>+8}",
                series, g.before, g.after, g.delta
            );
        }
        if let Some(p) = &self.server_process {
            println!(
                "server process: fds {} -> {} ({:+}), threads {} -> {} ({:+}), RSS {} -> {} KiB ({:+} KiB)",
                p.before.fds,
                p.after.fds,
                p.after.fds as i64 - p.before.fds as i64,
                p.before.threads,
                p.after.threads,
                p.after.threads as i64 - p.before.threads as i64,
                p.before.rss_kib,
                p.after.rss_kib,
                p.after.rss_kib as i64 - p.before.rss_kib as i64
            );
        }
    }
}

impl Baseline {
    pub async fn take(
        http: &reqwest::Client,
        metrics_url: &str,
        pid: Option<u32>,
    ) -> anyhow::Result<Baseline> {
        Ok(Baseline {
            scrape: Scrape::fetch(http, metrics_url).await?,
            process: pid.map(ProcSnapshot::read).transpose()?,
            pid,
        })
    }

    /// Poll until every gauge, the FD and the thread count are back, or `bound` passes.
    pub async fn settle(
        &self,
        http: &reqwest::Client,
        metrics_url: &str,
        bound: Duration,
    ) -> anyhow::Result<LeakReport> {
        let start = Instant::now();
        let baseline = self.scrape.gauges();
        loop {
            let scrape = Scrape::fetch(http, metrics_url).await?;
            let process = self.pid.map(ProcSnapshot::read).transpose()?;
            let now = scrape.gauges();
            let gauges_back = baseline
                .iter()
                .filter(|(series, _)| is_leak_gauge(series))
                .all(|(series, value)| now.get(series) == Some(value));
            let process_back = match (self.process, process) {
                (Some(was), Some(now)) => nothing_added(&was, &now),
                _ => true,
            };
            let settled = gauges_back && process_back;
            if settled || start.elapsed() >= bound {
                let gauges = gauge_deltas(&self.scrape, &scrape);
                let leaked_gauges = gauges
                    .iter()
                    .filter(|(series, g)| g.delta != 0.0 && is_leak_gauge(series))
                    .map(|(series, g)| (series.clone(), g.delta))
                    .collect();
                return Ok(LeakReport {
                    settled,
                    settle_s: start.elapsed().as_secs_f64(),
                    gauges,
                    leaked_gauges,
                    server_process: self
                        .process
                        .zip(process)
                        .map(|(before, after)| ProcessReport { before, after }),
                });
            }
            sleep(SETTLE_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewer_fds_than_at_the_start_is_settled_more_is_not() {
        let snapshot = |fds, threads| ProcSnapshot {
            rss_kib: 0,
            threads,
            fds,
        };
        assert!(nothing_added(&snapshot(29, 18), &snapshot(28, 18)));
        assert!(nothing_added(&snapshot(29, 18), &snapshot(29, 18)));
        assert!(!nothing_added(&snapshot(29, 18), &snapshot(30, 18)));
        assert!(!nothing_added(&snapshot(29, 18), &snapshot(29, 19)));
    }

    #[test]
    fn caches_and_heap_figures_are_no_leaks() {
        assert!(is_leak_gauge("hearken_live_actors{kind=\"stt\"}"));
        assert!(is_leak_gauge("hearken_open_files"));
        assert!(!is_leak_gauge("hearken_llm_kv_cache_bytes"));
        assert!(!is_leak_gauge("hearken_llm_kv_cache_limit_bytes"));
        assert!(!is_leak_gauge("hearken_stored_conversations"));
        assert!(!is_leak_gauge("hearken_heap_free_bytes"));
    }
}
