//! What the session actor asks of a wire protocol, and what a protocol asks back.
//!
//! A [`Wire`] turns the client's frames into [`Command`]s and input audio, and the
//! conversation's [`PipelineEvent`]s and reply audio into frames for the client. It
//! keeps whatever state its protocol needs (the Realtime API's items and responses)
//! and nothing else: the session stays the transport (flood control, idle timeout,
//! batching, backpressure, close codes) and the conversation stays the pipeline.

use bytes::Bytes;
use uuid::Uuid;

use super::native::{AudioFormat, ErrorCode};
use super::pipeline::{Command, PipelineEvent};

/// Input a protocol rejected, by kind (the session counts them in
/// `hearken_bad_input_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    MalformedJson,
    UnknownEvent,
    /// Well-formed but wrong: a bad field, a value out of range, an event that makes
    /// no sense in the session's state.
    InvalidEvent,
    /// PCM16 audio with an odd byte count.
    BadAudio,
    /// Audio that is not valid base64.
    BadBase64,
    TextInsteadOfAudio,
    BinaryInsteadOfText,
    PromptTooLarge,
    AudioTooLarge,
}

/// One thing the session does for its protocol, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A text frame for the client.
    Text(String),
    /// A binary frame for the client.
    Binary(Bytes),
    /// An error frame answering the client's input: counted, and it takes a
    /// flood-control token.
    Reject { fault: Fault, text: String },
    /// Input audio in the input format, for the pipeline.
    Audio(Bytes),
    /// Input audio from now on comes in this format.
    InputFormat(AudioFormat),
    /// A command for the conversation (partial audio batches go first).
    Command(Command),
    /// The client took part (for the idle timeout).
    Activity,
    /// Call [`Wire::timer`] with `key` after `after_ms`.
    Timer { after_ms: u64, key: u64 },
}

/// Where a protocol puts its actions.
#[derive(Debug, Default)]
pub struct Outbox {
    actions: Vec<Action>,
}

impl Outbox {
    pub fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    pub fn command(&mut self, command: Command) {
        self.actions.push(Action::Command(command));
    }

    pub fn text(&mut self, text: String) {
        self.actions.push(Action::Text(text));
    }

    /// Take the actions, leaving the outbox empty (its capacity is kept).
    pub fn drain(&mut self) -> std::vec::Drain<'_, Action> {
        self.actions.drain(..)
    }

    /// Whether the actions carry input audio: such a frame is audio, not an event.
    pub fn carries_audio(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Audio(_)))
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// What the session knows when its conversation starts.
#[derive(Debug, Clone, Copy)]
pub struct SessionStart {
    pub conversation_id: Uuid,
    /// It took over a live session, or its history was still kept.
    pub resumed: bool,
}

/// A wire protocol spoken over one WebSocket.
pub trait Wire {
    /// The conversation exists: the first frames for the client.
    fn started(&mut self, start: SessionStart, out: &mut Outbox);
    fn client_text(&mut self, text: &str, out: &mut Outbox);
    fn client_binary(&mut self, data: Bytes, out: &mut Outbox);
    fn pipeline_event(&mut self, event: PipelineEvent, out: &mut Outbox);
    /// One frame of the reply's audio, in the output format.
    fn pipeline_audio(&mut self, frame: Bytes, out: &mut Outbox);
    /// A timer the protocol asked for is due.
    fn timer(&mut self, _key: u64, _out: &mut Outbox) {}
    /// An error frame about the session itself (e.g. `conversation_busy`).
    fn error_text(&self, code: ErrorCode, message: &str) -> String;
}
