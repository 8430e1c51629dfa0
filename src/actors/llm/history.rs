//! The LLM actor's item operations: add, delete, truncate and read stored items, in
//! order with its replies (a truncate of the reply still being written caps what will
//! be stored). Answers go to the client through the conversation.

use actix::prelude::*;

use super::{LlmActor, CUT_MARKER};
use crate::actors::messages::{ChildEvent, EditHistory};
use crate::llm::history::HistoryError;
use crate::protocol::pipeline::{Item, ItemRole};
use crate::protocol::{ErrorCode, PipelineEvent};

impl LlmActor {
    fn answer(&self, event: PipelineEvent) {
        self.parent.do_send(ChildEvent::ToClient { event });
    }

    fn refuse_edit(&self, error: HistoryError, reply_to: Option<String>) {
        let code = match error {
            HistoryError::NotFound { .. } => ErrorCode::ItemNotFound,
            HistoryError::Duplicate { .. } | HistoryError::NotAssistant { .. } => {
                ErrorCode::InvalidItem
            }
        };
        self.answer(PipelineEvent::Error {
            code,
            message: error.to_string(),
            reply_to,
        });
    }

    /// An item as the client sees it: the cut marker is the model's hint, not words.
    fn shown(mut item: Item) -> Item {
        if let Some(text) = item.text.strip_suffix(CUT_MARKER) {
            item.text = text.to_string();
        }
        item
    }

    /// The reply still being written (or finished but unconfirmed) with this item id.
    fn unstored_reply(
        &mut self,
        item_id: &str,
    ) -> Option<(&mut String, Option<&mut Option<String>>)> {
        if let Some(reply) = self.current.as_mut().filter(|r| r.item_id == item_id) {
            return Some((&mut reply.text, Some(&mut reply.heard)));
        }
        let finished = self.finished.as_mut().filter(|f| f.item_id == item_id)?;
        Some((&mut finished.text, None))
    }

    fn truncate(&mut self, item_id: &str, heard: String) -> Result<(), HistoryError> {
        if let Some((text, cap)) = self.unstored_reply(item_id) {
            match cap {
                Some(cap) => *cap = Some(heard),
                None => *text = heard + CUT_MARKER,
            }
            return Ok(());
        }
        let conversations = &self.env.services.conversations;
        let id = self.conversation_id();
        let stored = conversations.item(id, item_id)?;
        let whole = stored.text.strip_suffix(CUT_MARKER).unwrap_or(&stored.text);
        // Cut only if the listener missed something; the marker tells the model.
        let text = if heard.len() < whole.len() {
            heard + CUT_MARKER
        } else {
            stored.text.clone()
        };
        conversations.rewrite_reply(id, item_id, text)
    }
}

impl Handler<EditHistory> for LlmActor {
    type Result = ();

    fn handle(&mut self, edit: EditHistory, _: &mut Context<Self>) {
        let services = std::sync::Arc::clone(&self.env.services);
        let conversations = &services.conversations;
        let id = self.conversation_id();
        match edit {
            EditHistory::Add {
                item,
                previous,
                reply_to,
                announce,
            } => match conversations.insert(id, &item, previous.as_deref()) {
                Ok(()) if announce => self.answer(PipelineEvent::ItemAdded {
                    item,
                    previous,
                    reply_to,
                }),
                Ok(()) => {}
                Err(error) if announce => self.refuse_edit(error, reply_to),
                Err(error) => {
                    tracing::warn!(conversation_id = %id, %error, "turn not stored")
                }
            },
            EditHistory::Delete { item_id, reply_to } => match conversations.delete(id, &item_id) {
                Ok(()) => self.answer(PipelineEvent::ItemDeleted { item_id, reply_to }),
                Err(error) => self.refuse_edit(error, reply_to),
            },
            EditHistory::Truncate {
                item_id,
                text,
                reply_to,
            } => match self.truncate(&item_id, text) {
                Ok(()) => self.answer(PipelineEvent::ItemTruncated { item_id, reply_to }),
                Err(error) => self.refuse_edit(error, reply_to),
            },
            EditHistory::Retrieve { item_id, reply_to } => {
                let unstored = self.unstored_reply(&item_id).map(|(text, _)| Item {
                    id: item_id.clone(),
                    role: ItemRole::Assistant,
                    text: text.clone(),
                    audio: false,
                });
                let found = match unstored {
                    Some(item) => Ok(item),
                    None => conversations.item(id, &item_id),
                };
                match found {
                    Ok(item) => self.answer(PipelineEvent::ItemRetrieved {
                        item: Self::shown(item),
                        reply_to,
                    }),
                    Err(error) => self.refuse_edit(error, reply_to),
                }
            }
        }
    }
}
