//! The wire protocols a streaming bench session speaks: hearken's native protocol on
//! `/v1/ws` and the OpenAI Realtime API on `/v1/realtime`. This is the only place that
//! knows their words: how audio is framed, how a session is set up and ended, and what
//! each server event means for the measurements ([`Heard`]). Everything the session
//! times and pairs (`session.rs`, `replies/`) works on [`Heard`], so both protocols
//! are measured the same way.
//!
//! Realtime sessions send 24 kHz PCM16 (the API's `audio/pcm`) as
//! `input_audio_buffer.append` events of one 20 ms frame each, built once per run.

use std::collections::VecDeque;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::replies::ReplyEvent;

/// The only input rate of the Realtime API's `audio/pcm`.
pub const REALTIME_RATE: u32 = 24_000;
/// Realtime items remembered while waiting for their transcripts (a transcript comes
/// within a few turns of its speech stop).
const MAX_ITEMS: usize = 16;

/// Which protocol the sessions speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// hearken's own: binary audio frames, `vad.*`, `transcript.final`, `response.*`.
    #[default]
    Native,
    /// The OpenAI Realtime API (GA): base64 audio in JSON events.
    Realtime,
}

/// Turn detection a Realtime session asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RealtimeTurn {
    /// Keep the server's default (what a native session gets: Smart Turn where
    /// configured), so the protocols are compared on the same pipeline.
    #[default]
    Default,
    /// `server_vad`: silence alone ends a turn.
    ServerVad,
    /// `semantic_vad`: Smart Turn decides at each pause.
    SemanticVad,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Realtime => "realtime",
        }
    }

    /// The server's first event: the session is ready.
    pub fn ready_event(self) -> &'static str {
        match self {
            Protocol::Native => "session.started",
            Protocol::Realtime => "session.created",
        }
    }

    /// The event type of a speech stop and of a transcript, for the report's counts.
    pub fn stop_and_transcript_events(self) -> (&'static str, &'static str) {
        match self {
            Protocol::Native => ("vad.speech_stopped", "transcript.final"),
            Protocol::Realtime => (
                "input_audio_buffer.speech_stopped",
                "conversation.item.input_audio_transcription.completed",
            ),
        }
    }

    /// One 20 ms audio frame as the message that carries it.
    pub fn audio_message(self, frame: &Bytes) -> Message {
        match self {
            Protocol::Native => Message::Binary(frame.clone()),
            Protocol::Realtime => {
                let audio = base64::engine::general_purpose::STANDARD.encode(frame);
                Message::text(
                    json!({"type": "input_audio_buffer.append", "audio": audio}).to_string(),
                )
            }
        }
    }

    /// What a session sends before its audio: the Realtime session's settings (24 kHz
    /// PCM both ways, transcripts on). The reply modality is left at the server's
    /// default (spoken, unless its TTS is off: a VAD-only server would refuse audio).
    pub fn hello(self, turn: RealtimeTurn) -> Option<Message> {
        let Protocol::Realtime = self else {
            return None;
        };
        let pcm = json!({"type": "audio/pcm", "rate": REALTIME_RATE});
        let mut input = json!({"format": pcm, "transcription": {"model": "whisper-1"}});
        match turn {
            RealtimeTurn::Default => {}
            RealtimeTurn::ServerVad => input["turn_detection"] = json!({"type": "server_vad"}),
            RealtimeTurn::SemanticVad => input["turn_detection"] = json!({"type": "semantic_vad"}),
        }
        let session = json!({"type": "realtime",
            "audio": {"input": input, "output": {"format": pcm}}});
        Some(Message::text(
            json!({"type": "session.update", "session": session}).to_string(),
        ))
    }

    /// What ends the audio: the last turn is closed and answered. `in_speech`: a turn
    /// is open (a Realtime commit of no speech would only get an error).
    pub fn end_of_audio(self, in_speech: bool) -> Option<Message> {
        let event = match self {
            Protocol::Native => json!({"type": "audio.end"}),
            Protocol::Realtime if in_speech => json!({"type": "input_audio_buffer.commit"}),
            Protocol::Realtime => return None,
        };
        Some(Message::text(event.to_string()))
    }
}

/// What a server event means for the measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Speech started at `audio_ms` of the session's audio.
    SpeechStarted {
        audio_ms: u64,
    },
    SpeechStopped {
        audio_ms: u64,
    },
    /// A non-empty final transcript; `stop_ms` finds the speech stop that ended its
    /// segment (native: the segment's end; Realtime: its item's stop, if one was seen).
    Transcript {
        stop_ms: Option<u64>,
    },
    Reply {
        id: String,
        event: ReplyEvent,
    },
    /// Reply audio of `bytes` bytes (Realtime; native audio comes in binary frames).
    Audio {
        bytes: u64,
    },
    Error {
        code: String,
    },
}

/// Reads one session's server events into [`Heard`]; keeps what the Realtime API
/// spreads over several events (an item's speech stop, a reply's first audio).
#[derive(Debug, Default)]
pub struct Reader {
    protocol: Protocol,
    /// Realtime: speech stops by item, for their transcripts.
    stops: VecDeque<(String, u64)>,
    /// Realtime: the reply whose audio has started.
    speaking: Option<String>,
}

