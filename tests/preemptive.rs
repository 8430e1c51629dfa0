//! Preemptive replies: a reply starts on the draft transcript early in a pause and is
//! held until the turn is confirmed. These tests make the pause long (a silence-ended
//! turn with a long `vad.min_silence_ms`), wait until the speculative reply has
//! reached the (fake, local) upstream LLM, then resume speech or drop the connection,
//! and check that the discarded reply left no trace: no event, no audio, no history,
//! no leaked actor, job or gauge.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_llm::{fake_llm, FakeLlm, Upstream};
use common::*;
use futures_util::SinkExt;
use hearken::config::{LlmBackendKind, TurnMode};
use hearken::metrics::Preemptive;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A pause this long never ends the turn on its own here, so only speech resuming
/// (or `audio.end`) decides it.
const LONG_PAUSE_MS: u32 = 8_000;

fn config(base_url: &str) -> hearken::Config {
    let mut config = test_config();
    config.llm.backend = LlmBackendKind::Openai;
    config.llm.base_url = base_url.to_string();
    config.llm.model = "fake".into();
    config.vad.turn = TurnMode::Silence;
    config.vad.min_silence_ms = LONG_PAUSE_MS;
    config.vad.turn_max_silence_ms = LONG_PAUSE_MS;
    config
}

/// Stream silence in real time until the upstream has seen `requests` requests (the
/// speculative reply started), for at most most of the long pause.
async fn pause_until_upstream_asked(ws: &mut Ws, upstream: &FakeLlm, requests: usize) {
    let frame = pcm_bytes(&[0i16; 320]);
    for _ in 0..(LONG_PAUSE_MS as usize * 3 / 4) / 20 {
        if upstream.requests.lock().map(|r| r.len()).unwrap_or(0) >= requests {
            return;
        }
        ws.send(Message::binary(frame.clone()))
            .await
            .expect("send silence");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no speculative reply reached the upstream during the pause");
}

/// The fixture's speech without the silence around it (100 ms kept), so a turn made
/// of it twice holds only the pause the test makes: a recogniser given seconds of
/// silence inside a segment may hear nothing at all.
fn spoken(name: &str) -> (Vec<i16>, u32) {
    let (samples, rate) = fixture(name);
    let loud = |s: &i16| s.unsigned_abs() > 1000;
    let first = samples.iter().position(loud).unwrap_or(0);
    let last = samples.iter().rposition(loud).unwrap_or(samples.len());
    let margin = rate as usize / 10;
    let range = first.saturating_sub(margin)..(last + margin).min(samples.len());
    (samples[range].to_vec(), rate)
}

/// Every event until `response.done` of a reply that is not cancelled.
async fn events_until_answered(ws: &mut Ws) -> (Vec<Value>, usize) {
    let (mut events, mut audio_frames) = (Vec::new(), 0);
    loop {
        match next_incoming(ws).await {
            Incoming::Event(event) => {
                let done = event["type"] == "response.done" && event["cancelled"] == false;
                events.push(event);
                if done {
                    return (events, audio_frames);
                }
            }
            Incoming::Audio(_) => audio_frames += 1,
            Incoming::Closed(code) => panic!("closed ({code:?}) before the answer"),
        }
    }
}

#[tokio::test]
async fn a_preemptive_reply_discarded_because_speech_resumed_leaves_no_trace() {
    let mut upstream = fake_llm(Upstream::Endless).await;
    let mut cfg = config(&upstream.base_url);
    cfg.tts.enabled = false;
    let server = TestServer::start(cfg);
    let (mut ws, _) = start_session(&server.url("")).await;
    let (speech, rate) = spoken("fox_16k.wav");

    stream_pcm(&mut ws, &speech, rate, true).await;
    pause_until_upstream_asked(&mut ws, &upstream, 1).await;
    let latency = &server.metrics.latency;
    assert_eq!(latency.preemptive(Preemptive::Started), 1);
    let speculative = upstream
        .requests
        .lock()
        .map(|r| r[0].clone())
        .unwrap_or_default();
    let drafted = speculative["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        drafted.to_lowercase().contains("quick brown"),
        "drafted: {drafted:?}"
    );

    // Speech resumes: the speculative reply is dropped, and its request with it.
    *upstream.mode.lock().expect("mode") = Upstream::Scripted("Here you go.");
    stream_pcm(&mut ws, &speech, rate, true).await;
    tokio::time::timeout(WAIT, upstream.closed.recv())
        .await
        .expect("the speculative request was dropped in time");
    assert_eq!(latency.preemptive(Preemptive::Discarded), 1);
    send_json(&mut ws, json!({"type": "audio.end"})).await;

    let (events, audio_frames) = events_until_answered(&mut ws).await;
    assert_eq!(audio_frames, 0, "TTS is off: no audio at all");
    let transcripts: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "transcript.final")
        .collect();
    assert_eq!(transcripts.len(), 1, "one turn: {events:?}");
    let replies: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("response."))
        })
        .collect();
    let answer = &replies.last().expect("an answer")["response_id"];
    assert!(
        replies.iter().all(|e| &e["response_id"] == answer),
        "nothing of the discarded reply reached the client: {replies:?}"
    );
    let text: String = replies.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(text, "Here you go.");

    // The answer's prompt holds the whole turn, and no trace of the discarded reply.
    let last = upstream
        .requests
        .lock()
        .ok()
        .and_then(|r| r.last().cloned())
        .unwrap_or_default();
    let messages = last["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        messages.len(),
        2,
        "system + the one user turn: {messages:?}"
    );
    assert_eq!(messages[1]["content"], transcripts[0]["text"]);
    send_close(&mut ws).await;
}

#[tokio::test]
async fn a_disconnect_while_a_preemptive_reply_runs_leaves_every_gauge_at_its_start() {
    let mut upstream = fake_llm(Upstream::Endless).await;
    let server = TestServer::start(config(&upstream.base_url));
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("")).await;
    let id = conversation_id(&started);
    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(&mut ws, &speech, rate, true).await;
    pause_until_upstream_asked(&mut ws, &upstream, 1).await;

    drop(ws); // TCP drop mid-speculation
    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(
        server.gauges(),
        before,
        "every gauge back when the event is seen"
    );
    tokio::time::timeout(WAIT, upstream.closed.recv())
        .await
        .expect("the speculative request was dropped");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err(),
        "exactly one lifecycle event after the disconnect"
    );
    let latency = &server.metrics.latency;
    assert_eq!(latency.preemptive(Preemptive::Used), 0);
    let _ = Arc::clone(&server.metrics);
}
