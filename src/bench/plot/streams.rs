//! The `streams` chart: latency percentile curves above, the latency timeline below.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use super::percentiles::percentile_curves;
use super::timeline::timeline;
use crate::bench::stats::Hist;

/// Size of the `streams` chart (two panels), in pixels.
const STREAMS_SIZE: (u32, u32) = (1000, 1100);

/// What `streams --plot` draws.
pub struct StreamsPlot<'a> {
    pub title: String,
    /// Percentile curves; empty histograms are left out.
    pub curves: Vec<(&'a str, &'a Hist)>,
    /// `(seconds into the run, latency in µs)` series; the first also gets its p95 per
    /// time bucket as a line.
    pub timelines: Vec<(&'a str, &'a [(f64, u64)])>,
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

#[cfg(test)]
mod tests {
    use super::super::temp_svg;
    use super::*;

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
}
