//! The conversation's routing: client audio and commands in, child events out to the
//! session and on to the next child (VAD → STT → LLM → TTS → session). Supervision and
//! teardown live in the parent module.

use actix::prelude::*;

use super::ConversationActor;
use crate::actors::messages::{
    AudioFrames, ChildEvent, ClientCommand, ConfirmResponse, DropDraft, FlushSpeech, Outbound,
    ReadAhead, Record, ReleaseSpeech, SegmentKind, SpeakDelta, SpeakEnd, Transcribe,
};
use crate::audio::segmenter::SpeechEvent;
use crate::metrics::Preemptive;
use crate::protocol::native::ClientEvent;
use crate::protocol::ServerEvent;

impl Handler<AudioFrames> for ConversationActor {
    type Result = ();

    fn handle(&mut self, frame: AudioFrames, ctx: &mut Context<Self>) {
        let Some(vad) = self.children.vad.as_ref() else {
            return;
        };
        if let Err(SendError::Full(frame)) = vad.try_send(frame) {
            // Backpressure: hold this mailbox (and so the session's reads) until the
            // VAD has room. A dead VAD answers at once and is handled by supervision.
            self.services.metrics.audio_backpressure.inc();
            ctx.wait(vad.send(frame).into_actor(self).map(|_, _, _| ()));
        }
    }
}

impl Handler<ClientCommand> for ConversationActor {
    type Result = ();

    fn handle(&mut self, command: ClientCommand, _: &mut Context<Self>) {
        match command.event {
            ClientEvent::AudioEnd => {
                if let Some(vad) = self.children.vad.as_ref() {
                    vad.do_send(FlushSpeech);
                }
            }
            ClientEvent::DebugFailChild { role, mode } => self.inject_failure(&role, mode),
            ClientEvent::ResponseCancel => self.cancel_reply(),
            ClientEvent::SessionUpdate { llm } => {
                if let Some(prompt) = llm.and_then(|l| l.system_prompt) {
                    let id = self.params.conversation_id;
                    self.services.conversations.set_system_prompt(id, prompt);
                }
            }
            ClientEvent::Ping => self.to_client(ServerEvent::Pong),
        }
    }
}

impl Handler<ChildEvent> for ConversationActor {
    type Result = ();

