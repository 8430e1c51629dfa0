//! Every way a session can end, over real WebSockets against the real server: each test
//! checks the published `connection_disconnected` (exactly one, with its reason) and
//! that every leak gauge is back to its value from before the session.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hearken::metrics::ActorKind;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn client_close_frame_ends_with_client_disconnect() {
    let server = TestServer::start(test_config());
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("")).await;
    let id = conversation_id(&started);
    assert_eq!(started["resumed"], false);

    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(&mut ws, &speech, rate, false).await;
    next_event_of(&mut ws, "vad.speech_started").await;
    send_close(&mut ws).await;

    let (reason, timestamp_ms) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "client_disconnect");
    assert!(timestamp_ms > 1_600_000_000_000);
    assert_eq!(server.gauges(), before);
    assert_eq!(
        server
            .metrics
            .disconnects(hearken::ExitReason::ClientDisconnect),
        1
    );
}

#[tokio::test]
async fn dropped_tcp_without_close_ends_with_client_disconnect() {
    let server = TestServer::start(test_config());
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("codec=pcm16&sample_rate=16000")).await;
    let id = conversation_id(&started);
    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(&mut ws, &speech[..rate as usize], rate, false).await;
    drop(ws); // no Close frame: the TCP connection just goes away

    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(server.gauges(), before);
}

#[tokio::test]
async fn idle_session_times_out_with_4000() {
    let mut config = test_config();
    config.session.idle_timeout_ms = 300;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("")).await;
    let id = conversation_id(&started);

    assert_eq!(close_code(&mut ws).await, Some(4000));
    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "timeout");
    assert_eq!(server.gauges(), before);
}

/// WebSocket Pings and empty binary frames are not activity: a client that sends only
/// those still times out (before, each frame reset the idle timer).
#[tokio::test]
async fn pings_and_empty_frames_do_not_keep_a_session_alive() {
    let mut config = light_config();
    config.session.idle_timeout_ms = 300;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let (ws, started) = start_session(&server.url("")).await;
    let id = conversation_id(&started);
    let (mut sink, mut stream) = ws.split();

    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let code = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = sink.send(Message::Ping(b"alive?".to_vec().into())).await;
                    let _ = sink.send(Message::binary(Vec::<u8>::new())).await;
                }
                message = stream.next() => match message {
                    Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    _ => break None,
                },
            }
        }
    })
    .await
    .expect("the session timed out despite pings");
    assert_eq!(code, Some(4000));
    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "timeout");
    assert_eq!(server.gauges(), before);
}

/// Client events are activity: `{"type":"ping"}` keeps an otherwise silent session up.
#[tokio::test]
async fn ping_events_keep_a_session_alive() {
    let mut config = light_config();
    config.session.idle_timeout_ms = 500;
    let server = TestServer::start(config);
    let (mut ws, _) = start_session(&server.url("")).await;
    // Three idle timeouts' worth of pings, five per timeout.
    for _ in 0..15 {
        send_json(&mut ws, json!({"type":"ping"})).await;
        next_event_of(&mut ws, "pong").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Silence: now it times out.
    assert_eq!(close_code(&mut ws).await, Some(4000));
}

#[tokio::test]
async fn a_panicking_child_ends_only_its_own_conversation() {
    let mut config = test_config();
    config.debug.fault_injection = true;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let (mut bystander, started) = start_session(&server.url("")).await;
    let bystander_id = conversation_id(&started);
    // The bystander's whole tree is up (TTS is the last child started): the gauges of
    // exactly one live conversation.
    assert!(eventually(|| server.metrics.live_actors(ActorKind::Tts) == 1).await);
    let one_tree = server.gauges();
    let (mut victim, started) = start_session(&server.url("")).await;
    let victim_id = conversation_id(&started);

    send_json(
        &mut victim,
        json!({"type":"debug.fail_child","role":"vad","mode":"panic"}),
    )
    .await;
    assert_eq!(close_code(&mut victim).await, Some(1011));
    let (reason, _) = disconnect_of(&mut events, &victim_id).await;
    assert_eq!(reason, "server_error");
    // When its event is out, nothing of the victim's tree is left; the bystander's is whole.
    assert_eq!(server.gauges(), one_tree);

    // The other session still hears and answers.
    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(&mut bystander, &speech, rate, false).await;
    next_event_of(&mut bystander, "vad.speech_started").await;
    send_json(&mut bystander, json!({"type":"ping"})).await;
    next_event_of(&mut bystander, "pong").await;
    send_close(&mut bystander).await;
    let (reason, _) = disconnect_of(&mut events, &bystander_id).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(server.gauges(), before);
}

#[tokio::test]
async fn a_failing_child_is_restarted_then_the_conversation_gives_up() {
    let mut config = test_config();
    config.debug.fault_injection = true;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("")).await;
    let id = conversation_id(&started);
    let fail = json!({"type":"debug.fail_child","role":"stt","mode":"error"});

    // Three recoverable failures are restarts: the session keeps working.
    for _ in 0..3 {
        send_json(&mut ws, fail.clone()).await;
    }
    send_json(&mut ws, json!({"type":"ping"})).await;
    next_event_of(&mut ws, "pong").await;
    assert!(eventually(|| server.metrics.child_restarts.get() == 3).await);
    // The count moves before the failed actor is dropped and its successor started.
    assert!(eventually(|| server.metrics.live_actors(hearken::metrics::ActorKind::Stt) == 1).await);

    // The fourth exceeds the cap.
    send_json(&mut ws, fail).await;
    assert_eq!(close_code(&mut ws).await, Some(1011));
    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "server_error");
    assert_eq!(server.gauges(), before);
}

