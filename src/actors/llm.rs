//! `LlmActor`: keeps the conversation's history and answers with streamed,
//! cancellable replies.
//!
//! The history lives in the conversation store (which outlives the session, so a
//! reconnect resumes it). This actor is its one writer for the conversation: the
//! user's transcribed turns, items a client adds, deletes or truncates
//! (`history.rs` in this folder), and the replies. Each reply is built from the stored
//! history, streamed by the backend as deltas, and stored as an item when it ends. A
//! new reply while one is running (barge-in), `response.cancel`, or the conversation's
//! end cancels it at once: dropping the [`Generation`] stops the embedded decoder at
//! its next token or aborts the HTTP request. A cancelled reply is stored marked as
//! cut, so the model knows it was interrupted; an out-of-band reply is not stored.
//!
//! A speculative reply (started on a draft transcript, before the turn is confirmed)
//! runs like any other, but is stored only after [`ConfirmResponse`] (the user's words
//! are stored by then); [`DiscardResponse`] drops it without a trace.
//!
//! While the user is still speaking, their words so far ([`ReadAhead`], from partial
//! transcripts) may be read into the model's kept state on an idle thread, all but the
//! last word (which the audio may have cut): the reply to the finished turn then
//! reads only what came after. Nothing of it is stored or sent.

mod history;

use actix::prelude::*;
use uuid::Uuid;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::{
    CancelResponse, ChildEvent, ConfirmResponse, DiscardResponse, ReadAhead, ReplyOutcome, Respond,
};
use crate::llm::backend::{self, BackendError, Generation, GenerationRequest, LlmEvent};
use crate::llm::chat::ChatMessage;
use crate::metrics::{ActorKind, GaugeGuard};
use crate::protocol::pipeline::{Item, ItemId, ItemRole, Modality, Usage};
use crate::protocol::ErrorCode;

/// Appended to a reply that was interrupted, in the stored history.
pub const CUT_MARKER: &str = " [interrupted]";

/// The reply being generated.
struct Reply {
    id: Uuid,
    item_id: ItemId,
    text: String,
    /// Speculative and not confirmed yet: stored only once its turn is.
    unconfirmed: bool,
    out_of_band: bool,
    /// Spoken (audio modality): stored as a spoken item.
    spoken: bool,
    /// Deltas received: the output tokens of a reply that ends before the backend
    /// reports its count.
    deltas: u32,
    /// What the listener heard, when a client truncated the reply while it was
    /// still being written: stored instead of the whole text.
    heard: Option<String>,
    _generation: Generation,
    _inflight: GaugeGuard,
}

