//! The LLM backends behind one trait, and the handle of a running generation.
//!
//! A [`Generation`] streams [`LlmEvent`]s and is owned by the LLM actor. Dropping it
//! is how a reply is cancelled: its stop token is set (the embedded decoder checks it
//! between tokens) and its task, if any, is aborted (the OpenAI backend's HTTP request
//! is dropped and its connection closed). Every generation also carries its child's
//! link hold, so a conversation's teardown waits until the generation is truly gone.

use std::any::Any;
use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::chat::ChatMessage;
use super::generation::GenerationParams;
use crate::workers::llm_batcher::{LlmBatcher, LlmWork};
use crate::workers::{CancelToken, JobError, Priority};

/// Deltas buffered between a generator and its actor before the generator waits.
const EVENT_BUFFER: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    Delta(String),
    Finished(Completion),
    Failed(String),
}

/// How a finished reply went, as far as the backend can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    pub input_tokens: u32,
    /// Input tokens found in kept attention state.
    pub cached_tokens: u32,
    pub output_tokens: u32,
    /// Cut at the token limit rather than ended by the model.
    pub length_limited: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend is down or its circuit is open; try again later.
    #[error("the language model is unavailable: {0}")]
    Unavailable(String),
    #[error("the language model is at capacity")]
    Overloaded,
}

/// What a backend needs to start a reply.
pub struct GenerationRequest {
    pub messages: Vec<ChatMessage>,
    /// Whose reply: the embedded model keeps each conversation's attention state.
    pub conversation_id: Uuid,
    /// The conversation's token: its end stops the generation too.
    pub conversation: CancelToken,
    /// Released when the generation is completely gone.
    pub hold: Box<dyn Any + Send>,
    /// Most tokens in this reply.
    pub max_tokens: u32,
}

/// What a backend needs to read the start of a turn ahead of its reply.
pub struct ReadAheadRequest {
    /// The prompt's messages before the turn (as a reply to it would see them).
    pub history: Vec<ChatMessage>,
    /// The user's words so far.
    pub words: String,
    pub conversation_id: Uuid,
    pub conversation: CancelToken,
    /// Released when the job is completely gone.
    pub hold: Box<dyn Any + Send>,
}

/// A read-ahead queued or running; dropping it stops it.
pub struct ReadAhead {
    stop: CancelToken,
    _job: Box<dyn Any + Send>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub struct Generation {
    pub events: mpsc::Receiver<LlmEvent>,
    stop: CancelToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The pool's answer channel: while held, the queued job counts as wanted (a
    /// worker skips jobs nobody waits for).
    _job: Option<Box<dyn Any + Send>>,
}

impl Generation {
    /// A generation driven by a task on the current arbiter (aborted on drop).
    pub fn with_task(
        events: mpsc::Receiver<LlmEvent>,
        stop: CancelToken,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Generation {
            events,
            stop,
            task: Some(task),
            _job: None,
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub trait LlmBackend: Send + Sync {
    fn start(&self, request: GenerationRequest) -> Result<Generation, BackendError>;

    /// Read a turn's first words ahead of its reply, if the backend keeps attention
    /// state and has an idle thread; `None` when it does not (nothing is lost: the
    /// reply reads them itself).
    fn read_ahead(&self, _request: ReadAheadRequest) -> Option<ReadAhead> {
        None
    }

    /// Whether replies are waiting to start on this machine (queued, or still reading
    /// their prompts): guesswork elsewhere (partial transcripts, read-aheads) then
    /// yields the CPU to them. Always false for a remote backend.
    fn replies_waiting(&self) -> bool {
        false
    }
}

/// SmolLM2 in-process: every reply and read-ahead joins the LLM batcher, which
/// advances all of them together, a token per pass.
pub struct EmbeddedBackend {
    batcher: LlmBatcher,
    params: GenerationParams,
}

impl EmbeddedBackend {
    pub fn new(batcher: LlmBatcher, params: GenerationParams) -> Arc<Self> {
        Arc::new(EmbeddedBackend { batcher, params })
    }
}

impl LlmBackend for EmbeddedBackend {
    fn start(&self, request: GenerationRequest) -> Result<Generation, BackendError> {
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let stop = CancelToken::new();
        let params = GenerationParams {
            max_tokens: request.max_tokens as usize,
            ..self.params.clone()
        };
        let work = LlmWork::Reply {
            messages: request.messages,
            params,
            events,
        };
        let submitted = self.batcher.submit(
            Priority::Urgent,
            request.conversation_id,
            &request.conversation,
            stop.clone(),
            request.hold,
            work,
        );
        match submitted {
            Ok(()) => Ok(Generation {
                events: receiver,
                stop,
                task: None,
                _job: None,
            }),
            Err(JobError::Overloaded { .. }) => Err(BackendError::Overloaded),
            Err(error) => Err(BackendError::Unavailable(error.to_string())),
        }
    }

    /// Optional work: only while the batcher's queue has room and no reply waits to
    /// start; it reads after every waiting turn's prompt in each pass.
    fn read_ahead(&self, request: ReadAheadRequest) -> Option<ReadAhead> {
        if !self.batcher.has_room() || self.batcher.replies_waiting() {
            return None;
        }
        let stop = CancelToken::new();
        let work = LlmWork::ReadAhead {
            history: request.history,
            words: request.words,
        };
        self.batcher
            .submit(
                Priority::Normal,
                request.conversation_id,
                &request.conversation,
                stop.clone(),
                request.hold,
                work,
            )
            .ok()
            .map(|()| ReadAhead {
                stop,
                _job: Box::new(()),
            })
    }

    fn replies_waiting(&self) -> bool {
        self.batcher.replies_waiting()
    }
}
