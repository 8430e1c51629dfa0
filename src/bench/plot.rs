//! SVG charts of bench results (`--plot FILE.svg`), drawn with plotters' SVG backend.
//! `streams`: latency percentile curves from the HDR histograms, and the timeline of every
//! VAD decision lag (with its p95 per time bucket), transcript and reply. `ramp`: p95
//! latencies against the session count, with the 200 ms verdict line, the highest count
//! sustained and, when the server's session limit refused sessions, where.
//!
//! Latencies are drawn on log scales: VAD lags are tens of ms, transcripts and replies
//! seconds, and the interesting part of a percentile curve is its tail.

use std::ops::Range;
use std::path::Path;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::stats::{Hist, BEHIND_P95_MS};

/// Size of the `streams` chart (two panels) and of the `ramp` chart, in pixels.
const STREAMS_SIZE: (u32, u32) = (1000, 1100);
const RAMP_SIZE: (u32, u32) = (1000, 600);
/// Points per percentile curve: 1/(1-q) = 10^(k/20) for k = 0..=60, from p0 to p99.9.
const CURVE_STEPS: i32 = 60;
/// Most points of one series drawn on the timeline; beyond it every n-th is drawn (the
/// p95 line still uses them all): an SVG of 100,000 circles opens slowly.
const MAX_POINTS: usize = 4000;
/// Time buckets the timeline's p95 line is cut into.
const TIMELINE_BUCKETS: f64 = 40.0;

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

/// What `streams --plot` draws.
pub struct StreamsPlot<'a> {
    pub title: String,
    /// Percentile curves; empty histograms are left out.
    pub curves: Vec<(&'a str, &'a Hist)>,
    /// `(seconds into the run, latency in µs)` series; the first also gets its p95 per
    /// time bucket as a line.
    pub timelines: Vec<(&'a str, &'a [(f64, u64)])>,
}

/// One `ramp` step, as `ramp --plot` draws it.
#[derive(Debug, Clone, Copy)]
pub struct RampPoint {
    pub sessions: usize,
    pub decision_p95_ms: f64,
    pub transcript_p95_ms: Option<f64>,
    pub reply_audio_p95_ms: Option<f64>,
    pub pass: bool,
}

/// The series of the ramp chart, in the order of [`RampPoint::values`].
const RAMP_SERIES: [&str; 3] = [
    "VAD decision lag p95",
    "transcript after voice end p95",
    "reply first audio after voice end p95",
];

impl RampPoint {
    fn values(&self) -> [Option<f64>; 3] {
        [
            Some(self.decision_p95_ms),
            self.transcript_p95_ms,
            self.reply_audio_p95_ms,
        ]
    }
}

/// What `ramp --plot` draws.
pub struct RampPlot {
    pub title: String,
    pub points: Vec<RampPoint>,
    pub max_sustained: Option<usize>,
    /// The step at which the server's session limit refused sessions.
    pub limit: Option<LimitMark>,
}

/// Where a session limit was enforced.
#[derive(Debug, Clone, Copy)]
pub struct LimitMark {
    /// Sessions the step asked for.
    pub requested: usize,
    /// Sessions the server admitted (and that kept up).
    pub admitted: usize,
    pub refused: u64,
}

