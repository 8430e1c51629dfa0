//! The native hearken protocol (DESIGN.md §3): query parameters of the upgrade request,
//! client → server JSON events, and server → client JSON events. Audio is never JSON: it
//! travels as binary frames in the session's codec.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::SUPPORTED_SAMPLE_RATES;

/// Audio encoding of binary frames, in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioCodec {
    /// Little-endian signed 16-bit mono samples.
    #[default]
    Pcm16,
    /// One Opus packet per frame.
    Opus,
    /// G.711 μ-law at 8 kHz, one byte per sample.
    Pcmu,
    /// G.711 A-law at 8 kHz, one byte per sample.
    Pcma,
}

impl AudioCodec {
    /// Bytes per sample of a codec with a fixed frame size (`None` for Opus).
    pub fn bytes_per_sample(self) -> Option<u32> {
        match self {
            AudioCodec::Pcm16 => Some(2),
            AudioCodec::Pcmu | AudioCodec::Pcma => Some(1),
            AudioCodec::Opus => None,
        }
    }
}

/// How audio travels in one direction: codec and sample rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    pub codec: AudioCodec,
    pub sample_rate: u32,
}

impl AudioFormat {
    pub const fn new(codec: AudioCodec, sample_rate: u32) -> Self {
        AudioFormat { codec, sample_rate }
    }

    /// Milliseconds of audio in `bytes` of a fixed-size codec (0 for Opus).
    pub fn bytes_to_ms(self, bytes: usize) -> u64 {
        match self.codec.bytes_per_sample() {
            Some(width) => bytes as u64 * 1000 / (u64::from(width) * u64::from(self.sample_rate)),
            None => 0,
        }
    }
}

/// G.711 is defined at 8 kHz only.
pub const G711_RATE: u32 = 8000;

/// Raw query parameters of `GET /v1/ws`, before validation.
#[derive(Debug, Default, Deserialize)]
pub struct SessionQuery {
    pub conversation_id: Option<String>,
    pub client_id: Option<String>,
    pub codec: Option<String>,
    pub sample_rate: Option<u32>,
    pub token: Option<String>,
}

/// Validated session parameters.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub conversation_id: Uuid,
    /// Whether the client named the conversation (a resume attempt).
    pub conversation_id_given: bool,
    pub client_id: String,
    /// The client's audio, as the session receives it.
    pub input: AudioFormat,
    /// The spoken reply, as the session sends it.
    pub output: AudioFormat,
    /// Whether the client has sent bad input lately (shared with the children).
    pub standing: super::Standing,
}

impl SessionParams {
    /// The conversation to open: the one the client named, or a new one.
    pub fn conversation(
        conversation_id: Option<String>,
        client_id: Option<String>,
    ) -> Result<(Uuid, bool, String), ParseError> {
        let (conversation_id, given) = match conversation_id {
            Some(text) => (
                Uuid::parse_str(&text).map_err(|_| ParseError::BadConversationId(text))?,
                true,
            ),
            None => (Uuid::new_v4(), false),
        };
        let client_id = match client_id {
            None => format!("anon-{}", &Uuid::new_v4().simple().to_string()[..8]),
            Some(id) => {
                let printable = id.chars().all(|c| !c.is_control());
                if id.is_empty() || id.len() > MAX_CLIENT_ID_BYTES || !printable {
                    return Err(ParseError::BadClientId);
                }
                id
            }
        };
        Ok((conversation_id, given, client_id))
    }
}

/// Why an upgrade request was refused with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("conversation_id is not a UUID: {0}")]
    BadConversationId(String),
    #[error("codec must be pcm16, opus, pcmu or pcma, got {0}")]
    BadCodec(String),
    #[error("G.711 (pcmu, pcma) is 8000 Hz only, got {0}")]
    G711Rate(u32),
    #[error("sample_rate must be one of 8000, 16000, 24000, 48000, got {0}")]
    UnsupportedSampleRate(u32),
    #[error("client_id must be 1-128 printable characters")]
    BadClientId,
}

/// Longest accepted `client_id`, in bytes: it is logged and listed, so keep it bounded.
const MAX_CLIENT_ID_BYTES: usize = 128;

