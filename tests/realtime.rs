//! `GET /v1/realtime` over real WebSockets: the OpenAI Realtime API on the same
//! conversation tree as `/v1/ws`. Bad input gets `error` events and the session goes
//! on; real protocol violations close it; every end publishes one disconnect and
//! leaves every gauge where it was. (tests/realtime_sdk.rs drives it with the official
//! SDK; the translation itself is tested in src/protocol/realtime/tests.rs.)

mod common;
#[path = "model_support/mod.rs"]
mod model_support;

use base64::Engine as _;
use common::fake_llm::{fake_llm, Upstream};
use common::*;
use futures_util::SinkExt;
use hearken::audio::g711::{self, Law};
use hearken::config::LlmBackendKind;
use hearken::metrics::BadInput;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Connect and read `session.created`, which must come first.
async fn open(url: &str) -> (Ws, Value) {
    let mut ws = connect(url).await;
    let Incoming::Event(first) = next_incoming(&mut ws).await else {
        panic!("the first frame is not an event");
    };
    assert_eq!(first["type"], "session.created", "{first}");
    (ws, first)
}

fn conversation_of(created: &Value) -> String {
    created["session"]["conversation_id"]
        .as_str()
        .expect("conversation id")
        .to_string()
}

/// The next `error` event: its `error` object.
async fn error_of(ws: &mut Ws) -> Value {
    let event = next_event_of(ws, "error").await;
    assert!(event["event_id"].as_str().is_some(), "{event}");
    event["error"].clone()
}

fn replying(base_url: &str) -> hearken::Config {
    let mut config = test_config();
    config.llm.backend = LlmBackendKind::Openai;
    config.llm.base_url = base_url.to_string();
    config
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_session_goes_on() {
    let mut config = light_config();
    config.realtime.max_append_ms = 500;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, created) = open(&server.realtime_url("model=gpt-realtime-mini")).await;
    assert_eq!(created["session"]["model"], "gpt-realtime-mini");
    let id = conversation_of(&created);

    ws.send(Message::text("{\"type\": \"session.update\""))
        .await
        .unwrap();
    assert_eq!(error_of(&mut ws).await["code"], "invalid_json");
    send_json(
        &mut ws,
        json!({"type": "response.teleport", "event_id": "e1"}),
    )
    .await;
    let error = error_of(&mut ws).await;
    assert_eq!(
        (error["param"].as_str(), error["event_id"].as_str()),
        (Some("type"), Some("e1"))
    );
    send_json(
        &mut ws,
        json!({"type": "input_audio_buffer.append", "event_id": "e2", "audio": "%%%"}),
    )
    .await;
    let error = error_of(&mut ws).await;
    assert_eq!(
        (error["code"].as_str(), error["event_id"].as_str()),
        (Some("invalid_audio"), Some("e2"))
    );
    // One second of 24 kHz audio, over this server's 500 ms per append.
    let large = b64(&vec![0u8; 48_000]);
    send_json(
        &mut ws,
        json!({"type": "input_audio_buffer.append", "audio": large}),
    )
    .await;
    assert_eq!(error_of(&mut ws).await["code"], "audio_too_large");
    send_json(
        &mut ws,
        json!({"type": "input_audio_buffer.commit", "event_id": "e3"}),
    )
    .await;
    assert_eq!(
        error_of(&mut ws).await["code"],
        "input_audio_buffer_commit_empty"
    );
    send_json(&mut ws, json!({"type": "response.cancel"})).await;
    assert_eq!(
        error_of(&mut ws).await["code"],
        "response_cancel_not_active"
    );
    send_json(
        &mut ws,
        json!({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}),
    )
    .await;
    assert_eq!(
        error_of(&mut ws).await["param"],
        "session.audio.input.format.rate"
    );
    send_json(
        &mut ws,
        json!({"type": "conversation.item.retrieve", "event_id": "e4", "item_id": "nope"}),
    )
    .await;
    let error = error_of(&mut ws).await;
    assert_eq!(
        (error["code"].as_str(), error["event_id"].as_str()),
        (Some("item_not_found"), Some("e4"))
    );
    ws.send(Message::binary(vec![0u8; 640])).await.unwrap();
    assert_eq!(error_of(&mut ws).await["code"], "unexpected_frame");

    // The session still serves: an update is answered with the new settings.
    send_json(
        &mut ws,
        json!({"type": "session.update", "session": {"instructions": "Be brief."}}),
    )
    .await;
    let updated = next_event_of(&mut ws, "session.updated").await;
    assert_eq!(updated["session"]["instructions"], "Be brief.");
    assert_eq!(server.metrics.bad_input(BadInput::MalformedJson), 1);
    assert_eq!(server.metrics.bad_input(BadInput::UnknownEvent), 1);
    assert_eq!(server.metrics.bad_input(BadInput::BadBase64), 1);
    assert_eq!(server.metrics.bad_input(BadInput::AudioTooLarge), 1);
    assert_eq!(server.metrics.bad_input(BadInput::BinaryInsteadOfText), 1);

    send_close(&mut ws).await;
    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(server.gauges(), before);
}

