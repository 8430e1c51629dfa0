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

/// Speak until the upstream has failed `failures` times (each utterance may hold more
/// than one segment, so count the errors, not the utterances).
async fn fail_upstream(ws: &mut Ws, failures: usize) {
    let mut failed = 0;
    while failed < failures {
        say(ws, "fox_16k.wav").await;
        let error = next_event_of(ws, "error").await;
        assert_eq!(error["code"], "llm_unavailable");
        assert!(
            !error["message"].as_str().unwrap().contains("circuit open"),
            "opened early: {error}"
        );
        // A reply that failed upstream is also closed as cut.
        let done = next_event_of(ws, "response.done").await;
        assert_eq!(done["cancelled"], true);
        failed += 1;
    }
}

#[tokio::test]
async fn the_breaker_opens_on_failures_and_refuses_while_open() {
    let upstream = fake_llm(Upstream::Broken).await;
    let mut config = openai_config(&upstream.base_url);
    // Far longer than the test: the circuit cannot turn half-open under it.
    config.llm.breaker_cooldown_ms = 600_000;
    let server = TestServer::start(config);
    let (mut ws, _) = start_session(&server.url("")).await;
    fail_upstream(&mut ws, 2).await;
    let reached = upstream.requests.lock().unwrap().len();
    assert_eq!(reached, 2, "every failure was a request upstream");

    // Healthy again, but the circuit is open: the reply is refused without a request.
    *upstream.mode.lock().unwrap() = Upstream::Quick;
    say(&mut ws, "fox_16k.wav").await;
    let refused = next_event_of_any(&mut ws, &["error", "response.done"]).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("circuit open"));
    assert_eq!(
        upstream.requests.lock().unwrap().len(),
        reached,
        "refused while open"
    );
}

#[tokio::test]
async fn the_breaker_recovers_through_a_probe_after_the_cooldown() {
    let upstream = fake_llm(Upstream::Broken).await;
    let mut config = openai_config(&upstream.base_url);
    config.llm.breaker_cooldown_ms = 300;
    let server = TestServer::start(config);
    let (mut ws, _) = start_session(&server.url("")).await;
    fail_upstream(&mut ws, 2).await;

    *upstream.mode.lock().unwrap() = Upstream::Quick;
    tokio::time::sleep(Duration::from_millis(400)).await; // past the cool-down
    say(&mut ws, "fox_16k.wav").await;
    let done = next_event_of_any(&mut ws, &["error", "response.done"]).await;
    assert_eq!(done["type"], "response.done", "{done}");
    assert_eq!(done["cancelled"], false);
    assert_eq!(upstream.requests.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_cancelled_probe_gives_the_half_open_slot_back() {
    let mut upstream = fake_llm(Upstream::Broken).await;
    let mut config = openai_config(&upstream.base_url);
    config.llm.breaker_cooldown_ms = 300;
    let server = TestServer::start(config);
    let (mut ws, _) = start_session(&server.url("")).await;
    fail_upstream(&mut ws, 2).await;

    // The probe goes out and is cancelled mid-reply: it never succeeds nor fails.
    *upstream.mode.lock().unwrap() = Upstream::Endless;
    tokio::time::sleep(Duration::from_millis(400)).await;
    say(&mut ws, "fox_16k.wav").await;
    next_event_of(&mut ws, "response.text.delta").await;
    send_json(&mut ws, json!({"type":"response.cancel"})).await;
    let done = next_event_of(&mut ws, "response.done").await;
    assert_eq!(done["cancelled"], true);
    tokio::time::timeout(WAIT, upstream.closed.recv())
        .await
        .expect("upstream saw the hang-up");

    // The next reply may probe: it is answered, not refused.
    *upstream.mode.lock().unwrap() = Upstream::Quick;
    say(&mut ws, "fox_16k.wav").await;
    let next = next_event_of_any(&mut ws, &["error", "response.done"]).await;
    assert_eq!(next["type"], "response.done", "{next}");
    assert_eq!(next["cancelled"], false);
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
