//! The translator on its own: every client event, every pipeline event, and the bad
//! inputs, checked on the frames and commands it produces.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use uuid::Uuid;

use super::*;
use crate::protocol::native::{AudioCodec, AudioFormat};
use crate::protocol::pipeline::{
    CancelReason, Item, ItemRole, Modality, ReplyOptions, ReplyStatus, SmartTurn, TurnDetection,
    Usage, VadSettings,
};

fn defaults(smart: bool) -> ServerDefaults {
    ServerDefaults {
        model: "gpt-realtime".into(),
        voice: "en_US-joe-medium".into(),
        instructions: "Be brief.".into(),
        max_output_tokens: 64,
        vad: VadSettings {
            start_threshold: 0.5,
            end_threshold: 0.35,
            pad_ms: 300,
            min_silence_ms: 400,
            smart: smart.then_some(SmartTurn {
                threshold: 0.5,
                max_silence_ms: 1000,
            }),
        },
        speaks: true,
        max_instructions_bytes: 64,
        max_item_bytes: 256,
        max_append_ms: 1000,
    }
}

struct Harness {
    wire: RealtimeWire,
    out: Outbox,
}

impl Harness {
    fn new() -> Self {
        let mut harness = Harness {
            wire: RealtimeWire::new(defaults(true)),
            out: Outbox::default(),
        };
        let start = SessionStart {
            conversation_id: Uuid::new_v4(),
            resumed: false,
        };
        harness.wire.started(start, &mut harness.out);
        harness
    }

    fn actions(&mut self) -> Vec<Action> {
        self.out.drain().collect()
    }

    fn client(&mut self, event: Value) -> Vec<Action> {
        self.wire.client_text(&event.to_string(), &mut self.out);
        self.actions()
    }

    fn pipeline(&mut self, event: PipelineEvent) -> Vec<Value> {
        self.wire.pipeline_event(event, &mut self.out);
        events(&self.actions())
    }
}

/// The JSON events among `actions` (sent or rejected).
fn events(actions: &[Action]) -> Vec<Value> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Text(text) | Action::Reject { text, .. } => serde_json::from_str(text).ok(),
            _ => None,
        })
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn commands(actions: &[Action]) -> Vec<&Command> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Command(command) => Some(command),
            _ => None,
        })
        .collect()
}

