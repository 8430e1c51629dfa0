//! Speech out, end to end: a spoken question, a reply streamed by a real local
//! OpenAI-compatible server (or the embedded model), and Piper audio back over the
//! WebSocket in the session's codec. Synthesised audio is checked by transcribing it
//! with Moonshine.

mod common;
#[path = "model_support/mod.rs"]
mod model_support;

use common::fake_llm::{fake_llm, Upstream};
use common::*;
use hearken::audio::opus_codec::OpusDecoder;
use hearken::config::LlmBackendKind;
use serde_json::json;

const REPLY: &str = "The weather today will be sunny with a light breeze from the west.";

fn speaking_config(base_url: &str) -> hearken::Config {
    let mut config = test_config();
    config.llm.backend = LlmBackendKind::Openai;
    config.llm.base_url = base_url.to_string();
    config
}

/// Speak a fixture (PCM16 at 16 kHz), then collect the reply's audio frames until
/// `response.audio.done`.
async fn reply_audio(ws: &mut Ws) -> (Vec<Vec<u8>>, serde_json::Value) {
    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(ws, &speech, rate, false).await;
    collect_reply(ws).await
}

async fn collect_reply(ws: &mut Ws) -> (Vec<Vec<u8>>, serde_json::Value) {
    next_event_of(ws, "response.audio.started").await;
    let mut frames = Vec::new();
    loop {
        match next_incoming(ws).await {
            Incoming::Audio(frame) => frames.push(frame),
            Incoming::Event(event) if event["type"] == "response.audio.done" => {
                return (frames, event)
            }
            Incoming::Event(_) => {}
            Incoming::Closed(code) => panic!("closed ({code:?}) mid-reply"),
        }
    }
}

fn transcribe(samples_16k: &[i16]) -> String {
    let floats: Vec<f32> = samples_16k
        .iter()
        .map(|s| f32::from(*s) / 32768.0)
        .collect();
    model_support::hear(&floats)
}

#[tokio::test]
async fn a_reply_is_spoken_in_pcm16_and_understood() {
    let upstream = fake_llm(Upstream::Scripted(REPLY)).await;
    let server = TestServer::start(speaking_config(&upstream.base_url));
    let (mut ws, _) = start_session(&server.url("sample_rate=16000")).await;
    let (frames, done) = reply_audio(&mut ws).await;
    assert_eq!(done["cancelled"], false);
    assert!(
        frames.iter().all(|f| f.len() == 640),
        "20 ms PCM16 frames at 16 kHz"
    );
    let samples: Vec<i16> = frames
        .concat()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let heard = transcribe(&samples);
    let rate = model_support::wer(REPLY, &heard);
    assert!(rate <= 0.2, "WER {rate:.2}: heard {heard:?}");
}

#[tokio::test]
async fn opus_sessions_get_opus_packets_that_decode() {
    let upstream = fake_llm(Upstream::Scripted(REPLY)).await;
    let server = TestServer::start(speaking_config(&upstream.base_url));
    let (mut ws, _) = start_session(&server.url("codec=opus&sample_rate=48000")).await;
    // The question goes up as Opus too.
    let (speech, rate) = fixture("fox_16k.wav");
    let floats: Vec<f32> = speech.iter().map(|s| f32::from(*s) / 32768.0).collect();
    let upsampled =
        hearken::audio::resample::StreamResampler::convert_clip(rate, 48_000, &floats).unwrap();
    let mut encoder = hearken::audio::opus_codec::OpusEncoder::new(48_000).unwrap();
    let mut question = encoder
        .push(&hearken::audio::opus_codec::f32_frame_to_i16(&upsampled))
        .unwrap();
    question.extend(encoder.finish().unwrap());
    for packet in question {
        futures_util::SinkExt::send(
            &mut ws,
            tokio_tungstenite::tungstenite::Message::binary(packet),
        )
        .await
        .unwrap();
    }
    let (packets, _) = collect_reply(&mut ws).await;
    let mut decoder = OpusDecoder::new(48_000).unwrap();
    let mut pcm = Vec::new();
    for packet in &packets {
        assert_eq!(
            decoder.decode_into(packet, &mut pcm).unwrap(),
            960,
            "20 ms packets"
        );
    }
    let seconds = pcm.len() as f64 / 48_000.0;
    assert!((2.0..10.0).contains(&seconds), "{seconds} s of speech");
}

#[tokio::test]
async fn barge_in_silences_the_reply_at_once() {
    let upstream = fake_llm(Upstream::Endless).await;
    let server = TestServer::start(speaking_config(&upstream.base_url));
    let (mut ws, _) = start_session(&server.url("")).await;
    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(&mut ws, &speech, rate, false).await;
    next_event_of(&mut ws, "response.audio.started").await;
    assert!(eventually(|| server.metrics.tts_queue_depth.get() > 0).await);

    send_json(&mut ws, json!({"type": "response.cancel"})).await;
    let done = next_event_of(&mut ws, "response.audio.done").await;
    assert_eq!(done["cancelled"], true);
    // Nothing after the stop: the next thing on the wire is the pong.
    send_json(&mut ws, json!({"type": "ping"})).await;
    loop {
        match next_incoming(&mut ws).await {
            Incoming::Audio(_) => panic!("audio after response.audio.done"),
            Incoming::Event(event) if event["type"] == "pong" => break,
            Incoming::Event(_) => {}
            Incoming::Closed(code) => panic!("closed ({code:?})"),
        }
    }
    assert!(eventually(|| server.metrics.tts_queue_depth.get() == 0).await);
}

#[tokio::test]
async fn a_disconnect_mid_speech_leaves_no_job_and_no_extra_process() {
    let upstream = fake_llm(Upstream::Endless).await;
    let server = TestServer::start(speaking_config(&upstream.base_url));
    let before = server.gauges();
    let espeak_before = server.metrics.child_processes.get();
    assert!(espeak_before >= 1, "the phonemizer pool is up");
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("")).await;
    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(&mut ws, &speech, rate, false).await;
    next_event_of(&mut ws, "response.audio.started").await;
    drop(ws);

    let (reason, _) = disconnect_of(&mut events, &conversation_id(&started)).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(server.gauges(), before);
    assert_eq!(server.metrics.tts_queue_depth.get(), 0);
    assert_eq!(server.metrics.llm_inflight.get(), 0);
    assert_eq!(server.metrics.child_processes.get(), espeak_before);
}

#[tokio::test]
async fn voice_to_voice_with_every_embedded_default() {
    let mut config = test_config();
    config.llm.backend = LlmBackendKind::Embedded;
    config.llm.max_tokens = 32;
    let server = TestServer::start(config);
    let (mut ws, _) = start_session(&server.url("")).await;
    let (frames, done) = reply_audio(&mut ws).await;
    assert_eq!(done["cancelled"], false);
    assert!(frames.len() > 25, "at least half a second of spoken reply");
}
