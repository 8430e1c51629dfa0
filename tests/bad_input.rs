//! Bad input gets a clear `error` event or the documented close code, is counted, and
//! never disturbs another session.

mod common;

use common::*;
use futures_util::SinkExt;
use hearken::metrics::BadInput;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A second session that must keep working while the first misbehaves.
async fn healthy_session(server: &TestServer) -> Ws {
    start_session(&server.url("")).await.0
}

async fn still_serves(ws: &mut Ws) {
    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(ws, &speech, rate, false).await;
    next_event_of(ws, "vad.speech_started").await;
}

async fn expect_error(ws: &mut Ws, code: &str) -> serde_json::Value {
    let event = next_event_of(ws, "error").await;
    assert_eq!(event["code"], code, "{event}");
    assert!(event["message"].as_str().is_some_and(|m| !m.is_empty()));
    event
}

#[tokio::test]
async fn malformed_json_and_unknown_events_get_error_events() {
    let server = TestServer::start(test_config());
    let mut other = healthy_session(&server).await;
    let (mut ws, _) = start_session(&server.url("")).await;

    ws.send(Message::text("{\"type\": \"audio.end\""))
        .await
        .unwrap();
    expect_error(&mut ws, "malformed_json").await;
    send_json(&mut ws, json!({"no_type": 1})).await;
    expect_error(&mut ws, "malformed_json").await;
    send_json(&mut ws, json!({"type": "teleport"})).await;
    expect_error(&mut ws, "unknown_event").await;
    // Fault injection is off by default: the debug event does not exist.
    send_json(
        &mut ws,
        json!({"type":"debug.fail_child","role":"vad","mode":"panic"}),
    )
    .await;
    expect_error(&mut ws, "unknown_event").await;

    send_json(&mut ws, json!({"type": "ping"})).await;
    next_event_of(&mut ws, "pong").await;
    assert_eq!(server.metrics.bad_input(BadInput::MalformedJson), 2);
    assert_eq!(server.metrics.bad_input(BadInput::UnknownEvent), 2);
    still_serves(&mut other).await;
}

#[tokio::test]
async fn text_where_audio_belongs_and_odd_pcm_are_reported() {
    let server = TestServer::start(test_config());
    let mut other = healthy_session(&server).await;
    let (mut ws, _) = start_session(&server.url("")).await;

    ws.send(Message::text("UklGRiQAAABXQVZFZm10IBAAAAAB"))
        .await
        .unwrap();
    expect_error(&mut ws, "unexpected_frame").await;
    ws.send(Message::binary(vec![0u8; 641])).await.unwrap();
    expect_error(&mut ws, "bad_audio").await;

    assert_eq!(server.metrics.bad_input(BadInput::TextInsteadOfAudio), 1);
    assert_eq!(server.metrics.bad_input(BadInput::OddLengthPcm), 1);
    still_serves(&mut ws).await;
    still_serves(&mut other).await;
}

#[tokio::test]
async fn garbage_opus_is_reported_and_good_opus_still_decodes() {
    let server = TestServer::start(test_config());
    let (mut ws, started) = start_session(&server.url("codec=opus&sample_rate=48000")).await;
    assert_eq!(started["codec"], "opus");

    ws.send(Message::binary(vec![0xffu8, 0xff, 0xff, 0xff]))
        .await
        .unwrap();
    expect_error(&mut ws, "bad_audio").await;
    assert_eq!(server.metrics.bad_input(BadInput::BadOpus), 1);

    // Real speech, resampled to 48 kHz and Opus-encoded, is still heard.
    let (speech, rate) = fixture("fox_16k.wav");
    let floats: Vec<f32> = speech.iter().map(|s| f32::from(*s) / 32768.0).collect();
    let upsampled =
        hearken::audio::resample::StreamResampler::convert_clip(rate, 48_000, &floats).unwrap();
    let pcm = hearken::audio::opus_codec::f32_frame_to_i16(&upsampled);
    let mut encoder = hearken::audio::opus_codec::OpusEncoder::new(48_000).unwrap();
    let mut packets = encoder.push(&pcm).unwrap();
    packets.extend(encoder.finish().unwrap());
    for packet in packets {
        ws.send(Message::binary(packet)).await.unwrap();
    }
    next_event_of(&mut ws, "vad.speech_started").await;
    next_event_of(&mut ws, "vad.speech_stopped").await;
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let mut config = test_config();
    config.session.max_frame_bytes = 4096;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let mut other = healthy_session(&server).await;
    let (mut ws, started) = start_session(&server.url("")).await;

    let _ = ws.send(Message::binary(vec![0u8; 8192])).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));
    let (reason, _) = disconnect_of(&mut events, &conversation_id(&started)).await;
    assert_eq!(reason, "server_error");
    assert_eq!(server.metrics.bad_input(BadInput::FrameTooLarge), 1);
    still_serves(&mut other).await;
    send_close(&mut other).await;
    assert!(eventually(|| server.gauges() == before).await);
}

