//! Spoken items: a user message a client creates with its audio
//! (`conversation.item.create` with `input_audio`). The item is checked against the
//! store (its id is new, the item it follows exists), announced (`SpokenItemAdded`),
//! and its audio goes to the STT child as one final segment. When the words come back
//! it is stored through the LLM actor, like a transcribed turn, and its `Transcript`
//! (or `TranscriptFailed`) goes out. Replies asked for meanwhile wait for its words
//! (`InputTurns::awaiting_words`), so a `response.create` right after the item answers
//! it. It is not answered on its own: the client asks.

use std::collections::VecDeque;

use bytes::Bytes;

use super::ConversationActor;
use crate::actors::messages::{EditHistory, TranscribeItem};
use crate::llm::history::ROOT;
use crate::protocol::pipeline::{Item, ItemId, ItemRole};
use crate::protocol::{AudioFormat, ErrorCode, PipelineEvent};

/// Spoken items waiting for their words, at most: the recogniser queues at most four
/// segments per conversation, so more would only be refused there.
const MAX_PENDING: usize = 4;

/// A spoken item on its way to the recogniser and back.
struct Pending {
    item_id: ItemId,
    previous: Option<ItemId>,
    audio_ms: u64,
}

#[derive(Default)]
pub(super) struct SpokenItems {
    pending: VecDeque<Pending>,
}

impl SpokenItems {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Every item still waiting: no transcript will come (the recogniser restarted).
    pub fn fail_all(&mut self, message: &str) -> Vec<PipelineEvent> {
        self.pending
            .drain(..)
            .map(|p| PipelineEvent::TranscriptFailed {
                item_id: p.item_id,
                message: message.to_string(),
            })
            .collect()
    }

    fn take(&mut self, item_id: &str) -> Option<Pending> {
        let at = self.pending.iter().position(|p| p.item_id == item_id)?;
        self.pending.remove(at)
    }
}

impl ConversationActor {
    fn refuse_item(&self, code: ErrorCode, message: String, reply_to: Option<String>) {
        self.to_client(PipelineEvent::Error {
            code,
            message,
            reply_to,
        });
    }

    pub(super) fn add_spoken_item(
        &mut self,
        item_id: ItemId,
        audio: Bytes,
        format: AudioFormat,
        previous: Option<ItemId>,
        reply_to: Option<String>,
    ) {
        let store = &self.services.conversations;
        let id = self.params.conversation_id;
        let known = |item: &str| store.item(id, item).is_ok();
        let pending = |item: &str| self.input.spoken.pending.iter().any(|p| p.item_id == item);
        if known(&item_id) || pending(&item_id) {
            let message = format!("an item with id '{item_id}' already exists");
            return self.refuse_item(ErrorCode::InvalidItem, message, reply_to);
        }
        if let Some(previous) = previous.as_deref().filter(|p| *p != ROOT) {
            if !known(previous) && !pending(previous) {
                let message = format!("no item '{previous}' to add the item after");
                return self.refuse_item(ErrorCode::ItemNotFound, message, reply_to);
            }
        }
        let Some(stt) = self.children.stt.as_ref() else {
            let message = "speech recognition is not running".to_string();
            return self.refuse_item(ErrorCode::Overloaded, message, reply_to);
        };
        if self.input.spoken.pending.len() >= MAX_PENDING {
            self.services.metrics.overloaded.inc();
            let message = format!("{MAX_PENDING} spoken items are already being transcribed");
            return self.refuse_item(ErrorCode::Overloaded, message, reply_to);
        }
        let audio_ms = format.bytes_to_ms(audio.len());
        let job = TranscribeItem {
            item_id: item_id.clone(),
            audio,
            format,
        };
        if stt.try_send(job).is_err() {
            self.report_overload();
            let message = "speech recognition is behind; the item was not added".to_string();
            return self.refuse_item(ErrorCode::Overloaded, message, reply_to);
        }
        self.input.spoken.pending.push_back(Pending {
            item_id: item_id.clone(),
            previous: previous.clone(),
            audio_ms,
        });
        self.to_client(PipelineEvent::SpokenItemAdded {
            item_id,
            previous,
            audio_ms,
        });
    }

    /// A spoken item's words (or why there are none): store it, tell the client, and
    /// let a reply that waited for it go.
    pub(super) fn on_item_transcript(
        &mut self,
        item_id: ItemId,
        text: Result<String, String>,
        stt_ms: u64,
    ) {
        let Some(pending) = self.input.spoken.take(&item_id) else {
            return; // Failed already (the recogniser restarted).
        };
        match text {
            Ok(text) => {
                if let Some(llm) = self.children.llm.as_ref().filter(|_| !text.is_empty()) {
                    llm.do_send(EditHistory::Add {
                        item: Item {
                            id: item_id.clone(),
                            role: ItemRole::User,
                            text: text.clone(),
                            audio: true,
                        },
                        previous: pending.previous,
                        reply_to: None,
                        announce: false,
                    });
                }
                self.to_client(PipelineEvent::Transcript {
                    item_id,
                    text,
                    audio_ms: pending.audio_ms,
                    stt_ms,
                });
            }
            Err(message) => self.to_client(PipelineEvent::TranscriptFailed { item_id, message }),
        }
        self.start_deferred_reply();
    }
}
