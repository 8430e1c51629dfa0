//! The server's own timing of a reply: the `latency_ms` object of `response.audio.started`,
//! which gives each stage of the turn the reply answers in whole milliseconds from the end
//! of the user's last voiced audio as the *server* heard it. The client's latencies
//! ([`super::pairing`]) run from its own send time of that audio, so they add the network
//! and the server's input queue; these say where the server's share of the time goes.

use serde_json::Value;

/// A stage of a turn, as the server times it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The server decided the user's turn was over.
    TurnDecided,
    /// The final transcript was ready.
    Transcript,
    /// The reply's first text (before the two above when the reply was started
    /// speculatively on a draft transcript).
    FirstToken,
    /// The first piece of the reply was synthesised.
    FirstClause,
    /// The reply's first audio frame was sent to the client.
    FirstAudio,
}

impl Stage {
    /// Every stage, in the order a reply normally reaches them.
    pub const ALL: [Stage; 5] = [
        Stage::TurnDecided,
        Stage::Transcript,
        Stage::FirstToken,
        Stage::FirstClause,
        Stage::FirstAudio,
    ];

    /// Its key in `latency_ms`, and in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Stage::TurnDecided => "turn_decided",
            Stage::Transcript => "transcript",
            Stage::FirstToken => "first_token",
            Stage::FirstClause => "first_clause",
            Stage::FirstAudio => "first_audio",
        }
    }

    /// Its name on charts.
    pub fn label(self) -> &'static str {
        match self {
            Stage::TurnDecided => "turn decided",
            Stage::Transcript => "transcript",
            Stage::FirstToken => "first token",
            Stage::FirstClause => "first clause",
            Stage::FirstAudio => "first audio",
        }
    }

    /// Its row in the printed latency table.
    pub fn row_label(self) -> &'static str {
        match self {
            Stage::TurnDecided => "server stage: turn decided (from voice end)",
            Stage::Transcript => "server stage: transcript (from voice end)",
            Stage::FirstToken => "server stage: first token (from voice end)",
            Stage::FirstClause => "server stage: first clause (from voice end)",
            Stage::FirstAudio => "server stage: first audio (from voice end)",
        }
    }

    /// Its place in [`Stage::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One reply's stage times, in ms from the server's voice end; a stage the reply never
/// went through is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplyStages([Option<u64>; Stage::ALL.len()]);

impl ReplyStages {
    /// The stage times a server event carries: `None` unless it is a
    /// `response.audio.started` with a `latency_ms` object (a server without stage times,
    /// or a reply to no spoken turn, sends none). A stage whose value is not a whole
    /// number of ms is taken as absent.
    pub fn from_event(event: &Value) -> Option<ReplyStages> {
        if event["type"] != "response.audio.started" {
            return None;
        }
        let latency = event.get("latency_ms")?.as_object()?;
        let mut stages = ReplyStages::default();
        for stage in Stage::ALL {
            stages.0[stage.index()] = latency.get(stage.key()).and_then(Value::as_u64);
        }
        Some(stages)
    }

    /// The time of `stage` (ms), when the reply went through it.
    pub fn get(&self, stage: Stage) -> Option<u64> {
        self.0[stage.index()]
    }

    /// A reply's stage times from `(stage, ms)` pairs (the others absent).
    #[cfg(test)]
    pub fn of(times: &[(Stage, u64)]) -> ReplyStages {
        let mut stages = ReplyStages::default();
        for &(stage, ms) in times {
            stages.0[stage.index()] = Some(ms);
        }
        stages
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_stage_is_read_from_latency_ms() {
        let event = json!({
            "type": "response.audio.started",
            "response_id": "2b0c3f5e-0000-4000-8000-000000000000",
            "latency_ms": {
                "turn_decided": 180, "transcript": 240, "first_token": 260,
                "first_clause": 420, "first_audio": 450
            }
        });
        let stages = ReplyStages::from_event(&event).expect("latency_ms present");
        let times: Vec<_> = Stage::ALL.iter().map(|&s| stages.get(s)).collect();
        assert_eq!(
            times,
            [Some(180), Some(240), Some(260), Some(420), Some(450)]
        );
    }

    #[test]
    fn stages_a_reply_skipped_are_absent() {
        // A speculative reply: first token before the turn was decided; no clause timed.
        let event = json!({
            "type": "response.audio.started",
            "response_id": "x",
            "latency_ms": {"turn_decided": 300, "first_token": 120, "first_audio": 610}
        });
        let stages = ReplyStages::from_event(&event).expect("latency_ms present");
        assert_eq!(
            stages,
            ReplyStages::of(&[
                (Stage::TurnDecided, 300),
                (Stage::FirstToken, 120),
                (Stage::FirstAudio, 610)
            ])
        );
        assert_eq!(stages.get(Stage::Transcript), None);
        // An empty object is a report with no stage in it.
        let empty = json!({"type": "response.audio.started", "latency_ms": {}});
        assert_eq!(
            ReplyStages::from_event(&empty),
            Some(ReplyStages::default())
        );
    }

    #[test]
    fn no_latency_ms_no_stages() {
        let old_server = json!({"type": "response.audio.started", "response_id": "x"});
        assert_eq!(ReplyStages::from_event(&old_server), None);
        let null = json!({"type": "response.audio.started", "latency_ms": null});
        assert_eq!(ReplyStages::from_event(&null), None);
        // Only `response.audio.started` carries them.
        let other = json!({"type": "response.done", "latency_ms": {"first_audio": 5}});
        assert_eq!(ReplyStages::from_event(&other), None);
    }

    #[test]
    fn malformed_values_are_absent_and_unknown_stages_ignored() {
        let event = json!({
            "type": "response.audio.started",
            "latency_ms": {"turn_decided": -5, "transcript": "240", "first_token": 12.5,
                           "first_audio": 450, "endpointing": 90}
        });
        assert_eq!(
            ReplyStages::from_event(&event),
            Some(ReplyStages::of(&[(Stage::FirstAudio, 450)]))
        );
    }
}
