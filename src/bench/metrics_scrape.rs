//! Reading the server from outside: its Prometheus text at `GET /metrics` (gauges,
//! counters, histogram buckets and quantiles estimated from them) and, given its pid,
//! `/proc/<pid>` (resident memory, threads, open file descriptors).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::{sleep, Instant};

/// Pause between two scrapes while waiting for gauges to settle.
const SETTLE_POLL: Duration = Duration::from_millis(200);

/// One scrape of `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    types: HashMap<String, String>,
    /// `name{labels}` → value, in text order.
    samples: Vec<(String, String, f64)>,
}

impl Scrape {
    pub async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<Scrape> {
        let text = client
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()?
            .text()
            .await?;
        Ok(Scrape::parse(&text))
    }

    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    scrape.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, rest) = match (line.find('{'), line.rfind('}')) {
                (Some(open), Some(close)) if open < close => {
                    (&line[..open], &line[open + 1..close], &line[close + 1..])
                }
                _ => match line.split_once(char::is_whitespace) {
                    Some((name, rest)) => (name, "", rest),
                    None => continue,
                },
            };
            if let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse::<f64>) {
                scrape
                    .samples
                    .push((name.to_string(), labels.to_string(), value));
            }
        }
        scrape
    }

    /// Every gauge series, as `name{labels}` → value.
    pub fn gauges(&self) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|(name, _, _)| self.types.get(name).is_some_and(|t| t == "gauge"))
            .map(|(name, labels, value)| (series(name, labels), *value))
            .collect()
    }

    /// The series of one family (counter or gauge), by label set.
    pub fn family(&self, name: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, labels, value)| (labels.clone(), *value))
            .collect()
    }

    pub fn value(&self, name: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
    }

    /// Cumulative buckets `(le, count)` of a histogram, `+Inf` last.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|(n, _, _)| *n == bucket_name)
            .filter_map(|(_, labels, value)| {
                let le = labels.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

fn series(name: &str, labels: &str) -> String {
    if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    }
}

/// Bucket counts of `after` minus `before` (cumulative, same bounds).
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, count)| {
            let earlier = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, count - earlier)
        })
        .collect()
}

/// The q-quantile of cumulative buckets, interpolated linearly inside its bucket the way
/// Prometheus' `histogram_quantile` does; `None` without observations. A quantile in the
/// `+Inf` bucket is reported as the highest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// Poll until every gauge is back at its `baseline` value, or `bound` passes.
/// Returns the last scrape and whether the gauges settled.
pub async fn wait_settled(
    client: &reqwest::Client,
    url: &str,
    baseline: &BTreeMap<String, f64>,
    bound: Duration,
) -> anyhow::Result<(Scrape, bool)> {
    let deadline = Instant::now() + bound;
    loop {
        let scrape = Scrape::fetch(client, url).await?;
        let settled = baseline
            .iter()
            .all(|(series, value)| scrape.gauges().get(series) == Some(value));
        if settled || Instant::now() >= deadline {
            return Ok((scrape, settled));
        }
        sleep(SETTLE_POLL).await;
    }
}

/// Print each gauge's before → after and delta.
pub fn print_gauge_deltas(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) {
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "gauge", "before", "after", "delta"
    );
    for (series, after_value) in after {
        let before_value = before.get(series).copied().unwrap_or(0.0);
        println!(
            "{:<44} {:>10} {:>10} {:>+8}",
            series,
            before_value,
            after_value,
            after_value - before_value
        );
    }
}

/// Teardown histogram of the server.
pub const TEARDOWN_HISTOGRAM: &str = "hearken_teardown_seconds";
/// Upgrades the server refused before starting a tree, by `reason` (`server_full`,
/// `per_ip_limit`, `not_ready`, ...).
pub const REJECTED_COUNTER: &str = "hearken_rejected_connections_total";

/// A scrape for a report's extras, when a URL is given: a failure is printed and skipped,
/// never fatal to a load run.
pub async fn scrape_optional(client: &reqwest::Client, url: Option<&str>) -> Option<Scrape> {
    match Scrape::fetch(client, url?).await {
        Ok(scrape) => Some(scrape),
        Err(error) => {
            eprintln!("warning: no metrics scrape: {error:#}");
            None
        }
    }
}

/// Growth of each series of counter `name` between two scrapes, keyed by its label value
/// (`reason="server_full"` → `server_full`); series that did not move are left out.
/// The server's refused upgrades by reason since `before`; `None` when there was no
/// first scrape (no `--metrics-url`, or the server did not answer).
pub async fn rejections_since(
    client: &reqwest::Client,
    url: Option<&str>,
    before: Option<Scrape>,
) -> Option<BTreeMap<String, f64>> {
    let before = before?;
    let after = scrape_optional(client, url).await?;
    Some(counter_delta(&before, &after, REJECTED_COUNTER))
}

pub fn counter_delta(before: &Scrape, after: &Scrape, name: &str) -> BTreeMap<String, f64> {
    let was = before.family(name);
    after
        .family(name)
        .into_iter()
        .map(|(labels, now)| {
            let delta = now - was.get(&labels).copied().unwrap_or(0.0);
            let key = labels
                .split_once("=\"")
                .map_or(labels.as_str(), |(_, value)| value.trim_end_matches('"'))
                .to_string();
            (key, delta)
        })
        .filter(|(_, delta)| *delta != 0.0)
        .collect()
}

