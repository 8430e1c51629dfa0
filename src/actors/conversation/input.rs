//! The user's turns, from speech to stored items.
//!
//! A turn is an item from the moment the user starts speaking (its id goes out with
//! `SpeechStarted`), or from a commit (manual turns). Its final segment commits it:
//! the item is announced (`InputCommitted`) and the segment goes to the recogniser.
//! Transcripts come back tagged with where their segment ended, which finds their
//! item; a segment the recogniser skipped, and every older one still waiting, gets
//! `TranscriptFailed`. A transcribed turn is stored (through the LLM actor, in order
//! with the replies) and, under voice activity with `create_response`, answered. A
//! reply asked for while committed turns still wait for their words waits too.

use std::collections::VecDeque;

use uuid::Uuid;

use super::ConversationActor;
use crate::actors::messages::{EditHistory, SegmentKind, Transcribe};
use crate::audio::segmenter::{SpeechEvent, SpeechSegment};
use crate::protocol::pipeline::{
    new_item_id, CancelReason, Item, ItemId, ItemRole, ReplyOptions, TurnDetection,
};
use crate::protocol::PipelineEvent;

/// Committed turns waiting for their transcript, at most; older ones are failed.
/// The recogniser queues at most four segments per conversation, so more never
/// resolve.
const MAX_AWAITING: usize = 16;

#[derive(Default)]
pub(super) struct InputTurns {
    /// The item of the turn being spoken (or, for manual turns, being sent).
    open: Option<ItemId>,
    /// Committed turns waiting for their words: where their segment ended, and id.
    awaiting: VecDeque<(u64, ItemId)>,
    /// A reply announced while turns were waiting for their words.
    pub deferred: Option<(Uuid, ItemId, ReplyOptions)>,
    /// Spoken items a client created, waiting for their words too.
    pub spoken: super::spoken::SpokenItems,
}

impl InputTurns {
    pub fn awaiting_words(&self) -> bool {
        !self.awaiting.is_empty() || !self.spoken.is_empty()
    }

    /// Every committed turn still waiting: no transcript will come.
    pub fn fail_all(&mut self, message: &str) -> Vec<PipelineEvent> {
        self.awaiting
            .drain(..)
            .map(|(_, item_id)| PipelineEvent::TranscriptFailed {
                item_id,
                message: message.to_string(),
            })
            .collect()
    }

    /// The item a transcript ending at `audio_ms` belongs to, and the events of the
    /// older turns it shows will never get one.
    fn resolve(&mut self, audio_ms: u64, failed: &mut Vec<PipelineEvent>) -> Option<ItemId> {
        while let Some((end_ms, _)) = self.awaiting.front() {
            if *end_ms >= audio_ms {
                break;
            }
            if let Some((_, item_id)) = self.awaiting.pop_front() {
                let message = "no transcript came for this turn".to_string();
                failed.push(PipelineEvent::TranscriptFailed { item_id, message });
            }
        }
        match self.awaiting.front() {
            Some((end_ms, _)) if *end_ms == audio_ms => self.awaiting.pop_front().map(|(_, id)| id),
            _ => None,
        }
    }
}

impl ConversationActor {
    /// Turns end by voice activity and are answered without being asked.
    pub(super) fn answers_turns(&self) -> bool {
        matches!(self.policy.detection, TurnDetection::Vad(_)) && self.policy.create_response
    }

    pub(super) fn on_speech(&mut self, event: SpeechEvent) {
        let event = match event {
            SpeechEvent::Started { audio_ms } => {
                if self.policy.interrupt_response {
                    // Barge-in: the user talks over the reply.
                    self.cancel_reply(CancelReason::TurnDetected);
                }
                let item_id = self.input.open.get_or_insert_with(new_item_id).clone();
                PipelineEvent::SpeechStarted { audio_ms, item_id }
            }
            SpeechEvent::Stopped { audio_ms } => {
                let item_id = self.input.open.get_or_insert_with(new_item_id).clone();
                PipelineEvent::SpeechStopped { audio_ms, item_id }
            }
        };
        self.to_client(event);
    }

    /// A final segment commits its turn; the recogniser gets it.
    pub(super) fn on_final_segment(&mut self, segment: SpeechSegment) {
        let item_id = self.input.open.take().unwrap_or_else(new_item_id);
        let (start_ms, end_ms) = (segment.start_ms, segment.end_ms);
        self.to_client(PipelineEvent::InputCommitted {
            item_id: item_id.clone(),
            audio_start_ms: start_ms,
            audio_end_ms: end_ms,
        });
        let Some(stt) = self.children.stt.as_ref() else {
            let message = "speech recognition is off (stt.enabled = false)".to_string();
            return self.to_client(PipelineEvent::TranscriptFailed { item_id, message });
        };
        let kind = SegmentKind::Final;
        if stt.try_send(Transcribe { segment, kind }).is_err() {
            self.report_overload();
            let message = "speech recognition is behind; the turn was skipped".to_string();
            return self.to_client(PipelineEvent::TranscriptFailed { item_id, message });
        }
        if self.input.awaiting.len() >= MAX_AWAITING {
            let failed = self.input.fail_all("no transcript came for this turn");
            failed.into_iter().for_each(|event| self.to_client(event));
        }
        self.input.awaiting.push_back((end_ms, item_id));
    }

    /// A flush found nothing: the turn opened for it (if any) stays open.
    pub(super) fn on_nothing_to_commit(&mut self) {
        self.to_client(PipelineEvent::NothingToCommit);
    }

    pub(super) fn on_transcript(&mut self, text: String, audio_ms: u64, stt_ms: u64) {
        self.turn.transcript();
        let mut failed = Vec::new();
        let item = self.input.resolve(audio_ms, &mut failed);
        failed.into_iter().for_each(|event| self.to_client(event));
        // A segment cut for length commits no turn of its own: its words get one now.
        let item_id = item.unwrap_or_else(new_item_id);
        if !text.is_empty() {
            if let Some(llm) = self.children.llm.as_ref() {
                let item = Item {
                    id: item_id.clone(),
                    role: ItemRole::User,
                    text: text.clone(),
                    audio: true,
                };
                llm.do_send(EditHistory::Add {
                    item,
                    previous: None,
                    reply_to: None,
                    announce: false,
                });
            }
        }
        self.to_client(PipelineEvent::Transcript {
            item_id,
            text: text.clone(),
            audio_ms,
            stt_ms,
        });
        self.start_deferred_reply();
        if self.answers_turns() && !text.is_empty() {
            self.answer(text);
        }
    }

    pub(super) fn on_transcript_failed(&mut self, audio_ms: u64, message: String) {
        let mut failed = Vec::new();
        if let Some(item_id) = self.input.resolve(audio_ms, &mut failed) {
            failed.push(PipelineEvent::TranscriptFailed { item_id, message });
        }
        failed.into_iter().for_each(|event| self.to_client(event));
        self.start_deferred_reply();
    }

    /// A draft transcript: start the speculative reply, if turns are answered.
    pub(super) fn on_draft(&mut self, text: String) {
        if !self.answers_turns() {
            return;
        }
        let same = self.speculation.as_ref().is_some_and(|s| s.text == text);
        if !same {
            self.discard_speculation();
            let options = self.policy.reply.clone();
            self.respond(Some(text), options);
        }
    }

    /// Forget the turn being spoken or sent.
    pub(super) fn clear_input(&mut self) {
        self.input.open = None;
        self.to_client(PipelineEvent::InputCleared);
    }
}