impl SessionQuery {
    pub fn validate(self) -> Result<SessionParams, ParseError> {
        let (conversation_id, conversation_id_given, client_id) =
            SessionParams::conversation(self.conversation_id, self.client_id)?;
        let codec = match self.codec.as_deref() {
            None | Some("pcm16") => AudioCodec::Pcm16,
            Some("opus") => AudioCodec::Opus,
            Some("pcmu") => AudioCodec::Pcmu,
            Some("pcma") => AudioCodec::Pcma,
            Some(other) => return Err(ParseError::BadCodec(other.to_string())),
        };
        let g711 = matches!(codec, AudioCodec::Pcmu | AudioCodec::Pcma);
        let default_rate = if g711 { G711_RATE } else { 16_000 };
        let sample_rate = self.sample_rate.unwrap_or(default_rate);
        if !SUPPORTED_SAMPLE_RATES.contains(&sample_rate) {
            return Err(ParseError::UnsupportedSampleRate(sample_rate));
        }
        if g711 && sample_rate != G711_RATE {
            return Err(ParseError::G711Rate(sample_rate));
        }
        let format = AudioFormat::new(codec, sample_rate);
        Ok(SessionParams {
            conversation_id,
            conversation_id_given,
            client_id,
            input: format,
            output: format,
            standing: super::Standing::default(),
        })
    }
}

/// Client → server text frames.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum ClientEvent {
    /// End of speech from the client's side: flush the current segment.
    #[serde(rename = "audio.end")]
    AudioEnd,
    /// Stop the current reply (barge-in by button).
    #[serde(rename = "response.cancel")]
    ResponseCancel,
    /// Change session settings, e.g. `{"llm":{"system_prompt":"..."}}`.
    #[serde(rename = "session.update")]
    SessionUpdate {
        #[serde(default)]
        llm: Option<LlmUpdate>,
    },
    /// Keep-alive; answered with `pong`.
    #[serde(rename = "ping")]
    Ping,
    /// Make a child actor fail; honoured only with `debug.fault_injection = true`.
    #[serde(rename = "debug.fail_child")]
    DebugFailChild { role: String, mode: FailureMode },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlmUpdate {
    pub system_prompt: Option<String>,
}

/// How an injected child failure happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// The child reports a recoverable error; the conversation may restart it.
    Error,
    /// The child panics inside a handler.
    Panic,
}

impl ClientEvent {
    /// Parse one text frame, telling malformed JSON apart from an unknown event type.
    pub fn parse(text: &str) -> Result<ClientEvent, (ErrorCode, String)> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| (ErrorCode::MalformedJson, format!("not JSON: {e}")))?;
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or((
                ErrorCode::MalformedJson,
                "missing string field `type`".into(),
            ))?;
        serde_json::from_value(value).map_err(|e| {
            if KNOWN_CLIENT_EVENTS.contains(&kind.as_str()) {
                (ErrorCode::MalformedJson, format!("bad `{kind}` event: {e}"))
            } else {
                (
                    ErrorCode::UnknownEvent,
                    format!("unknown event type `{kind}`"),
                )
            }
        })
    }
}

const KNOWN_CLIENT_EVENTS: [&str; 5] = [
    "audio.end",
    "response.cancel",
    "session.update",
    "ping",
    "debug.fail_child",
];

/// Machine-readable `error.code` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    UnknownEvent,
    BadAudio,
    /// Text arrived where the protocol expects binary audio, or vice versa.
    UnexpectedFrame,
    Overloaded,
    Unsupported,
    /// The language model is down or its circuit is open; the session stays connected.
    LlmUnavailable,
    /// A value is over its size limit (e.g. `llm.system_prompt`).
    TooLarge,
    /// The previous session of this conversation did not end within
    /// `session.register_timeout_ms`; the socket closes with 1013 (try again later).
    ConversationBusy,
    /// Audio arrived faster than `session.max_audio_speed` times real time, past its
    /// burst; the frame was dropped.
    AudioTooFast,
    /// No stored item has the id an event named.
    ItemNotFound,
    /// An item operation that cannot apply (a duplicate id, truncating a user turn).
    InvalidItem,
    /// A commit found no speech to commit.
    InputEmpty,
}

impl ErrorCode {
    /// The wire name (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::BadAudio => "bad_audio",
            ErrorCode::UnexpectedFrame => "unexpected_frame",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::LlmUnavailable => "llm_unavailable",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ConversationBusy => "conversation_busy",
            ErrorCode::AudioTooFast => "audio_too_fast",
            ErrorCode::ItemNotFound => "item_not_found",
            ErrorCode::InvalidItem => "invalid_item",
            ErrorCode::InputEmpty => "input_empty",
        }
    }

    /// Whether the error answers the client's own input (and so counts towards its
    /// flood limit), rather than reporting the server's state.
    pub fn is_client_fault(self) -> bool {
        !matches!(
            self,
            ErrorCode::Overloaded | ErrorCode::LlmUnavailable | ErrorCode::ConversationBusy
        )
    }
}

