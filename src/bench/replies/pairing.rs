//! Pairing one session's server events with the speech they answer: each transcript with
//! the `vad.speech_stopped` that ended its segment, and each reply with the transcript it
//! answers. Pure bookkeeping on arrival times; [`crate::bench::session`] feeds it the
//! events and writes the [`ReplyNote`]s it returns into the shared window.
//!
//! What the server guarantees, and what the pairing relies on (src/actors/conversation):
//! - every reply is a `response_id`; its events come in the order text deltas →
//!   `response.done {cancelled}`, and, when speech starts, `response.audio.started` →
//!   binary frames → `response.audio.done {cancelled}`;
//! - the LLM answers every transcript with at most one reply, one reply at a time, and a
//!   new transcript (or a barge-in) cancels the running one, so a reply belongs to the
//!   latest transcript before its first event;
//! - except in one race: the previous reply's first delta can be on its way when the new
//!   transcript is sent. A newer reply appearing under the same transcript shows it; the
//!   older one then goes back to the transcript before (see [`ReplyTracker::reply_event`]).
//!
//! Latencies are measured from the *voice end*: the send time of the frame holding the
//! `audio_ms` of the transcript's `vad.speech_stopped`, the same reference as
//! `transcript_after_voice`.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::counts::{ReplyNote, ReplyOutcome};

/// Take the `vad.speech_stopped` (arrival time, `audio_ms`) that ended the segment of a
/// transcript whose `audio_ms` (the segment's end, at most `pad_ms` after the stop) is
/// `transcript_ms`: the latest pending stop at or before it. Older stops are dropped:
/// their segments gave no transcript (empty text, or skipped as overloaded). `None` when
/// no stop precedes it (a segment cut at `vad.max_segment_ms` has none).
pub fn take_stop(
    pending: &mut VecDeque<(Instant, u64)>,
    transcript_ms: u64,
) -> Option<(Instant, u64)> {
    let mut taken = None;
    while pending.front().is_some_and(|&(_, ms)| ms <= transcript_ms) {
        taken = pending.pop_front();
    }
    taken
}

/// A reply's event, as far as pairing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyEvent {
    TextDelta,
    Done { cancelled: bool },
    AudioStarted,
    AudioDone { cancelled: bool },
}

/// One transcript: the reference the latencies of its reply are measured from.
#[derive(Debug, Clone)]
struct Turn {
    voice_end: Option<Instant>,
    reply: Option<String>,
}

/// One reply while it runs.
#[derive(Debug)]
struct Reply {
    id: String,
    /// The voice end of the transcript it answers; `None` when unpaired (or too old).
    voice_end: Option<Instant>,
    paired: bool,
    first_text: Option<Instant>,
    /// Its first-text latency is recorded once the pairing can no longer change.
    confirmed: bool,
    text_done: Option<bool>,
    audio_started: bool,
    first_audio: bool,
}

/// A session's replies, paired with its transcripts.
#[derive(Debug, Default)]
pub struct ReplyTracker {
    latest: Option<Turn>,
    previous: Option<Turn>,
    /// Replies not yet ended: the current one, plus one still speaking while a newer
    /// one starts.
    replies: Vec<Reply>,
    /// The reply between `response.audio.started` and `response.audio.done`.
    speaking: Option<String>,
    /// Whether this server replies at all (a reply's event has arrived).
    heard_reply: bool,
    /// Replies already counted: a late event of theirs (a `response.done` after the
    /// `response.audio.done` of a barge-in) must not start a new one.
    ended: VecDeque<String>,
}

/// Ended reply ids remembered; their late events come within a few messages.
const ENDED_KEPT: usize = 8;

impl ReplyTracker {
    /// A `transcript.final` arrived; `voice_end` is the send time of its voice end.
    pub fn transcript(&mut self, voice_end: Option<Instant>) -> Vec<ReplyNote> {
        let mut notes = Vec::new();
        // Newer replies answer the new transcript: the latest one's pairing is final.
        if let Some(id) = self.latest.as_ref().and_then(|t| t.reply.clone()) {
            self.confirm(&id, &mut notes);
            if self.is(&id, |r| r.text_done == Some(true) && !r.audio_started) {
                self.end(&id, ReplyOutcome::CancelledBeforeAudio, &mut notes);
            }
        }
        if let Some(dropped) = self.previous.take() {
            if dropped.reply.is_none() {
                notes.push(ReplyNote::TranscriptWithoutReply);
            }
        }
        self.previous = self.latest.replace(Turn {
            voice_end,
            reply: None,
        });
        notes
    }

