//! The conversation's view of the current turn: the speculative reply, if one runs, and
//! the times its stages were reached.
//!
//! A draft transcript (the words as they stand if the current pause ends the turn)
//! starts a reply at once. Until the turn is confirmed, everything that reply would
//! tell the client is held here and its speech is held by the TTS actor. The final
//! transcript then either confirms it (same words: the held events go out, the reply
//! carries on as the answer) or discards it (different words, or speech resumed):
//! the held events are dropped unseen, and the LLM stores nothing of it.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::metrics::{LatencyMetrics, TurnStage};
use crate::protocol::{PipelineEvent, TurnLatency};

/// Events of a held reply buffered at most; a reply that outgrows it has run far past
/// its turn without being confirmed, and the surplus text deltas are merged.
const MAX_HELD_EVENTS: usize = 256;

/// A reply started on a draft transcript, not yet confirmed.
pub(super) struct Speculation {
    pub response_id: Uuid,
    /// The words it answers.
    pub text: String,
    held: Vec<PipelineEvent>,
}

impl Speculation {
    pub fn new(response_id: Uuid, text: String) -> Self {
        Speculation {
            response_id,
            text,
            held: Vec::new(),
        }
    }

    /// Keep an event of this reply until the turn is confirmed.
    pub fn hold(&mut self, event: PipelineEvent) {
        if self.held.len() < MAX_HELD_EVENTS {
            return self.held.push(event);
        }
        if let (
            Some(PipelineEvent::ReplyDelta { text: last, .. }),
            PipelineEvent::ReplyDelta { text, .. },
        ) = (self.held.last_mut(), &event)
        {
            last.push_str(text);
        } else {
            self.held.push(event);
        }
    }

    /// The held events, in order, for the client.
    pub fn release(self) -> Vec<PipelineEvent> {
        self.held
    }
}

/// When each stage of the current turn and its reply was reached.
#[derive(Debug, Default)]
pub(super) struct TurnTimes {
    /// End of the user's last voiced audio (wall clock); `None` before a turn ended.
    voice_end: Option<Instant>,
    turn_decided: Option<Instant>,
    transcript: Option<Instant>,
    /// The reply these belong to, and its stage times.
    response_id: Option<Uuid>,
    first_token: Option<Instant>,
    first_clause: Option<Instant>,
}

impl TurnTimes {
    /// The user's turn ended now; its last voice was heard at `voice_end`.
    pub fn turn_ended(&mut self, voice_end: Instant) {
        self.voice_end = Some(voice_end);
        self.turn_decided = Some(Instant::now());
        self.transcript = None;
        // A speculative reply's earlier stages stay: they belong to this turn.
    }

    pub fn transcript(&mut self) {
        self.transcript.get_or_insert_with(Instant::now);
    }

    /// A new reply starts: forget the stage times of the previous one.
    pub fn reply_started(&mut self, response_id: Uuid) {
        self.response_id = Some(response_id);
        self.first_token = None;
        self.first_clause = None;
    }

    pub fn first_token(&mut self, response_id: Uuid) {
        if self.response_id == Some(response_id) {
            self.first_token.get_or_insert_with(Instant::now);
        }
    }

    pub fn first_clause(&mut self, response_id: Uuid) {
        if self.response_id == Some(response_id) {
            self.first_clause.get_or_insert_with(Instant::now);
        }
    }

    /// The reply's first audio goes out now: its stage times, counted from the voice
    /// end, recorded once in `metrics`. `None` for a reply to no spoken turn.
    pub fn first_audio(
        &mut self,
        response_id: Uuid,
        metrics: &LatencyMetrics,
    ) -> Option<TurnLatency> {
        if self.response_id != Some(response_id) {
            return None;
        }
        let voice_end = self.voice_end.take()?;
        let since = |at: Option<Instant>| at.map(|at| at.saturating_duration_since(voice_end));
        let stages = [
            (TurnStage::TurnDecided, since(self.turn_decided)),
            (TurnStage::Transcript, since(self.transcript)),
            (TurnStage::FirstToken, since(self.first_token)),
            (TurnStage::FirstClause, since(self.first_clause)),
            (TurnStage::FirstAudio, since(Some(Instant::now()))),
        ];
        for (stage, elapsed) in stages {
            if let Some(elapsed) = elapsed {
                metrics.observe_stage(stage, elapsed.as_secs_f64());
            }
        }
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        Some(TurnLatency {
            turn_decided: ms(stages[0].1),
            transcript: ms(stages[1].1),
            first_token: ms(stages[2].1),
            first_clause: ms(stages[3].1),
            first_audio: ms(stages[4].1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_timed_from_the_voice_end_once() {
        let metrics = LatencyMetrics::new();
        let mut times = TurnTimes::default();
        let id = Uuid::new_v4();
        times.reply_started(id); // speculative: before the turn ended
        times.first_token(id);
        times.turn_ended(Instant::now() - Duration::from_millis(300));
        times.transcript();
        times.first_clause(id);
        let latency = times.first_audio(id, &metrics).expect("a spoken turn");
        assert!(latency.first_audio.is_some_and(|ms| ms >= 300));
        assert!(latency.first_token.is_some() && latency.transcript.is_some());
        assert!(times.first_audio(id, &metrics).is_none(), "recorded once");
    }

    #[test]
    fn held_text_is_merged_past_the_bound() {
        let id = Uuid::new_v4();
        let mut speculation = Speculation::new(id, "hi".into());
        for _ in 0..MAX_HELD_EVENTS + 10 {
            speculation.hold(PipelineEvent::ReplyDelta {
                response_id: id,
                text: "a".into(),
            });
        }
        let held = speculation.release();
        assert_eq!(held.len(), MAX_HELD_EVENTS);
        let text: String = held
            .iter()
            .filter_map(|e| match e {
                PipelineEvent::ReplyDelta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text.len(), MAX_HELD_EVENTS + 10, "no text lost");
    }
}