/// Appends are audio, paced by backpressure: far more of them than the flood limit
/// allows events do not close the session.
#[tokio::test]
async fn appends_are_audio_not_events_for_flood_control() {
    let server = TestServer::start(light_config());
    let (mut ws, _) = open(&server.realtime_url("")).await;
    let burst = server_burst();
    let frame = b64(&[0u8; 960]); // 20 ms at 24 kHz
    for _ in 0..burst * 4 {
        send_json(
            &mut ws,
            json!({"type": "input_audio_buffer.append", "audio": frame}),
        )
        .await;
    }
    send_json(&mut ws, json!({"type": "session.update", "session": {}})).await;
    next_event_of(&mut ws, "session.updated").await;
    assert_eq!(server.metrics.bad_input(BadInput::Flood), 0);
}

fn server_burst() -> usize {
    hearken::Config::default().session.client_events_burst as usize
}

#[tokio::test]
async fn an_oversized_frame_is_a_protocol_violation_that_ends_one_tree() {
    let mut config = light_config();
    config.realtime.max_event_bytes = 65_536;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, created) = open(&server.realtime_url("")).await;
    let audio = b64(&vec![0u8; 60_000]);
    let _ = ws
        .send(Message::text(
            json!({"type": "input_audio_buffer.append", "audio": audio}).to_string(),
        ))
        .await;
    assert_eq!(close_code(&mut ws).await, Some(1009));
    let (reason, _) = disconnect_of(&mut events, &conversation_of(&created)).await;
    assert_eq!(reason, "server_error");
    assert_eq!(server.gauges(), before);
}

