//! The pipeline's own vocabulary, shared by every wire protocol: what a protocol asks
//! of its conversation ([`Command`]) and what the conversation reports back
//! ([`PipelineEvent`]). The native protocol and the Realtime API are two translators
//! over it; the conversation tree knows neither wire format.
//!
//! Items are the conversation's messages (the user's turns, the replies, messages a
//! client adds): each has an [`ItemId`] and lives in the conversation's stored history,
//! which a resumed session of either protocol reads again.

use bytes::Bytes;
use uuid::Uuid;

use super::native::{AudioFormat, ErrorCode, FailureMode, TurnLatency};
use crate::config::{Config, TurnMode};

/// Identifies one item of a conversation: `item_` and 32 hex digits when the server
/// names it, or what the client chose.
pub type ItemId = String;

/// A fresh server-side item id.
pub fn new_item_id() -> ItemId {
    format!("item_{}", Uuid::new_v4().simple())
}

/// Longest item id a client may choose, in bytes.
pub const MAX_ITEM_ID_BYTES: usize = 64;

/// Who wrote an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemRole {
    System,
    User,
    Assistant,
}

/// One message of the conversation, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: ItemId,
    pub role: ItemRole,
    pub text: String,
    /// Spoken: the user's audio (the text is its transcript) or a spoken reply.
    pub audio: bool,
}

/// How a reply is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Modality {
    /// Spoken, with the words it says.
    #[default]
    Audio,
    /// Text only: nothing is synthesised.
    Text,
}

/// How one reply is made.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplyOptions {
    pub modality: Modality,
    /// Replaces the conversation's system prompt for this reply only.
    pub instructions: Option<String>,
    /// Most tokens in the reply; `None`: the server's `llm.max_tokens`.
    pub max_tokens: Option<u32>,
    /// Out of band: the reply is not stored in the conversation's history.
    pub out_of_band: bool,
}

/// An end-of-turn model deciding at each pause (Smart Turn).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmartTurn {
    /// Probability at or above which the turn is complete.
    pub threshold: f32,
    /// Longest pause inside a turn the model called incomplete, in ms.
    pub max_silence_ms: u32,
}

/// Voice activity detection settings of one conversation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadSettings {
    pub start_threshold: f32,
    pub end_threshold: f32,
    /// Audio kept before and after each segment.
    pub pad_ms: u32,
    /// Silence that ends a turn (without a model, or when none can decide).
    pub min_silence_ms: u32,
    /// `None`: silence alone ends turns.
    pub smart: Option<SmartTurn>,
}

impl VadSettings {
    /// The configured settings (`[vad]`); Smart Turn decides where it is configured
    /// and its model is loaded.
    pub fn from_config(config: &Config, smart_available: bool) -> Self {
        let vad = &config.vad;
        let smart = (vad.turn == TurnMode::Smart && smart_available).then_some(SmartTurn {
            threshold: vad.turn_threshold,
            max_silence_ms: vad.turn_max_silence_ms,
        });
        VadSettings {
            start_threshold: vad.start_threshold,
            end_threshold: vad.end_threshold,
            pad_ms: vad.pad_ms,
            min_silence_ms: vad.min_silence_ms,
            smart,
        }
    }
}

/// How the user's turns are found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TurnDetection {
    /// Voice activity cuts turns; each turn is committed when it ends.
    Vad(VadSettings),
    /// The client commits its input itself ([`Command::CommitInput`]).
    Manual,
}

/// What a conversation does around the user's turns.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnPolicy {
    pub detection: TurnDetection,
    /// Answer each turn that voice activity ends.
    pub create_response: bool,
    /// Speech from the user cuts the reply short (barge-in).
    pub interrupt_response: bool,
    /// How automatic replies are made.
    pub reply: ReplyOptions,
}

impl TurnPolicy {
    /// The native protocol's policy: turns by voice activity as configured, each one
    /// answered, and the user's speech cuts the reply.
    pub fn from_config(config: &Config, smart_available: bool) -> Self {
        TurnPolicy {
            detection: TurnDetection::Vad(VadSettings::from_config(config, smart_available)),
            create_response: true,
            interrupt_response: true,
            reply: ReplyOptions::default(),
        }
    }
}

/// The conversation's settings, replaced whole by [`Command::Configure`].
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSettings {
    pub turn: TurnPolicy,
    /// The client's audio; changes only before any audio was sent.
    pub input: AudioFormat,
    /// Spoken replies; a change applies from the next reply.
    pub output: AudioFormat,
}

/// Why a reply was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The client asked (`response.cancel`).
    Client,
    /// The user started speaking (barge-in).
    TurnDetected,
}

