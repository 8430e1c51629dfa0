//! Replies end to end: speech → transcript → LLM → `response.text.delta`/`response.done`,
//! against a real local HTTP server speaking the OpenAI streaming protocol (started by
//! the test), so request contents, cancellation and failures can be observed upstream.

mod common;

use std::time::Duration;

use common::fake_llm::{fake_llm, Upstream};
use common::*;
use hearken::config::LlmBackendKind;
use serde_json::json;

fn openai_config(base_url: &str) -> hearken::Config {
    let mut config = test_config();
    config.llm.backend = LlmBackendKind::Openai;
    config.llm.base_url = base_url.to_string();
    config.llm.model = "fake".into();
    config.llm.breaker_failures = 2;
    // Longer than streaming an utterance, so the breaker stays open between them.
    config.llm.breaker_cooldown_ms = 3000;
    config
}

async fn say(ws: &mut Ws, fixture_name: &str) {
    let (speech, rate) = fixture(fixture_name);
    stream_pcm(ws, &speech, rate, false).await;
}

#[tokio::test]
async fn replies_stream_and_history_survives_a_reconnect() {
    let upstream = fake_llm(Upstream::Quick).await;
    let server = TestServer::start(openai_config(&upstream.base_url));
    let (mut ws, started) = start_session(&server.url("")).await;
    let id = conversation_id(&started);
    send_json(
        &mut ws,
        json!({"type":"session.update","llm":{"system_prompt":"Talk like a pirate."}}),
    )
    .await;
    say(&mut ws, "fox_16k.wav").await;

    let transcript = next_event_of(&mut ws, "transcript.final").await;
    let first = next_event_of(&mut ws, "response.text.delta").await;
    assert_eq!(first["text"], "Hello");
    let done = next_event_of(&mut ws, "response.done").await;
    assert_eq!(done["cancelled"], false);
    assert_eq!(done["response_id"], first["response_id"]);
    send_close(&mut ws).await;
    close_code(&mut ws).await;

    // Reconnect: the conversation resumes and the model sees the earlier turns.
    let (mut again, resumed) = start_session(&server.url(&format!("conversation_id={id}"))).await;
    assert_eq!(resumed["resumed"], true);
    say(&mut again, "weather_8k.wav").await; // 8 kHz audio in a 16 kHz session: still speech
    next_event_of(&mut again, "response.done").await;

    let requests = upstream.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    let messages = requests[1]["messages"].as_array().unwrap();
    assert_eq!(
        messages[0],
        json!({"role":"system","content":"Talk like a pirate."})
    );
    assert_eq!(messages[1]["role"], "user");
    assert_eq!(messages[1]["content"], transcript["text"]);
    assert_eq!(
        messages[2],
        json!({"role":"assistant","content":"Hello there"})
    );
    assert_eq!(messages[3]["role"], "user");
    assert_eq!(requests[1]["stream"], true);
    assert_eq!(requests[1]["model"], "fake");
}

#[tokio::test]
async fn cancel_stops_the_reply_and_closes_the_upstream_connection() {
    let mut upstream = fake_llm(Upstream::Endless).await;
    let server = TestServer::start(openai_config(&upstream.base_url));
    let (mut ws, _) = start_session(&server.url("")).await;
    say(&mut ws, "fox_16k.wav").await;
    next_event_of(&mut ws, "response.text.delta").await;
    assert_eq!(server.metrics.llm_inflight.get(), 1);

    send_json(&mut ws, json!({"type":"response.cancel"})).await;
    let done = next_event_of(&mut ws, "response.done").await;
    assert_eq!(done["cancelled"], true);
    tokio::time::timeout(WAIT, upstream.closed.recv())
        .await
        .expect("upstream saw the hang-up");
    assert!(eventually(|| server.metrics.llm_inflight.get() == 0).await);
}

#[tokio::test]
async fn speaking_over_a_reply_cancels_it() {
    let mut upstream = fake_llm(Upstream::Endless).await;
    let server = TestServer::start(openai_config(&upstream.base_url));
    let (mut ws, _) = start_session(&server.url("")).await;
    say(&mut ws, "fox_16k.wav").await;
    next_event_of(&mut ws, "response.text.delta").await;
    say(&mut ws, "fox_16k.wav").await; // barge-in
    next_event_of(&mut ws, "vad.speech_started").await;
    let done = next_event_of(&mut ws, "response.done").await;
    assert_eq!(done["cancelled"], true);
    tokio::time::timeout(WAIT, upstream.closed.recv())
        .await
        .expect("upstream saw the hang-up");
}