#[tokio::test]
async fn auth_is_checked_before_the_upgrade_by_header_or_subprotocol() {
    let mut config = light_config();
    config.auth.tokens = vec!["open-sesame".into()];
    let server = TestServer::start(config);
    let before = server.gauges();
    match tokio_tungstenite::connect_async(server.realtime_url("")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    assert_eq!(server.gauges(), before);

    let mut request = server.realtime_url("").into_client_request().unwrap();
    let header = "Bearer open-sesame".parse().unwrap();
    request.headers_mut().insert("authorization", header);
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("bearer accepted");
    next_event_of(&mut ws, "session.created").await;
    send_close(&mut ws).await;

    // Browsers offer the key as a subprotocol; `realtime` is chosen.
    let mut request = server.realtime_url("").into_client_request().unwrap();
    let offered = "realtime, openai-insecure-api-key.open-sesame"
        .parse()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", offered);
    let (mut ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("key accepted");
    assert_eq!(response.headers()["sec-websocket-protocol"], "realtime");
    next_event_of(&mut ws, "session.created").await;
    send_close(&mut ws).await;
    assert!(eventually(|| server.gauges() == before).await);
}

/// G.711 μ-law both ways at 8 kHz: the question is understood, the reply is μ-law.
#[tokio::test]
async fn g711_in_and_out() {
    let upstream = fake_llm(Upstream::Scripted("It will be sunny all day.")).await;
    let server = TestServer::start(replying(&upstream.base_url));
    let (mut ws, _) = open(&server.realtime_url("")).await;
    let pcmu = json!({"type": "audio/pcmu"});
    send_json(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"format": pcmu, "turn_detection": {"type": "server_vad"},
                  "transcription": {"model": "whisper-1"}},
        "output": {"format": pcmu}}}}),
    )
    .await;
    let updated = next_event_of(&mut ws, "session.updated").await;
    assert_eq!(
        updated["session"]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );
    let (speech, rate) = fixture("weather_8k.wav");
    assert_eq!(rate, 8000);
    for chunk in speech.chunks(1600) {
        let audio = b64(&g711::encode(Law::Mu, chunk));
        send_json(
            &mut ws,
            json!({"type": "input_audio_buffer.append", "audio": audio}),
        )
        .await;
    }
    let heard = next_event_of(
        &mut ws,
        "conversation.item.input_audio_transcription.completed",
    )
    .await;
    let text = heard["transcript"].as_str().unwrap();
    // μ-law's 8-bit steps cost this synthetic 8 kHz voice a word or two at the VAD's
    // cut (the same samples as PCM16 are heard the same, see below), so the bound is
    // looser than the PCM tests' 0.2.
    let reference = model_support::fixture_text("weather_8k", "text");
    assert!(model_support::wer(&reference, text) <= 0.35, "{text:?}");
    // The codec path is exact: the same μ-law samples sent as PCM16 over /v1/ws are
    // heard word for word the same.
    let mut decoded = Vec::new();
    g711::decode_into(Law::Mu, &g711::encode(Law::Mu, &speech), &mut decoded);
    let (mut native, _) = start_session(&server.url("sample_rate=8000")).await;
    stream_pcm(&mut native, &decoded, rate, false).await;
    let native_heard = next_event_of(&mut native, "transcript.final").await;
    let same = |t: &str| model_support::words(t);
    assert_eq!(same(native_heard["text"].as_str().unwrap()), same(text));
    let mut frames = 0;
    loop {
        let event =
            next_event_of_any(&mut ws, &["response.output_audio.delta", "response.done"]).await;
        if event["type"] == "response.done" {
            assert_eq!(event["response"]["status"], "completed", "{event}");
            assert_eq!(
                event["response"]["audio"]["output"]["format"]["type"],
                "audio/pcmu"
            );
            break;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(event["delta"].as_str().unwrap())
            .unwrap();
        assert_eq!(bytes.len(), 160, "20 ms of 8 kHz μ-law per delta");
        frames += 1;
    }
    assert!(
        frames > 25,
        "at least half a second of spoken reply: {frames} frames"
    );
}

