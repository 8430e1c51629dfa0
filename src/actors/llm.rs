//! `LlmActor`: answers each final transcript with a streamed, cancellable reply.
//!
//! The user's words go into the conversation store (which outlives the session, so a
//! reconnect resumes with its history), then the backend streams the reply as deltas.
//! A new utterance while a reply is running (barge-in), `response.cancel`, or the
//! conversation's end cancels it at once: dropping the [`Generation`] stops the embedded
//! decoder at its next token or aborts the HTTP request. A cancelled reply is stored
//! marked as cut, so the model knows it was interrupted.
//!
//! A speculative reply (started on a draft transcript, before the turn is confirmed)
//! runs like any other, but neither the user's words nor the reply are stored until
//! [`ConfirmResponse`]; [`DiscardResponse`] drops it without a trace.
//!
//! While the user is still speaking, their words so far ([`ReadAhead`], from partial
//! transcripts) may be read into the model's kept state on an idle thread, all but the
//! last word (which the audio may have cut): the reply to the finished turn then
//! reads only what came after. Nothing of it is stored or sent.

use actix::prelude::*;
use uuid::Uuid;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::{
    CancelResponse, ChildEvent, ConfirmResponse, DiscardResponse, ReadAhead, Respond,
};
use crate::llm::backend::{self, BackendError, Generation, GenerationRequest, LlmEvent};
use crate::llm::chat::ChatMessage;
use crate::metrics::{ActorKind, GaugeGuard};
use crate::protocol::ErrorCode;

/// Appended to a reply that was interrupted, in the stored history.
const CUT_MARKER: &str = " [interrupted]";

/// The reply being generated.
struct Reply {
    id: Uuid,
    text: String,
    /// Speculative: the user's words, stored once the turn is confirmed.
    unconfirmed: Option<String>,
    _generation: Generation,
    _inflight: GaugeGuard,
}

/// A speculative reply that finished before its turn was confirmed.
struct Finished {
    id: Uuid,
    user: String,
    text: String,
}

pub struct LlmActor {
    env: ChildEnv,
    parent: Recipient<ChildEvent>,
    current: Option<Reply>,
    finished: Option<Finished>,
    /// The newest read-ahead of the turn being spoken (dropping it stops it).
    read_ahead: Option<backend::ReadAhead>,
    link: ChildLink,
    _live: GaugeGuard,
}

impl LlmActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Self {
        LlmActor {
            parent: env.parent.clone(),
            current: None,
            finished: None,
            read_ahead: None,
            _live: env.services.metrics.actor_guard(ActorKind::Llm),
            env,
            link,
        }
    }

    fn conversation_id(&self) -> Uuid {
        self.env.params.conversation_id
    }

    /// The prompt's messages before a turn that is not stored yet.
    fn history_before_turn(&self) -> Vec<ChatMessage> {
        let services = &self.env.services;
        let llm = &services.config.llm;
        services.conversations.transcript(
            self.conversation_id(),
            &llm.system_prompt,
            llm.context_messages,
            llm.context_max_messages,
            1,
        )
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
        match reply.unconfirmed {
            // Stored only if its turn is confirmed; a cancelled one never will be.
            Some(user) if !cancelled => {
                self.finished = Some(Finished {
                    id: reply.id,
                    user,
                    text,
                });
            }
            Some(_) => {}
            None => self.store_reply(text),
        }
        self.parent.do_send(ChildEvent::ResponseDone {
            response_id: reply.id,
            cancelled,
        });
    }

    fn store_reply(&self, text: String) {
        if !text.trim().is_empty() {
            self.env
                .services
                .conversations
                .push(self.conversation_id(), ChatMessage::assistant(text));
        }
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
        self.finished = None;
        let services = &self.env.services;
        let Some(backend) = services.llm.as_ref() else {
            return;
        };
        let id = self.conversation_id();
        let llm = &services.config.llm;
        let user = ChatMessage::user(msg.text.clone());
        let mut messages = if msg.speculative {
            // Not stored yet: the prompt is the stored history plus these words.
            let mut messages = self.history_before_turn();
            messages.push(user);
            messages
        } else {
            services.conversations.push(id, user);
            services.conversations.transcript(
                id,
                &llm.system_prompt,
                llm.context_messages,
                llm.context_max_messages,
                0,
            )
        };
        messages.shrink_to_fit();
        let request = GenerationRequest {
            messages,
            conversation_id: id,
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
        let response_id = msg.response_id;
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
            unconfirmed: msg.speculative.then_some(msg.text),
            _generation: generation,
            _inflight: GaugeGuard::new(services.metrics.llm_inflight.clone()),
        });
    }
}

impl Handler<ReadAhead> for LlmActor {
    type Result = ();

    fn handle(&mut self, msg: ReadAhead, _: &mut Context<Self>) {
        if self.current.is_some() {
            return; // the thread is busy with a reply; the words are read with the turn
        }
        let Some(backend) = self.env.services.llm.as_ref() else {
            return;
        };
        let Some(words) = settled_words(&msg.words) else {
            return;
        };
        let request = backend::ReadAheadRequest {
            history: self.history_before_turn(),
            words: words.to_string(),
            conversation_id: self.conversation_id(),
            conversation: self.env.cancel.clone(),
            hold: Box::new(self.link.hold()),
        };
        if let Some(read_ahead) = backend.read_ahead(request) {
            self.read_ahead = Some(read_ahead);
        }
    }
}

/// The words of a partial transcript that later audio will not change: all but the
/// last, which the audio may have cut mid-word. `None` when nothing is left.
fn settled_words(partial: &str) -> Option<&str> {
    let partial = partial.trim();
    let cut = partial.rfind(' ')?;
    Some(partial[..cut].trim_end()).filter(|w| !w.is_empty())
}

impl Handler<CancelResponse> for LlmActor {
    type Result = ();

    fn handle(&mut self, _: CancelResponse, _: &mut Context<Self>) {
        self.cancel_current();
    }
}

impl Handler<ConfirmResponse> for LlmActor {
    type Result = ();

    fn handle(&mut self, msg: ConfirmResponse, _: &mut Context<Self>) {
        let conversations = &self.env.services.conversations;
        let id = self.conversation_id();
        if let Some(reply) = self.current.as_mut().filter(|r| r.id == msg.response_id) {
            if let Some(user) = reply.unconfirmed.take() {
                conversations.push(id, ChatMessage::user(user));
            }
        } else if let Some(done) = self.finished.take_if(|f| f.id == msg.response_id) {
            conversations.push(id, ChatMessage::user(done.user));
            self.store_reply(done.text);
        }
    }
}

impl Handler<DiscardResponse> for LlmActor {
    type Result = ();

    fn handle(&mut self, msg: DiscardResponse, _: &mut Context<Self>) {
        // Dropping the reply stops its generation; nothing is stored or announced.
        self.current.take_if(|r| r.id == msg.response_id);
        self.finished.take_if(|f| f.id == msg.response_id);
    }
}

child_controls!(LlmActor, ChildRole::Llm);

#[cfg(test)]
mod tests {
    use super::settled_words;

    #[test]
    fn the_last_word_of_a_partial_is_not_settled() {
        assert_eq!(settled_words("What is the capit"), Some("What is the"));
        assert_eq!(settled_words(" What  is "), Some("What"));
        assert_eq!(settled_words("What"), None);
        assert_eq!(settled_words(""), None);
    }
}
