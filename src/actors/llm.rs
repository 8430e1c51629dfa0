//! `LlmActor`: answers each final transcript with a streamed, cancellable reply.
//!
//! The user's words go into the conversation store (which outlives the session, so a
//! reconnect resumes with its history), then the backend streams the reply as deltas.
//! A new utterance while a reply is running (barge-in), `response.cancel`, or the
//! conversation's end cancels it at once: dropping the [`Generation`] stops the embedded
//! decoder at its next token or aborts the HTTP request. A cancelled reply is stored
//! marked as cut, so the model knows it was interrupted.

use actix::prelude::*;
use uuid::Uuid;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::{CancelResponse, ChildEvent, Respond};
use crate::llm::backend::{BackendError, Generation, GenerationRequest, LlmEvent};
use crate::llm::chat::ChatMessage;
use crate::metrics::{ActorKind, GaugeGuard};
use crate::protocol::ErrorCode;

/// Appended to a reply that was interrupted, in the stored history.
const CUT_MARKER: &str = " [interrupted]";

/// The reply being generated.
struct Reply {
    id: Uuid,
    text: String,
    _generation: Generation,
    _inflight: GaugeGuard,
}

pub struct LlmActor {
    env: ChildEnv,
    parent: Recipient<ChildEvent>,
    current: Option<Reply>,
    link: ChildLink,
    _live: GaugeGuard,
}

impl LlmActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Self {
        LlmActor {
            parent: env.parent.clone(),
            current: None,
            _live: env.services.metrics.actor_guard(ActorKind::Llm),
            env,
            link,
        }
    }

    fn conversation_id(&self) -> Uuid {
        self.env.params.conversation_id
    }

    /// Stop the running reply, if any, and record it as cut.
    fn cancel_current(&mut self) {
        if let Some(reply) = self.current.take() {
            self.finish(reply, true);
        }
    }

    fn finish(&mut self, reply: Reply, cancelled: bool) {
        let mut text = reply.text;
        if cancelled {
            text.push_str(CUT_MARKER);
        }
        if !text.trim().is_empty() {
            self.env
                .services
                .conversations
                .push(self.conversation_id(), ChatMessage::assistant(text));
        }
        self.parent.do_send(ChildEvent::ResponseDone {
            response_id: reply.id,
            cancelled,
        });
    }

    fn on_event(&mut self, response_id: Uuid, event: LlmEvent) {
        let Some(reply) = self.current.as_mut().filter(|r| r.id == response_id) else {
            return; // from a reply already cancelled
        };
        match event {
            LlmEvent::Delta(text) => {
                reply.text.push_str(&text);
                self.parent
                    .do_send(ChildEvent::ResponseDelta { response_id, text });
            }
            LlmEvent::Finished => {
                if let Some(reply) = self.current.take() {
                    self.finish(reply, false);
                }
            }
            LlmEvent::Failed(error) => {
                tracing::warn!(conversation_id = %self.conversation_id(), %error, "reply failed");
                self.parent.do_send(ChildEvent::ClientError {
                    code: ErrorCode::LlmUnavailable,
                    message: format!("the reply failed: {error}"),
                });
                if let Some(reply) = self.current.take() {
                    self.finish(reply, true);
                }
            }
        }
    }
}

impl Actor for LlmActor {
    type Context = Context<Self>;

    /// A reply cut short by the conversation's end is still recorded (as cut).
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.cancel_current();
    }
}

impl Handler<Respond> for LlmActor {
    type Result = ();

    fn handle(&mut self, msg: Respond, ctx: &mut Context<Self>) {
        self.cancel_current(); // barge-in: the newest utterance wins
        let services = &self.env.services;
        let Some(backend) = services.llm.as_ref() else {
            return;
        };
        let id = self.conversation_id();
        services.conversations.push(id, ChatMessage::user(msg.text));
        let request = GenerationRequest {
            messages: services.conversations.transcript(
                id,
                &services.config.llm.system_prompt,
                services.config.llm.context_messages,
            ),
            conversation: self.env.cancel.clone(),
            hold: Box::new(self.link.hold()),
        };
        let mut generation = match backend.start(request) {
            Ok(generation) => generation,
            Err(error) => {
                let code = match error {
                    BackendError::Overloaded => ErrorCode::Overloaded,
                    BackendError::Unavailable(_) => ErrorCode::LlmUnavailable,
                };
                return self.parent.do_send(ChildEvent::ClientError {
                    code,
                    message: error.to_string(),
                });
            }
        };
        let response_id = Uuid::new_v4();
        let events = std::mem::replace(&mut generation.events, tokio::sync::mpsc::channel(1).1);
        let stream = futures_util::stream::unfold(events, |mut events| async move {
            events.recv().await.map(|event| (event, events))
        });
        ctx.spawn(
            stream
                .into_actor(self)
                .map(move |event, act, _| act.on_event(response_id, event))
                .finish(),
        );
        self.current = Some(Reply {
            id: response_id,
            text: String::new(),
            _generation: generation,
            _inflight: GaugeGuard::new(services.metrics.llm_inflight.clone()),
        });
    }
}

impl Handler<CancelResponse> for LlmActor {
    type Result = ();

    fn handle(&mut self, _: CancelResponse, _: &mut Context<Self>) {
        self.cancel_current();
    }
}

child_controls!(LlmActor, ChildRole::Llm);
