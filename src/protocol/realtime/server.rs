//! Realtime server events, as the GA API names them, typed once. Each goes out in an
//! envelope with its `event_id`.

use serde::Serialize;
use serde_json::Value;

use super::error::RealtimeError;
use super::session::{FormatJson, SessionJson};
use crate::protocol::pipeline::{ItemRole, Usage};

/// An item's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    InProgress,
    Completed,
    Incomplete,
}

/// One content part of an item.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    InputText { text: String },
    InputAudio { transcript: Option<String> },
    OutputText { text: String },
    OutputAudio { transcript: Option<String> },
}

/// A conversation item (only messages: hearken has no function calls).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemJson {
    pub id: String,
    pub object: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: ItemStatus,
    pub role: &'static str,
    pub content: Vec<Content>,
}

impl ItemJson {
    pub fn message(id: &str, role: ItemRole, status: ItemStatus, content: Vec<Content>) -> Self {
        ItemJson {
            id: id.to_string(),
            object: "realtime.item",
            kind: "message",
            status,
            role: match role {
                ItemRole::System => "system",
                ItemRole::User => "user",
                ItemRole::Assistant => "assistant",
            },
            content,
        }
    }
}

/// A response part, as `response.content_part.*` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Audio { transcript: String },
    Text { text: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CachedDetails {
    pub text_tokens: u32,
    pub audio_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputDetails {
    pub text_tokens: u32,
    pub audio_tokens: u32,
    pub cached_tokens: u32,
    pub cached_tokens_details: CachedDetails,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputDetails {
    pub text_tokens: u32,
    pub audio_tokens: u32,
}

/// Tokens of a response: the model reads and writes text only (speech is
/// synthesised from the text), so every token is a text token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageJson {
    pub total_tokens: u32,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub input_token_details: InputDetails,
    pub output_token_details: OutputDetails,
}

impl From<Usage> for UsageJson {
    fn from(usage: Usage) -> Self {
        UsageJson {
            total_tokens: usage.input_tokens + usage.output_tokens,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            input_token_details: InputDetails {
                text_tokens: usage.input_tokens,
                audio_tokens: 0,
                cached_tokens: usage.cached_tokens,
                cached_tokens_details: CachedDetails {
                    text_tokens: usage.cached_tokens,
                    audio_tokens: 0,
                },
            },
            output_token_details: OutputDetails {
                text_tokens: usage.output_tokens,
                audio_tokens: 0,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusError {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
}

/// Why a response is not `completed`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusDetails {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
}

#[derive(Debug, Serialize)]
pub struct AudioOutputJson<'a> {
    pub format: FormatJson,
    pub voice: &'a Value,
}

#[derive(Debug, Serialize)]
pub struct ResponseAudioJson<'a> {
    pub output: AudioOutputJson<'a>,
}

/// A response object.
#[derive(Debug, Serialize)]
pub struct ResponseJson<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub status: &'static str,
    pub status_details: Option<StatusDetails>,
    pub output: Vec<ItemJson>,
    /// The conversation it belongs to; `None` for an out-of-band response.
    pub conversation_id: Option<&'a str>,
    pub output_modalities: [&'static str; 1],
    pub max_output_tokens: u32,
    pub audio: ResponseAudioJson<'a>,
    pub usage: Option<UsageJson>,
    pub metadata: Option<&'a Value>,
}

/// Where a response's output goes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct At<'a> {
    pub response_id: &'a str,
    pub item_id: &'a str,
    pub output_index: u32,
    pub content_index: u32,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum ServerEvent<'a> {
    #[serde(rename = "session.created")]
    SessionCreated { session: SessionJson<'a> },
    #[serde(rename = "session.updated")]
    SessionUpdated { session: SessionJson<'a> },
    #[serde(rename = "error")]
    Error { error: &'a RealtimeError },
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted {
        audio_start_ms: u64,
        item_id: &'a str,
    },
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped { audio_end_ms: u64, item_id: &'a str },
    #[serde(rename = "input_audio_buffer.committed")]
    Committed {
        previous_item_id: Option<&'a str>,
        item_id: &'a str,
    },
    #[serde(rename = "input_audio_buffer.cleared")]
    Cleared,
    #[serde(rename = "input_audio_buffer.timeout_triggered")]
    TimeoutTriggered {
        audio_start_ms: u64,
        audio_end_ms: u64,
        item_id: &'a str,
    },
    #[serde(rename = "conversation.item.added")]
    ItemAdded {
        previous_item_id: Option<&'a str>,
        item: &'a ItemJson,
    },
    #[serde(rename = "conversation.item.done")]
    ItemDone {
        previous_item_id: Option<&'a str>,
        item: &'a ItemJson,
    },
    #[serde(rename = "conversation.item.retrieved")]
    ItemRetrieved { item: &'a ItemJson },
    #[serde(rename = "conversation.item.deleted")]
    ItemDeleted { item_id: &'a str },
    #[serde(rename = "conversation.item.truncated")]
    ItemTruncated {
        item_id: &'a str,
        content_index: u32,
        audio_end_ms: u64,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.delta")]
    TranscriptionDelta {
        item_id: &'a str,
        content_index: u32,
        delta: &'a str,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    TranscriptionCompleted {
        item_id: &'a str,
        content_index: u32,
        transcript: &'a str,
        usage: TranscriptionUsage,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.failed")]
    TranscriptionFailed {
        item_id: &'a str,
        content_index: u32,
        error: StatusError,
    },
    #[serde(rename = "response.created")]
    ResponseCreated { response: ResponseJson<'a> },
    #[serde(rename = "response.done")]
    ResponseDone { response: ResponseJson<'a> },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        response_id: &'a str,
        output_index: u32,
        item: &'a ItemJson,
    },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        response_id: &'a str,
        output_index: u32,
        item: &'a ItemJson,
    },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        #[serde(flatten)]
        at: At<'a>,
        part: Part,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        #[serde(flatten)]
        at: At<'a>,
        part: Part,
    },
    #[serde(rename = "response.output_audio.delta")]
    AudioDelta {
        #[serde(flatten)]
        at: At<'a>,
        delta: &'a str,
    },
    #[serde(rename = "response.output_audio.done")]
    AudioDone {
        #[serde(flatten)]
        at: At<'a>,
    },
    #[serde(rename = "response.output_audio_transcript.delta")]
    TranscriptDelta {
        #[serde(flatten)]
        at: At<'a>,
        delta: &'a str,
    },
    #[serde(rename = "response.output_audio_transcript.done")]
    TranscriptDone {
        #[serde(flatten)]
        at: At<'a>,
        transcript: &'a str,
    },
    #[serde(rename = "response.output_text.delta")]
    TextDelta {
        #[serde(flatten)]
        at: At<'a>,
        delta: &'a str,
    },
    #[serde(rename = "response.output_text.done")]
    TextDone {
        #[serde(flatten)]
        at: At<'a>,
        text: &'a str,
    },
}

/// How long the transcribed audio was.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TranscriptionUsage {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub seconds: f64,
}

#[derive(Serialize)]
struct Envelope<'a> {
    event_id: &'a str,
    #[serde(flatten)]
    event: &'a ServerEvent<'a>,
}

/// Names server events: a per-session prefix and a counter.
#[derive(Debug)]
pub struct EventIds {
    prefix: String,
    next: u64,
}

impl EventIds {
    pub fn new() -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        EventIds {
            prefix: format!("event_{}", &random[..12]),
            next: 0,
        }
    }

    /// The event as JSON text, with the next event id.
    pub fn frame(&mut self, event: &ServerEvent<'_>) -> String {
        self.next += 1;
        let event_id = format!("{}{}", self.prefix, self.next);
        let envelope = Envelope {
            event_id: &event_id,
            event,
        };
        // These types serialise without fail (no maps with non-string keys).
        serde_json::to_string(&envelope).unwrap_or_default()
    }
}

impl Default for EventIds {
    fn default() -> Self {
        Self::new()
    }
}
