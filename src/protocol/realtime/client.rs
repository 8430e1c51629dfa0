//! Realtime client events, typed once and parsed in one place.
//!
//! An event is parsed in two steps: as JSON, to read its `type` and `event_id`, then
//! as the struct of that type, through `serde_path_to_error` so a wrong field is named
//! in the error's `param`. Unknown fields are ignored (clients send fields of newer
//! API versions); fields hearken acts on are typed strictly.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::error::RealtimeError;
use crate::protocol::wire::Fault;

/// Client event types hearken understands (for the unknown-type error).
pub const CLIENT_EVENTS: [&str; 11] = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.delete",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
];

/// `Option<Option<T>>` for fields where `null` means something: absent is `None`,
/// `null` is `Some(None)`.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FormatParam {
    #[serde(rename = "type")]
    pub kind: String,
    pub rate: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum VoiceParam {
    Name(String),
    Custom { id: String },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TurnDetectionParam {
    #[serde(rename = "type")]
    pub kind: String,
    pub threshold: Option<f32>,
    pub prefix_padding_ms: Option<u32>,
    pub silence_duration_ms: Option<u32>,
    pub create_response: Option<bool>,
    pub interrupt_response: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub idle_timeout_ms: Option<Option<u64>>,
    pub eagerness: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct TranscriptionParam {
    pub model: Option<String>,
    pub language: Option<String>,
    pub prompt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct InputParam {
    pub format: Option<FormatParam>,
    #[serde(default, deserialize_with = "nullable")]
    pub turn_detection: Option<Option<TurnDetectionParam>>,
    #[serde(default, deserialize_with = "nullable")]
    pub transcription: Option<Option<TranscriptionParam>>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct OutputParam {
    pub format: Option<FormatParam>,
    pub voice: Option<VoiceParam>,
    pub speed: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct AudioParam {
    pub input: Option<InputParam>,
    pub output: Option<OutputParam>,
}

/// `max_output_tokens`: a count, or `"inf"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum MaxTokensParam {
    Count(u32),
    Word(String),
}

/// The `session` of a `session.update`: only what is present changes.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct SessionParam {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub instructions: Option<String>,
    pub output_modalities: Option<Vec<String>>,
    pub audio: Option<AudioParam>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_output_tokens: Option<Option<MaxTokensParam>>,
    pub tools: Option<Vec<Value>>,
}

/// One content part of an item a client creates.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentParam {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub audio: Option<String>,
    pub transcript: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ItemParam {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub role: Option<String>,
    #[serde(default)]
    pub content: Vec<ContentParam>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ResponseParam {
    pub conversation: Option<String>,
    pub instructions: Option<String>,
    pub output_modalities: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_output_tokens: Option<Option<MaxTokensParam>>,
    pub input: Option<Vec<Value>>,
    pub tools: Option<Vec<Value>>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct SessionUpdate {
    session: SessionParam,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Append {
    audio: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ItemCreate {
    item: ItemParam,
    previous_item_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ItemRef {
    item_id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Truncate {
    item_id: String,
    content_index: u32,
    audio_end_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ResponseCreate {
    response: Option<ResponseParam>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ResponseCancel {
    response_id: Option<String>,
}

/// A parsed client event.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    SessionUpdate(Box<SessionParam>),
    Append {
        audio: String,
    },
    Commit,
    Clear,
    ItemCreate {
        item: ItemParam,
        previous_item_id: Option<String>,
    },
    ItemRetrieve {
        item_id: String,
    },
    ItemDelete {
        item_id: String,
    },
    ItemTruncate {
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
    },
    ResponseCreate(Box<ResponseParam>),
    ResponseCancel {
        response_id: Option<String>,
    },
    OutputAudioBufferClear,
}

/// Parse one text frame: the event and its `event_id`, or the error to answer with
/// (carrying the `event_id` when it could be read).
pub fn parse(text: &str) -> Result<(ClientEvent, Option<String>), RealtimeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        RealtimeError::invalid(
            Fault::MalformedJson,
            "invalid_json",
            format!("the event is not valid JSON: {e}"),
        )
    })?;
    let Some(object) = value.as_object() else {
        let message = "an event must be a JSON object";
        return Err(RealtimeError::invalid(
            Fault::MalformedJson,
            "invalid_json",
            message,
        ));
    };
    let event_id = match object.get("event_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            let message = "Invalid type for 'event_id': expected a string";
            let error = RealtimeError::invalid(Fault::MalformedJson, "invalid_type", message);
            return Err(error.param("event_id"));
        }
    };
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => {
            let message = "Invalid type for 'type': expected a string";
            let error = RealtimeError::invalid(Fault::MalformedJson, "invalid_type", message);
            return Err(error.param("type").answering(event_id));
        }
        None => {
            let message = "Missing required parameter: 'type'";
            let error =
                RealtimeError::invalid(Fault::MalformedJson, "missing_required_parameter", message);
            return Err(error.param("type").answering(event_id));
        }
    };
    typed_event(&kind, value)
        .map(|event| (event, event_id.clone()))
        .map_err(|error| error.answering(event_id))
}

fn typed_event(kind: &str, value: Value) -> Result<ClientEvent, RealtimeError> {
    Ok(match kind {
        "session.update" => {
            ClientEvent::SessionUpdate(Box::new(typed::<SessionUpdate>(value)?.session))
        }
        "input_audio_buffer.append" => ClientEvent::Append {
            audio: typed::<Append>(value)?.audio,
        },
        "input_audio_buffer.commit" => ClientEvent::Commit,
        "input_audio_buffer.clear" => ClientEvent::Clear,
        "conversation.item.create" => {
            let create = typed::<ItemCreate>(value)?;
            ClientEvent::ItemCreate {
                item: create.item,
                previous_item_id: create.previous_item_id,
            }
        }
        "conversation.item.retrieve" => ClientEvent::ItemRetrieve {
            item_id: typed::<ItemRef>(value)?.item_id,
        },
        "conversation.item.delete" => ClientEvent::ItemDelete {
            item_id: typed::<ItemRef>(value)?.item_id,
        },
        "conversation.item.truncate" => {
            let truncate = typed::<Truncate>(value)?;
            ClientEvent::ItemTruncate {
                item_id: truncate.item_id,
                content_index: truncate.content_index,
                audio_end_ms: truncate.audio_end_ms,
            }
        }
        "response.create" => ClientEvent::ResponseCreate(Box::new(
            typed::<ResponseCreate>(value)?.response.unwrap_or_default(),
        )),
        "response.cancel" => ClientEvent::ResponseCancel {
            response_id: typed::<ResponseCancel>(value)?.response_id,
        },
        "output_audio_buffer.clear" => ClientEvent::OutputAudioBufferClear,
        other => {
            let message = format!(
                "Invalid value: '{other}'. Supported values are: {}.",
                CLIENT_EVENTS.join(", ")
            );
            let error = RealtimeError::invalid(Fault::UnknownEvent, "unknown_event_type", message);
            return Err(error.param("type"));
        }
    })
}

/// Deserialize `value` as `T`, naming the offending field on failure.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, RealtimeError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        let at = |field: &str| match path.as_str() {
            "." | "" => field.to_string(),
            path => format!("{path}.{field}"),
        };
        if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            let param = at(field);
            let message = format!("Missing required parameter: '{param}'");
            let error =
                RealtimeError::invalid(Fault::InvalidEvent, "missing_required_parameter", message);
            return error.param(&param);
        }
        let message = format!("Invalid '{path}': {inner}");
        let code = if inner.starts_with("invalid type") || inner.starts_with("data did not match") {
            "invalid_type"
        } else {
            "invalid_value"
        };
        RealtimeError::invalid(Fault::InvalidEvent, code, message).param(&path)
    })
}