/// Server → client text frames.
/// Milliseconds from the end of the user's last voiced audio to each stage of the
/// reply; a stage the reply never went through is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnLatency {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_decided: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_clause: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_audio: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    #[serde(rename = "session.started")]
    SessionStarted {
        conversation_id: Uuid,
        resumed: bool,
        codec: AudioCodec,
        sample_rate: u32,
    },
    #[serde(rename = "vad.speech_started")]
    SpeechStarted { audio_ms: u64 },
    #[serde(rename = "vad.speech_stopped")]
    SpeechStopped { audio_ms: u64 },
    /// One per committed turn; `text` is empty when the segment held no words.
    #[serde(rename = "transcript.final")]
    TranscriptFinal {
        text: String,
        audio_ms: u64,
        stt_ms: u64,
    },
    /// A committed turn that will get no transcript (recognition skipped or failed).
    #[serde(rename = "transcript.failed")]
    TranscriptFailed { message: String },
    #[serde(rename = "response.text.delta")]
    ResponseTextDelta { response_id: Uuid, text: String },
    #[serde(rename = "response.done")]
    ResponseDone { response_id: Uuid, cancelled: bool },
    #[serde(rename = "response.audio.started")]
    ResponseAudioStarted {
        response_id: Uuid,
        /// Stage times of the turn this reply answers, when it answers a spoken turn.
        #[serde(skip_serializing_if = "Option::is_none")]
        latency_ms: Option<TurnLatency>,
    },
    #[serde(rename = "response.audio.done")]
    ResponseAudioDone { response_id: Uuid, cancelled: bool },
    #[serde(rename = "pong")]
    Pong,
    #[serde(rename = "error")]
    Error { code: ErrorCode, message: String },
}

impl ServerEvent {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerEvent {
        ServerEvent::Error {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising these plain enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_and_rejections() {
        let params = SessionQuery::default().validate().unwrap();
        assert_eq!(params.input, AudioFormat::new(AudioCodec::Pcm16, 16_000));
        assert_eq!(params.output, params.input);
        assert!(!params.conversation_id_given);
        let g711 = SessionQuery {
            codec: Some("pcmu".into()),
            ..Default::default()
        };
        assert_eq!(g711.validate().unwrap().input.sample_rate, 8000);
        let g711_wrong_rate = SessionQuery {
            codec: Some("pcma".into()),
            sample_rate: Some(16_000),
            ..Default::default()
        };
        assert_eq!(
            g711_wrong_rate.validate().unwrap_err(),
            ParseError::G711Rate(16_000)
        );

        let bad_rate = SessionQuery {
            sample_rate: Some(44_100),
            ..Default::default()
        };
        assert_eq!(
            bad_rate.validate().unwrap_err(),
            ParseError::UnsupportedSampleRate(44_100)
        );
        let bad_id = SessionQuery {
            conversation_id: Some("nope".into()),
            ..Default::default()
        };
        assert!(bad_id.validate().is_err());
    }

    #[test]
    fn client_events_parse_and_errors_are_classified() {
        assert_eq!(
            ClientEvent::parse(r#"{"type":"audio.end"}"#),
            Ok(ClientEvent::AudioEnd)
        );
        assert_eq!(
            ClientEvent::parse("{not json").unwrap_err().0,
            ErrorCode::MalformedJson
        );
        assert_eq!(
            ClientEvent::parse(r#"{"type":"teleport"}"#).unwrap_err().0,
            ErrorCode::UnknownEvent
        );
        assert_eq!(
            ClientEvent::parse(r#"{"type":"debug.fail_child"}"#)
                .unwrap_err()
                .0,
            ErrorCode::MalformedJson
        );
    }

    #[test]
    fn error_codes_serialise_as_their_names() {
        for code in [
            ErrorCode::MalformedJson,
            ErrorCode::ItemNotFound,
            ErrorCode::InputEmpty,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap_or_default(),
                serde_json::Value::from(code.as_str())
            );
        }
    }

    #[test]
    fn server_events_carry_their_wire_type() {
        let json = ServerEvent::SpeechStarted { audio_ms: 120 }.to_json();
        assert_eq!(json, r#"{"type":"vad.speech_started","audio_ms":120}"#);
    }
}
