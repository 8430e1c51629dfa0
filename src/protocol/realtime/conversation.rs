//! `conversation.item.*`: items a client creates (with their words, or spoken: heard
//! by the recogniser first), retrieves, deletes and truncates.
//! The conversation's stored history carries them out and answers; this side checks
//! what it can first (a truncation needs an assistant item this session spoke) and
//! writes the answers as Realtime events.

use super::client::ItemParam;
use super::error::RealtimeError;
use super::input::user_audio_item;
use super::items::{heard, new_item, render, LoggedItem, NewItem};
use super::server::{ItemStatus, ServerEvent};
use super::RealtimeWire;
use crate::protocol::pipeline::{Command, Item, ItemRole};
use crate::protocol::wire::Outbox;

/// Truncations waiting for their answer, at most.
const MAX_PENDING_TRUNCATIONS: usize = 16;

impl RealtimeWire {
    pub(super) fn create_item(
        &mut self,
        param: &ItemParam,
        previous: Option<String>,
        event_id: Option<String>,
        out: &mut Outbox,
    ) -> Result<(), RealtimeError> {
        match new_item(param, self.defaults.max_item_bytes)? {
            NewItem::Ready(item) => out.command(Command::AddItem {
                item,
                previous,
                reply_to: event_id,
            }),
            NewItem::Spoken { id, audio } => {
                let param = "item.content[0].audio";
                let audio = self.decode_audio(audio, param)?;
                if audio.is_empty() {
                    return Err(RealtimeError::value(param, "the audio is empty"));
                }
                // The audio is heard in the format it was sent in, whatever comes next.
                out.command(Command::AddSpokenItem {
                    item_id: id,
                    audio,
                    format: self.session.input,
                    previous,
                    reply_to: event_id,
                });
            }
        }
        Ok(())
    }

    pub(super) fn truncate(
        &mut self,
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
        event_id: Option<String>,
        out: &mut Outbox,
    ) -> Result<(), RealtimeError> {
        if content_index != 0 {
            let message = "hearken's items have one content part: content_index must be 0";
            return Err(RealtimeError::value("content_index", message));
        }
        let (pieces, audio_ms, live) = match self.live_audio(&item_id) {
            Some((pieces, audio_ms, id)) => (pieces, audio_ms, Some(id)),
            None => match self.items.get(&item_id) {
                Some(LoggedItem {
                    role: ItemRole::Assistant,
                    audio: true,
                    pieces,
                    audio_ms,
                }) => (pieces.clone(), *audio_ms, None),
                Some(_) => {
                    let message = format!("item '{item_id}' is not a spoken assistant message");
                    return Err(RealtimeError::state("invalid_item", message).param("item_id"));
                }
                None => {
                    let message = format!(
                        "no assistant audio of item '{item_id}' in this session (only replies \
                         spoken in this session can be truncated)"
                    );
                    return Err(RealtimeError::state("item_not_found", message).param("item_id"));
                }
            },
        };
        if audio_end_ms > audio_ms {
            let message = format!(
                "audio_end_ms {audio_end_ms} is past the end of the item's audio ({audio_ms} ms)"
            );
            return Err(RealtimeError::value("audio_end_ms", message));
        }
        if let Some(id) = live {
            // The listener stopped here: the rest is not sent, and not spoken on.
            self.cut_response(id);
            out.command(Command::CancelReply);
        }
        if self.truncating.len() >= MAX_PENDING_TRUNCATIONS {
            // Answers that never came (the truncation failed): forget them.
            self.truncating.clear();
        }
        self.truncating
            .insert(item_id.clone(), (content_index, audio_end_ms));
        out.command(Command::TruncateItem {
            text: heard(&pieces, audio_ms, audio_end_ms),
            item_id,
            reply_to: event_id,
        });
        Ok(())
    }

    pub(super) fn on_item_added(&mut self, item: &Item, previous: Option<&str>, out: &mut Outbox) {
        let previous_item_id = match previous {
            Some("root") => None,
            Some(previous) => Some(previous.to_string()),
            None => self.items.last().map(str::to_string),
        };
        let logged = LoggedItem {
            role: item.role,
            audio: item.audio,
            pieces: Vec::new(),
            audio_ms: 0,
        };
        self.items.add(&item.id, logged, previous);
        let json = render(item, ItemStatus::Completed);
        let previous_item_id = previous_item_id.as_deref();
        self.send(
            out,
            &ServerEvent::ItemAdded {
                previous_item_id,
                item: &json,
            },
        );
        self.send(
            out,
            &ServerEvent::ItemDone {
                previous_item_id,
                item: &json,
            },
        );
    }

    /// A spoken item is being heard: added now, with no transcript yet; its
    /// transcription events and `conversation.item.done` follow with its words
    /// (`input.rs`), as for a committed turn.
    pub(super) fn on_spoken_item_added(
        &mut self,
        item_id: &str,
        previous: Option<&str>,
        out: &mut Outbox,
    ) {
        let previous_item_id = match previous {
            Some("root") => None,
            Some(previous) => Some(previous.to_string()),
            None => self.items.last().map(str::to_string),
        };
        let logged = LoggedItem {
            role: ItemRole::User,
            audio: true,
            pieces: Vec::new(),
            audio_ms: 0,
        };
        self.items.add(item_id, logged, previous);
        let item = user_audio_item(item_id, None, ItemStatus::Completed);
        self.send(
            out,
            &ServerEvent::ItemAdded {
                previous_item_id: previous_item_id.as_deref(),
                item: &item,
            },
        );
    }

    pub(super) fn on_item_deleted(&mut self, item_id: &str, out: &mut Outbox) {
        self.items.remove(item_id);
        self.send(out, &ServerEvent::ItemDeleted { item_id });
    }

    pub(super) fn on_item_truncated(&mut self, item_id: &str, out: &mut Outbox) {
        let (content_index, audio_end_ms) = self.truncating.remove(item_id).unwrap_or_default();
        if let Some(item) = self.items.get_mut(item_id) {
            item.audio_ms = item.audio_ms.min(audio_end_ms);
            item.pieces.retain(|p| p.start_ms < audio_end_ms);
        }
        self.send(
            out,
            &ServerEvent::ItemTruncated {
                item_id,
                content_index,
                audio_end_ms,
            },
        );
    }

    pub(super) fn on_item_retrieved(&mut self, item: &Item, out: &mut Outbox) {
        let json = render(item, ItemStatus::Completed);
        self.send(out, &ServerEvent::ItemRetrieved { item: &json });
    }
}