#[tokio::test]
async fn reconnecting_with_a_live_id_supersedes_the_old_session_first() {
    let server = TestServer::start(test_config());
    let before = server.gauges();
    let mut events = server.events();
    let (mut first, started) = start_session(&server.url("client_id=phone")).await;
    let id = conversation_id(&started);

    let mut second = connect(&server.url(&format!("conversation_id={id}&client_id=laptop"))).await;
    assert_eq!(close_code(&mut first).await, Some(4001));
    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "superseded");

    let resumed = next_event_of(&mut second, "session.started").await;
    assert_eq!(resumed["conversation_id"], id.as_str());
    assert_eq!(resumed["resumed"], true);
    // Never two trees: exactly one conversation is live now.
    assert_eq!(server.metrics.conversations.get(), 1);
    assert_eq!(
        server
            .metrics
            .live_actors(hearken::metrics::ActorKind::Conversation),
        1
    );

    send_close(&mut second).await;
    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(server.gauges(), before);
}

#[tokio::test]
async fn auth_is_checked_before_the_upgrade() {
    let mut config = test_config();
    config.auth.tokens = vec!["open-sesame".into()];
    let server = TestServer::start(config);
    let before = server.gauges();

    let refused = tokio_tungstenite::connect_async(server.url("")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    assert_eq!(server.gauges(), before);

    let (mut ws, _) = start_session(&server.url("token=open-sesame")).await;
    send_close(&mut ws).await;
    assert!(eventually(|| server.gauges() == before).await);
}

#[tokio::test]
async fn shutdown_ends_every_session_with_server_shutdown() {
    let server = TestServer::start(test_config());
    let mut events = server.events();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(start_session(&server.url("")).await);
    }
    let metrics = std::sync::Arc::clone(&server.metrics);
    let stopper = std::thread::spawn(move || server.shutdown());
    for (ws, _) in sessions.iter_mut() {
        assert_eq!(close_code(ws).await, Some(1001));
    }
    let ended = disconnects(&mut events, 3).await;
    for (_, started) in &sessions {
        assert_eq!(ended[&conversation_id(started)], "server_shutdown");
    }
    let outcome = stopper.join().expect("shutdown thread");
    assert_eq!(outcome, Some(hearken::DrainOutcome::Clean));
    assert_eq!(metrics.disconnects(hearken::ExitReason::ServerShutdown), 3);
    assert!(
        gauges(&metrics).iter().all(|(_, v)| *v == 0),
        "{:?}",
        gauges(&metrics)
    );
}

#[tokio::test]
async fn recorder_file_is_complete_when_the_event_is_published() {
    let dir = std::env::temp_dir().join(format!("hearken-rec-{}", std::process::id()));
    let mut config = test_config();
    config.recorder.enabled = true;
    config.recorder.dir = dir.clone();
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let (mut ws, started) = start_session(&server.url("sample_rate=16000")).await;
    let id = conversation_id(&started);
    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(&mut ws, &speech, rate, false).await;
    // Decoded audio reaches the recorder before the VAD's events reach the client.
    next_event_of(&mut ws, "vad.speech_stopped").await;
    ws.send(Message::text(json!({"type":"ping"}).to_string()))
        .await
        .unwrap();
    drop(ws);

    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(
        server.gauges(),
        before,
        "file must be closed before the event"
    );
    let recorded = hound::WavReader::open(dir.join(format!("{id}.wav"))).expect("valid WAV");
    assert_eq!(recorded.spec().sample_rate, 16_000);
    // All audio up to the end of speech was written: at most the trailing second of
    // silence can still have been in flight when the client vanished.
    let written = recorded.len() as usize;
    assert!(
        written + rate as usize >= speech.len() && written <= speech.len(),
        "{written}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
