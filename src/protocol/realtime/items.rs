//! The conversation's items as this session knows them: their order (for
//! `previous_item_id`), what each is (role, spoken or written), and for spoken replies
//! which words went out when (for `conversation.item.truncate`). Item contents live in
//! the conversation's stored history; this log only keeps what the protocol needs.

use std::collections::{HashMap, VecDeque};

use super::client::ItemParam;
use super::error::RealtimeError;
use super::server::{Content, ItemJson, ItemStatus};
use crate::protocol::pipeline::{new_item_id, Item, ItemId, ItemRole, MAX_ITEM_ID_BYTES};

/// Items remembered at most; older ones can still be retrieved from the store, but
/// no longer truncated.
const MAX_LOGGED_ITEMS: usize = 256;

/// Words of a spoken reply that started at `start_ms` of its audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub start_ms: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoggedItem {
    pub role: ItemRole,
    pub audio: bool,
    /// Spoken replies: the words, timed, and the audio's length.
    pub pieces: Vec<Piece>,
    pub audio_ms: u64,
}

#[derive(Debug, Default)]
pub struct ItemLog {
    order: VecDeque<String>,
    items: HashMap<String, LoggedItem>,
}

impl ItemLog {
    /// The newest item, for `previous_item_id`.
    pub fn last(&self) -> Option<&str> {
        self.order.back().map(String::as_str)
    }

    /// Log `item` after `previous` (`None`: at the end; `"root"`: first).
    pub fn add(&mut self, id: &str, item: LoggedItem, previous: Option<&str>) {
        self.remove(id);
        let at = match previous {
            None => self.order.len(),
            Some("root") => 0,
            Some(previous) => self
                .order
                .iter()
                .position(|i| i == previous)
                .map_or(self.order.len(), |p| p + 1),
        };
        self.order.insert(at, id.to_string());
        self.items.insert(id.to_string(), item);
        while self.order.len() > MAX_LOGGED_ITEMS {
            if let Some(oldest) = self.order.pop_front() {
                self.items.remove(&oldest);
            }
        }
    }

    /// The item logged just before `id`.
    pub fn before(&self, id: &str) -> Option<&str> {
        let at = self.order.iter().position(|i| i == id)?;
        at.checked_sub(1)
            .and_then(|p| self.order.get(p))
            .map(String::as_str)
    }

    pub fn remove(&mut self, id: &str) {
        if self.items.remove(id).is_some() {
            self.order.retain(|i| i != id);
        }
    }

    pub fn get(&self, id: &str) -> Option<&LoggedItem> {
        self.items.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut LoggedItem> {
        self.items.get_mut(id)
    }
}

/// The words of a spoken reply heard up to `end_ms` of its audio: every piece that
/// ended by then, and of the piece playing at that moment its share of the words.
pub fn heard(pieces: &[Piece], audio_ms: u64, end_ms: u64) -> String {
    let mut words: Vec<&str> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let piece_end = pieces.get(i + 1).map_or(audio_ms, |next| next.start_ms);
        if end_ms >= piece_end {
            words.extend(piece.text.split_whitespace());
        } else {
            if end_ms > piece.start_ms {
                let all: Vec<&str> = piece.text.split_whitespace().collect();
                let share = (end_ms - piece.start_ms) as f64 / (piece_end - piece.start_ms) as f64;
                let keep = (all.len() as f64 * share).floor() as usize;
                words.extend(&all[..keep.min(all.len())]);
            }
            break;
        }
    }
    words.join(" ")
}

/// What a `conversation.item.create` asks for.
#[derive(Debug, PartialEq)]
pub enum NewItem<'a> {
    /// An item with its words, stored as it is.
    Ready(Item),
    /// A user message whose words are in its audio (base64): heard first.
    Spoken { id: ItemId, audio: &'a str },
}

