//! The LLM backends behind one trait, and the handle of a running generation.
//!
//! A [`Generation`] streams [`LlmEvent`]s and is owned by the LLM actor. Dropping it
//! is how a reply is cancelled: its stop token is set (the embedded decoder checks it
//! between tokens) and its task, if any, is aborted (the OpenAI backend's HTTP request
//! is dropped and its connection closed). Every generation also carries its child's
//! link hold, so a conversation's teardown waits until the generation is truly gone.

use std::any::Any;
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::chat::ChatMessage;
use super::embedded::EmbeddedModel;
use super::generation::{FinishReason, GenerationParams};
use crate::metrics::Metrics;
use crate::workers::{CancelToken, JobError, Priority, WorkerPool};

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
}

/// SmolLM2 in-process: generation runs on the `llm` worker pool, one model per thread.
pub struct EmbeddedBackend {
    pool: WorkerPool<EmbeddedModel>,
    params: GenerationParams,
    metrics: Arc<Metrics>,
}

impl EmbeddedBackend {
    pub fn new(
        pool: WorkerPool<EmbeddedModel>,
        params: GenerationParams,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(EmbeddedBackend {
            pool,
            params,
            metrics,
        })
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
        let messages = request.messages;
        let (stopped, conversation) = (stop.clone(), request.conversation.clone());
        let (id, metrics) = (request.conversation_id, Arc::clone(&self.metrics));
        let job = self.pool.submit_with(
            Priority::Urgent,
            &request.conversation,
            request.hold,
            move |model| {
                let mut on_token = |piece: &str| {
                    let cancelled = stopped.is_cancelled() || conversation.is_cancelled();
                    if cancelled
                        || events
                            .blocking_send(LlmEvent::Delta(piece.to_string()))
                            .is_err()
                    {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                };
                let kept_before = model.kv_cache_bytes();
                let cancelled = || stopped.is_cancelled() || conversation.is_cancelled();
                let outcome =
                    model.generate_for(Some(id), &messages, &params, &cancelled, &mut on_token);
                let latency = &metrics.latency;
                let kept = model.kv_cache_bytes() as i64 - kept_before as i64;
                latency.llm_kv_cache_bytes.add(kept);
                let last = match outcome {
                    Ok(outcome) => {
                        let cached = outcome.cached_tokens;
                        latency.count_prompt_tokens(outcome.prompt_tokens - cached, cached);
                        tracing::debug!(
                            conversation_id = %id,
                            prompt_tokens = outcome.prompt_tokens,
                            cached_tokens = cached,
                            first_token_ms = outcome.first_token_ms,
                            tokens = outcome.tokens,
                            total_ms = outcome.total_ms,
                            "reply generated"
                        );
                        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                        LlmEvent::Finished(Completion {
                            input_tokens: count(outcome.prompt_tokens),
                            cached_tokens: count(cached),
                            output_tokens: count(outcome.tokens),
                            length_limited: outcome.finish_reason == FinishReason::Length,
                        })
                    }
                    Err(error) => LlmEvent::Failed(error.to_string()),
                };
                let _ = events.blocking_send(last);
            },
        );
        match job {
            Ok(answer) => Ok(Generation {
                events: receiver,
                stop,
                task: None,
                _job: Some(Box::new(answer)),
            }),
            Err(JobError::Overloaded { .. }) => Err(BackendError::Overloaded),
            Err(error) => Err(BackendError::Unavailable(error.to_string())),
        }
    }

    /// Only on an idle thread, at normal priority (replies go first), and stopped
    /// between chunks as soon as a reply waits for the thread.
    fn read_ahead(&self, request: ReadAheadRequest) -> Option<ReadAhead> {
        if !self.pool.has_idle_thread() {
            return None;
        }
        let stop = CancelToken::new();
        let (stopped, conversation) = (stop.clone(), request.conversation.clone());
        let (id, metrics) = (request.conversation_id, Arc::clone(&self.metrics));
        let reply_waits = self.pool.waiting_probe();
        let (history, words) = (request.history, request.words);
        let job = self.pool.submit_with(
            Priority::Normal,
            &request.conversation,
            request.hold,
            move |model| {
                let cancelled =
                    || stopped.is_cancelled() || conversation.is_cancelled() || reply_waits();
                let kept_before = model.kv_cache_bytes();
                let read = model.read_ahead_for(id, &history, &words, &cancelled);
                let kept = model.kv_cache_bytes() as i64 - kept_before as i64;
                metrics.latency.llm_kv_cache_bytes.add(kept);
                match read {
                    Ok(tokens) => metrics.latency.count_read_ahead(tokens),
                    Err(error) => {
                        tracing::debug!(conversation_id = %id, %error, "read-ahead failed")
                    }
                }
            },
        );
        job.ok().map(|answer| ReadAhead {
            stop,
            _job: Box::new(answer),
        })
    }
}