    /// A `response.*` event of reply `id` arrived at `now`.
    pub fn reply_event(&mut self, now: Instant, id: &str, event: ReplyEvent) -> Vec<ReplyNote> {
        let mut notes = Vec::new();
        if self.ended.iter().any(|e| e == id) {
            return notes;
        }
        if !self.replies.iter().any(|r| r.id == id) {
            self.begin(id, &mut notes);
        }
        let Some(reply) = self.replies.iter_mut().find(|r| r.id == id) else {
            return notes;
        };
        match event {
            ReplyEvent::TextDelta => {
                reply.first_text.get_or_insert(now);
            }
            ReplyEvent::Done { cancelled } => {
                reply.text_done = Some(cancelled);
                if !cancelled {
                    self.confirm(id, &mut notes);
                }
            }
            ReplyEvent::AudioStarted => {
                reply.audio_started = true;
                if let Some(voice_end) = reply.voice_end {
                    notes.push(ReplyNote::AudioStarted(
                        now.saturating_duration_since(voice_end),
                    ));
                }
                self.speaking = Some(id.to_string());
                self.confirm(id, &mut notes);
            }
            ReplyEvent::AudioDone { cancelled } => {
                let outcome = match (reply.first_audio, cancelled) {
                    (true, false) => ReplyOutcome::Spoken,
                    (true, true) => ReplyOutcome::CutWhileSpeaking,
                    (false, true) => ReplyOutcome::CancelledBeforeAudio,
                    (false, false) => ReplyOutcome::CompletedWithoutAudio,
                };
                self.end(id, outcome, &mut notes);
            }
        }
        notes
    }

    /// A binary audio frame arrived at `now`.
    pub fn audio_frame(&mut self, now: Instant) -> Vec<ReplyNote> {
        let Some(id) = self.speaking.as_deref() else {
            return Vec::new();
        };
        let Some(reply) = self.replies.iter_mut().find(|r| r.id == id) else {
            return Vec::new();
        };
        if reply.first_audio {
            return Vec::new();
        }
        reply.first_audio = true;
        reply
            .voice_end
            .map(|t| ReplyNote::FirstAudio(now.saturating_duration_since(t)))
            .into_iter()
            .collect()
    }

    /// Whether the latest transcript still waits for its reply's audio, on a server that
    /// has replied before: the drain after `audio.end` waits for it (bounded; with TTS
    /// off it waits the whole drain).
    pub fn awaiting_audio(&self) -> bool {
        let Some(turn) = self.latest.as_ref().filter(|_| self.heard_reply) else {
            return false;
        };
        match turn.reply.as_deref() {
            None => true,
            Some(id) => self.is(id, |r| !r.first_audio && r.text_done != Some(true)),
        }
    }

    /// The session ended: settle every reply and transcript still open.
    pub fn finish(&mut self) -> Vec<ReplyNote> {
        let mut notes = Vec::new();
        let ids: Vec<String> = self.replies.iter().map(|r| r.id.clone()).collect();
        for id in ids {
            self.confirm(&id, &mut notes);
            let outcome = if self.is(&id, |r| r.first_audio) {
                ReplyOutcome::SpeakingAtEnd
            } else if self.is(&id, |r| !r.audio_started && r.text_done == Some(true)) {
                ReplyOutcome::CancelledBeforeAudio
            } else {
                ReplyOutcome::Unfinished
            };
            self.end(&id, outcome, &mut notes);
        }
        for turn in [self.previous.take(), self.latest.take()]
            .into_iter()
            .flatten()
        {
            if turn.reply.is_none() {
                notes.push(ReplyNote::TranscriptWithoutReply);
            }
        }
        notes
    }