/// A speculative reply that finished before its turn was confirmed.
struct Finished {
    id: Uuid,
    item_id: ItemId,
    text: String,
    spoken: bool,
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
            let usage = Usage {
                output_tokens: reply.deltas,
                ..Usage::default()
            };
            self.finish(reply, ReplyOutcome::Cancelled { usage });
        }
    }

    fn finish(&mut self, reply: Reply, outcome: ReplyOutcome) {
        let cut = !matches!(outcome, ReplyOutcome::Completed { .. });
        let mut text = reply.heard.unwrap_or(reply.text);
        if cut {
            text.push_str(CUT_MARKER);
        }
        if reply.out_of_band {
            // Never stored.
        } else if reply.unconfirmed {
            // Stored only if its turn is confirmed; a cut one never will be.
            if !cut {
                self.finished = Some(Finished {
                    id: reply.id,
                    item_id: reply.item_id,
                    text,
                    spoken: reply.spoken,
                });
            }
        } else {
            self.store_reply(&reply.item_id, text, reply.spoken);
        }
        self.parent.do_send(ChildEvent::ResponseDone {
            response_id: reply.id,
            outcome,
        });
    }

    fn store_reply(&self, item_id: &str, text: String, spoken: bool) {
        if text.trim().is_empty() {
            return;
        }
        let item = Item {
            id: item_id.to_string(),
            role: ItemRole::Assistant,
            text,
            audio: spoken,
        };
        let stored = self
            .env
            .services
            .conversations
            .insert(self.conversation_id(), &item, None);
        if let Err(error) = stored {
            tracing::warn!(conversation_id = %self.conversation_id(), %error, "reply not stored");
        }
    }

    fn on_event(&mut self, response_id: Uuid, event: LlmEvent) {
        let Some(reply) = self.current.as_mut().filter(|r| r.id == response_id) else {
            return; // from a reply already cancelled
        };
        match event {
            LlmEvent::Delta(text) => {
                reply.text.push_str(&text);
                reply.deltas += 1;
                self.parent
                    .do_send(ChildEvent::ResponseDelta { response_id, text });
            }
            LlmEvent::Finished(completion) => {
                if let Some(reply) = self.current.take() {
                    let usage = Usage {
                        input_tokens: completion.input_tokens,
                        cached_tokens: completion.cached_tokens,
                        output_tokens: completion.output_tokens.max(reply.deltas),
                    };
                    let length_limited = completion.length_limited;
                    let outcome = ReplyOutcome::Completed {
                        usage,
                        length_limited,
                    };
                    self.finish(reply, outcome);
                }
            }
            LlmEvent::Failed(error) => {
                tracing::warn!(conversation_id = %self.conversation_id(), %error, "reply failed");
                let message = format!("the reply failed: {error}");
                self.parent.do_send(ChildEvent::ClientError {
                    code: ErrorCode::LlmUnavailable,
                    message: message.clone(),
                });
                if let Some(reply) = self.current.take() {
                    self.finish(reply, ReplyOutcome::Failed { message });
                }
            }
        }
    }

    /// The prompt: the stored history (plus a speculative turn's words), with the
    /// reply's own instructions in place of the system prompt if it has some.
    fn prompt(&self, msg: &Respond) -> Vec<ChatMessage> {
        let services = &self.env.services;
        let llm = &services.config.llm;
        let pending = usize::from(msg.draft.is_some());
        let mut messages = services.conversations.transcript(
            self.conversation_id(),
            &llm.system_prompt,
            llm.context_messages,
            llm.context_max_messages,
            pending,
        );
        if let (Some(instructions), Some(system)) =
            (msg.options.instructions.as_ref(), messages.first_mut())
        {
            *system = ChatMessage::system(instructions.clone());
        }
        if let Some(draft) = &msg.draft {
            messages.push(ChatMessage::user(draft.clone()));
        }
        messages.shrink_to_fit();
        messages
    }

    fn refuse(&self, response_id: Uuid, code: ErrorCode, message: String) {
        self.parent.do_send(ChildEvent::ClientError {
            code,
            message: message.clone(),
        });
        self.parent.do_send(ChildEvent::ResponseDone {
            response_id,
            outcome: ReplyOutcome::Failed { message },
        });
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
        self.cancel_current(); // barge-in: the newest reply wins
        self.finished = None;
        let services = &self.env.services;
        let Some(backend) = services.llm.as_ref() else {
            let message = "no language model is configured (llm.backend = \"none\")";
            return self.refuse(msg.response_id, ErrorCode::LlmUnavailable, message.into());
        };
        let llm = &services.config.llm;
        let max_tokens = msg.options.max_tokens.unwrap_or(llm.max_tokens);
        let request = GenerationRequest {
            messages: self.prompt(&msg),
            conversation_id: self.conversation_id(),
            conversation: self.env.cancel.clone(),
            hold: Box::new(self.link.hold()),
            max_tokens: max_tokens.clamp(1, llm.max_tokens.max(1)),
        };
        let mut generation = match backend.start(request) {
            Ok(generation) => generation,
            Err(error) => {
                let code = match error {
                    BackendError::Overloaded => ErrorCode::Overloaded,
                    BackendError::Unavailable(_) => ErrorCode::LlmUnavailable,
                };
                return self.refuse(msg.response_id, code, error.to_string());
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
            item_id: msg.item_id,
            text: String::new(),
            unconfirmed: msg.draft.is_some(),
            out_of_band: msg.options.out_of_band,
            spoken: msg.options.modality == Modality::Audio,
            deltas: 0,
            heard: None,
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

    /// The user's words are stored by now (the conversation sent them first).
    fn handle(&mut self, msg: ConfirmResponse, _: &mut Context<Self>) {
        if let Some(reply) = self.current.as_mut().filter(|r| r.id == msg.response_id) {
            reply.unconfirmed = false;
        } else if let Some(done) = self.finished.take_if(|f| f.id == msg.response_id) {
            self.store_reply(&done.item_id, done.text, done.spoken);
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