/// Items a client adds live in the conversation's store, which a resumed session (of
/// either protocol) reads again.
#[tokio::test]
async fn items_live_in_the_conversation_store_across_sessions() {
    let upstream = fake_llm(Upstream::Quick).await;
    let server = TestServer::start(replying(&upstream.base_url));
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, created) = open(&server.realtime_url("")).await;
    let id = conversation_of(&created);
    assert_eq!(created["session"]["resumed"], false);
    send_json(
        &mut ws,
        json!({"type": "session.update", "session": {"output_modalities": ["text"]}}),
    )
    .await;
    next_event_of(&mut ws, "session.updated").await;
    let question = json!({"type": "conversation.item.create", "event_id": "c1", "item": {
        "id": "q1", "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Say hello."}]}});
    send_json(&mut ws, question.clone()).await;
    let added = next_event_of(&mut ws, "conversation.item.added").await;
    assert_eq!(added["item"]["id"], "q1");
    send_json(&mut ws, question).await;
    assert_eq!(
        error_of(&mut ws).await["code"],
        "invalid_item",
        "a duplicate id"
    );
    send_json(&mut ws, json!({"type": "conversation.item.create", "previous_item_id": "missing",
        "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]}})).await;
    assert_eq!(error_of(&mut ws).await["code"], "item_not_found");
    send_json(&mut ws, json!({"type": "response.create"})).await;
    let done = next_event_of(&mut ws, "response.done").await;
    let response = &done["response"];
    assert_eq!(response["status"], "completed", "{done}");
    assert_eq!(response["output"][0]["content"][0]["text"], "Hello there");
    assert_eq!(response["conversation_id"], id.as_str());
    let reply_id = response["output"][0]["id"].as_str().unwrap().to_string();
    // The model saw the question: it is in the request the upstream received.
    let request = upstream.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        request["messages"].as_array().unwrap().last().unwrap()["content"],
        "Say hello."
    );
    send_close(&mut ws).await;
    disconnect_of(&mut events, &id).await;

    let (mut again, created) = open(&server.realtime_url(&format!("conversation_id={id}"))).await;
    assert_eq!(created["session"]["resumed"], true);
    send_json(
        &mut again,
        json!({"type": "conversation.item.retrieve", "item_id": reply_id}),
    )
    .await;
    let retrieved = next_event_of(&mut again, "conversation.item.retrieved").await;
    assert_eq!(retrieved["item"]["content"][0]["text"], "Hello there");
    send_json(
        &mut again,
        json!({"type": "conversation.item.delete", "item_id": "q1"}),
    )
    .await;
    next_event_of(&mut again, "conversation.item.deleted").await;
    send_json(
        &mut again,
        json!({"type": "conversation.item.retrieve", "item_id": "q1"}),
    )
    .await;
    assert_eq!(error_of(&mut again).await["code"], "item_not_found");
    send_close(&mut again).await;
    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "client_disconnect");

    // The native protocol resumes the same conversation.
    let (mut native, started) = start_session(&server.url(&format!("conversation_id={id}"))).await;
    assert_eq!(started["resumed"], true);
    send_close(&mut native).await;
    disconnect_of(&mut events, &id).await;
    assert_eq!(server.gauges(), before);
}

/// The client drops the connection while a reply is spoken: one disconnect, and
/// nothing of the tree is left when it is published.
#[tokio::test]
async fn a_drop_mid_reply_tears_the_tree_down_once() {
    let upstream = fake_llm(Upstream::Endless).await;
    let server = TestServer::start(replying(&upstream.base_url));
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, created) = open(&server.realtime_url("")).await;
    send_json(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Talk."}]}}),
    )
    .await;
    send_json(&mut ws, json!({"type": "response.create"})).await;
    next_event_of(&mut ws, "response.output_audio.delta").await;
    drop(ws);
    let (reason, _) = disconnect_of(&mut events, &conversation_of(&created)).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(server.gauges(), before);
    assert_eq!(server.metrics.llm_inflight.get(), 0);
    assert_eq!(server.metrics.tts_queue_depth.get(), 0);
    assert_eq!(
        server
            .metrics
            .disconnects(hearken::ExitReason::ClientDisconnect),
        1
    );
}