/// The one error among `actions`: its `error` object and how it is counted.
fn rejected(actions: &[Action]) -> (Value, Fault) {
    let [Action::Reject { fault, text }] = actions else {
        panic!("expected one rejection, got {actions:?}");
    };
    let event: Value = serde_json::from_str(text).expect("JSON");
    assert_eq!(event["type"], "error");
    assert!(event["event_id"].as_str().is_some());
    (event["error"].clone(), *fault)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn the_session_starts_with_session_created_and_its_settings() {
    let mut harness = Harness::new();
    let actions = harness.actions();
    let created = &events(&actions)[0];
    assert_eq!(created["type"], "session.created");
    let session = &created["session"];
    assert_eq!(session["type"], "realtime");
    assert_eq!(session["model"], "gpt-realtime");
    assert_eq!(session["output_modalities"], json!(["audio"]));
    assert_eq!(session["instructions"], "Be brief.");
    assert_eq!(
        session["audio"]["input"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    let detection = &session["audio"]["input"]["turn_detection"];
    assert_eq!(detection["type"], "semantic_vad");
    assert_eq!(session["audio"]["input"]["transcription"], Value::Null);
    assert_eq!(session["max_output_tokens"], 64);
    assert!(matches!(
        commands(&actions)[..],
        [Command::Configure { .. }]
    ));
}

#[test]
fn session_update_changes_what_it_names_and_tells_the_pipeline() {
    let mut harness = Harness::new();
    harness.actions();
    let actions = harness.client(json!({
        "type": "session.update",
        "event_id": "e1",
        "session": {
            "instructions": "Speak like a pirate.",
            "output_modalities": ["text"],
            "max_output_tokens": 32,
            "unknown_field": {"ignored": true},
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad", "threshold": 0.6,
                                       "silence_duration_ms": 700, "create_response": false},
                    "transcription": {"model": "whisper-1"},
                },
                "output": {"format": {"type": "audio/pcma"}, "voice": "marin"},
            },
        },
    }));
    let sent = events(&actions);
    assert_eq!(types(&sent), ["session.updated"]);
    let session = &sent[0]["session"];
    assert_eq!(session["output_modalities"], json!(["text"]));
    assert_eq!(session["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert_eq!(session["audio"]["output"]["format"]["type"], "audio/pcma");
    assert_eq!(session["audio"]["output"]["voice"], "marin");
    assert_eq!(
        session["audio"]["input"]["transcription"]["model"],
        "whisper-1"
    );
    let detection = &session["audio"]["input"]["turn_detection"];
    assert_eq!(detection["type"], "server_vad");
    assert_eq!(detection["silence_duration_ms"], 700);
    assert_eq!(detection["create_response"], false);
    assert!(actions.contains(&Action::InputFormat(AudioFormat::new(
        AudioCodec::Pcmu,
        8000
    ))));
    let commands = commands(&actions);
    assert!(commands.contains(&&Command::SetSystemPrompt {
        prompt: "Speak like a pirate.".into()
    }));
    let Some(Command::Configure { settings }) = commands
        .iter()
        .find(|c| matches!(c, Command::Configure { .. }))
    else {
        panic!("no Configure in {commands:?}");
    };
    assert!(!settings.turn.create_response);
    assert_eq!(settings.turn.reply.modality, Modality::Text);
    assert_eq!(settings.turn.reply.max_tokens, Some(32));
    assert_eq!(settings.output, AudioFormat::new(AudioCodec::Pcma, 8000));
    let TurnDetection::Vad(vad) = settings.turn.detection else {
        panic!("server_vad is voice activity");
    };
    assert_eq!((vad.start_threshold, vad.min_silence_ms), (0.6, 700));
    assert!(vad.smart.is_none(), "server_vad: silence alone ends turns");
}

#[test]
fn null_turn_detection_is_manual_and_semantic_vad_eagerness_moves_smart_turn() {
    let mut harness = Harness::new();
    harness.actions();
    let update = |detection: Value| {
        json!({"type": "session.update",
               "session": {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}})
    };
    let actions = harness.client(update(Value::Null));
    let Some(Command::Configure { settings }) = commands(&actions).pop().cloned() else {
        panic!("no Configure");
    };
    assert_eq!(settings.turn.detection, TurnDetection::Manual);
    assert!(!settings.turn.create_response);
    let actions = harness.client(update(json!({"type": "semantic_vad", "eagerness": "low"})));
    let Some(Command::Configure { settings }) = commands(&actions).pop().cloned() else {
        panic!("no Configure");
    };
    let TurnDetection::Vad(vad) = settings.turn.detection else {
        panic!("semantic_vad is voice activity");
    };
    let smart = vad.smart.expect("Smart Turn decides");
    assert!(
        smart.threshold > 0.5 && smart.max_silence_ms > 1000,
        "{smart:?}"
    );
}

#[test]
fn bad_session_updates_get_errors_and_change_nothing() {
    let mut harness = Harness::new();
    harness.actions();
    let cases = [
        (
            json!({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
            "session.audio.input.format.rate",
        ),
        (json!({"instructions": 42}), "session.instructions"),
        (
            json!({"output_modalities": ["audio", "text"]}),
            "session.output_modalities",
        ),
        (json!({"max_output_tokens": 0}), "session.max_output_tokens"),
        (json!({"type": "transcription"}), "session.type"),
        (
            json!({"tools": [{"type": "function", "name": "f"}]}),
            "session.tools",
        ),
        (
            json!({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2.0}}}}),
            "session.audio.input.turn_detection.threshold",
        ),
        (
            json!({"audio": {"input": {"turn_detection": {"type": "magic"}}}}),
            "session.audio.input.turn_detection.type",
        ),
        (
            json!({"instructions": "x".repeat(65)}),
            "session.instructions",
        ),
    ];
    for (session, param) in cases {
        let actions =
            harness.client(json!({"type": "session.update", "event_id": "u", "session": session}));
        let (error, _) = rejected(&actions);
        assert_eq!(error["param"], param, "{error}");
        assert_eq!(error["event_id"], "u");
        assert_eq!(error["type"], "invalid_request_error");
    }
    // Nothing changed: an update that names nothing shows the defaults.
    let actions = harness.client(json!({"type": "session.update", "session": {}}));
    let session = &events(&actions)[0]["session"];
    assert_eq!(session["instructions"], "Be brief.");
    assert_eq!(session["audio"]["input"]["format"]["rate"], 24000);
}

#[test]
fn appends_become_audio_in_20_ms_pieces_and_bad_audio_is_refused() {
    let mut harness = Harness::new();
    harness.actions();
    // 50 ms of 24 kHz PCM16: 2400 bytes, pieces of 960.
    let actions =
        harness.client(json!({"type": "input_audio_buffer.append", "audio": b64(&[0u8; 2400])}));
    let pieces: Vec<usize> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Audio(bytes) => Some(bytes.len()),
            _ => None,
        })
        .collect();
    assert_eq!(pieces, [960, 960, 480]);
    assert!(actions.contains(&Action::Activity));

    let (error, fault) =
        rejected(&harness.client(json!({"type": "input_audio_buffer.append", "audio": "***"})));
    assert_eq!(
        (error["code"].as_str(), fault),
        (Some("invalid_audio"), Fault::BadBase64)
    );
    let (error, fault) = rejected(
        &harness.client(json!({"type": "input_audio_buffer.append", "audio": b64(&[1, 2, 3])})),
    );
    assert_eq!(
        (error["code"].as_str(), fault),
        (Some("invalid_audio"), Fault::BadAudio)
    );
    // Two seconds, over the 1000 ms limit of these defaults.
    let (error, fault) = rejected(
        &harness
            .client(json!({"type": "input_audio_buffer.append", "audio": b64(&vec![0u8; 96_000])})),
    );
    assert_eq!(
        (error["code"].as_str(), fault),
        (Some("audio_too_large"), Fault::AudioTooLarge)
    );
    let (error, _) = rejected(&harness.client(json!({"type": "input_audio_buffer.append"})));
    assert_eq!(error["code"], "missing_required_parameter");
    assert_eq!(error["param"], "audio");
    // Once audio was sent, the input format is fixed.
    let update = json!({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcma"}}}}});
    let (error, _) = rejected(&harness.client(update));
    assert_eq!(error["param"], "session.audio.input.format");
}

#[test]
fn commit_needs_100_ms_and_clear_forgets_the_buffer() {
    let mut harness = Harness::new();
    harness.actions();
    let (error, _) =
        rejected(&harness.client(json!({"type": "input_audio_buffer.commit", "event_id": "c1"})));
    assert_eq!(error["code"], "input_audio_buffer_commit_empty");
    assert_eq!(error["event_id"], "c1");
    harness.client(json!({"type": "input_audio_buffer.append", "audio": b64(&[0u8; 4800])}));
    let actions = harness.client(json!({"type": "input_audio_buffer.commit"}));
    assert_eq!(commands(&actions), [&Command::CommitInput]);
    let actions = harness.client(json!({"type": "input_audio_buffer.clear"}));
    assert_eq!(commands(&actions), [&Command::ClearInput]);
    assert_eq!(
        types(&harness.pipeline(PipelineEvent::InputCleared)),
        ["input_audio_buffer.cleared"]
    );
    let (error, _) = rejected(&harness.client(json!({"type": "input_audio_buffer.commit"})));
    assert_eq!(error["code"], "input_audio_buffer_commit_empty");
    let sent = harness.pipeline(PipelineEvent::NothingToCommit);
    assert_eq!(sent[0]["error"]["code"], "input_audio_buffer_commit_empty");
}

#[test]
fn a_spoken_turn_becomes_a_committed_transcribed_item() {
    let mut harness = Harness::new();
    harness.actions();
    harness.client(json!({"type": "session.update",
        "session": {"audio": {"input": {"transcription": {"model": "whisper-1"}}}}}));
    let item = "item_1".to_string();
    let sent = harness.pipeline(PipelineEvent::SpeechStarted {
        audio_ms: 1000,
        item_id: item.clone(),
    });
    assert_eq!(sent[0]["type"], "input_audio_buffer.speech_started");
    assert_eq!(
        (
            sent[0]["audio_start_ms"].as_u64(),
            sent[0]["item_id"].as_str()
        ),
        (Some(1000), Some("item_1"))
    );
    let sent = harness.pipeline(PipelineEvent::SpeechStopped {
        audio_ms: 2500,
        item_id: item.clone(),
    });
    assert_eq!(sent[0]["audio_end_ms"], 2500);
    let sent = harness.pipeline(PipelineEvent::InputCommitted {
        item_id: item.clone(),
        audio_start_ms: 700,
        audio_end_ms: 2800,
    });
    assert_eq!(
        types(&sent),
        ["input_audio_buffer.committed", "conversation.item.added"]
    );
    assert_eq!(sent[1]["item"]["role"], "user");
    assert_eq!(sent[1]["item"]["content"][0]["type"], "input_audio");
    let sent = harness.pipeline(PipelineEvent::Transcript {
        item_id: item.clone(),
        text: "hello there".into(),
        audio_ms: 2800,
        stt_ms: 90,
    });
    assert_eq!(
        types(&sent),
        [
            "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.done"
        ]
    );
    assert_eq!(sent[1]["transcript"], "hello there");
    assert_eq!(sent[2]["item"]["content"][0]["transcript"], "hello there");
    let sent = harness.pipeline(PipelineEvent::TranscriptFailed {
        item_id: "item_2".into(),
        message: "skipped".into(),
    });
    assert_eq!(
        types(&sent),
        [
            "conversation.item.input_audio_transcription.failed",
            "conversation.item.done"
        ]
    );
}

/// A user message created with its audio is heard by the pipeline: the audio goes out
/// decoded, in the session's input format, and the item is added, transcribed and done
/// as a committed turn is.
#[test]
fn a_spoken_item_is_decoded_heard_and_transcribed() {
    let mut harness = Harness::new();
    harness.actions();
    harness.client(json!({"type": "session.update",
        "session": {"audio": {"input": {"transcription": {"model": "whisper-1"}}}}}));
    harness.actions();
    // 100 ms of 24 kHz PCM16.
    let pcm: Vec<u8> = (0..4800u32).map(|i| (i % 251) as u8).collect();
    let actions = harness.client(json!({"type": "conversation.item.create", "event_id": "s1",
        "previous_item_id": "root",
        "item": {"id": "spoken_1", "type": "message", "role": "user",
                 "content": [{"type": "input_audio", "audio": b64(&pcm)}]}}));
    let [Command::AddSpokenItem {
        item_id,
        audio,
        format,
        previous,
        reply_to,
    }] = commands(&actions)[..]
    else {
        panic!("no AddSpokenItem in {actions:?}");
    };
    assert_eq!(item_id, "spoken_1");
    assert_eq!(audio[..], pcm[..], "the audio as sent, decoded");
    assert_eq!(*format, AudioFormat::new(AudioCodec::Pcm16, 24_000));
    assert_eq!(
        (previous.as_deref(), reply_to.as_deref()),
        (Some("root"), Some("s1"))
    );
    assert!(
        events(&actions).is_empty(),
        "nothing goes out before it is accepted"
    );
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Audio(_))),
        "item audio is not input-buffer audio"
    );

    let sent = harness.pipeline(PipelineEvent::SpokenItemAdded {
        item_id: "spoken_1".into(),
        previous: Some("root".into()),
        audio_ms: 100,
    });
    assert_eq!(types(&sent), ["conversation.item.added"]);
    assert_eq!(sent[0]["previous_item_id"], Value::Null);
    let content = &sent[0]["item"]["content"][0];
    assert_eq!(
        (&content["type"], &content["transcript"]),
        (&json!("input_audio"), &Value::Null)
    );
    let sent = harness.pipeline(PipelineEvent::Transcript {
        item_id: "spoken_1".into(),
        text: "What is the capital of France?".into(),
        audio_ms: 100,
        stt_ms: 80,
    });
    assert_eq!(
        types(&sent),
        [
            "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.done"
        ]
    );
    assert_eq!(sent[1]["item_id"], "spoken_1");
    assert_eq!(sent[1]["transcript"], "What is the capital of France?");
    assert_eq!(
        sent[2]["item"]["content"][0]["transcript"],
        "What is the capital of France?"
    );

    // A second one that cannot be heard: `.failed`, then done without words.
    harness.client(json!({"type": "conversation.item.create",
        "item": {"type": "message", "role": "user",
                 "content": [{"type": "input_audio", "audio": b64(&pcm)}]}}));
    let sent = harness.pipeline(PipelineEvent::SpokenItemAdded {
        item_id: "spoken_2".into(),
        previous: None,
        audio_ms: 100,
    });
    assert_eq!(
        sent[0]["previous_item_id"], "spoken_1",
        "after the last item"
    );
    let sent = harness.pipeline(PipelineEvent::TranscriptFailed {
        item_id: "spoken_2".into(),
        message: "speech recognition is behind".into(),
    });
    assert_eq!(
        types(&sent),
        [
            "conversation.item.input_audio_transcription.failed",
            "conversation.item.done"
        ]
    );
    assert_eq!(sent[1]["previous_item_id"], "spoken_1");
}