/// The item of a `conversation.item.create`, as the pipeline stores it (or hears it).
pub fn new_item(param: &ItemParam, max_bytes: usize) -> Result<NewItem<'_>, RealtimeError> {
    match param.kind.as_str() {
        "message" => {}
        "function_call" | "function_call_output" => {
            let message = "function calls are not supported yet: hearken's models use no tools";
            return Err(RealtimeError::unsupported("item.type", message));
        }
        other => {
            let message = format!("Invalid value: '{other}'. Supported values are: 'message'.");
            return Err(RealtimeError::value("item.type", message));
        }
    }
    let role = match param.role.as_deref() {
        Some("user") => ItemRole::User,
        Some("assistant") => ItemRole::Assistant,
        Some("system") => ItemRole::System,
        Some(other) => {
            let message = format!(
                "Invalid value: '{other}'. Supported values are: 'user', 'assistant', 'system'."
            );
            return Err(RealtimeError::value("item.role", message));
        }
        None => {
            let error = RealtimeError::state(
                "missing_required_parameter",
                "Missing required parameter: 'item.role'",
            );
            return Err(error.param("item.role"));
        }
    };
    let id = match &param.id {
        None => new_item_id(),
        Some(id) => {
            let printable = id.chars().all(|c| !c.is_control() && !c.is_whitespace());
            if id.is_empty() || id.len() > MAX_ITEM_ID_BYTES || !printable {
                let message = "item ids are 1 to 64 printable characters without spaces";
                return Err(RealtimeError::value("item.id", message));
            }
            id.clone()
        }
    };
    if param.content.is_empty() {
        return Err(RealtimeError::value(
            "item.content",
            "an item needs content",
        ));
    }
    let mut texts = Vec::with_capacity(param.content.len());
    let mut audio = false;
    for (index, part) in param.content.iter().enumerate() {
        let at = |field: &str| format!("item.content[{index}].{field}");
        let allowed: &[&str] = match role {
            ItemRole::User => &["input_text", "input_audio"],
            ItemRole::Assistant => &["output_text", "output_audio", "text"],
            ItemRole::System => &["input_text"],
        };
        if !allowed.contains(&part.kind.as_str()) {
            let message = format!(
                "Invalid value: '{}'. Supported values for this role are: {}.",
                part.kind,
                allowed.join(", ")
            );
            return Err(RealtimeError::value(&at("type"), message));
        }
        let text = match part.kind.as_str() {
            "input_audio" | "output_audio" => {
                audio = true;
                match (&part.transcript, &part.audio) {
                    (Some(transcript), _) => transcript,
                    (None, Some(spoken))
                        if part.kind == "input_audio" && param.content.len() == 1 =>
                    {
                        return Ok(NewItem::Spoken { id, audio: spoken });
                    }
                    (None, Some(_)) => {
                        let message = "only a user message's one `input_audio` part is \
                                       transcribed: give the other audio parts their \
                                       `transcript`";
                        return Err(RealtimeError::unsupported(&at("audio"), message));
                    }
                    (None, None) => {
                        let message = "audio content needs `audio` or a `transcript`";
                        return Err(RealtimeError::value(&at("transcript"), message));
                    }
                }
            }
            _ => match &part.text {
                Some(text) => text,
                None => {
                    let message = "text content needs `text`";
                    return Err(RealtimeError::value(&at("text"), message));
                }
            },
        };
        texts.push(text.as_str());
    }
    let text = texts.join(" ");
    if text.len() > max_bytes {
        let message = format!("the item is {} bytes; the limit is {max_bytes}", text.len());
        let error = RealtimeError::invalid(
            crate::protocol::wire::Fault::PromptTooLarge,
            "too_large",
            message,
        );
        return Err(error.param("item.content"));
    }
    Ok(NewItem::Ready(Item {
        id,
        role,
        text,
        audio,
    }))
}

/// An item as the client sees it.
pub fn render(item: &Item, status: ItemStatus) -> ItemJson {
    let text = item.text.clone();
    let content = match (item.role, item.audio) {
        (ItemRole::User, true) => Content::InputAudio {
            transcript: Some(text),
        },
        (ItemRole::User | ItemRole::System, _) => Content::InputText { text },
        (ItemRole::Assistant, true) => Content::OutputAudio {
            transcript: Some(text),
        },
        (ItemRole::Assistant, false) => Content::OutputText { text },
    };
    ItemJson::message(&item.id, item.role, status, vec![content])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces() -> Vec<Piece> {
        vec![
            Piece {
                start_ms: 0,
                text: "The weather today".into(),
            },
            Piece {
                start_ms: 1000,
                text: "will be sunny with a light breeze.".into(),
            },
        ]
    }

    #[test]
    fn heard_words_follow_the_audio() {
        assert_eq!(heard(&pieces(), 3000, 0), "");
        assert_eq!(heard(&pieces(), 3000, 1000), "The weather today");
        // Half of the second piece: three of its seven words.
        assert_eq!(
            heard(&pieces(), 3000, 2000),
            "The weather today will be sunny"
        );
        assert_eq!(
            heard(&pieces(), 3000, 3000),
            "The weather today will be sunny with a light breeze."
        );
    }

    #[test]
    fn the_log_keeps_order_and_insert_positions() {
        let mut log = ItemLog::default();
        let item = |role| LoggedItem {
            role,
            audio: false,
            pieces: Vec::new(),
            audio_ms: 0,
        };
        log.add("a", item(ItemRole::User), None);
        log.add("b", item(ItemRole::Assistant), None);
        log.add("c", item(ItemRole::User), Some("root"));
        assert_eq!(log.last(), Some("b"));
        log.add("d", item(ItemRole::User), Some("a"));
        assert_eq!(log.order, ["c", "a", "d", "b"]);
        log.remove("b");
        assert_eq!(log.last(), Some("d"));
    }
}
