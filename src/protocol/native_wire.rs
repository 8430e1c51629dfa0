//! The native protocol as a [`Wire`]: binary frames are audio, text frames are the
//! events of `native.rs`, and the pipeline's events map almost one to one onto the
//! native server events (those the native protocol has no word for are not sent).

use bytes::Bytes;

use super::native::{AudioCodec, AudioFormat, ClientEvent, ErrorCode, LlmUpdate, ServerEvent};
use super::pipeline::{Command, PipelineEvent};
use super::wire::{Action, Fault, Outbox, SessionStart, Wire};

/// Limits the native protocol enforces on client events.
#[derive(Debug, Clone, Copy)]
pub struct NativeLimits {
    /// Longest `llm.system_prompt` of a `session.update`, in bytes.
    pub max_system_prompt_bytes: usize,
    /// Accept `debug.fail_child`.
    pub fault_injection: bool,
}

pub struct NativeWire {
    format: AudioFormat,
    limits: NativeLimits,
}

impl NativeWire {
    /// `format` is the session's codec and rate (both directions).
    pub fn new(format: AudioFormat, limits: NativeLimits) -> Self {
        NativeWire { format, limits }
    }

    fn send(out: &mut Outbox, event: &ServerEvent) {
        out.text(event.to_json());
    }

    fn reject(out: &mut Outbox, fault: Fault, code: ErrorCode, message: String) {
        let text = ServerEvent::error(code, message).to_json();
        out.push(Action::Reject { fault, text });
    }
}

impl Wire for NativeWire {
    fn started(&mut self, start: SessionStart, out: &mut Outbox) {
        let started = ServerEvent::SessionStarted {
            conversation_id: start.conversation_id,
            resumed: start.resumed,
            codec: self.format.codec,
            sample_rate: self.format.sample_rate,
        };
        Self::send(out, &started);
    }

    fn client_text(&mut self, text: &str, out: &mut Outbox) {
        if !text.trim_start().starts_with('{') {
            let message = "text frames carry JSON events; send audio as binary frames".into();
            return Self::reject(
                out,
                Fault::TextInsteadOfAudio,
                ErrorCode::UnexpectedFrame,
                message,
            );
        }
        let event = match ClientEvent::parse(text) {
            Ok(event) => event,
            Err((code, message)) => {
                let fault = match code {
                    ErrorCode::UnknownEvent => Fault::UnknownEvent,
                    _ => Fault::MalformedJson,
                };
                return Self::reject(out, fault, code, message);
            }
        };
        let command = match event {
            ClientEvent::SessionUpdate {
                llm:
                    Some(LlmUpdate {
                        system_prompt: Some(prompt),
                    }),
            } => {
                let max = self.limits.max_system_prompt_bytes;
                if prompt.len() > max {
                    let message = format!(
                        "llm.system_prompt is {} bytes; the limit is {max}",
                        prompt.len()
                    );
                    return Self::reject(out, Fault::PromptTooLarge, ErrorCode::TooLarge, message);
                }
                Some(Command::SetSystemPrompt { prompt })
            }
            ClientEvent::SessionUpdate { .. } => None,
            ClientEvent::Ping => {
                out.push(Action::Activity);
                return Self::send(out, &ServerEvent::Pong);
            }
            ClientEvent::DebugFailChild { .. } if !self.limits.fault_injection => {
                let message = "unknown event type `debug.fail_child`".to_string();
                return Self::reject(out, Fault::UnknownEvent, ErrorCode::UnknownEvent, message);
            }
            ClientEvent::DebugFailChild { role, mode } => {
                Some(Command::InjectFailure { role, mode })
            }
            ClientEvent::AudioEnd => Some(Command::CommitInput),
            ClientEvent::ResponseCancel => Some(Command::CancelReply),
        };
        out.push(Action::Activity);
        if let Some(command) = command {
            out.command(command);
        }
    }

    fn client_binary(&mut self, data: Bytes, out: &mut Outbox) {
        if data.is_empty() {
            return; // no samples: not audio, not activity
        }
        let width = self.format.codec.bytes_per_sample().unwrap_or(1) as usize;
        if self.format.codec == AudioCodec::Pcm16 && !data.len().is_multiple_of(width) {
            let message = format!("PCM16 frame has an odd byte count ({})", data.len());
            return Self::reject(out, Fault::BadAudio, ErrorCode::BadAudio, message);
        }
        out.push(Action::Activity);
        out.push(Action::Audio(data));
    }

