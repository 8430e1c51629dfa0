//! Replies, from start to `ReplyFinished`.
//!
//! A reply is over for the client only when the model's text is complete and its
//! speech is over (a reply with nothing to say is over with its text). Its status is
//! decided then: completed, cut at `max_tokens` (incomplete), cancelled (by the
//! client, or by the user talking over it), or failed. A speculative reply's events
//! wait with its speculation (`turn.rs`) until its turn is confirmed.

use std::collections::HashMap;

use uuid::Uuid;

use super::ConversationActor;
use crate::actors::messages::{
    CancelResponse, ConfirmResponse, DiscardResponse, ReleaseSpeech, ReplyOutcome, Respond,
    SpeakDelta, SpeakEnd, StopSpeaking,
};
use crate::metrics::Preemptive;
use crate::protocol::pipeline::{
    new_item_id, CancelReason, ItemId, Modality, ReplyOptions, ReplyStatus, Usage,
};
use crate::protocol::PipelineEvent;

/// Replies tracked at once, at most (the current one, a speculative one, and ones whose
/// end is still on its way); the oldest is forgotten beyond it.
const MAX_REPLIES: usize = 8;

struct Reply {
    /// Order of creation, to forget the oldest.
    seq: u64,
    speaks: bool,
    /// Text went to the TTS: its speech will report an end.
    speaking: bool,
    outcome: Option<ReplyOutcome>,
    /// `Some(cancelled)` once the speech is over.
    speech: Option<bool>,
    cancel: Option<CancelReason>,
}

#[derive(Default)]
pub(super) struct Replies {
    live: HashMap<Uuid, Reply>,
    next_seq: u64,
}

impl Replies {
    pub fn start(&mut self, id: Uuid, speaks: bool) {
        if self.live.len() >= MAX_REPLIES {
            let oldest = self
                .live
                .iter()
                .min_by_key(|(_, r)| r.seq)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.live.remove(&oldest);
            }
        }
        self.next_seq += 1;
        let reply = Reply {
            seq: self.next_seq,
            speaks,
            speaking: false,
            outcome: None,
            speech: None,
            cancel: None,
        };
        self.live.insert(id, reply);
    }

    pub fn forget(&mut self, id: Uuid) {
        self.live.remove(&id);
    }

    /// Whether the reply's text should be spoken; notes that it is.
    pub fn speak(&mut self, id: Uuid) -> bool {
        match self.live.get_mut(&id) {
            Some(reply) if reply.speaks => {
                reply.speaking = true;
                true
            }
            _ => false,
        }
    }

    /// Record why the replies under way are being cut.
    pub fn cancelling(&mut self, reason: CancelReason) {
        for reply in self.live.values_mut() {
            reply.cancel.get_or_insert(reason);
        }
    }

    pub fn text_done(&mut self, id: Uuid, outcome: ReplyOutcome) -> Option<PipelineEvent> {
        self.live.get_mut(&id)?.outcome = Some(outcome);
        self.finish_if_over(id)
    }

    pub fn speech_done(&mut self, id: Uuid, cancelled: bool) -> Option<PipelineEvent> {
        self.live.get_mut(&id)?.speech = Some(cancelled);
        self.finish_if_over(id)
    }

    /// Finish a reply now, whatever it was waiting for.
    pub fn finish_now(&mut self, id: Uuid, status: ReplyStatus) -> Option<PipelineEvent> {
        self.live.remove(&id)?;
        Some(PipelineEvent::ReplyFinished {
            response_id: id,
            status,
            usage: Usage::default(),
        })
    }

    /// The replies `waiting` holds for, each ended by `end`.
    fn end_all(
        &mut self,
        waiting: impl Fn(&Reply) -> bool,
        end: impl Fn(&mut Self, Uuid) -> Option<PipelineEvent>,
    ) -> Vec<PipelineEvent> {
        let ids: Vec<Uuid> = self
            .live
            .iter()
            .filter(|(_, r)| waiting(r))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| end(self, id)).collect()
    }

    /// The model's actor was restarted: replies it was writing have failed.
    pub fn text_failed_all(&mut self, message: &str) -> Vec<PipelineEvent> {
        let failed = |replies: &mut Self, id| {
            let message = message.to_string();
            replies.text_done(id, ReplyOutcome::Failed { message })
        };
        self.end_all(|r| r.outcome.is_none(), failed)
    }

    /// The TTS actor was restarted: speech under way is over.
    pub fn speech_over_all(&mut self) -> Vec<PipelineEvent> {
        self.end_all(
            |r| r.speech.is_none(),
            |replies, id| replies.speech_done(id, true),
        )
    }

    fn finish_if_over(&mut self, id: Uuid) -> Option<PipelineEvent> {
        let reply = self.live.get(&id)?;
        let outcome = reply.outcome.as_ref()?;
        if reply.speaking && reply.speech.is_none() {
            return None;
        }
        let speech_cut = reply.speech == Some(true);
        let (status, usage) = status(outcome, speech_cut, reply.cancel);
        self.live.remove(&id);
        Some(PipelineEvent::ReplyFinished {
            response_id: id,
            status,
            usage,
        })
    }
}