/// What a protocol asks of its conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// The user's input is complete: end the open turn (voice activity), or commit the
    /// audio sent since the last commit (manual turns).
    CommitInput,
    /// Forget input audio not committed yet.
    ClearInput,
    /// Stop the reply being made or spoken.
    CancelReply,
    /// Replace the conversation's system prompt.
    SetSystemPrompt {
        prompt: String,
    },
    Configure {
        settings: PipelineSettings,
    },
    /// Add an item after `previous` (`None`: at the end). `reply_to` tags the
    /// answers (the client's event id).
    AddItem {
        item: Item,
        previous: Option<ItemId>,
        reply_to: Option<String>,
    },
    /// Add a user item spoken in `audio` (whole samples in `format`): the recogniser
    /// transcribes it as one segment, then it is stored after `previous` (`None`: at
    /// the end once its words are in) with its transcript.
    AddSpokenItem {
        item_id: ItemId,
        audio: Bytes,
        format: AudioFormat,
        previous: Option<ItemId>,
        reply_to: Option<String>,
    },
    DeleteItem {
        item_id: ItemId,
        reply_to: Option<String>,
    },
    /// Replace an assistant item's text with what the listener heard.
    TruncateItem {
        item_id: ItemId,
        text: String,
        reply_to: Option<String>,
    },
    RetrieveItem {
        item_id: ItemId,
        reply_to: Option<String>,
    },
    /// Make a reply from the conversation as it stands.
    CreateReply {
        options: ReplyOptions,
    },
    /// Make a child fail; honoured only with `debug.fault_injection = true`.
    InjectFailure {
        role: String,
        mode: FailureMode,
    },
}

/// How a reply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStatus {
    Completed,
    Cancelled(CancelReason),
    /// Cut at `max_tokens`.
    Incomplete,
    Failed {
        message: String,
    },
}

/// Tokens a reply took, as far as the language model reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u32,
    /// Input tokens read from kept attention state rather than computed again.
    pub cached_tokens: u32,
    pub output_tokens: u32,
}

/// What a conversation reports to its protocol (the reply's audio travels apart, as
/// frames in the output format).
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineEvent {
    /// The user started speaking; their words will be item `item_id`.
    SpeechStarted {
        audio_ms: u64,
        item_id: ItemId,
    },
    SpeechStopped {
        audio_ms: u64,
        item_id: ItemId,
    },
    /// The user's audio up to `audio_end_ms` became item `item_id` (its transcript
    /// follows).
    InputCommitted {
        item_id: ItemId,
        audio_start_ms: u64,
        audio_end_ms: u64,
    },
    /// A commit found no speech to commit.
    NothingToCommit,
    InputCleared,
    /// The transcript of a committed item (empty when no words were recognised).
    Transcript {
        item_id: ItemId,
        text: String,
        audio_ms: u64,
        stt_ms: u64,
    },
    TranscriptFailed {
        item_id: ItemId,
        message: String,
    },
    /// A reply starts; `item_id` will hold its words. Out-of-band replies are not added
    /// to the conversation.
    ReplyStarted {
        response_id: Uuid,
        item_id: ItemId,
        options: ReplyOptions,
    },
    /// Text of the reply as the model writes it.
    ReplyDelta {
        response_id: Uuid,
        text: String,
    },
    /// The model's text is complete (or was cut).
    ReplyTextDone {
        response_id: Uuid,
        cancelled: bool,
    },
    /// The reply's first audio frame follows.
    AudioStarted {
        response_id: Uuid,
        latency_ms: Option<TurnLatency>,
    },
    /// The words of the audio frames that follow.
    SpokenText {
        response_id: Uuid,
        text: String,
    },
    /// The reply's audio is over; `audible` if any of it was sent.
    AudioDone {
        response_id: Uuid,
        cancelled: bool,
        audible: bool,
    },
    /// The reply is over: text and audio.
    ReplyFinished {
        response_id: Uuid,
        status: ReplyStatus,
        usage: Usage,
    },
    ItemAdded {
        item: Item,
        previous: Option<ItemId>,
        reply_to: Option<String>,
    },
    /// A spoken item was accepted: it is being transcribed, and its `Transcript` (or
    /// `TranscriptFailed`) follows.
    SpokenItemAdded {
        item_id: ItemId,
        previous: Option<ItemId>,
        /// Length of its audio.
        audio_ms: u64,
    },
    ItemDeleted {
        item_id: ItemId,
        reply_to: Option<String>,
    },
    ItemTruncated {
        item_id: ItemId,
        reply_to: Option<String>,
    },
    ItemRetrieved {
        item: Item,
        reply_to: Option<String>,
    },
    /// Something the client should hear about; the session goes on.
    Error {
        code: ErrorCode,
        message: String,
        reply_to: Option<String>,
    },
}

impl PipelineEvent {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> PipelineEvent {
        PipelineEvent::Error {
            code,
            message: message.into(),
            reply_to: None,
        }
    }

    /// The reply an event belongs to, if it is one of a reply's events.
    pub fn response_id(&self) -> Option<Uuid> {
        match self {
            PipelineEvent::ReplyStarted { response_id, .. }
            | PipelineEvent::ReplyDelta { response_id, .. }
            | PipelineEvent::ReplyTextDone { response_id, .. }
            | PipelineEvent::AudioStarted { response_id, .. }
            | PipelineEvent::SpokenText { response_id, .. }
            | PipelineEvent::AudioDone { response_id, .. }
            | PipelineEvent::ReplyFinished { response_id, .. } => Some(*response_id),
            _ => None,
        }
    }
}
