//! The OpenAI Realtime API (GA, `gpt-realtime` generation) as a wire protocol.
//!
//! A translator, not a second pipeline: client events become the pipeline's commands
//! and base64 audio becomes input audio; the pipeline's events become Realtime server
//! events, and reply audio becomes `response.output_audio.delta`. The state kept here
//! is only what the protocol needs on top of the conversation: the session's settings
//! (`session.rs`), the input buffer's length (`input.rs`), the items it has seen
//! (`items.rs`), the responses under way (`responses.rs`). Client events are parsed in
//! `client.rs`, server events written in `server.rs`, errors typed in `error.rs`.
//! docs/realtime.md lists what is supported.

mod client;
mod conversation;
mod error;
mod input;
mod items;
mod responses;
mod server;
mod session;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use bytes::Bytes;

pub use error::{ErrorType, RealtimeError};
pub use session::ServerDefaults;

use self::client::ClientEvent;
use self::input::InputBuffer;
use self::items::ItemLog;
use self::responses::Responses;
use self::server::{EventIds, ServerEvent};
use self::session::SessionState;
use super::native::ErrorCode;
use super::pipeline::{Command, PipelineEvent};
use super::wire::{Action, Fault, Outbox, SessionStart, Wire};

/// The Realtime translator of one session.
pub struct RealtimeWire {
    defaults: ServerDefaults,
    session: SessionState,
    session_id: String,
    /// The hearken conversation id (`?conversation_id=` resumes it).
    conversation_id: String,
    resumed: bool,
    ids: EventIds,
    input: InputBuffer,
    items: ItemLog,
    responses: Responses,
    /// `server_vad`'s idle timeout: the current timer's key (older keys are stale)
    /// and where the input audio stood when it was set.
    idle_timer: (u64, u64),
    /// The user is speaking (between `speech_started` and `speech_stopped`).
    in_speech: bool,
    /// Truncations asked for: item → (content index, audio end), for the answer.
    truncating: HashMap<String, (u32, u64)>,
}

impl RealtimeWire {
    pub fn new(defaults: ServerDefaults) -> Self {
        let session = SessionState::new(&defaults);
        RealtimeWire {
            session,
            defaults,
            session_id: format!("sess_{}", uuid::Uuid::new_v4().simple()),
            conversation_id: String::new(),
            resumed: false,
            ids: EventIds::new(),
            input: InputBuffer::default(),
            items: ItemLog::default(),
            responses: Responses::default(),
            idle_timer: (0, 0),
            in_speech: false,
            truncating: HashMap::new(),
        }
    }

    fn send(&mut self, out: &mut Outbox, event: &ServerEvent<'_>) {
        out.text(self.ids.frame(event));
    }

    fn reject(&mut self, out: &mut Outbox, error: &RealtimeError) {
        let text = self.ids.frame(&ServerEvent::Error { error });
        out.push(Action::Reject {
            fault: error.fault,
            text,
        });
    }

    fn session_event(&mut self, out: &mut Outbox, created: bool) {
        let conversation = (self.conversation_id.as_str(), self.resumed);
        let session = self
            .session
            .render(&self.defaults, &self.session_id, conversation);
        let event = if created {
            ServerEvent::SessionCreated { session }
        } else {
            ServerEvent::SessionUpdated { session }
        };
        let text = self.ids.frame(&event);
        out.text(text);
    }

    fn configure(&self, out: &mut Outbox) {
        let settings = self.session.pipeline(&self.defaults);
        out.command(Command::Configure { settings });
    }

    fn on_event(
        &mut self,
        event: ClientEvent,
        event_id: Option<String>,
        out: &mut Outbox,
    ) -> Result<(), RealtimeError> {
        match event {
            ClientEvent::SessionUpdate(update) => {
                let audio_sent = self.input.sent_any();
                let next = self.session.updated(&update, &self.defaults, audio_sent)?;
                if next.input != self.session.input {
                    out.push(Action::InputFormat(next.input));
                }
                if next.instructions != self.session.instructions {
                    let prompt = next.instructions.clone();
                    out.command(Command::SetSystemPrompt { prompt });
                }
                let reconfigure =
                    next.pipeline(&self.defaults) != self.session.pipeline(&self.defaults);
                self.session = next;
                if reconfigure {
                    self.configure(out);
                }
                self.disarm_idle_timer();
                self.session_event(out, false);
                Ok(())
            }
            ClientEvent::Append { audio } => self.append(&audio, out),
            ClientEvent::Commit => self.commit(out),
            ClientEvent::Clear => {
                self.input.clear();
                out.command(Command::ClearInput);
                Ok(())
            }
            ClientEvent::ItemCreate {
                item,
                previous_item_id,
            } => self.create_item(&item, previous_item_id, event_id, out),
            ClientEvent::ItemRetrieve { item_id } => {
                let reply_to = event_id;
                out.command(Command::RetrieveItem { item_id, reply_to });
                Ok(())
            }
            ClientEvent::ItemDelete { item_id } => {
                let reply_to = event_id;
                out.command(Command::DeleteItem { item_id, reply_to });
                Ok(())
            }
            ClientEvent::ItemTruncate {
                item_id,
                content_index,
                audio_end_ms,
            } => self.truncate(item_id, content_index, audio_end_ms, event_id, out),
            ClientEvent::ResponseCreate(params) => self.create_response(&params, out),
            ClientEvent::ResponseCancel { response_id } => self.cancel_response(response_id, out),
            ClientEvent::OutputAudioBufferClear => Err(RealtimeError::unsupported(
                "type",
                "output_audio_buffer.clear is for WebRTC and SIP; over a WebSocket the client \
                 holds the audio (use response.cancel and conversation.item.truncate)",
            )),
        }
    }

