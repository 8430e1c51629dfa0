//! Latency against percentile, one curve per HDR histogram, on log scales.

use plotters::prelude::*;

use super::{format_ms, log_range, trim, Area, COLORS};
use crate::bench::stats::Hist;

/// Points per percentile curve: 1/(1-q) = 10^(k/20) for k = 0..=60, from p0 to p99.9.
const CURVE_STEPS: i32 = 60;

/// Latency against percentile, from each histogram, under `caption`.
pub(super) fn percentile_curves(
    area: &Area,
    caption: &str,
    curves: &[(&str, &Hist)],
) -> anyhow::Result<()> {
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
        .caption(caption, ("sans-serif", 18))
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