    /// The first event of reply `id`: pair it with the latest transcript.
    fn begin(&mut self, id: &str, notes: &mut Vec<ReplyNote>) {
        self.heard_reply = true;
        let mut reply = Reply {
            id: id.to_string(),
            voice_end: None,
            paired: false,
            first_text: None,
            confirmed: false,
            text_done: None,
            audio_started: false,
            first_audio: false,
        };
        let bound = self.latest.as_ref().map(|t| t.reply.clone());
        match bound {
            // No transcript yet: nothing to answer.
            None => {}
            Some(Some(old)) if !self.is(&old, |r| !r.confirmed) => {
                // The latest transcript already has its settled reply: this one answers
                // nothing the client heard (not expected from the server).
            }
            Some(displaced) => {
                if let Some(old) = displaced {
                    // The race: `old` began just after the newer transcript was sent, so
                    // it answers the transcript before.
                    self.move_to_previous(&old);
                }
                if let Some(turn) = self.latest.as_mut() {
                    turn.reply = Some(id.to_string());
                    reply.voice_end = turn.voice_end;
                    reply.paired = true;
                }
            }
        }
        // The TTS drops every older reply that has not started speaking when a newer one
        // begins (one still speaking ends with its own `response.audio.done`).
        let silent: Vec<String> = self
            .replies
            .iter()
            .filter(|r| !r.audio_started)
            .map(|r| r.id.clone())
            .collect();
        for old in silent {
            self.confirm(&old, notes);
            let outcome = if self.is(&old, |r| r.text_done == Some(true)) {
                ReplyOutcome::CancelledBeforeAudio
            } else {
                ReplyOutcome::CompletedWithoutAudio
            };
            self.end(&old, outcome, notes);
        }
        self.replies.push(reply);
    }

    /// Pair reply `id` with the transcript before the latest one, when that one has no
    /// reply yet; otherwise leave it unpaired.
    fn move_to_previous(&mut self, id: &str) {
        let previous = self.previous.as_mut().filter(|t| t.reply.is_none());
        let voice_end = previous.as_ref().and_then(|t| t.voice_end);
        let paired = previous.is_some();
        if let Some(turn) = previous {
            turn.reply = Some(id.to_string());
        }
        if let Some(reply) = self.replies.iter_mut().find(|r| r.id == id) {
            reply.voice_end = voice_end;
            reply.paired = paired;
        }
    }

    /// Whether reply `id` is open and satisfies `test`.
    fn is(&self, id: &str, test: impl Fn(&Reply) -> bool) -> bool {
        self.replies.iter().any(|r| r.id == id && test(r))
    }

    /// Record reply `id`'s first-text latency now that its pairing is final.
    fn confirm(&mut self, id: &str, notes: &mut Vec<ReplyNote>) {
        let Some(reply) = self.replies.iter_mut().find(|r| r.id == id) else {
            return;
        };
        if reply.confirmed {
            return;
        }
        reply.confirmed = true;
        if let (Some(voice_end), Some(at)) = (reply.voice_end, reply.first_text) {
            notes.push(ReplyNote::FirstText(
                at.saturating_duration_since(voice_end),
            ));
        }
    }

