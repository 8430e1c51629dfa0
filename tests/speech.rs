//! Speech in, end to end: real fixture audio streamed over WebSockets into the real
//! server with Silero VAD and Moonshine. Transcripts are checked by word error rate.

mod common;
#[path = "model_support/mod.rs"]
mod model_support;

use common::*;
use futures_util::SinkExt;
use model_support::{fixture_text, wer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Collect events until `count` transcripts have arrived.
async fn until_transcripts(ws: &mut Ws, count: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut transcripts = 0;
    while transcripts < count {
        match next_incoming(ws).await {
            Incoming::Event(event) => {
                transcripts += usize::from(event["type"] == "transcript.final");
                events.push(event);
            }
            Incoming::Audio(_) => {}
            Incoming::Closed(code) => panic!("closed ({code:?}) before {count} transcripts"),
        }
    }
    events
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn assert_close(reference: &str, transcript: &Value) {
    let text = transcript["text"].as_str().expect("text");
    let rate = wer(reference, text);
    assert!(rate <= 0.2, "WER {rate:.2}: {text:?} for {reference:?}");
}

#[tokio::test]
async fn two_utterances_give_two_segments_and_two_transcripts() {
    let server = TestServer::start(test_config());
    let (mut ws, _) = start_session(&server.url("")).await;
    let (audio, rate) = fixture("two_utterances_16k.wav");
    stream_pcm(&mut ws, &audio, rate, false).await;

    let events = until_transcripts(&mut ws, 2).await;
    let starts = of_type(&events, "vad.speech_started");
    let stops = of_type(&events, "vad.speech_stopped");
    assert_eq!((starts.len(), stops.len()), (2, 2), "{events:#?}");
    // The first utterance starts after the 1 s of leading silence.
    let first_start = starts[0]["audio_ms"].as_u64().unwrap();
    assert!((800..1400).contains(&first_start), "{first_start}");
    assert!(stops[0]["audio_ms"].as_u64() < starts[1]["audio_ms"].as_u64());

    let transcripts = of_type(&events, "transcript.final");
    assert_close(&fixture_text("two_utterances_16k", "first"), transcripts[0]);
    assert_close(
        &fixture_text("two_utterances_16k", "second"),
        transcripts[1],
    );
    assert!(transcripts[0]["stt_ms"].as_u64().is_some());
    assert_eq!(
        transcripts[1]["audio_ms"],
        stops[1]["audio_ms"].as_u64().unwrap() + 300
    );
}

#[tokio::test]
async fn noise_alone_is_not_speech() {
    let server = TestServer::start(test_config());
    let (mut ws, _) = start_session(&server.url("")).await;
    let (noise, rate) = fixture("noise_16k.wav");
    stream_pcm(&mut ws, &noise, rate, false).await;
    // Then real speech: the first speech event must belong to it, not to the noise.
    let (speech, _) = fixture("fox_16k.wav");
    stream_pcm(&mut ws, &speech, rate, false).await;
    let first = next_incoming(&mut ws).await;
    let Incoming::Event(event) = first else {
        panic!("expected an event");
    };
    assert_eq!(event["type"], "vad.speech_started");
    let noise_ms = noise.len() as u64 * 1000 / u64::from(rate);
    assert!(
        event["audio_ms"].as_u64().unwrap() >= noise_ms + 800,
        "{event}"
    );
}

#[tokio::test]
async fn eight_khz_speech_is_resampled_and_transcribed() {
    let server = TestServer::start(test_config());
    let (mut ws, started) = start_session(&server.url("sample_rate=8000")).await;
    assert_eq!(started["sample_rate"], 8000);
    let (audio, rate) = fixture("weather_8k.wav");
    assert_eq!(rate, 8000);
    stream_pcm(&mut ws, &audio, rate, false).await;
    let events = until_transcripts(&mut ws, 1).await;
    assert_close(
        &fixture_text("weather_8k", "text"),
        of_type(&events, "transcript.final")[0],
    );
}

#[tokio::test]
async fn opus_speech_is_decoded_and_transcribed() {
    let server = TestServer::start(test_config());
    let (mut ws, _) = start_session(&server.url("codec=opus&sample_rate=16000")).await;
    let (speech, _) = fixture("fox_16k.wav");
    let mut encoder = hearken::audio::opus_codec::OpusEncoder::new(16_000).unwrap();
    let mut packets = encoder.push(&speech).unwrap();
    packets.extend(encoder.finish().unwrap());
    for packet in packets {
        ws.send(Message::binary(packet)).await.unwrap();
    }
    let events = until_transcripts(&mut ws, 1).await;
    assert_close(
        &fixture_text("fox_16k", "text"),
        of_type(&events, "transcript.final")[0],
    );
}

#[tokio::test]
async fn audio_end_flushes_the_open_segment() {
    let server = TestServer::start(test_config());
    let (mut ws, _) = start_session(&server.url("")).await;
    let (speech, rate) = fixture("fox_16k.wav");
    // Cut the trailing silence: without audio.end the segment would stay open.
    stream_pcm(
        &mut ws,
        &speech[..speech.len() - rate as usize],
        rate,
        false,
    )
    .await;
    send_json(&mut ws, json!({"type": "audio.end"})).await;
    let events = until_transcripts(&mut ws, 1).await;
    assert_eq!(of_type(&events, "vad.speech_stopped").len(), 1);
    assert_close(
        &fixture_text("fox_16k", "text"),
        of_type(&events, "transcript.final")[0],
    );
}

#[tokio::test]
async fn a_disconnect_mid_recognition_leaves_no_job_and_no_transcript() {
    let server = TestServer::start(test_config());
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("")).await;
    let id = conversation_id(&started);
    let (speech, rate) = fixture("long_utterance_16k.wav");
    // Most of the long utterance, then audio.end: a long segment goes to Moonshine.
    let cut = speech.len() - rate as usize;
    stream_pcm(&mut ws, &speech[..cut], rate, false).await;
    send_json(&mut ws, json!({"type": "audio.end"})).await;
    next_event_of(&mut ws, "vad.speech_stopped").await;
    drop(ws); // while the recogniser works on ~12 s of speech

    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(
        server.gauges(),
        before,
        "no queued or running job after the event"
    );
    assert_eq!(server.metrics.inflight_jobs.get(), 0);
    // The recognition was abandoned, not finished for nobody.
    assert_eq!(server.metrics.transcripts.get(), 0);
}

/// Three conversations' segments end together and share the recogniser's decoder
/// passes; one hangs up as its segment is handed over. Its segment leaves the batch,
/// the other two still get their transcripts, and everything is released.
#[tokio::test]
async fn a_conversation_leaving_mid_batch_changes_no_other_transcript() {
    let server = TestServer::start(test_config());
    let before = server.gauges();
    let mut events = server.events();
    let (speech, rate) = fixture("fox_16k.wav");
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (ws, started) = start_session(&server.url("")).await;
        sessions.push((ws, conversation_id(&started)));
    }
    // Spoken at once and in real time (faster, three sessions would outrun the VAD
    // and lose frames to backpressure), so the three segments end together.
    let speaking = sessions.iter_mut().map(|(ws, _)| async {
        stream_pcm(ws, &speech, rate, true).await;
        send_json(ws, json!({"type": "audio.end"})).await;
    });
    futures_util::future::join_all(speaking).await;
    let (mut leaving, leaving_id) = sessions.remove(0);
    next_event_of(&mut leaving, "vad.speech_stopped").await;
    drop(leaving);
    let (reason, _) = disconnect_of(&mut events, &leaving_id).await;
    assert_eq!(reason, "client_disconnect");

    for (ws, _) in sessions.iter_mut() {
        let got = until_transcripts(ws, 1).await;
        assert_close(
            &fixture_text("fox_16k", "text"),
            of_type(&got, "transcript.final")[0],
        );
        send_close(ws).await;
    }
    assert!(
        eventually(|| server.gauges() == before).await,
        "gauges {:?}, want {before:?}",
        server.gauges()
    );
}
