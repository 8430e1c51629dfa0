//! Messages that cross actor boundaries inside a conversation tree.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::child::ChildRole;
use crate::audio::segmenter::{SpeechEvent, SpeechSegment};
use crate::lifecycle::ExitReason;
use crate::protocol::native::FailureMode;
use crate::protocol::pipeline::{Item, ItemId, ReplyOptions, TurnDetection, Usage};
use crate::protocol::{AudioFormat, Command, ErrorCode, PipelineEvent};

/// Consecutive binary audio frames from the client, in the session's codec, in
/// arrival order (the session batches them: see `audio::coalesce`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct AudioFrames {
    pub frames: Vec<Bytes>,
}

/// What the client's protocol asks of the conversation.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ClientCommand {
    pub command: Command,
}

/// Something for the client, for its protocol to put into words: an event of the
/// pipeline, or one frame of reply audio in the output format.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Outbound {
    Event(PipelineEvent),
    Audio(Bytes),
}

/// The transport is gone (sent from the session's `Drop`, so it arrives on every path).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SessionEnded {
    pub reason: ExitReason,
    /// When the session ended: the start of the teardown clock.
    pub at: Instant,
}

/// The supervisor asks a child to stop; the child's `Drop` confirms.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopChild;

/// Make a child fail on purpose (`debug.fault_injection` only), to exercise supervision.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct InjectFailure {
    pub mode: FailureMode,
}

/// The client's input is complete: close the open segment, or (manual turns) hand the
/// audio since the last commit on as one segment.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct FlushSpeech;

/// Forget the open segment (or the manual turn's audio).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ClearSpeech;

/// New turn detection or input format for the VAD (the format changes only before any
/// audio arrived).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ConfigureInput {
    pub detection: TurnDetection,
    pub format: AudioFormat,
}

/// Speak the next replies in this format.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SetOutputFormat {
    pub format: AudioFormat,
}

/// A speech segment for the recogniser.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Transcribe {
    pub segment: SpeechSegment,
    pub kind: SegmentKind,
}

/// The audio of a spoken item a client created, for the recogniser: decoded,
/// resampled and transcribed whole on its worker, answered with
/// [`ChildEvent::ItemTranscript`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TranscribeItem {
    pub item_id: ItemId,
    /// Whole samples in `format`.
    pub audio: Bytes,
    pub format: AudioFormat,
}

/// What a segment handed to the recogniser is (see `audio::segmenter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// Cut by the VAD: transcribe it.
    Final,
    /// The segment as it would end if the current pause lasts: optional head start.
    Draft,
    /// The segment so far, speech still going on: optional guidance for later decodes.
    Partial,
}

/// Reply to the conversation as stored. The conversation names the reply and the
/// item it becomes, so it can hold back a speculative reply's events before the LLM
/// has produced any.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Respond {
    pub response_id: uuid::Uuid,
    pub item_id: ItemId,
    /// Speculative: the user's words from a draft transcript, not stored yet. The
    /// reply enters the stored history only on [`ConfirmResponse`].
    pub draft: Option<String>,
    pub options: ReplyOptions,
}

/// A change to, or a look at, the conversation's stored items. The LLM actor keeps
/// the history, so every change goes through it in order with its replies.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum EditHistory {
    /// Store `item` after `previous`; `announce` answers with `ItemAdded` (items a
    /// client added) rather than silently (the user's transcribed turns).
    Add {
        item: Item,
        previous: Option<ItemId>,
        reply_to: Option<String>,
        announce: bool,
    },
    Delete {
        item_id: ItemId,
        reply_to: Option<String>,
    },
    Truncate {
        item_id: ItemId,
        text: String,
        reply_to: Option<String>,
    },
    Retrieve {
        item_id: ItemId,
        reply_to: Option<String>,
    },
}

/// How the model's part of a reply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyOutcome {
    Completed { usage: Usage, length_limited: bool },
    Cancelled { usage: Usage },
    Failed { message: String },
}

/// The turn a speculative reply answered is confirmed with the same words: the reply
/// becomes the answer (its history is stored now).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ConfirmResponse {
    pub response_id: uuid::Uuid,
}