    fn pipeline_event(&mut self, event: PipelineEvent, out: &mut Outbox) {
        let native = match event {
            PipelineEvent::SpeechStarted { audio_ms, .. } => {
                ServerEvent::SpeechStarted { audio_ms }
            }
            PipelineEvent::SpeechStopped { audio_ms, .. } => {
                ServerEvent::SpeechStopped { audio_ms }
            }
            PipelineEvent::Transcript {
                text,
                audio_ms,
                stt_ms,
                ..
            } => ServerEvent::TranscriptFinal {
                text,
                audio_ms,
                stt_ms,
            },
            PipelineEvent::TranscriptFailed { message, .. } => {
                ServerEvent::TranscriptFailed { message }
            }
            PipelineEvent::ReplyDelta { response_id, text } => {
                ServerEvent::ResponseTextDelta { response_id, text }
            }
            PipelineEvent::ReplyTextDone {
                response_id,
                cancelled,
            } => ServerEvent::ResponseDone {
                response_id,
                cancelled,
            },
            PipelineEvent::AudioStarted {
                response_id,
                latency_ms,
            } => ServerEvent::ResponseAudioStarted {
                response_id,
                latency_ms,
            },
            PipelineEvent::AudioDone {
                response_id,
                cancelled,
                audible: true,
            } => ServerEvent::ResponseAudioDone {
                response_id,
                cancelled,
            },
            PipelineEvent::Error { code, message, .. } => ServerEvent::Error { code, message },
            _ => return,
        };
        Self::send(out, &native);
    }

    fn pipeline_audio(&mut self, frame: Bytes, out: &mut Outbox) {
        out.push(Action::Binary(frame));
    }

    fn error_text(&self, code: ErrorCode, message: &str) -> String {
        ServerEvent::error(code, message).to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> NativeWire {
        let limits = NativeLimits {
            max_system_prompt_bytes: 8,
            fault_injection: false,
        };
        NativeWire::new(AudioFormat::new(AudioCodec::Pcm16, 16_000), limits)
    }

    fn actions(out: &mut Outbox) -> Vec<Action> {
        out.drain().collect()
    }

    #[test]
    fn events_become_commands_and_bad_input_is_rejected() {
        let mut wire = wire();
        let mut out = Outbox::default();
        wire.client_text(r#"{"type":"audio.end"}"#, &mut out);
        assert_eq!(
            actions(&mut out),
            [Action::Activity, Action::Command(Command::CommitInput)]
        );
        wire.client_text(
            r#"{"type":"session.update","llm":{"system_prompt":"far too long"}}"#,
            &mut out,
        );
        assert!(matches!(
            &actions(&mut out)[..],
            [Action::Reject {
                fault: Fault::PromptTooLarge,
                ..
            }]
        ));
        wire.client_text(
            r#"{"type":"debug.fail_child","role":"vad","mode":"panic"}"#,
            &mut out,
        );
        assert!(matches!(
            &actions(&mut out)[..],
            [Action::Reject {
                fault: Fault::UnknownEvent,
                ..
            }]
        ));
        wire.client_binary(Bytes::from_static(&[1, 2, 3]), &mut out);
        assert!(matches!(
            &actions(&mut out)[..],
            [Action::Reject {
                fault: Fault::BadAudio,
                ..
            }]
        ));
    }

    /// A client pairs each `vad.speech_stopped` with one answer, so a turn heard as no
    /// words and a turn that failed are both said, never left silent.
    #[test]
    fn every_committed_turn_gets_an_answer() {
        let mut wire = wire();
        let mut out = Outbox::default();
        let empty = PipelineEvent::Transcript {
            item_id: "item_1".into(),
            text: String::new(),
            audio_ms: 10,
            stt_ms: 1,
        };
        wire.pipeline_event(empty, &mut out);
        let failed = PipelineEvent::TranscriptFailed {
            item_id: "item_2".into(),
            message: "skipped".into(),
        };
        wire.pipeline_event(failed, &mut out);
        assert_eq!(
            actions(&mut out),
            [
                Action::Text(
                    r#"{"type":"transcript.final","text":"","audio_ms":10,"stt_ms":1}"#.into()
                ),
                Action::Text(r#"{"type":"transcript.failed","message":"skipped"}"#.into())
            ]
        );
    }

    #[test]
    fn pipeline_events_the_native_protocol_has_no_word_for_are_dropped() {
        let mut wire = wire();
        let mut out = Outbox::default();
        let committed = PipelineEvent::InputCommitted {
            item_id: "item_1".into(),
            audio_start_ms: 0,
            audio_end_ms: 10,
        };
        wire.pipeline_event(committed, &mut out);
        assert!(out.is_empty());
        let started = PipelineEvent::SpeechStarted {
            audio_ms: 120,
            item_id: "item_2".into(),
        };
        wire.pipeline_event(started, &mut out);
        assert_eq!(
            actions(&mut out),
            [Action::Text(
                r#"{"type":"vad.speech_started","audio_ms":120}"#.into()
            )]
        );
    }
}