/// Growth of every series of the counter `families` between two scrapes, keyed by
/// `name{labels}`; series that did not move are left out.
pub fn series_deltas(before: &Scrape, after: &Scrape, families: &[&str]) -> BTreeMap<String, f64> {
    families
        .iter()
        .flat_map(|name| {
            let was = before.family(name);
            after.family(name).into_iter().map(move |(labels, now)| {
                let delta = now - was.get(&labels).copied().unwrap_or(0.0);
                (series(name, &labels), delta)
            })
        })
        .filter(|(_, delta)| *delta != 0.0)
        .collect()
}

/// `server_full +10, per_ip_limit +2`, or "none".
pub fn format_deltas(deltas: &BTreeMap<String, f64>) -> String {
    if deltas.is_empty() {
        return "none".into();
    }
    deltas
        .iter()
        .map(|(key, delta)| format!("{key} {delta:+}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Teardown quantiles and disconnect counts from the difference of two scrapes.
pub fn print_teardown(before: &Scrape, after: &Scrape) {
    let delta = bucket_delta(
        &before.buckets(TEARDOWN_HISTOGRAM),
        &after.buckets(TEARDOWN_HISTOGRAM),
    );
    let count = delta.last().map_or(0.0, |b| b.1);
    let ms =
        |q: f64| quantile(&delta, q).map_or("n/a".to_string(), |s| format!("{:.2} ms", s * 1000.0));
    println!(
        "teardown ({count} conversations, from {TEARDOWN_HISTOGRAM} buckets): p50 {}, p99 {}",
        ms(0.50),
        ms(0.99)
    );
    let counts = |scrape: &Scrape| scrape.family("hearken_disconnects_total");
    let (was, now) = (counts(before), counts(after));
    let deltas: Vec<String> = now
        .iter()
        .map(|(labels, v)| {
            format!(
                "{labels}: {:+}",
                v - was.get(labels).copied().unwrap_or(0.0)
            )
        })
        .collect();
    println!("disconnects_total delta: {}", deltas.join(", "));
    println!(
        "upgrades refused by the server ({REJECTED_COUNTER} delta): {}",
        format_deltas(&counter_delta(before, after, REJECTED_COUNTER))
    );
}

/// What `/proc` says about the server process.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProcSnapshot {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

impl ProcSnapshot {
    pub fn read(pid: u32) -> anyhow::Result<ProcSnapshot> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .with_context(|| format!("no {key} in /proc/{pid}/status"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("listing /proc/{pid}/fd"))?
            .count() as u64;
        Ok(ProcSnapshot {
            rss_kib: field("VmRSS:")?,
            threads: field("Threads:")?,
            fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP g help\n# TYPE hearken_live_actors gauge\n\
        hearken_live_actors{kind=\"vad\"} 3\n# TYPE hearken_conversations gauge\n\
        hearken_conversations 2\n# TYPE t histogram\n\
        t_bucket{le=\"0.001\"} 50\nt_bucket{le=\"0.01\"} 100\nt_bucket{le=\"+Inf\"} 100\n\
        t_sum 0.2\nt_count 100\n";

    #[test]
    fn parses_gauges_and_buckets() {
        let scrape = Scrape::parse(TEXT);
        let gauges = scrape.gauges();
        assert_eq!(gauges["hearken_live_actors{kind=\"vad\"}"], 3.0);
        assert_eq!(gauges["hearken_conversations"], 2.0);
        assert_eq!(scrape.buckets("t").len(), 3);
        assert_eq!(scrape.value("t_count"), Some(100.0));
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let buckets = Scrape::parse(TEXT).buckets("t");
        assert!((quantile(&buckets, 0.5).unwrap() - 0.001).abs() < 1e-12);
        // Rank 99 of 100: 49/50 of the way through (0.001, 0.01].
        let p99 = quantile(&buckets, 0.99).unwrap();
        assert!((p99 - (0.001 + 0.009 * 49.0 / 50.0)).abs() < 1e-9, "{p99}");
        let zero = bucket_delta(&buckets, &buckets);
        assert_eq!(quantile(&zero, 0.5), None);
    }

    #[test]
    fn rejection_counters_are_read_as_deltas_by_reason() {
        let at = |full: u32, ip: u32| {
            Scrape::parse(&format!(
                "# TYPE {REJECTED_COUNTER} counter\n\
                 {REJECTED_COUNTER}{{reason=\"server_full\"}} {full}\n\
                 {REJECTED_COUNTER}{{reason=\"per_ip_limit\"}} {ip}\n"
            ))
        };
        let delta = counter_delta(&at(2, 1), &at(12, 1), REJECTED_COUNTER);
        assert_eq!(delta.len(), 1, "{delta:?}");
        assert_eq!(delta["server_full"], 10.0);
        assert_eq!(format_deltas(&delta), "server_full +10");
    }
}