/// How a reply ended, from its text's outcome and whether its speech was cut.
fn status(
    outcome: &ReplyOutcome,
    speech_cut: bool,
    cancel: Option<CancelReason>,
) -> (ReplyStatus, Usage) {
    let reason = cancel.unwrap_or(CancelReason::TurnDetected);
    match outcome {
        ReplyOutcome::Failed { message } => (
            ReplyStatus::Failed {
                message: message.clone(),
            },
            Usage::default(),
        ),
        ReplyOutcome::Cancelled { usage } => (ReplyStatus::Cancelled(reason), *usage),
        ReplyOutcome::Completed { usage, .. } if speech_cut => {
            (ReplyStatus::Cancelled(reason), *usage)
        }
        ReplyOutcome::Completed {
            usage,
            length_limited: true,
        } => (ReplyStatus::Incomplete, *usage),
        ReplyOutcome::Completed { usage, .. } => (ReplyStatus::Completed, *usage),
    }
}

impl ConversationActor {
    /// Start a reply: announce it, then have the model write it (at once, or once the
    /// committed turns before it have their words). `draft`: a speculative reply on a
    /// draft transcript.
    pub(super) fn respond(&mut self, draft: Option<String>, options: ReplyOptions) {
        let response_id = Uuid::new_v4();
        let item_id = new_item_id();
        if let Some(text) = &draft {
            self.speculation = Some(super::turn::Speculation::new(response_id, text.clone()));
            let metrics = &self.services.metrics.latency;
            metrics.count_preemptive(Preemptive::Started);
        }
        let speaks = options.modality == Modality::Audio && self.services.tts.is_some();
        self.replies.start(response_id, speaks);
        self.reply_event(PipelineEvent::ReplyStarted {
            response_id,
            item_id: item_id.clone(),
            options: options.clone(),
        });
        self.turn.reply_started(response_id);
        if draft.is_none() && self.input.awaiting_words() {
            self.input.deferred = Some((response_id, item_id, options));
        } else {
            self.generate(response_id, item_id, draft, options);
        }
    }

    fn generate(
        &mut self,
        response_id: Uuid,
        item_id: ItemId,
        draft: Option<String>,
        options: ReplyOptions,
    ) {
        if let Some(llm) = self.children.llm.as_ref() {
            llm.do_send(Respond {
                response_id,
                item_id,
                draft,
                options,
            });
        }
    }

    /// A reply that waited for its turn's words: they are all in now.
    pub(super) fn start_deferred_reply(&mut self) {
        if self.input.awaiting_words() {
            return;
        }
        if let Some((response_id, item_id, options)) = self.input.deferred.take() {
            self.generate(response_id, item_id, None, options);
        }
    }

    /// Stop the reply being made or spoken, and any waiting for its turn's words.
    pub(super) fn cancel_reply(&mut self, reason: CancelReason) {
        self.discard_speculation();
        self.replies.cancelling(reason);
        if let Some((response_id, _, _)) = self.input.deferred.take() {
            let finished = self
                .replies
                .finish_now(response_id, ReplyStatus::Cancelled(reason));
            finished.into_iter().for_each(|e| self.reply_event(e));
        }
        if let Some(llm) = self.children.llm.as_ref() {
            llm.do_send(CancelResponse);
        }
        if let Some(tts) = self.children.tts.as_ref() {
            tts.do_send(StopSpeaking);
        }
    }

    /// Drop the speculative reply unseen: the LLM stores nothing of it, the TTS drops
    /// its held audio, and its events still on their way are ignored.
    pub(super) fn discard_speculation(&mut self) {
        let Some(speculation) = self.speculation.take() else {
            return;
        };
        let metrics = &self.services.metrics.latency;
        metrics.count_preemptive(Preemptive::Discarded);
        let response_id = speculation.response_id;
        self.replies.forget(response_id);
        if let Some(llm) = self.children.llm.as_ref() {
            llm.do_send(DiscardResponse { response_id });
        }
        if let Some(tts) = self.children.tts.as_ref() {
            tts.do_send(StopSpeaking);
        }
        if self.discarded.len() >= 4 {
            self.discarded.pop_front();
        }
        self.discarded.push_back(response_id);
    }

    /// The turn is confirmed with `text`: the speculative reply on the same words
    /// becomes the answer (its held events go out now), or a reply starts.
    pub(super) fn answer(&mut self, text: String) {
        match self.speculation.take_if(|s| s.text == text) {
            Some(speculation) => {
                let metrics = &self.services.metrics.latency;
                metrics.count_preemptive(Preemptive::Used);
                let response_id = speculation.response_id;
                if let Some(llm) = self.children.llm.as_ref() {
                    llm.do_send(ConfirmResponse { response_id });
                }
                if let Some(tts) = self.children.tts.as_ref() {
                    tts.do_send(ReleaseSpeech { response_id });
                }
                for event in speculation.release() {
                    self.to_client(event);
                }
            }
            None => {
                self.discard_speculation();
                let options = self.policy.reply.clone();
                self.respond(None, options);
            }
        }
    }