    /// A pipeline event as Realtime events.
    fn on_pipeline(&mut self, event: PipelineEvent, out: &mut Outbox) {
        match event {
            PipelineEvent::SpeechStarted { audio_ms, item_id } => {
                self.on_speech(true, audio_ms, &item_id, out)
            }
            PipelineEvent::SpeechStopped { audio_ms, item_id } => {
                self.on_speech(false, audio_ms, &item_id, out)
            }
            PipelineEvent::InputCommitted { item_id, .. } => self.on_committed(&item_id, out),
            PipelineEvent::NothingToCommit => {
                let message = "the input audio buffer holds no speech to commit";
                let error = RealtimeError::state("input_audio_buffer_commit_empty", message);
                self.reject(out, &error);
            }
            PipelineEvent::InputCleared => self.send(out, &ServerEvent::Cleared),
            PipelineEvent::Transcript {
                item_id,
                text,
                audio_ms,
                ..
            } => self.on_transcript(&item_id, &text, audio_ms, out),
            PipelineEvent::TranscriptFailed { item_id, message } => {
                self.on_transcript_failed(&item_id, message, out)
            }
            PipelineEvent::ReplyStarted {
                response_id,
                item_id,
                options,
            } => self.on_reply_started(response_id, item_id, options, out),
            PipelineEvent::ReplyDelta { response_id, text } => {
                self.on_reply_delta(response_id, &text, out)
            }
            PipelineEvent::ReplyTextDone { .. } => {}
            PipelineEvent::AudioStarted { response_id, .. } => self.on_audio_started(response_id),
            PipelineEvent::SpokenText { response_id, text } => {
                self.on_spoken(response_id, &text, out)
            }
            PipelineEvent::AudioDone { response_id, .. } => self.on_audio_done(response_id),
            PipelineEvent::ReplyFinished {
                response_id,
                status,
                usage,
            } => self.on_reply_finished(response_id, &status, usage, out),
            PipelineEvent::ItemAdded { item, previous, .. } => {
                self.on_item_added(&item, previous.as_deref(), out)
            }
            PipelineEvent::SpokenItemAdded {
                item_id, previous, ..
            } => self.on_spoken_item_added(&item_id, previous.as_deref(), out),
            PipelineEvent::ItemDeleted { item_id, .. } => self.on_item_deleted(&item_id, out),
            PipelineEvent::ItemTruncated { item_id, .. } => self.on_item_truncated(&item_id, out),
            PipelineEvent::ItemRetrieved { item, .. } => self.on_item_retrieved(&item, out),
            PipelineEvent::Error {
                code,
                message,
                reply_to,
            } => {
                let error = RealtimeError::pipeline(code, message, reply_to);
                let text = self.ids.frame(&ServerEvent::Error { error: &error });
                // Counted (and flood-limited) by the session already, if the client's.
                out.text(text);
            }
        }
    }

    /// Set `server_vad`'s idle timer, if the session has one.
    fn arm_idle_timer(&mut self, out: &mut Outbox) {
        if let Some(after_ms) = self.session.idle_timeout_ms() {
            self.idle_timer = (self.idle_timer.0 + 1, self.input.total_ms());
            let key = self.idle_timer.0;
            out.push(Action::Timer { after_ms, key });
        }
    }

    fn disarm_idle_timer(&mut self) {
        self.idle_timer.0 += 1;
    }
}

impl Wire for RealtimeWire {
    fn started(&mut self, start: SessionStart, out: &mut Outbox) {
        self.conversation_id = start.conversation_id.to_string();
        self.resumed = start.resumed;
        self.session_event(out, true);
        // The pipeline starts from hearken's own defaults: tell it this session's.
        self.configure(out);
    }

    fn client_text(&mut self, text: &str, out: &mut Outbox) {
        let (event, event_id) = match client::parse(text) {
            Ok(parsed) => parsed,
            Err(error) => return self.reject(out, &error),
        };
        // Only an event that is carried out is activity (as for the native protocol).
        match self.on_event(event, event_id.clone(), out) {
            Ok(()) => out.push(Action::Activity),
            Err(error) => self.reject(out, &error.answering(event_id)),
        }
    }

    fn client_binary(&mut self, _: Bytes, out: &mut Outbox) {
        let message = "the Realtime API carries JSON text frames only: send audio with \
                       input_audio_buffer.append";
        let error = RealtimeError::invalid(Fault::BinaryInsteadOfText, "unexpected_frame", message);
        self.reject(out, &error);
    }

    fn pipeline_event(&mut self, event: PipelineEvent, out: &mut Outbox) {
        self.on_pipeline(event, out);
    }

    fn pipeline_audio(&mut self, frame: Bytes, out: &mut Outbox) {
        self.on_reply_audio(&frame, out);
    }

    fn timer(&mut self, key: u64, out: &mut Outbox) {
        if key != self.idle_timer.0 || self.responses.busy() || self.in_speech {
            return;
        }
        let item_id = super::pipeline::new_item_id();
        let (audio_start_ms, audio_end_ms) = (self.idle_timer.1, self.input.total_ms());
        self.send(
            out,
            &ServerEvent::TimeoutTriggered {
                audio_start_ms,
                audio_end_ms,
                item_id: &item_id,
            },
        );
        let create = self
            .session
            .turn_detection
            .is_some_and(|t| t.create_response);
        if create {
            let options = self.session.pipeline(&self.defaults).turn.reply;
            self.responses.requested = true;
            out.command(Command::CreateReply { options });
        }
    }

    fn error_text(&self, code: ErrorCode, message: &str) -> String {
        let error = RealtimeError::pipeline(code, message.to_string(), None);
        // A one-off frame outside the event numbering (the session is not started).
        let mut ids = EventIds::new();
        ids.frame(&ServerEvent::Error { error: &error })
    }
}