impl Reader {
    pub fn new(protocol: Protocol) -> Self {
        Reader {
            protocol,
            ..Reader::default()
        }
    }

    pub fn read(&mut self, event: &Value) -> Vec<Heard> {
        match self.protocol {
            Protocol::Native => native(event).into_iter().collect(),
            Protocol::Realtime => self.realtime(event),
        }
    }

    fn realtime(&mut self, event: &Value) -> Vec<Heard> {
        let kind = event["type"].as_str().unwrap_or_default();
        let item = event["item_id"].as_str().unwrap_or_default();
        let response = event["response_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let reply = |id: String, event| Heard::Reply { id, event };
        match kind {
            "input_audio_buffer.speech_started" => vec![Heard::SpeechStarted {
                audio_ms: event["audio_start_ms"].as_u64().unwrap_or(0),
            }],
            "input_audio_buffer.speech_stopped" => {
                let audio_ms = event["audio_end_ms"].as_u64().unwrap_or(0);
                if self.stops.len() >= MAX_ITEMS {
                    self.stops.pop_front();
                }
                self.stops.push_back((item.to_string(), audio_ms));
                vec![Heard::SpeechStopped { audio_ms }]
            }
            "conversation.item.input_audio_transcription.completed" => {
                let at = self.stops.iter().position(|(id, _)| id == item);
                let stop_ms = at.and_then(|at| self.stops.remove(at)).map(|(_, ms)| ms);
                // Native sessions hear no empty transcripts: neither does the count.
                let said = event["transcript"].as_str().is_some_and(|t| !t.is_empty());
                said.then_some(Heard::Transcript { stop_ms })
                    .into_iter()
                    .collect()
            }
            "response.output_text.delta" | "response.output_audio_transcript.delta" => {
                vec![reply(response, ReplyEvent::TextDelta)]
            }
            "response.output_audio.delta" => {
                let mut heard = Vec::with_capacity(2);
                if self.speaking.as_deref() != Some(response.as_str()) {
                    self.speaking = Some(response.clone());
                    heard.push(reply(response, ReplyEvent::AudioStarted));
                }
                let chars = event["delta"].as_str().map_or(0, str::len) as u64;
                heard.push(Heard::Audio {
                    bytes: chars / 4 * 3,
                });
                heard
            }
            "response.done" => {
                let id = event["response"]["id"].as_str().unwrap_or_default();
                let cancelled = event["response"]["status"] != "completed";
                // The Realtime API ends text and audio in one event.
                vec![
                    reply(id.to_string(), ReplyEvent::Done { cancelled }),
                    reply(id.to_string(), ReplyEvent::AudioDone { cancelled }),
                ]
            }
            "error" => vec![Heard::Error {
                code: event["error"]["code"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
            }],
            _ => Vec::new(),
        }
    }
}

fn native(event: &Value) -> Option<Heard> {
    let kind = event["type"].as_str().unwrap_or_default();
    let audio_ms = event["audio_ms"].as_u64().unwrap_or(0);
    let id = event["response_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let cancelled = event["cancelled"].as_bool().unwrap_or(false);
    let reply = |event| Some(Heard::Reply { id, event });
    match kind {
        "vad.speech_started" => Some(Heard::SpeechStarted { audio_ms }),
        "vad.speech_stopped" => Some(Heard::SpeechStopped { audio_ms }),
        // For a transcript `audio_ms` is its segment's end, padding included.
        "transcript.final" => Some(Heard::Transcript {
            stop_ms: Some(audio_ms),
        }),
        "response.text.delta" => reply(ReplyEvent::TextDelta),
        "response.done" => reply(ReplyEvent::Done { cancelled }),
        "response.audio.started" => reply(ReplyEvent::AudioStarted),
        "response.audio.done" => reply(ReplyEvent::AudioDone { cancelled }),
        "error" => Some(Heard::Error {
            code: event["code"].as_str().unwrap_or("unknown").to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(message: &Message) -> Value {
        let Message::Text(text) = message else {
            panic!("not a text message: {message:?}");
        };
        serde_json::from_str(text.as_str()).expect("JSON")
    }

    #[test]
    fn realtime_audio_is_a_base64_append_of_the_same_bytes() {
        let frame = Bytes::from((0..960u32).map(|i| i as u8).collect::<Vec<u8>>());
        let append = text(&Protocol::Realtime.audio_message(&frame));
        assert_eq!(append["type"], "input_audio_buffer.append");
        let audio = base64::engine::general_purpose::STANDARD
            .decode(append["audio"].as_str().unwrap())
            .unwrap();
        assert_eq!(audio, frame);
        assert_eq!(
            Protocol::Native.audio_message(&frame),
            Message::Binary(frame)
        );
    }

    #[test]
    fn the_realtime_hello_asks_for_24_khz_pcm_transcripts_and_the_turn_detection() {
        assert_eq!(Protocol::Native.hello(RealtimeTurn::ServerVad), None);
        let hello = text(&Protocol::Realtime.hello(RealtimeTurn::Default).unwrap());
        let session = &hello["session"];
        assert_eq!(hello["type"], "session.update");
        assert_eq!(session["audio"]["input"]["format"]["rate"], 24_000);
        assert_eq!(session["audio"]["output"]["format"]["type"], "audio/pcm");
        assert!(session["audio"]["input"]["transcription"].is_object());
        assert!(
            session.get("output_modalities").is_none(),
            "the server's own: a server without TTS refuses audio"
        );
        assert!(
            session["audio"]["input"].get("turn_detection").is_none(),
            "the server's default"
        );
        let server_vad = text(&Protocol::Realtime.hello(RealtimeTurn::ServerVad).unwrap());
        assert_eq!(
            server_vad["session"]["audio"]["input"]["turn_detection"]["type"],
            "server_vad"
        );
    }

    #[test]
    fn the_end_of_audio_closes_an_open_turn_only_where_that_is_not_an_error() {
        let end =
            |p: Protocol, in_speech| p.end_of_audio(in_speech).map(|m| text(&m)["type"].clone());
        assert_eq!(end(Protocol::Native, false), Some(json!("audio.end")));
        assert_eq!(
            end(Protocol::Realtime, true),
            Some(json!("input_audio_buffer.commit"))
        );
        assert_eq!(end(Protocol::Realtime, false), None);
    }

    #[test]
    fn native_events_are_read_as_they_are() {
        let mut reader = Reader::new(Protocol::Native);
        let read = |reader: &mut Reader, event: Value| reader.read(&event);
        assert_eq!(
            read(
                &mut reader,
                json!({"type": "vad.speech_stopped", "audio_ms": 2400})
            ),
            [Heard::SpeechStopped { audio_ms: 2400 }]
        );
        assert_eq!(
            read(
                &mut reader,
                json!({"type": "transcript.final", "audio_ms": 2700, "text": "hi"})
            ),
            [Heard::Transcript {
                stop_ms: Some(2700)
            }]
        );
        assert_eq!(
            read(
                &mut reader,
                json!({"type": "response.audio.done", "response_id": "r", "cancelled": true})
            ),
            [Heard::Reply {
                id: "r".into(),
                event: ReplyEvent::AudioDone { cancelled: true }
            }]
        );
        assert_eq!(
            read(&mut reader, json!({"type": "error", "code": "overloaded"})),
            [Heard::Error {
                code: "overloaded".into()
            }]
        );
    }

    /// A Realtime turn, event by event, as the measurements see it.
    #[test]
    fn realtime_events_become_the_same_measurements() {
        let mut reader = Reader::new(Protocol::Realtime);
        let mut read = |event: Value| reader.read(&event);
        assert_eq!(
            read(
                json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 900, "item_id": "i1"})
            ),
            [Heard::SpeechStarted { audio_ms: 900 }]
        );
        assert_eq!(
            read(
                json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2500, "item_id": "i1"})
            ),
            [Heard::SpeechStopped { audio_ms: 2500 }]
        );
        assert!(read(json!({"type": "input_audio_buffer.committed", "item_id": "i1"})).is_empty());
        assert_eq!(
            read(
                json!({"type": "conversation.item.input_audio_transcription.completed",
                "item_id": "i1", "transcript": "What time is it?"})
            ),
            [Heard::Transcript {
                stop_ms: Some(2500)
            }],
            "paired with its item's speech stop"
        );
        assert!(
            read(
                json!({"type": "conversation.item.input_audio_transcription.completed",
                "item_id": "i2", "transcript": ""})
            )
            .is_empty(),
            "no words: no transcript, as on /v1/ws"
        );
        let transcript_delta = json!({"type": "response.output_audio_transcript.delta",
            "response_id": "resp_1", "delta": "It is"});
        assert_eq!(
            read(transcript_delta),
            [Heard::Reply {
                id: "resp_1".into(),
                event: ReplyEvent::TextDelta
            }]
        );
        let delta = json!({"type": "response.output_audio.delta", "response_id": "resp_1",
            "delta": base64::engine::general_purpose::STANDARD.encode([0u8; 960])});
        assert_eq!(
            read(delta.clone()),
            [
                Heard::Reply {
                    id: "resp_1".into(),
                    event: ReplyEvent::AudioStarted
                },
                Heard::Audio { bytes: 960 }
            ],
            "the first delta starts the audio"
        );
        assert_eq!(read(delta), [Heard::Audio { bytes: 960 }]);
        let done = json!({"type": "response.done",
            "response": {"id": "resp_1", "status": "cancelled"}});
        assert_eq!(
            read(done),
            [
                Heard::Reply {
                    id: "resp_1".into(),
                    event: ReplyEvent::Done { cancelled: true }
                },
                Heard::Reply {
                    id: "resp_1".into(),
                    event: ReplyEvent::AudioDone { cancelled: true }
                }
            ]
        );
        assert_eq!(
            read(json!({"type": "error", "error": {"code": "audio_too_fast"}})),
            [Heard::Error {
                code: "audio_too_fast".into()
            }]
        );
    }
}
