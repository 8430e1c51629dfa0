//! Every event's latency against its time in the run, with the first series' p95 per
//! time bucket and the 200 ms verdict line.

use plotters::prelude::*;

use super::{format_ms, log_range, Area, COLORS};
use crate::bench::stats::{Hist, BEHIND_P95_MS};

/// Most points of one series drawn on the timeline; beyond it every n-th is drawn (the
/// p95 line still uses them all): an SVG of 100,000 circles opens slowly.
const MAX_POINTS: usize = 4000;
/// Time buckets the timeline's p95 line is cut into.
const TIMELINE_BUCKETS: f64 = 40.0;

/// Every event's latency against its time in the run, and the first series' p95 per
/// time bucket.
pub(super) fn timeline(area: &Area, series: &[(&str, &[(f64, u64)])]) -> anyhow::Result<()> {
    let ms = |us: u64| us as f64 / 1000.0;
    let all = || series.iter().flat_map(|(_, points)| points.iter());
    let end = all().map(|p| p.0).fold(1.0, f64::max);
    let y_range = log_range(all().map(|p| ms(p.1)).chain([BEHIND_P95_MS]));
    let mut chart = ChartBuilder::on(area)
        .caption("latency over the run", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end * 1.02, y_range.clone().log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_desc("latency (ms)")
        .y_labels(12)
        .y_label_formatter(&|v| format_ms(*v))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        [(0.0, BEHIND_P95_MS), (end * 1.02, BEHIND_P95_MS)],
        6,
        4,
        BLACK.mix(0.5).stroke_width(1),
    ))?;
    for (i, (label, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let stride = points.len().div_ceil(MAX_POINTS);
        // The first series is dense (every VAD event); the others are few and drawn bigger.
        let radius = if i == 0 { 2 } else { 4 };
        let dot = |p: &(f64, u64)| {
            Circle::new(
                (p.0, ms(p.1).max(y_range.start)),
                radius,
                color.mix(0.6).filled(),
            )
        };
        chart
            .draw_series(points.iter().step_by(stride).map(dot))?
            .label(format!("{label} (n={})", points.len()))
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, color.filled()));
        if i == 0 {
            let p95 = bucket_p95(points, end / TIMELINE_BUCKETS);
            chart
                .draw_series(LineSeries::new(
                    p95.into_iter().map(|(t, v)| (t, v.max(y_range.start))),
                    color.stroke_width(2),
                ))?
                .label(format!("{label}: p95 per {:.1} s", end / TIMELINE_BUCKETS))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// p95 (ms) of `(s, µs)` points per bucket of `width` seconds, at each bucket's middle.
fn bucket_p95(points: &[(f64, u64)], width: f64) -> Vec<(f64, f64)> {
    let width = width.max(0.5);
    let mut buckets: std::collections::BTreeMap<u64, Hist> = Default::default();
    for &(t, us) in points {
        buckets.entry((t / width) as u64).or_default().record_us(us);
    }
    buckets
        .into_iter()
        .map(|(b, hist)| ((b as f64 + 0.5) * width, hist.quantile_ms(0.95)))
        .collect()
}