/// In a G.711 session the item's audio is μ-law bytes, one per sample.
#[test]
fn a_spoken_item_is_heard_in_the_input_format() {
    let mut harness = Harness::new();
    harness.actions();
    harness.client(json!({"type": "session.update",
        "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}));
    let actions = harness.client(json!({"type": "conversation.item.create",
        "item": {"type": "message", "role": "user",
                 "content": [{"type": "input_audio", "audio": b64(&[0xFF; 801])}]}}));
    let [Command::AddSpokenItem { audio, format, .. }] = commands(&actions)[..] else {
        panic!("no AddSpokenItem in {actions:?}");
    };
    assert_eq!((audio.len(), format.codec), (801, AudioCodec::Pcmu));
}

#[test]
fn without_transcription_or_turn_detection_those_events_stay_away() {
    let mut harness = Harness::new();
    harness.actions();
    let sent = harness.pipeline(PipelineEvent::Transcript {
        item_id: "item_1".into(),
        text: "hello".into(),
        audio_ms: 10,
        stt_ms: 1,
    });
    assert_eq!(types(&sent), ["conversation.item.done"]);
    assert_eq!(sent[0]["item"]["content"][0]["transcript"], Value::Null);
    harness.client(json!({"type": "session.update",
        "session": {"audio": {"input": {"turn_detection": null}}}}));
    let sent = harness.pipeline(PipelineEvent::SpeechStarted {
        audio_ms: 1,
        item_id: "i".into(),
    });
    assert!(sent.is_empty(), "manual turns have no speech events");
}

fn start_reply(harness: &mut Harness, modality: Modality) -> (Uuid, Vec<Value>) {
    let id = Uuid::new_v4();
    let options = ReplyOptions {
        modality,
        ..ReplyOptions::default()
    };
    let sent = harness.pipeline(PipelineEvent::ReplyStarted {
        response_id: id,
        item_id: "item_reply".into(),
        options,
    });
    (id, sent)
}

fn finish(harness: &mut Harness, id: Uuid, status: ReplyStatus) -> Vec<Value> {
    let usage = Usage {
        input_tokens: 30,
        cached_tokens: 10,
        output_tokens: 12,
    };
    harness.pipeline(PipelineEvent::ReplyFinished {
        response_id: id,
        status,
        usage,
    })
}

#[test]
fn a_spoken_reply_is_announced_streamed_and_closed() {
    let mut harness = Harness::new();
    harness.actions();
    let (id, sent) = start_reply(&mut harness, Modality::Audio);
    assert_eq!(
        types(&sent),
        [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(sent[0]["response"]["status"], "in_progress");
    assert_eq!(sent[3]["part"]["type"], "audio");
    // Model text is not the transcript: the spoken words are.
    assert!(harness
        .pipeline(PipelineEvent::ReplyDelta {
            response_id: id,
            text: "Hi".into()
        })
        .is_empty());
    harness.pipeline(PipelineEvent::AudioStarted {
        response_id: id,
        latency_ms: None,
    });
    let sent = harness.pipeline(PipelineEvent::SpokenText {
        response_id: id,
        text: "Hello there.".into(),
    });
    assert_eq!(sent[0]["type"], "response.output_audio_transcript.delta");
    assert_eq!(sent[0]["delta"], "Hello there.");
    let frame = vec![7u8; 960];
    for _ in 0..50 {
        harness
            .wire
            .pipeline_audio(Bytes::from(frame.clone()), &mut harness.out);
    }
    let deltas = events(&harness.actions());
    assert_eq!(deltas.len(), 50);
    assert_eq!(deltas[0]["type"], "response.output_audio.delta");
    assert_eq!(deltas[0]["delta"], b64(&frame));
    let sent = harness.pipeline(PipelineEvent::SpokenText {
        response_id: id,
        text: "Bye.".into(),
    });
    assert_eq!(sent[0]["delta"], " Bye.");
    for _ in 0..25 {
        harness
            .wire
            .pipeline_audio(Bytes::from(frame.clone()), &mut harness.out);
    }
    harness.actions();
    harness.pipeline(PipelineEvent::AudioDone {
        response_id: id,
        cancelled: false,
        audible: true,
    });
    let sent = finish(&mut harness, id, ReplyStatus::Completed);
    assert_eq!(
        types(&sent),
        [
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done"
        ]
    );
    assert_eq!(sent[1]["transcript"], "Hello there. Bye.");
    let response = &sent[5]["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(response["usage"]["total_tokens"], 42);
    assert_eq!(
        response["usage"]["input_token_details"]["cached_tokens"],
        10
    );
    assert_eq!(
        response["output"][0]["content"][0]["transcript"],
        "Hello there. Bye."
    );

    // The item can be truncated where the listener stopped: after "Hello there."
    // (the first 50 frames, 1000 ms).
    let actions = harness.client(
        json!({"type": "conversation.item.truncate", "event_id": "t",
        "item_id": "item_reply", "content_index": 0, "audio_end_ms": 1000}),
    );
    assert_eq!(
        commands(&actions),
        [&Command::TruncateItem {
            item_id: "item_reply".into(),
            text: "Hello there.".into(),
            reply_to: Some("t".into()),
        }]
    );
    let sent = harness.pipeline(PipelineEvent::ItemTruncated {
        item_id: "item_reply".into(),
        reply_to: Some("t".into()),
    });
    assert_eq!(sent[0]["type"], "conversation.item.truncated");
    assert_eq!(sent[0]["audio_end_ms"], 1000);
    let past = json!({"type": "conversation.item.truncate", "item_id": "item_reply",
        "content_index": 0, "audio_end_ms": 5000});
    assert_eq!(rejected(&harness.client(past)).0["param"], "audio_end_ms");
}

#[test]
fn a_text_reply_streams_the_models_words() {
    let mut harness = Harness::new();
    harness.actions();
    let (id, sent) = start_reply(&mut harness, Modality::Text);
    assert_eq!(sent[3]["part"]["type"], "text");
    let sent = harness.pipeline(PipelineEvent::ReplyDelta {
        response_id: id,
        text: "Paris".into(),
    });
    assert_eq!(sent[0]["type"], "response.output_text.delta");
    let sent = finish(&mut harness, id, ReplyStatus::Incomplete);
    assert_eq!(sent[0]["type"], "response.output_text.done");
    assert_eq!(sent[0]["text"], "Paris");
    let response = &sent.last().expect("response.done")["response"];
    assert_eq!(response["status"], "incomplete");
    assert_eq!(response["status_details"]["reason"], "max_output_tokens");
    assert_eq!(response["output"][0]["status"], "incomplete");
    // A text reply has no audio to truncate.
    let truncate = json!({"type": "conversation.item.truncate", "item_id": "item_reply",
        "content_index": 0, "audio_end_ms": 0});
    assert_eq!(
        rejected(&harness.client(truncate)).0["code"],
        "invalid_item"
    );
}

#[test]
fn response_create_and_cancel_follow_the_response_state() {
    let mut harness = Harness::new();
    harness.actions();
    let (error, _) = rejected(&harness.client(json!({"type": "response.cancel"})));
    assert_eq!(error["code"], "response_cancel_not_active");
    let actions = harness.client(json!({"type": "response.create", "response": {
        "conversation": "none", "instructions": "Say hi.", "output_modalities": ["text"],
        "max_output_tokens": "inf", "metadata": {"topic": "greeting"}}}));
    let [Command::CreateReply { options }] = commands(&actions)[..] else {
        panic!("no CreateReply in {actions:?}");
    };
    assert!(options.out_of_band);
    assert_eq!(options.instructions.as_deref(), Some("Say hi."));
    assert_eq!(
        (options.modality, options.max_tokens),
        (Modality::Text, Some(64))
    );
    let (error, _) = rejected(&harness.client(json!({"type": "response.create"})));
    assert_eq!(error["code"], "conversation_already_has_active_response");
    let (id, sent) = start_reply(&mut harness, Modality::Audio);
    assert_eq!(sent[0]["response"]["metadata"]["topic"], "greeting");
    let actions = harness.client(json!({"type": "response.cancel"}));
    assert_eq!(commands(&actions), [&Command::CancelReply]);
    // Once cancelled, nothing more of the reply goes out.
    harness.pipeline(PipelineEvent::AudioStarted {
        response_id: id,
        latency_ms: None,
    });
    harness
        .wire
        .pipeline_audio(Bytes::from_static(&[0; 960]), &mut harness.out);
    assert!(
        harness.actions().is_empty(),
        "no audio after response.cancel"
    );
    let sent = finish(
        &mut harness,
        id,
        ReplyStatus::Cancelled(CancelReason::Client),
    );
    let response = &sent.last().expect("response.done")["response"];
    assert_eq!(response["status"], "cancelled");
    assert_eq!(response["status_details"]["reason"], "client_cancelled");
    for bad in [
        json!({"type": "response.create", "response": {"input": [{"type": "message"}]}}),
        json!({"type": "response.create", "response": {"tools": [{"type": "function"}]}}),
        json!({"type": "response.create", "response": {"conversation": "other"}}),
        json!({"type": "response.create", "response": {"output_modalities": ["video"]}}),
        json!({"type": "response.create", "response": {"max_output_tokens": 9000}}),
    ] {
        let (error, _) = rejected(&harness.client(bad.clone()));
        assert!(
            error["param"]
                .as_str()
                .is_some_and(|p| p.starts_with("response.")),
            "{bad}: {error}"
        );
    }
}

#[test]
fn items_are_created_retrieved_and_deleted_through_the_conversation() {
    let mut harness = Harness::new();
    harness.actions();
    let actions = harness.client(json!({"type": "conversation.item.create", "event_id": "i1",
        "previous_item_id": "root",
        "item": {"id": "msg_1", "type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "What is the capital of France?"}]}}));
    let [Command::AddItem {
        item,
        previous,
        reply_to,
    }] = commands(&actions)[..]
    else {
        panic!("no AddItem in {actions:?}");
    };
    assert_eq!(
        (item.id.as_str(), item.role, item.audio),
        ("msg_1", ItemRole::User, false)
    );
    assert_eq!(
        (previous.as_deref(), reply_to.as_deref()),
        (Some("root"), Some("i1"))
    );
    let spoken = json!({"type": "conversation.item.create",
        "item": {"type": "message", "role": "assistant",
                 "content": [{"type": "output_audio", "transcript": "It is Paris."}]}});
    let actions = harness.client(spoken);
    let [Command::AddItem { item, .. }] = commands(&actions)[..] else {
        panic!("no AddItem");
    };
    assert_eq!(
        (item.role, item.audio, item.text.as_str()),
        (ItemRole::Assistant, true, "It is Paris.")
    );
    let added = Item {
        id: "msg_1".into(),
        role: ItemRole::User,
        text: "What is the capital of France?".into(),
        audio: false,
    };
    let sent = harness.pipeline(PipelineEvent::ItemAdded {
        item: added.clone(),
        previous: None,
        reply_to: Some("i1".into()),
    });
    assert_eq!(
        types(&sent),
        ["conversation.item.added", "conversation.item.done"]
    );
    assert_eq!(sent[0]["item"]["content"][0]["type"], "input_text");
    let actions = harness
        .client(json!({"type": "conversation.item.retrieve", "event_id": "r", "item_id": "msg_1"}));
    assert_eq!(
        commands(&actions),
        [&Command::RetrieveItem {
            item_id: "msg_1".into(),
            reply_to: Some("r".into())
        }]
    );
    let sent = harness.pipeline(PipelineEvent::ItemRetrieved {
        item: added,
        reply_to: Some("r".into()),
    });
    assert_eq!(sent[0]["type"], "conversation.item.retrieved");
    assert_eq!(
        sent[0]["item"]["content"][0]["text"],
        "What is the capital of France?"
    );
    let actions = harness.client(json!({"type": "conversation.item.delete", "item_id": "msg_1"}));
    assert_eq!(
        commands(&actions),
        [&Command::DeleteItem {
            item_id: "msg_1".into(),
            reply_to: None
        }]
    );
    let sent = harness.pipeline(PipelineEvent::ItemDeleted {
        item_id: "msg_1".into(),
        reply_to: None,
    });
    assert_eq!(sent[0]["type"], "conversation.item.deleted");
    let sent = harness.pipeline(PipelineEvent::Error {
        code: ErrorCode::ItemNotFound,
        message: "no item".into(),
        reply_to: Some("r2".into()),
    });
    assert_eq!(sent[0]["error"]["code"], "item_not_found");
    assert_eq!(sent[0]["error"]["event_id"], "r2");
    let unknown = json!({"type": "conversation.item.truncate", "item_id": "nope",
        "content_index": 0, "audio_end_ms": 10});
    assert_eq!(
        rejected(&harness.client(unknown)).0["code"],
        "item_not_found"
    );
}

#[test]
fn bad_items_are_refused_with_the_field_named() {
    let mut harness = Harness::new();
    harness.actions();
    let create = |item: Value| json!({"type": "conversation.item.create", "item": item});
    let cases = [
        (json!({"type": "function_call", "name": "f"}), "item.type"),
        (
            json!({"type": "message", "role": "robot", "content": []}),
            "item.role",
        ),
        (
            json!({"type": "message", "content": [{"type": "input_text", "text": "x"}]}),
            "item.role",
        ),
        (
            json!({"type": "message", "role": "user", "content": []}),
            "item.content",
        ),
        (
            json!({"type": "message", "role": "user",
                "content": [{"type": "output_text", "text": "x"}]}),
            "item.content[0].type",
        ),
        (
            json!({"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "x"},
                            {"type": "input_audio", "audio": b64(&[0; 4])}]}),
            "item.content[1].audio",
        ),
        (
            json!({"type": "message", "role": "assistant",
                "content": [{"type": "output_audio", "audio": b64(&[0; 4])}]}),
            "item.content[0].audio",
        ),
        (
            json!({"type": "message", "role": "user",
                "content": [{"type": "input_audio", "audio": b64(&[0; 3])}]}),
            "item.content[0].audio",
        ),
        (
            json!({"type": "message", "role": "user",
                "content": [{"type": "input_audio", "audio": "@@@"}]}),
            "item.content[0].audio",
        ),
        (
            // 1.2 s of 24 kHz PCM16, over the 1,000 ms these defaults allow.
            json!({"type": "message", "role": "user",
                "content": [{"type": "input_audio", "audio": b64(&vec![0; 57_600])}]}),
            "item.content[0].audio",
        ),
        (
            json!({"type": "message", "role": "user",
                "content": [{"type": "input_audio", "audio": ""}]}),
            "item.content[0].audio",
        ),
        (
            json!({"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "x".repeat(300)}]}),
            "item.content",
        ),
        (
            json!({"type": "message", "role": "user", "id": "has space",
                "content": [{"type": "input_text", "text": "x"}]}),
            "item.id",
        ),
        (
            json!({"type": "message", "role": "user", "content": "text"}),
            "item.content",
        ),
    ];
    for (item, param) in cases {
        let (error, _) = rejected(&harness.client(create(item.clone())));
        assert_eq!(error["param"], param, "{item}: {error}");
    }
}

#[test]
fn malformed_and_unknown_events_are_errors_that_name_their_event() {
    let mut harness = Harness::new();
    harness.actions();
    harness
        .wire
        .client_text("{\"type\": \"response.create\"", &mut harness.out);
    let (error, fault) = rejected(&harness.actions());
    assert_eq!(
        (error["code"].as_str(), fault),
        (Some("invalid_json"), Fault::MalformedJson)
    );
    harness.wire.client_text("[1, 2]", &mut harness.out);
    assert_eq!(rejected(&harness.actions()).0["code"], "invalid_json");
    let (error, _) = rejected(&harness.client(json!({"event_id": "x"})));
    assert_eq!(
        (error["code"].as_str(), error["event_id"].as_str()),
        (Some("missing_required_parameter"), Some("x"))
    );
    let (error, fault) =
        rejected(&harness.client(json!({"type": "response.teleport", "event_id": "y"})));
    assert_eq!(fault, Fault::UnknownEvent);
    assert_eq!(
        (error["param"].as_str(), error["event_id"].as_str()),
        (Some("type"), Some("y"))
    );
    let (error, _) = rejected(&harness.client(json!({"type": "conversation.item.truncate",
        "item_id": "a", "content_index": "zero", "audio_end_ms": 1})));
    assert_eq!(
        (error["code"].as_str(), error["param"].as_str()),
        (Some("invalid_type"), Some("content_index"))
    );
    let (error, _) = rejected(&harness.client(json!({"type": "output_audio_buffer.clear"})));
    assert_eq!(error["code"], "unsupported");
    harness
        .wire
        .client_binary(Bytes::from_static(&[0, 0]), &mut harness.out);
    let (error, fault) = rejected(&harness.actions());
    assert_eq!(
        (error["code"].as_str(), fault),
        (Some("unexpected_frame"), Fault::BinaryInsteadOfText)
    );
}

#[test]
fn server_vad_idle_timeout_triggers_a_reply() {
    let mut harness = Harness::new();
    harness.actions();
    harness.client(
        json!({"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}}}}),
    );
    let (id, _) = start_reply(&mut harness, Modality::Text);
    harness.wire.pipeline_event(
        PipelineEvent::ReplyFinished {
            response_id: id,
            status: ReplyStatus::Completed,
            usage: Usage::default(),
        },
        &mut harness.out,
    );
    let actions = harness.actions();
    let Some(Action::Timer {
        after_ms: 5000,
        key,
    }) = actions
        .iter()
        .find(|a| matches!(a, Action::Timer { .. }))
        .cloned()
    else {
        panic!("no idle timer in {actions:?}");
    };
    // A stale timer does nothing.
    harness.wire.timer(key + 1, &mut harness.out);
    assert!(harness.actions().is_empty());
    harness.wire.timer(key, &mut harness.out);
    let actions = harness.actions();
    assert_eq!(
        types(&events(&actions)),
        ["input_audio_buffer.timeout_triggered"]
    );
    assert!(matches!(
        commands(&actions)[..],
        [Command::CreateReply { .. }]
    ));
}