    pub(super) fn is_held(&self, response_id: Uuid) -> bool {
        self.speculation
            .as_ref()
            .is_some_and(|s| s.response_id == response_id)
    }

    /// An event of a reply: to the client, or held with its unconfirmed speculation.
    /// Events of discarded replies still on their way are dropped.
    pub(super) fn reply_event(&mut self, event: PipelineEvent) {
        let id = event.response_id();
        if id.is_some_and(|id| self.discarded.contains(&id)) {
            return;
        }
        match self.speculation.as_mut() {
            Some(speculation) if id == Some(speculation.response_id) => speculation.hold(event),
            _ => self.to_client(event),
        }
    }

    pub(super) fn on_reply_delta(&mut self, response_id: Uuid, text: String) {
        if self.discarded.contains(&response_id) {
            return;
        }
        self.turn.first_token(response_id);
        if self.replies.speak(response_id) {
            if let Some(tts) = self.children.tts.as_ref() {
                let held = self.is_held(response_id);
                tts.do_send(SpeakDelta {
                    response_id,
                    text: text.clone(),
                    held,
                });
            }
        }
        self.reply_event(PipelineEvent::ReplyDelta { response_id, text });
    }

    pub(super) fn on_reply_text_done(&mut self, response_id: Uuid, outcome: ReplyOutcome) {
        if self.discarded.contains(&response_id) {
            return;
        }
        let cancelled = !matches!(outcome, ReplyOutcome::Completed { .. });
        if let Some(tts) = self.children.tts.as_ref() {
            tts.do_send(SpeakEnd {
                response_id,
                cancelled,
            });
        }
        self.reply_event(PipelineEvent::ReplyTextDone {
            response_id,
            cancelled,
        });
        if let Some(finished) = self.replies.text_done(response_id, outcome) {
            self.reply_event(finished);
        }
    }

    pub(super) fn on_audio_done(&mut self, response_id: Uuid, cancelled: bool, audible: bool) {
        if self.discarded.contains(&response_id) {
            return;
        }
        self.to_client(PipelineEvent::AudioDone {
            response_id,
            cancelled,
            audible,
        });
        if let Some(finished) = self.replies.speech_done(response_id, cancelled) {
            self.reply_event(finished);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(length_limited: bool) -> ReplyOutcome {
        ReplyOutcome::Completed {
            usage: Usage::default(),
            length_limited,
        }
    }

    fn status_of(event: Option<PipelineEvent>) -> Option<ReplyStatus> {
        match event {
            Some(PipelineEvent::ReplyFinished { status, .. }) => Some(status),
            _ => None,
        }
    }

    #[test]
    fn a_spoken_reply_finishes_when_text_and_speech_are_both_over() {
        let mut replies = Replies::default();
        let id = Uuid::new_v4();
        replies.start(id, true);
        assert!(replies.speak(id));
        assert_eq!(replies.text_done(id, completed(false)), None);
        let done = replies.speech_done(id, false);
        assert_eq!(status_of(done), Some(ReplyStatus::Completed));
        assert_eq!(replies.speech_done(id, false), None, "finished once");
    }

    #[test]
    fn a_reply_with_nothing_spoken_finishes_with_its_text() {
        let mut replies = Replies::default();
        let id = Uuid::new_v4();
        replies.start(id, true);
        let done = replies.text_done(id, completed(true));
        assert_eq!(status_of(done), Some(ReplyStatus::Incomplete));
    }

    #[test]
    fn cut_speech_and_cancelled_text_report_why() {
        let mut replies = Replies::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        replies.start(a, true);
        replies.start(b, false);
        replies.speak(a);
        replies.cancelling(CancelReason::Client);
        replies.text_done(a, completed(false));
        let cut = replies.speech_done(a, true);
        assert_eq!(
            status_of(cut),
            Some(ReplyStatus::Cancelled(CancelReason::Client))
        );
        let cancelled = ReplyOutcome::Cancelled {
            usage: Usage::default(),
        };
        assert_eq!(
            status_of(replies.text_done(b, cancelled)),
            Some(ReplyStatus::Cancelled(CancelReason::Client))
        );
    }

    #[test]
    fn a_restarted_tts_ends_the_speech_it_owed() {
        let mut replies = Replies::default();
        let id = Uuid::new_v4();
        replies.start(id, true);
        replies.speak(id);
        assert_eq!(replies.text_done(id, completed(false)), None);
        let events = replies.speech_over_all();
        assert!(matches!(
            &events[..],
            [PipelineEvent::ReplyFinished {
                status: ReplyStatus::Cancelled(_),
                ..
            }]
        ));
    }
}