/// `input_audio_buffer.clear` forgets the turn being spoken.
#[tokio::test]
async fn clear_forgets_the_uncommitted_audio() {
    let server = TestServer::start(light_config());
    let (mut ws, _) = open(&server.realtime_url("")).await;
    send_json(
        &mut ws,
        json!({"type": "input_audio_buffer.append", "audio": b64(&[0u8; 9600])}),
    )
    .await;
    send_json(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
    next_event_of(&mut ws, "input_audio_buffer.cleared").await;
    send_json(&mut ws, json!({"type": "input_audio_buffer.commit"})).await;
    assert_eq!(
        error_of(&mut ws).await["code"],
        "input_audio_buffer_commit_empty"
    );
}

/// 24 kHz PCM16 bytes of a 16 kHz fixture, as a Realtime client sends it.
fn pcm_24k(name: &str) -> Vec<u8> {
    let (speech, rate) = fixture(name);
    let floats: Vec<f32> = speech.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let resampled = model_support::resample(&floats, rate as usize, 24_000);
    let samples: Vec<i16> = resampled
        .iter()
        .map(|s| (s * 32767.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    pcm_bytes(&samples)
}

/// A user message created with its audio (`input_audio` without a transcript) is heard
/// by the conversation's recogniser: added, transcribed, done, stored with its words,
/// and answered by the `response.create` sent right after it.
#[tokio::test]
async fn an_item_created_with_audio_is_transcribed_and_answered() {
    let upstream = fake_llm(Upstream::Quick).await;
    let server = TestServer::start(replying(&upstream.base_url));
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, created) = open(&server.realtime_url("")).await;
    send_json(
        &mut ws,
        json!({"type": "session.update", "session": {"output_modalities": ["text"],
            "audio": {"input": {"turn_detection": null, "transcription": {"model": "whisper-1"}}}}}),
    )
    .await;
    next_event_of(&mut ws, "session.updated").await;
    let audio = b64(&pcm_24k("turns/capital.wav"));
    let item = json!({"type": "conversation.item.create", "event_id": "a1", "item": {
        "id": "asked", "type": "message", "role": "user",
        "content": [{"type": "input_audio", "audio": audio}]}});
    send_json(&mut ws, item.clone()).await;
    send_json(&mut ws, json!({"type": "response.create"})).await;

    let added = next_event_of(&mut ws, "conversation.item.added").await;
    assert_eq!(added["item"]["id"], "asked", "{added}");
    assert_eq!(added["item"]["content"][0]["type"], "input_audio");
    let completed = next_event_of(
        &mut ws,
        "conversation.item.input_audio_transcription.completed",
    )
    .await;
    assert_eq!(completed["item_id"], "asked");
    let transcript = completed["transcript"].as_str().unwrap().to_string();
    let reference = "What is the capital city of France?";
    assert!(
        model_support::wer(reference, &transcript) <= 0.2,
        "{transcript:?}"
    );
    let done = next_event_of(&mut ws, "conversation.item.done").await;
    assert_eq!(done["item"]["id"], "asked");
    assert_eq!(
        done["item"]["content"][0]["transcript"],
        transcript.as_str()
    );
    let finished = next_event_of(&mut ws, "response.done").await;
    assert_eq!(finished["response"]["status"], "completed", "{finished}");
    // The reply waited for the words: the model read them as the user's last message.
    let request = upstream.requests.lock().unwrap().last().cloned().unwrap();
    let last = request["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["role"].as_str(), last["content"].as_str()),
        (Some("user"), Some(transcript.as_str()))
    );
    // Stored with its words, as a spoken item.
    send_json(
        &mut ws,
        json!({"type": "conversation.item.retrieve", "item_id": "asked"}),
    )
    .await;
    let retrieved = next_event_of(&mut ws, "conversation.item.retrieved").await;
    let content = &retrieved["item"]["content"][0];
    assert_eq!(content["type"], "input_audio");
    assert_eq!(content["transcript"], transcript.as_str());

    // The same id again, and audio that is not whole samples: errors, and on it goes.
    send_json(&mut ws, item).await;
    let error = error_of(&mut ws).await;
    assert_eq!(
        (error["code"].as_str(), error["event_id"].as_str()),
        (Some("invalid_item"), Some("a1"))
    );
    send_json(
        &mut ws,
        json!({"type": "conversation.item.create", "event_id": "a2", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": b64(&[1, 2, 3])}]}}),
    )
    .await;
    let error = error_of(&mut ws).await;
    assert_eq!(
        (error["code"].as_str(), error["param"].as_str()),
        (Some("invalid_audio"), Some("item.content[0].audio"))
    );
    send_close(&mut ws).await;
    let (reason, _) = disconnect_of(&mut events, &conversation_of(&created)).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(server.gauges(), before);
}