#[tokio::test]
async fn bad_upgrade_parameters_are_refused_before_any_tree() {
    let server = TestServer::start(test_config());
    let before = server.gauges();
    for (query, counted) in [
        ("sample_rate=44100", BadInput::UnsupportedSampleRate),
        ("codec=mp3", BadInput::BadQuery),
        ("conversation_id=not-a-uuid", BadInput::BadQuery),
        ("sample_rate=fast", BadInput::BadQuery),
    ] {
        let counted_before = server.metrics.bad_input(counted);
        match tokio_tungstenite::connect_async(server.url(query)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "{query}");
            }
            other => panic!("{query}: expected 400, got {:?}", other.map(|_| ())),
        }
        assert_eq!(
            server.metrics.bad_input(counted),
            counted_before + 1,
            "{query} counted once, as {}",
            counted.as_str()
        );
    }
    assert_eq!(server.gauges(), before);
}

#[tokio::test]
async fn a_text_flood_is_closed_with_1008_and_counted() {
    let mut config = test_config();
    config.session.client_events_per_s = 1;
    config.session.client_events_burst = 20;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let mut other = healthy_session(&server).await;
    let (mut ws, started) = start_session(&server.url("")).await;

    // Each frame and each error reply takes a token: ten frames spend the burst.
    for _ in 0..40 {
        if ws.send(Message::text("not json")).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(1008));
    let (reason, _) = disconnect_of(&mut events, &conversation_id(&started)).await;
    assert_eq!(reason, "server_error");
    assert_eq!(server.metrics.bad_input(BadInput::Flood), 1);
    // Ten frames, or eleven if a token was earned back meanwhile (one a second).
    let rejected = server.metrics.bad_input(BadInput::TextInsteadOfAudio);
    assert!((10..=11).contains(&rejected), "{rejected}");
    // Another session is not affected.
    still_serves(&mut other).await;
    send_json(&mut other, json!({"type": "ping"})).await;
    next_event_of(&mut other, "pong").await;
    send_close(&mut other).await;
    assert!(eventually(|| server.gauges() == before).await);
}

#[tokio::test]
async fn an_oversized_system_prompt_is_refused_and_counted() {
    let server = TestServer::start(test_config());
    let (mut ws, _) = start_session(&server.url("")).await;
    let prompt = "a".repeat(hearken::Config::default().llm.max_system_prompt_bytes + 1);
    send_json(
        &mut ws,
        json!({"type":"session.update","llm":{"system_prompt": prompt}}),
    )
    .await;
    expect_error(&mut ws, "too_large").await;
    assert_eq!(server.metrics.bad_input(BadInput::PromptTooLarge), 1);
    // A prompt within the limit is accepted, and the session goes on.
    send_json(
        &mut ws,
        json!({"type":"session.update","llm":{"system_prompt": "Be brief."}}),
    )
    .await;
    send_json(&mut ws, json!({"type": "ping"})).await;
    let next = next_event_of_any(&mut ws, &["error", "pong"]).await;
    assert_eq!(next["type"], "pong", "{next}");
}

#[tokio::test]
async fn audio_far_faster_than_real_time_is_refused_then_closed() {
    let mut config = test_config();
    config.session.max_audio_speed = 1.0;
    // Room for the other session's 5.4 s fixture, sent at once.
    config.session.audio_burst_ms = 8000;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let mut other = healthy_session(&server).await;
    let (mut ws, started) = start_session(&server.url("")).await;

    // 30 s of audio at once: the first 8 s (plus what the clock earns meanwhile) are
    // taken, the rest refused frame by frame until the refusals spend the flood burst.
    let silence = vec![0u8; 640];
    for _ in 0..1500 {
        if ws.send(Message::binary(silence.clone())).await.is_err() {
            break;
        }
    }
    expect_error(&mut ws, "audio_too_fast").await;
    assert_eq!(close_code(&mut ws).await, Some(1008));
    let (reason, _) = disconnect_of(&mut events, &conversation_id(&started)).await;
    assert_eq!(reason, "server_error");
    let refused = server.metrics.bad_input(BadInput::AudioTooFast);
    assert!(refused >= 1, "{refused}");
    assert_eq!(server.metrics.bad_input(BadInput::Flood), 1);
    // Another session streaming at its own pace is not affected.
    still_serves(&mut other).await;
    send_close(&mut other).await;
    assert!(eventually(|| server.gauges() == before).await);
}

#[tokio::test]
async fn a_corrupt_opus_stream_is_closed_with_1007() {
    let mut config = test_config();
    config.session.bad_audio_burst = 5;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let mut other = healthy_session(&server).await;
    let (mut ws, started) = start_session(&server.url("codec=opus&sample_rate=48000")).await;

    // Packets whose table of contents announces 63 frames of 20 ms: never valid.
    for _ in 0..20 {
        if ws
            .send(Message::binary(vec![0xffu8, 0xff, 0x01, 0x02]))
            .await
            .is_err()
        {
            break;
        }
    }
    let last = expect_error(&mut ws, "bad_audio").await;
    assert!(last["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(close_code(&mut ws).await, Some(1007));
    let (reason, _) = disconnect_of(&mut events, &conversation_id(&started)).await;
    assert_eq!(reason, "server_error");
    assert_eq!(server.metrics.bad_input(BadInput::CorruptStream), 1);
    // Five refused with an error each, the sixth ended the stream; none reached a decoder.
    assert_eq!(server.metrics.bad_input(BadInput::BadOpus), 6);
    still_serves(&mut other).await;
    send_close(&mut other).await;
    assert!(eventually(|| server.gauges() == before).await);
}
