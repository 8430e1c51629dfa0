//! What the reply pairing reports to a window ([`ReplyNote`]: a latency, or how a reply
//! ended) and the per-window counts of reply outcomes ([`ReplyCounts`]).

use std::time::Duration;

use serde::Serialize;

/// How a reply ended, counted once per reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// Its audio reached the client and played to the end.
    Spoken,
    /// Its audio reached the client and was cut (barge-in, or a newer reply).
    CutWhileSpeaking,
    /// Its audio reached the client and was still playing when the session ended.
    SpeakingAtEnd,
    /// Cancelled (barge-in, a newer transcript, a failed generation) before any audio.
    CancelledBeforeAudio,
    /// Its text finished but no audio came (TTS off, or a newer reply replaced it).
    CompletedWithoutAudio,
    /// Still running, with no audio yet, when the session ended.
    Unfinished,
}

/// What the tracker asks the window to record. Latencies are from the voice end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyNote {
    FirstText(Duration),
    AudioStarted(Duration),
    FirstAudio(Duration),
    Outcome(ReplyOutcome),
    /// The reply just counted had no transcript to pair with (its latencies are not
    /// recorded).
    Unpaired,
    /// A transcript that got no reply (LLM off or overloaded).
    TranscriptWithoutReply,
}

/// Reply counts of a window, by how each reply ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReplyCounts {
    /// Replies whose audio reached the client (the next two included).
    pub with_audio: u64,
    pub cut_while_speaking: u64,
    pub speaking_at_end: u64,
    pub cancelled_before_audio: u64,
    pub completed_without_audio: u64,
    pub unfinished: u64,
    pub unpaired: u64,
    pub transcripts_without_reply: u64,
}

impl ReplyCounts {
    pub fn count(&mut self, note: ReplyNote) {
        match note {
            ReplyNote::Outcome(ReplyOutcome::Spoken) => self.with_audio += 1,
            ReplyNote::Outcome(ReplyOutcome::CutWhileSpeaking) => {
                self.with_audio += 1;
                self.cut_while_speaking += 1;
            }
            ReplyNote::Outcome(ReplyOutcome::SpeakingAtEnd) => {
                self.with_audio += 1;
                self.speaking_at_end += 1;
            }
            ReplyNote::Outcome(ReplyOutcome::CancelledBeforeAudio) => {
                self.cancelled_before_audio += 1
            }
            ReplyNote::Outcome(ReplyOutcome::CompletedWithoutAudio) => {
                self.completed_without_audio += 1
            }
            ReplyNote::Outcome(ReplyOutcome::Unfinished) => self.unfinished += 1,
            ReplyNote::Unpaired => self.unpaired += 1,
            ReplyNote::TranscriptWithoutReply => self.transcripts_without_reply += 1,
            ReplyNote::FirstText(_) | ReplyNote::AudioStarted(_) | ReplyNote::FirstAudio(_) => {}
        }
    }

    /// Replies counted, however they ended (`unpaired` ones are among them).
    pub fn total(&self) -> u64 {
        self.with_audio
            + self.cancelled_before_audio
            + self.completed_without_audio
            + self.unfinished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_once_and_latencies_not_at_all() {
        let mut counts = ReplyCounts::default();
        for note in [
            ReplyNote::Outcome(ReplyOutcome::Spoken),
            ReplyNote::Outcome(ReplyOutcome::CutWhileSpeaking),
            ReplyNote::Outcome(ReplyOutcome::CancelledBeforeAudio),
            ReplyNote::Unpaired,
            ReplyNote::FirstAudio(Duration::from_millis(900)),
            ReplyNote::TranscriptWithoutReply,
        ] {
            counts.count(note);
        }
        assert_eq!(
            (
                counts.with_audio,
                counts.cut_while_speaking,
                counts.unpaired
            ),
            (2, 1, 1)
        );
        assert_eq!(counts.total(), 3);
        assert_eq!(counts.transcripts_without_reply, 1);
    }
}