#[tokio::test]
async fn a_disconnect_mid_reply_leaves_nothing_running() {
    let mut upstream = fake_llm(Upstream::Endless).await;
    let server = TestServer::start(openai_config(&upstream.base_url));
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("")).await;
    say(&mut ws, "fox_16k.wav").await;
    next_event_of(&mut ws, "response.text.delta").await;
    drop(ws);

    let (reason, _) = disconnect_of(&mut events, &conversation_id(&started)).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(
        server.metrics.llm_inflight.get(),
        0,
        "generation gone before the event"
    );
    assert_eq!(server.gauges(), before);
    tokio::time::timeout(WAIT, upstream.closed.recv())
        .await
        .expect("upstream saw the hang-up");
}

#[tokio::test]
async fn the_breaker_opens_on_failures_and_recovers() {
    let upstream = fake_llm(Upstream::Broken).await;
    let server = TestServer::start(openai_config(&upstream.base_url));
    let (mut ws, _) = start_session(&server.url("")).await;
    // Failures until the breaker opens (each utterance may hold more than one segment).
    let mut refused = None;
    for _ in 0..4 {
        say(&mut ws, "fox_16k.wav").await;
        let error = next_event_of(&mut ws, "error").await;
        assert_eq!(error["code"], "llm_unavailable");
        if error["message"].as_str().unwrap().contains("circuit open") {
            refused = Some(error);
            break;
        }
    }
    assert!(refused.is_some(), "the breaker never opened");
    // The refused request never reached upstream: every request there failed before.
    let reached = upstream.requests.lock().unwrap().len();
    assert!(reached >= 2);

    // Healthy again, and past the cool-down: the probe succeeds and closes the breaker.
    *upstream.mode.lock().unwrap() = Upstream::Quick;
    assert_eq!(
        upstream.requests.lock().unwrap().len(),
        reached,
        "refused while open"
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    say(&mut ws, "fox_16k.wav").await;
    let done = next_event_of(&mut ws, "response.done").await;
    assert_eq!(done["cancelled"], false);
}

#[tokio::test]
async fn the_embedded_model_answers_a_spoken_question() {
    let mut config = test_config();
    config.llm.backend = LlmBackendKind::Embedded;
    config.llm.max_tokens = 24;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("")).await;
    say(&mut ws, "fox_16k.wav").await;
    next_event_of(&mut ws, "transcript.final").await;
    let mut reply = String::new();
    let done = loop {
        let event = next_event_of_any(&mut ws, &["response.text.delta", "response.done"]).await;
        if event["type"] == "response.done" {
            break event;
        }
        reply.push_str(event["text"].as_str().unwrap());
    };
    assert_eq!(done["cancelled"], false);
    assert!(!reply.trim().is_empty(), "an actual reply");
    send_close(&mut ws).await;
    let (reason, _) = disconnect_of(&mut events, &conversation_id(&started)).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(server.gauges(), before);
}

#[tokio::test]
async fn expired_histories_are_swept_and_do_not_resume() {
    let upstream = fake_llm(Upstream::Quick).await;
    let mut config = openai_config(&upstream.base_url);
    config.llm.history_ttl_ms = 400;
    let server = TestServer::start(config);
    let (mut ws, started) = start_session(&server.url("")).await;
    let id = conversation_id(&started);
    say(&mut ws, "fox_16k.wav").await;
    next_event_of(&mut ws, "response.done").await;
    send_close(&mut ws).await;
    close_code(&mut ws).await;
    assert!(eventually(|| server.metrics.stored_conversations.get() == 1).await);

    // The periodic sweep removes it once the TTL has passed...
    assert!(eventually(|| server.metrics.stored_conversations.get() == 0).await);
    // ...and a reconnect then starts afresh.
    let (_ws, again) = start_session(&server.url(&format!("conversation_id={id}"))).await;
    assert_eq!(again["resumed"], false);
}