    /// Count reply `id`'s outcome and forget it.
    fn end(&mut self, id: &str, outcome: ReplyOutcome, notes: &mut Vec<ReplyNote>) {
        let Some(index) = self.replies.iter().position(|r| r.id == id) else {
            return;
        };
        let reply = self.replies.remove(index);
        if self.ended.len() == ENDED_KEPT {
            self.ended.pop_front();
        }
        self.ended.push_back(reply.id);
        if !reply.paired {
            notes.push(ReplyNote::Unpaired);
        }
        notes.push(ReplyNote::Outcome(outcome));
        if self.speaking.as_deref() == Some(id) {
            self.speaking = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::counts::ReplyCounts;
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feed `(ms after t0, event)` to a tracker, every note in arrival order.
    enum Ev {
        Transcript { voice_end_ms: u64 },
        Reply(&'static str, ReplyEvent),
        Frame,
    }

    fn run(events: &[(u64, Ev)]) -> (Vec<ReplyNote>, ReplyTracker) {
        let t0 = Instant::now();
        let mut tracker = ReplyTracker::default();
        let mut notes = Vec::new();
        for (at, event) in events {
            let now = t0 + ms(*at);
            notes.extend(match event {
                Ev::Transcript { voice_end_ms } => tracker.transcript(Some(t0 + ms(*voice_end_ms))),
                Ev::Reply(id, event) => tracker.reply_event(now, id, *event),
                Ev::Frame => tracker.audio_frame(now),
            });
        }
        (notes, tracker)
    }

    fn counts(notes: &[ReplyNote]) -> ReplyCounts {
        let mut counts = ReplyCounts::default();
        for note in notes {
            counts.count(*note);
        }
        counts
    }

    #[test]
    fn transcripts_take_the_latest_stop_before_their_segment_end() {
        let t = Instant::now();
        let mut pending: VecDeque<_> = [(t, 1_000), (t, 5_000), (t, 9_000)].into();
        // 1000 gave no transcript (empty text); 5000's segment ends 300 ms of padding later.
        assert_eq!(take_stop(&mut pending, 5_300).map(|s| s.1), Some(5_000));
        assert_eq!(pending.len(), 1);
        // A segment cut before any stop (max_segment_ms) takes none.
        assert_eq!(take_stop(&mut pending, 7_000), None);
        assert_eq!(take_stop(&mut pending, 9_000).map(|s| s.1), Some(9_000));
        assert!(pending.is_empty());
    }

    #[test]
    fn a_spoken_reply_is_timed_from_the_voice_end() {
        use ReplyEvent::*;
        let (notes, tracker) = run(&[
            (1_400, Ev::Transcript { voice_end_ms: 0 }),
            (1_900, Ev::Reply("a", TextDelta)),
            (2_000, Ev::Reply("a", TextDelta)),
            (2_300, Ev::Reply("a", Done { cancelled: false })),
            (2_500, Ev::Reply("a", AudioStarted)),
            (2_520, Ev::Frame),
            (2_540, Ev::Frame),
            (4_000, Ev::Reply("a", AudioDone { cancelled: false })),
        ]);
        assert_eq!(
            notes,
            vec![
                ReplyNote::FirstText(ms(1_900)),
                ReplyNote::AudioStarted(ms(2_500)),
                ReplyNote::FirstAudio(ms(2_520)),
                ReplyNote::Outcome(ReplyOutcome::Spoken),
            ]
        );
        assert!(!tracker.awaiting_audio());
    }

    #[test]
    fn barge_in_before_audio_counts_no_audio_latency() {
        use ReplyEvent::*;
        let (notes, _) = run(&[
            (1_400, Ev::Transcript { voice_end_ms: 0 }),
            (1_900, Ev::Reply("a", TextDelta)),
            (2_100, Ev::Reply("a", Done { cancelled: true })),
            (
                4_000,
                Ev::Transcript {
                    voice_end_ms: 3_000,
                },
            ),
        ]);
        assert_eq!(
            notes,
            vec![
                ReplyNote::FirstText(ms(1_900)),
                ReplyNote::Outcome(ReplyOutcome::CancelledBeforeAudio),
            ]
        );
    }

    #[test]
    fn a_reply_cut_while_speaking_keeps_its_audio_latency() {
        use ReplyEvent::*;
        let (notes, _) = run(&[
            (1_000, Ev::Transcript { voice_end_ms: 0 }),
            (1_500, Ev::Reply("a", TextDelta)),
            (2_000, Ev::Reply("a", AudioStarted)),
            (2_010, Ev::Frame),
            (2_400, Ev::Reply("a", AudioDone { cancelled: true })),
            (2_400, Ev::Reply("a", Done { cancelled: true })),
        ]);
        let c = counts(&notes);
        assert_eq!((c.with_audio, c.cut_while_speaking, c.total()), (1, 1, 1));
        assert!(notes.contains(&ReplyNote::FirstAudio(ms(2_010))));
        assert!(notes.contains(&ReplyNote::FirstText(ms(1_500))));
    }

    #[test]
    fn a_reply_racing_the_next_transcript_goes_back_to_its_own() {
        use ReplyEvent::*;
        // Reply "a" answers the transcript at 1000 but its first delta arrives after the
        // next transcript; "b" answers the second one.
        let (notes, _) = run(&[
            (1_000, Ev::Transcript { voice_end_ms: 0 }),
            (
                3_000,
                Ev::Transcript {
                    voice_end_ms: 2_000,
                },
            ),
            (3_005, Ev::Reply("a", TextDelta)),
            (3_010, Ev::Reply("a", Done { cancelled: true })),
            (3_600, Ev::Reply("b", TextDelta)),
            (3_900, Ev::Reply("b", AudioStarted)),
            (3_920, Ev::Frame),
            (5_000, Ev::Reply("b", AudioDone { cancelled: false })),
        ]);
        assert_eq!(
            notes,
            vec![
                ReplyNote::FirstText(ms(3_005)),
                ReplyNote::Outcome(ReplyOutcome::CancelledBeforeAudio),
                ReplyNote::AudioStarted(ms(1_900)),
                ReplyNote::FirstText(ms(1_600)),
                ReplyNote::FirstAudio(ms(1_920)),
                ReplyNote::Outcome(ReplyOutcome::Spoken),
            ]
        );
        assert_eq!(counts(&notes).transcripts_without_reply, 0);
    }

    #[test]
    fn silent_replies_and_missing_replies_are_counted_not_timed() {
        use ReplyEvent::*;
        // TTS off: replies finish without audio; the third transcript gets no reply.
        let (mut notes, mut tracker) = run(&[
            (1_000, Ev::Transcript { voice_end_ms: 0 }),
            (1_500, Ev::Reply("a", TextDelta)),
            (1_800, Ev::Reply("a", Done { cancelled: false })),
            (
                4_000,
                Ev::Transcript {
                    voice_end_ms: 3_000,
                },
            ),
            (4_500, Ev::Reply("b", TextDelta)),
            (
                7_000,
                Ev::Transcript {
                    voice_end_ms: 6_000,
                },
            ),
        ]);
        notes.extend(tracker.finish());
        let c = counts(&notes);
        assert_eq!(c.completed_without_audio, 1, "{notes:?}");
        assert_eq!(c.unfinished, 1, "{notes:?}");
        assert_eq!(c.transcripts_without_reply, 1, "{notes:?}");
        assert_eq!(c.with_audio, 0);
        assert!(!notes
            .iter()
            .any(|n| matches!(n, ReplyNote::AudioStarted(_) | ReplyNote::FirstAudio(_))));
    }

    #[test]
    fn a_reply_without_a_transcript_is_unpaired() {
        use ReplyEvent::*;
        let (notes, _) = run(&[
            (100, Ev::Reply("a", TextDelta)),
            (200, Ev::Reply("a", AudioStarted)),
            (220, Ev::Frame),
            (900, Ev::Reply("a", AudioDone { cancelled: false })),
        ]);
        assert_eq!(
            notes,
            vec![
                ReplyNote::Unpaired,
                ReplyNote::Outcome(ReplyOutcome::Spoken)
            ]
        );
    }

    #[test]
    fn the_drain_waits_for_the_last_reply_only_on_a_replying_server() {
        use ReplyEvent::*;
        let (_, mut tracker) = run(&[(1_000, Ev::Transcript { voice_end_ms: 0 })]);
        assert!(
            !tracker.awaiting_audio(),
            "no reply so far (LLM off): do not wait"
        );
        let t = Instant::now();
        tracker.reply_event(t, "a", TextDelta);
        tracker.reply_event(t, "a", Done { cancelled: true });
        tracker.transcript(Some(t));
        tracker.transcript(Some(t));
        assert!(tracker.awaiting_audio());
        tracker.reply_event(t, "b", TextDelta);
        assert!(tracker.awaiting_audio());
        tracker.reply_event(t, "b", AudioStarted);
        tracker.audio_frame(t);
        assert!(!tracker.awaiting_audio());
        // The session closes while "b" speaks: it was heard.
        let c = counts(&tracker.finish());
        assert_eq!((c.with_audio, c.speaking_at_end, c.unfinished), (1, 1, 0));
    }
}
