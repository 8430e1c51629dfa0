//! SVG charts of bench results (`--plot FILE.svg`), drawn with plotters' SVG backend,
//! one file per chart: `streams.rs` composes the `streams` chart from its panels
//! (`percentiles.rs`: latency percentile curves from the HDR histograms, the client's and
//! the server's stage times; `timeline.rs`: every VAD decision lag, with its p95 per time
//! bucket, transcript and reply over the run); `ramp.rs`: p95 latencies against the
//! session count, with the 200 ms verdict line, the highest count sustained and, when the
//! server's session limit refused sessions, where, then the p95 of the server's stage
//! times. This file holds what they share: colours, log ranges, axis labels.
//!
//! Latencies are drawn on log scales: VAD lags are tens of ms, transcripts and replies
//! seconds, and the interesting part of a percentile curve is its tail.

mod percentiles;
mod ramp;
mod streams;
mod timeline;

pub use ramp::{ramp, LimitMark, RampPlot, RampPoint};
pub use streams::{streams, StreamsPlot};

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Series colours, in order (the usual categorical palette: blue, green, red, orange,
/// purple).
const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Room above the highest value on a log axis (a factor): the legend sits there.
const HEADROOM: f64 = 4.0;

/// A log-scale range covering the positive `values` (ms), from the decade below them
/// (plotters labels a log axis from its first power of ten) to some room above them for
/// the legend; 1..1000 ms when there are none.
fn log_range(values: impl IntoIterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if hi <= 0.0 {
        return 1.0..1000.0;
    }
    let lo = 10f64.powf(lo.max(0.01).log10().floor());
    lo..(hi * HEADROOM).max(lo * 10.0)
}

fn format_ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A percentile without trailing zeros: 99.9, 95, 0.
fn trim(p: f64) -> String {
    let text = format!("{:.1}", (p * 10.0).round() / 10.0);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
fn temp_svg(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("hearken-plot-{}-{name}.svg", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_labelled_plainly() {
        assert_eq!(trim(100.0 * (1.0 - 1.0 / 1000.0)), "99.9");
        assert_eq!(trim(95.0), "95");
        assert_eq!(trim(0.0), "0");
        assert_eq!(log_range([]), 1.0..1000.0);
    }
}
