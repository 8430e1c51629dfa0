//! The `streams` chart: the client's latency percentile curves at the top, the latency
//! timeline at the bottom and, when replies carried the server's stage times, their
//! percentile curves between the two.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use super::percentiles::percentile_curves;
use super::timeline::timeline;
use crate::bench::stats::Hist;

/// Size of the `streams` chart with its two panels, in pixels.
const STREAMS_SIZE: (u32, u32) = (1000, 1100);
/// Height of one panel below the title (px): half the two-panel chart less its title.
const PANEL_HEIGHT: u32 = STREAMS_SIZE.1 / 2 - 20;
/// Size of the chart with the server's stage times as a third panel (px).
const STREAMS_WITH_STAGES_SIZE: (u32, u32) = (STREAMS_SIZE.0, STREAMS_SIZE.1 + PANEL_HEIGHT);

const CLIENT_CAPTION: &str = "latency by percentile (from the HDR histograms)";
const STAGES_CAPTION: &str =
    "server stage times by percentile (latency_ms: from the voice end the server heard)";

/// What `streams --plot` draws.
pub struct StreamsPlot<'a> {
    pub title: String,
    /// Percentile curves; empty histograms are left out.
    pub curves: Vec<(&'a str, &'a Hist)>,
    /// `(seconds into the run, latency in µs)` series; the first also gets its p95 per
    /// time bucket as a line.
    pub timelines: Vec<(&'a str, &'a [(f64, u64)])>,
    /// The server's stage times, one percentile curve per stage; the panel is left out
    /// when every histogram is empty (a server without stage times).
    pub stages: Vec<(&'a str, &'a Hist)>,
}

pub fn streams(path: &Path, plot: &StreamsPlot) -> anyhow::Result<()> {
    let with_stages = plot.stages.iter().any(|(_, h)| h.len() > 0);
    let size = if with_stages {
        STREAMS_WITH_STAGES_SIZE
    } else {
        STREAMS_SIZE
    };
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&plot.title, ("sans-serif", 22))?;
    let (top, rest) = root.split_vertically(PANEL_HEIGHT);
    percentile_curves(&top, CLIENT_CAPTION, &plot.curves)?;
    let bottom = if with_stages {
        let (middle, bottom) = rest.split_vertically(PANEL_HEIGHT);
        percentile_curves(&middle, STAGES_CAPTION, &plot.stages)?;
        bottom
    } else {
        rest
    };
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
                stages: vec![("first audio", &empty)],
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
        assert!(
            !svg.contains("server stage times"),
            "no stage panel without stage times"
        );
    }

    #[test]
    fn stage_times_get_a_panel_of_their_own() {
        let mut decided = Hist::default();
        let mut audio = Hist::default();
        for i in 0..20u64 {
            decided.record_us(180_000 + i * 1_000);
            audio.record_us(450_000 + i * 5_000);
        }
        let empty = Hist::default();
        let path = temp_svg("streams-stages");
        streams(
            &path,
            &StreamsPlot {
                title: "streams".into(),
                curves: vec![("reply audio after voice end", &audio)],
                timelines: vec![("VAD decision lag", &[(1.0, 30_000)])],
                stages: vec![
                    ("turn decided", &decided),
                    ("first clause", &empty),
                    ("first audio", &audio),
                ],
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains(STAGES_CAPTION));
        assert!(svg.contains("turn decided (n=20)"));
        assert!(svg.contains("first audio (n=20)"));
        assert!(!svg.contains("first clause"), "empty stages are left out");
        let height = format!("height=\"{}\"", STREAMS_WITH_STAGES_SIZE.1);
        assert!(svg.contains(&height), "{}", &svg[..svg.len().min(200)]);
    }
}
