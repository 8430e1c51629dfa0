//! The `ramp` chart: p95 latencies against the session count, with the 200 ms verdict
//! line, failed steps crossed out, and a marker at the highest count sustained or where
//! the server's session limit refused sessions; below it, when replies carried them, the
//! p95 of the server's stage times against the session count.

use std::ops::Range;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{format_ms, log_range, Area, COLORS};
use crate::bench::replies::Stage;
use crate::bench::stats::BEHIND_P95_MS;

/// Size of the `ramp` chart, in pixels.
const RAMP_SIZE: (u32, u32) = (1000, 600);
/// Size of the chart with the server's stage times as a second panel (px).
const RAMP_WITH_STAGES_SIZE: (u32, u32) = (RAMP_SIZE.0, RAMP_SIZE.1 + STAGES_HEIGHT);
/// Height of the stage-time panel (px).
const STAGES_HEIGHT: u32 = 500;

const STAGES_CAPTION: &str =
    "server stage times p95 (latency_ms: from the voice end the server heard)";

/// One `ramp` step, as `ramp --plot` draws it.
#[derive(Debug, Clone, Copy)]
pub struct RampPoint {
    pub sessions: usize,
    pub decision_p95_ms: f64,
    pub transcript_p95_ms: Option<f64>,
    pub reply_audio_p95_ms: Option<f64>,
    /// p95 of the server's stage times, in the order of [`Stage::ALL`]; `None` for a
    /// stage no reply of the step reported.
    pub stage_p95_ms: [Option<f64>; Stage::ALL.len()],
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

pub fn ramp(path: &Path, plot: &RampPlot) -> anyhow::Result<()> {
    let with_stages = plot
        .points
        .iter()
        .any(|p| p.stage_p95_ms.iter().any(Option::is_some));
    let size = if with_stages {
        RAMP_WITH_STAGES_SIZE
    } else {
        RAMP_SIZE
    };
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    if with_stages {
        let (top, bottom) = root.split_vertically(RAMP_SIZE.1);
        latencies(&top, plot)?;
        stages(&bottom, plot)?;
    } else {
        latencies(&root, plot)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Session counts on the x axis: from none to a little past the most carried.
fn x_range(plot: &RampPlot) -> Range<f64> {
    let most = plot.points.iter().map(|p| p.sessions).max().unwrap_or(1);
    0.0..(most as f64 * 1.1).max(1.0)
}

/// The client's p95 latencies against the session count, with the verdict line, failed
/// steps and the sustained count or the session limit.
fn latencies(area: &Area, plot: &RampPlot) -> anyhow::Result<()> {
    let x_range = x_range(plot);
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
    let mut chart = ChartBuilder::on(area)
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
    Ok(())
}

/// The p95 of each server stage time against the session count.
fn stages(area: &Area, plot: &RampPlot) -> anyhow::Result<()> {
    let x_range = x_range(plot);
    let y_range = log_range(
        plot.points
            .iter()
            .flat_map(|p| p.stage_p95_ms.into_iter().flatten()),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(STAGES_CAPTION, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("concurrent sessions")
        .y_desc("p95 from voice end (ms)")
        .y_labels(12)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|v| format_ms(*v))
        .draw()?;
    for stage in Stage::ALL {
        let points: Vec<(f64, f64)> = plot
            .points
            .iter()
            .filter_map(|p| {
                p.stage_p95_ms[stage.index()]
                    .filter(|v| *v > 0.0)
                    .map(|v| (p.sessions as f64, v))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let color = COLORS[stage.index() % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!("{} p95", stage.label()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::temp_svg;
    use super::*;

    #[test]
    fn ramp_plot_marks_the_limit_and_the_sustained_count() {
        let point = |sessions, p95, pass| RampPoint {
            sessions,
            decision_p95_ms: p95,
            transcript_p95_ms: None,
            reply_audio_p95_ms: None,
            stage_p95_ms: [None; 5],
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
        assert!(
            !svg.contains(STAGES_CAPTION),
            "no stage panel without stage times"
        );
    }

    #[test]
    fn stage_times_get_a_panel_below() {
        let point = |sessions, first_audio| RampPoint {
            sessions,
            decision_p95_ms: 30.0,
            transcript_p95_ms: Some(900.0),
            reply_audio_p95_ms: Some(1_500.0),
            stage_p95_ms: [Some(190.0), None, None, None, first_audio],
            pass: true,
        };
        let path = temp_svg("ramp-stages");
        ramp(
            &path,
            &RampPlot {
                title: "ramp".into(),
                points: vec![
                    point(10, Some(450.0)),
                    point(20, Some(700.0)),
                    point(30, None),
                ],
                max_sustained: Some(30),
                limit: None,
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains(STAGES_CAPTION));
        assert!(svg.contains("turn decided p95") && svg.contains("first audio p95"));
        assert!(
            !svg.contains("first clause p95"),
            "stages never reported are left out"
        );
        assert!(svg.contains(&format!("height=\"{}\"", RAMP_WITH_STAGES_SIZE.1)));
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
}