    fn handle(&mut self, event: ChildEvent, ctx: &mut Context<Self>) {
        match event {
            ChildEvent::Speech { event } => {
                let event = match event {
                    SpeechEvent::Started { audio_ms } => {
                        // Barge-in: the user talks over the reply.
                        self.cancel_reply();
                        ServerEvent::SpeechStarted { audio_ms }
                    }
                    SpeechEvent::Stopped { audio_ms } => ServerEvent::SpeechStopped { audio_ms },
                };
                self.to_client(event)
            }
            ChildEvent::Segment { segment, kind } => {
                if let Some(stt) = self.children.stt.as_ref() {
                    let refused = stt.try_send(Transcribe { segment, kind }).is_err();
                    // Speculative segments are optional: a full mailbox costs nothing.
                    if refused && kind == SegmentKind::Final {
                        self.report_overload();
                    }
                }
            }
            ChildEvent::Decoded { samples } => {
                if let Some(recorder) = self.children.recorder.as_ref() {
                    if recorder.try_send(Record { samples }).is_err() {
                        self.report_overload();
                    }
                }
            }
            ChildEvent::SpeechResumed => {
                self.discard_speculation();
                if let Some(stt) = self.children.stt.as_ref() {
                    stt.do_send(DropDraft);
                }
            }
            ChildEvent::TurnEnded { voice_end } => self.turn.turn_ended(voice_end),
            ChildEvent::PartialTranscript { text } => {
                if let Some(llm) = self.children.llm.as_ref() {
                    llm.do_send(ReadAhead { words: text });
                }
            }
            ChildEvent::DraftTranscript { text } => {
                let same = self.speculation.as_ref().is_some_and(|s| s.text == text);
                if !same {
                    self.discard_speculation();
                    self.respond(text, true);
                }
            }
            ChildEvent::Transcript {
                text,
                audio_ms,
                stt_ms,
            } => {
                self.turn.transcript();
                self.to_client(ServerEvent::TranscriptFinal {
                    text: text.clone(),
                    audio_ms,
                    stt_ms,
                });
                self.answer(text);
            }
            ChildEvent::ResponseDelta { response_id, text } => {
                if self.discarded.contains(&response_id) {
                    return;
                }
                self.turn.first_token(response_id);
                let held = self.is_held(response_id);
                if let Some(tts) = self.children.tts.as_ref() {
                    tts.do_send(SpeakDelta {
                        response_id,
                        text: text.clone(),
                        held,
                    });
                }
                self.reply_event(ServerEvent::ResponseTextDelta { response_id, text })
            }
            ChildEvent::ResponseDone {
                response_id,
                cancelled,
            } => {
                if self.discarded.contains(&response_id) {
                    return;
                }
                if let Some(tts) = self.children.tts.as_ref() {
                    tts.do_send(SpeakEnd {
                        response_id,
                        cancelled,
                    });
                }
                self.reply_event(ServerEvent::ResponseDone {
                    response_id,
                    cancelled,
                })
            }
            ChildEvent::FirstClauseReady { response_id } => self.turn.first_clause(response_id),
            ChildEvent::AudioStarted { response_id } => {
                let metrics = &self.services.metrics.latency;
                let latency_ms = self.turn.first_audio(response_id, metrics);
                if let Some(latency) = latency_ms {
                    tracing::debug!(
                        conversation_id = %self.params.conversation_id,
                        %response_id,
                        ?latency,
                        "reply audio starts"
                    );
                }
                self.to_client(ServerEvent::ResponseAudioStarted {
                    response_id,
                    latency_ms,
                })
            }
            ChildEvent::Audio { frame } => {
                if self.session_alive {
                    self.session.outbound.do_send(Outbound::Audio(frame));
                }
            }
            ChildEvent::AudioDone {
                response_id,
                cancelled,
            } => self.to_client(ServerEvent::ResponseAudioDone {
                response_id,
                cancelled,
            }),
            ChildEvent::ClientError { code, message } => {
                self.to_client(ServerEvent::error(code, message))
            }
            ChildEvent::Failed { role, error } => self.on_child_failed(role, error, ctx),
        }
    }
}

impl ConversationActor {
    /// The turn is confirmed with `text`: the speculative reply on the same words
    /// becomes the answer (its held events go out now), or a reply starts.
    fn answer(&mut self, text: String) {
        match self.speculation.take_if(|s| s.text == text) {
            Some(speculation) => {
                let metrics = &self.services.metrics.latency;
                metrics.count_preemptive(Preemptive::Used);
                let response_id = speculation.response_id;
                if let Some(llm) = self.children.llm.as_ref() {
                    llm.do_send(ConfirmResponse { response_id });
                }
                if let Some(tts) = self.children.tts.as_ref() {
                    tts.do_send(ReleaseSpeech { response_id });
                }
                for event in speculation.release() {
                    self.to_client(event);
                }
            }
            None => {
                self.discard_speculation();
                self.respond(text, false);
            }
        }
    }

    fn is_held(&self, response_id: uuid::Uuid) -> bool {
        self.speculation
            .as_ref()
            .is_some_and(|s| s.response_id == response_id)
    }

    /// An event of a reply: to the client, or held with its unconfirmed speculation.
    fn reply_event(&mut self, event: ServerEvent) {
        match self.speculation.as_mut() {
            Some(speculation) if reply_id(&event) == Some(speculation.response_id) => {
                speculation.hold(event)
            }
            _ => self.to_client(event),
        }
    }
}

fn reply_id(event: &ServerEvent) -> Option<uuid::Uuid> {
    match event {
        ServerEvent::ResponseTextDelta { response_id, .. }
        | ServerEvent::ResponseDone { response_id, .. } => Some(*response_id),
        _ => None,
    }
}
