//! The conversation's routing: client audio and commands in, child events out to the
//! session and on to the next child (VAD → STT → LLM → TTS → session). Supervision and
//! teardown live in the parent module.

use actix::prelude::*;

use super::ConversationActor;
use crate::actors::messages::{
    AudioFrames, ChildEvent, ClientCommand, FlushSpeech, Outbound, Record, Respond, SegmentKind,
    SpeakDelta, SpeakEnd, Transcribe,
};
use crate::audio::segmenter::SpeechEvent;
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
            ChildEvent::Speech { event } => self.to_client(match event {
                SpeechEvent::Started { audio_ms } => {
                    // Barge-in: the user talks over the reply.
                    self.cancel_reply();
                    ServerEvent::SpeechStarted { audio_ms }
                }
                SpeechEvent::Stopped { audio_ms } => ServerEvent::SpeechStopped { audio_ms },
            }),
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
            ChildEvent::Transcript {
                text,
                audio_ms,
                stt_ms,
            } => {
                if let Some(llm) = self.children.llm.as_ref() {
                    llm.do_send(Respond { text: text.clone() });
                }
                self.to_client(ServerEvent::TranscriptFinal {
                    text,
                    audio_ms,
                    stt_ms,
                })
            }
            ChildEvent::ResponseDelta { response_id, text } => {
                if let Some(tts) = self.children.tts.as_ref() {
                    tts.do_send(SpeakDelta {
                        response_id,
                        text: text.clone(),
                    });
                }
                self.to_client(ServerEvent::ResponseTextDelta { response_id, text })
            }
            ChildEvent::ResponseDone {
                response_id,
                cancelled,
            } => {
                if let Some(tts) = self.children.tts.as_ref() {
                    tts.do_send(SpeakEnd {
                        response_id,
                        cancelled,
                    });
                }
                self.to_client(ServerEvent::ResponseDone {
                    response_id,
                    cancelled,
                })
            }
            ChildEvent::AudioStarted { response_id } => {
                self.to_client(ServerEvent::ResponseAudioStarted { response_id })
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
