//! Latency bounds a ramp step must also keep. The VAD decision lag says whether the
//! server keeps up with the audio; a full pipeline also has to answer in time, and a
//! step whose replies come late has fallen behind for its users even while the VAD
//! keeps pace. Both bounds are measured by the client, from the end of the voice it
//! sent.

use super::super::stats::Summary;

#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct LatencyBounds {
    /// A step also falls behind when the p95 from the end of voice to its final
    /// transcript exceeds this many ms (off unless given).
    #[arg(long)]
    pub max_transcript_p95_ms: Option<f64>,
    /// A step also falls behind when the p95 from the end of voice to the first reply
    /// audio exceeds this many ms, or when no reply audio arrived (off unless given).
    #[arg(long)]
    pub max_first_audio_p95_ms: Option<f64>,
}

impl LatencyBounds {
    /// Why a step with these measurements breaks the bounds; empty when it keeps them.
    pub fn broken(&self, transcript: &Summary, first_audio: &Summary) -> Vec<String> {
        [
            ("transcript", self.max_transcript_p95_ms, transcript),
            (
                "first reply audio",
                self.max_first_audio_p95_ms,
                first_audio,
            ),
        ]
        .into_iter()
        .filter_map(|(what, bound, measured)| {
            let bound = bound?;
            if measured.count == 0 {
                Some(format!("no {what} arrived (bound p95 ≤ {bound:.0} ms)"))
            } else if measured.p95_ms > bound {
                Some(format!(
                    "{what} p95 {:.0} ms > {bound:.0} ms",
                    measured.p95_ms
                ))
            } else {
                None
            }
        })
        .collect()
    }

    /// The bounds in force, as a clause for the report ("" when none).
    pub fn describe(&self) -> String {
        let mut clause = String::new();
        if let Some(ms) = self.max_transcript_p95_ms {
            clause.push_str(&format!(", transcript p95 ≤ {ms:.0} ms"));
        }
        if let Some(ms) = self.max_first_audio_p95_ms {
            clause.push_str(&format!(", first reply audio p95 ≤ {ms:.0} ms"));
        }
        clause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p95(count: u64, p95_ms: f64) -> Summary {
        Summary {
            count,
            p95_ms,
            ..Summary::default()
        }
    }

    #[test]
    fn no_bounds_break_nothing() {
        let bounds = LatencyBounds::default();
        assert!(bounds.broken(&p95(0, 0.0), &p95(9, 99_000.0)).is_empty());
        assert_eq!(bounds.describe(), "");
    }

    #[test]
    fn a_late_or_missing_measure_breaks_its_bound() {
        let bounds = LatencyBounds {
            max_transcript_p95_ms: Some(1_500.0),
            max_first_audio_p95_ms: Some(2_500.0),
        };
        assert!(bounds
            .broken(&p95(10, 1_500.0), &p95(10, 2_400.0))
            .is_empty());
        assert_eq!(
            bounds.broken(&p95(10, 1_501.0), &p95(0, 0.0)),
            [
                "transcript p95 1501 ms > 1500 ms",
                "no first reply audio arrived (bound p95 ≤ 2500 ms)"
            ]
        );
        assert_eq!(
            bounds.describe(),
            ", transcript p95 ≤ 1500 ms, first reply audio p95 ≤ 2500 ms"
        );
    }
}