pub fn streams(path: &Path, plot: &StreamsPlot) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, STREAMS_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&plot.title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(STREAMS_SIZE.1 / 2 - 20);
    percentile_curves(&top, &plot.curves)?;
    timeline(&bottom, &plot.timelines)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn ramp(path: &Path, plot: &RampPlot) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, RAMP_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let most = plot.points.iter().map(|p| p.sessions).max().unwrap_or(1);
    let x_range = 0.0..(most as f64 * 1.1).max(1.0);
    let values = plot.points.iter().flat_map(|p| {
        [
            Some(p.decision_p95_ms),
            p.transcript_p95_ms,
            p.reply_audio_p95_ms,
        ]
        .into_iter()
        .flatten()
    });
    let y_range = log_range(values.chain([BEHIND_P95_MS]));
    let (y_lo, y_hi) = (y_range.start, y_range.end);
    let mut chart = ChartBuilder::on(&root)
        .caption(&plot.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), y_range.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("concurrent sessions")
        .y_desc("p95 latency (ms)")
        .y_labels(12)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|v| format_ms(*v))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        [(x_range.start, BEHIND_P95_MS), (x_range.end, BEHIND_P95_MS)],
        6,
        4,
        BLACK.mix(0.5).stroke_width(1),
    ))?;
    for (i, label) in RAMP_SERIES.into_iter().enumerate() {
        let points: Vec<(f64, f64)> = plot
            .points
            .iter()
            .filter_map(|p| {
                p.values()[i]
                    .filter(|v| *v > 0.0)
                    .map(|v| (p.sessions as f64, v))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let color = COLORS[i];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    let failing: Vec<_> = plot.points.iter().filter(|p| !p.pass).collect();
    if !failing.is_empty() {
        chart
            .draw_series(failing.iter().map(|p| {
                Cross::new(
                    (p.sessions as f64, p.decision_p95_ms.max(y_lo)),
                    8,
                    RED.stroke_width(3),
                )
            }))?
            .label("step failed (behind or errors)")
            .legend(|(x, y)| Cross::new((x + 10, y), 6, RED.stroke_width(3)));
    }
    let mut marker = |x: usize, label: String, color: RGBColor| -> anyhow::Result<()> {
        let x = x as f64;
        chart.draw_series([PathElement::new(
            [(x, y_lo), (x, y_hi)],
            color.mix(0.7).stroke_width(2),
        )])?;
        // Right of the line in the left half of the chart, left of it in the right half.
        let (anchor, label) = if x > x_range.end / 2.0 {
            (HPos::Right, format!("{label} "))
        } else {
            (HPos::Left, format!(" {label}"))
        };
        let font = ("sans-serif", 15)
            .into_font()
            .color(&color)
            .pos(Pos::new(anchor, VPos::Top));
        chart.draw_series([Text::new(label, (x, y_hi / 1.15), font)])?;
        Ok(())
    };
    match (plot.limit, plot.max_sustained) {
        (Some(limit), _) => marker(
            limit.admitted,
            format!(
                "session limit: {} admitted, {} refused of {}",
                limit.admitted, limit.refused, limit.requested
            ),
            COLORS[4],
        )?,
        (None, Some(n)) => marker(n, format!("max sustained: {n}"), COLORS[1])?,
        (None, None) => {}
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Latency against percentile, from each histogram.
fn percentile_curves(area: &Area, curves: &[(&str, &Hist)]) -> anyhow::Result<()> {
    // Colours follow the position in `curves`, so a series keeps its colour when an
    // empty one before it is left out.
    let curves: Vec<_> = curves
        .iter()
        .enumerate()
        .filter(|(_, (_, h))| h.len() > 0)
        .collect();
    let y_range = log_range(
        curves
            .iter()
            .flat_map(|(_, (_, h))| [h.quantile_ms(0.0), h.quantile_ms(1.0)]),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(
            "latency by percentile (from the HDR histograms)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..1000.0).log_scale(), y_range.clone().log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(12)
        .y_labels(12)
        .x_label_formatter(&|x| format!("p{}", trim(100.0 * (1.0 - 1.0 / x))))
        .y_label_formatter(&|v| format_ms(*v))
        .draw()?;
    for (i, (label, hist)) in curves {
        let color = COLORS[i % COLORS.len()];
        let points = (0..=CURVE_STEPS).map(|k| {
            let x = 10f64.powf(k as f64 / 20.0);
            (x, hist.quantile_ms(1.0 - 1.0 / x).max(y_range.start))
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("{label} (n={})", hist.len()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Every event's latency against its time in the run, and the first series' p95 per
/// time bucket.
fn timeline(area: &Area, series: &[(&str, &[(f64, u64)])]) -> anyhow::Result<()> {
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
mod tests {
    use super::*;

    fn temp_svg(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hearken-plot-{}-{name}.svg", std::process::id()))
    }

    #[test]
    fn streams_plot_writes_an_svg() {
        let mut lag = Hist::default();
        let mut reply = Hist::default();
        let mut timeline = Vec::new();
        for i in 0..200u64 {
            lag.record_us(20_000 + i * 300);
            timeline.push((i as f64 * 0.1, 20_000 + i * 300));
        }
        reply.record_us(1_800_000);
        reply.record_us(2_400_000);
        let empty = Hist::default();
        let path = temp_svg("streams");
        streams(
            &path,
            &StreamsPlot {
                title: "streams: 1 session".into(),
                curves: vec![
                    ("VAD decision lag", &lag),
                    ("transcript after voice end", &empty),
                    ("reply audio after voice end", &reply),
                ],
                timelines: vec![("VAD decision lag", &timeline), ("replies", &[])],
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("VAD decision lag (n=200)"));
        assert!(svg.contains("reply audio after voice end (n=2)"));
        assert!(
            !svg.contains("transcript after voice end"),
            "empty curves are left out"
        );
    }

    #[test]
    fn ramp_plot_marks_the_limit_and_the_sustained_count() {
        let point = |sessions, p95, pass| RampPoint {
            sessions,
            decision_p95_ms: p95,
            transcript_p95_ms: None,
            reply_audio_p95_ms: None,
            pass,
        };
        let path = temp_svg("ramp");
        ramp(
            &path,
            &RampPlot {
                title: "ramp".into(),
                points: vec![
                    point(20, 30.0, true),
                    point(40, 45.0, true),
                    point(60, 50.0, true),
                ],
                max_sustained: Some(60),
                limit: Some(LimitMark {
                    requested: 80,
                    admitted: 60,
                    refused: 20,
                }),
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("<svg"));
        assert!(svg.contains("session limit: 60 admitted, 20 refused of 80"));

        let path = temp_svg("ramp-behind");
        ramp(
            &path,
            &RampPlot {
                title: "ramp".into(),
                points: vec![point(50, 40.0, true), point(100, 900.0, false)],
                max_sustained: Some(50),
                limit: None,
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("max sustained: 50"));
    }

    #[test]
    fn empty_input_still_draws() {
        let path = temp_svg("empty");
        ramp(
            &path,
            &RampPlot {
                title: "nothing".into(),
                points: Vec::new(),
                max_sustained: None,
                limit: None,
            },
        )
        .unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("<svg"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn percentiles_are_labelled_plainly() {
        assert_eq!(trim(100.0 * (1.0 - 1.0 / 1000.0)), "99.9");
        assert_eq!(trim(95.0), "95");
        assert_eq!(trim(0.0), "0");
        assert_eq!(log_range([]), 1.0..1000.0);
    }
}
