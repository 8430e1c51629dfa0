//! The conversation's routing: client audio in, child events out to the session and on
//! to the next child (VAD → STT → LLM → TTS → session). The user's turns are in
//! `input.rs`, replies in `reply.rs`, the protocol's commands in `commands.rs`;
//! supervision and teardown in the parent module.

use actix::prelude::*;

use super::ConversationActor;
use crate::actors::messages::{
    AudioFrames, ChildEvent, DropDraft, Outbound, ReadAhead, Record, SegmentKind, Transcribe,
};
use crate::protocol::PipelineEvent;

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

impl Handler<ChildEvent> for ConversationActor {
    type Result = ();

    fn handle(&mut self, event: ChildEvent, ctx: &mut Context<Self>) {
        match event {
            ChildEvent::Speech { event } => self.on_speech(event),
            ChildEvent::Segment {
                segment,
                kind: SegmentKind::Final,
            } => self.on_final_segment(segment),
            ChildEvent::Segment { segment, kind } => {
                if let Some(stt) = self.children.stt.as_ref() {
                    // Speculative segments are optional: a full mailbox costs nothing.
                    let _ = stt.try_send(Transcribe { segment, kind });
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
                // Read the question while it is asked, if it will be answered.
                if let Some(llm) = self.children.llm.as_ref().filter(|_| self.answers_turns()) {
                    llm.do_send(ReadAhead { words: text });
                }
            }
            ChildEvent::DraftTranscript { text } => self.on_draft(text),
            ChildEvent::Transcript {
                text,
                audio_ms,
                stt_ms,
            } => self.on_transcript(text, audio_ms, stt_ms),
            ChildEvent::TranscriptFailed { audio_ms, message } => {
                self.on_transcript_failed(audio_ms, message)
            }
            ChildEvent::ItemTranscript {
                item_id,
                text,
                stt_ms,
            } => self.on_item_transcript(item_id, text, stt_ms),
            ChildEvent::NothingToCommit => self.on_nothing_to_commit(),
            ChildEvent::ResponseDelta { response_id, text } => {
                self.on_reply_delta(response_id, text)
            }
            ChildEvent::ResponseDone {
                response_id,
                outcome,
            } => self.on_reply_text_done(response_id, outcome),
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
                self.to_client(PipelineEvent::AudioStarted {
                    response_id,
                    latency_ms,
                })
            }
            ChildEvent::SpokenText { response_id, text } => {
                self.to_client(PipelineEvent::SpokenText { response_id, text })
            }
            ChildEvent::Audio { frame } => {
                if self.session_alive {
                    self.session.outbound.do_send(Outbound::Audio(frame));
                }
            }
            ChildEvent::AudioDone {
                response_id,
                cancelled,
                audible,
            } => self.on_audio_done(response_id, cancelled, audible),
            ChildEvent::ToClient { event } => self.to_client(event),
            ChildEvent::ClientError { code, message } => {
                self.to_client(PipelineEvent::error(code, message))
            }
            ChildEvent::Failed { role, error } => self.on_child_failed(role, error, ctx),
        }
    }
}