/// A speculative reply answered words the user did not end their turn with: stop it
/// and leave no trace of it (no history, no events).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct DiscardResponse {
    pub response_id: uuid::Uuid,
}

/// Stop the reply being generated (barge-in or `response.cancel`).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct CancelResponse;

/// More reply text to speak.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SpeakDelta {
    pub response_id: uuid::Uuid,
    pub text: String,
    /// A speculative reply: synthesise its first clause, send nothing until
    /// [`ReleaseSpeech`].
    pub held: bool,
}

/// A held (speculative) reply is confirmed: its audio may go out.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ReleaseSpeech {
    pub response_id: uuid::Uuid,
}

/// The words of a turn still being spoken (a partial transcript): the LLM may read
/// them ahead, so the reply to the finished turn reads only what comes after.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ReadAhead {
    pub words: String,
}

/// Speech resumed in the pause a draft was cut at: stop decoding it.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct DropDraft;

/// The reply's text is complete (or was cancelled).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SpeakEnd {
    pub response_id: uuid::Uuid,
    pub cancelled: bool,
}

/// Stop speaking at once and drop everything queued (barge-in).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopSpeaking;

/// Decoded input audio at the session's rate, for the recorder.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Record {
    pub samples: Arc<[i16]>,
}

/// Everything a child tells its conversation.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ChildEvent {
    /// Speech started or stopped.
    Speech { event: SpeechEvent },
    /// A speech segment: final, or speculative (see [`SegmentKind`]).
    Segment {
        segment: SpeechSegment,
        kind: SegmentKind,
    },
    /// Decoded input audio.
    Decoded { samples: Arc<[i16]> },
    /// The transcript of a draft: what the user said if the current pause ends the
    /// turn. A head start for a speculative reply; never shown to the client.
    DraftTranscript { text: String },
    /// The transcript of the segment so far while speech goes on; never shown to the
    /// client.
    PartialTranscript { text: String },
    /// Speech went on after a pause that had been handed out as a draft.
    SpeechResumed,
    /// The user's turn ended (sent right after its `Stopped`); `voice_end` is when the
    /// last voiced audio arrived, where every stage time of the reply is counted from.
    TurnEnded { voice_end: Instant },
    /// A final transcript of one speech segment (empty: no words); `audio_ms` is where
    /// the segment ended.
    Transcript {
        text: String,
        audio_ms: u64,
        stt_ms: u64,
    },
    /// The final segment ending at `audio_ms` will have no transcript.
    TranscriptFailed { audio_ms: u64, message: String },
    /// The transcript of a spoken item (empty: no words), or why there is none.
    ItemTranscript {
        item_id: ItemId,
        text: Result<String, String>,
        stt_ms: u64,
    },
    /// A flush found no speech to hand on.
    NothingToCommit,
    /// A piece of the reply being generated.
    ResponseDelta {
        response_id: uuid::Uuid,
        text: String,
    },
    /// The model's part of the reply is over.
    ResponseDone {
        response_id: uuid::Uuid,
        outcome: ReplyOutcome,
    },
    /// A reply's first clause is synthesised (its audio may still be held).
    FirstClauseReady { response_id: uuid::Uuid },
    /// A reply's first audio frame is about to go out.
    AudioStarted { response_id: uuid::Uuid },
    /// The words of the reply audio that follows.
    SpokenText {
        response_id: uuid::Uuid,
        text: String,
    },
    /// One frame of reply audio, in the session's codec.
    Audio { frame: bytes::Bytes },
    /// A reply's speech is over (finished or cut); `audible` if any audio was sent.
    AudioDone {
        response_id: uuid::Uuid,
        cancelled: bool,
        audible: bool,
    },
    /// An answer for the client (e.g. about a stored item).
    ToClient { event: PipelineEvent },
    /// Something the client should hear about; the session keeps going.
    ClientError { code: ErrorCode, message: String },
    /// The child hit an error it cannot continue from; the supervisor decides.
    Failed { role: ChildRole, error: String },
}
