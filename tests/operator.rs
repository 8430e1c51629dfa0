//! Operator surfaces: `/v1/events` (server-sent events), `/v1/conversations`, `/metrics`,
//! `/health`, `/ready`, and the real binary draining on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use futures_util::StreamExt;

#[tokio::test]
async fn events_stream_shows_start_and_disconnect() {
    let mut config = test_config();
    config.server.events_keepalive_ms = 100;
    let server = TestServer::start(config);
    let response = reqwest::get(server.http("/v1/events")).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    assert!(eventually(|| server.metrics.event_subscribers.get() == 1).await);

    let (mut ws, started) = start_session(&server.url("client_id=ops")).await;
    let id = conversation_id(&started);
    send_close(&mut ws).await;

    let mut seen = String::new();
    while !seen.contains("connection_disconnected") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let events: Vec<serde_json::Value> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "connection_started");
    assert_eq!(events[0]["client_id"], "ops");
    let disconnected = &events[1];
    assert_eq!(disconnected["type"], "connection_disconnected");
    assert_eq!(disconnected["conversation_id"], id.as_str());
    assert_eq!(disconnected["reason"], "client_disconnect");
    // The seed format: exactly these four fields.
    assert_eq!(disconnected.as_object().unwrap().len(), 4);
    assert!(disconnected["timestamp_ms"].as_u64().is_some());

    drop(body);
    assert!(eventually(|| server.metrics.event_subscribers.get() == 0).await);
}

#[tokio::test]
async fn conversations_metrics_health_and_ready() {
    let mut config = test_config();
    config.auth.tokens = vec!["ops-token".into()];
    let server = TestServer::start(config);
    let client = reqwest::Client::new();
    assert_eq!(
        reqwest::get(server.http("/health")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(server.http("/ready")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(server.http("/v1/conversations"))
            .await
            .unwrap()
            .status(),
        401
    );

    let (_ws, started) = start_session(&server.url("token=ops-token&client_id=kiosk")).await;
    let list: serde_json::Value = client
        .get(server.http("/v1/conversations"))
        .bearer_auth("ops-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &list["conversations"][0];
    assert_eq!(row["conversation_id"], started["conversation_id"]);
    assert_eq!(row["client_id"], "kiosk");
    assert_eq!(row["tts_active"], false);

    let text = reqwest::get(server.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "hearken_live_actors{kind=\"conversation\"} 1",
        "hearken_live_actors{kind=\"vad\"} 1",
        "hearken_conversations 1",
        "hearken_open_files 0",
        "hearken_teardown_seconds_bucket",
        "hearken_disconnects_total{reason=\"client_disconnect\"} 0",
    ] {
        assert!(text.contains(line), "/metrics lacks {line}");
    }
}

#[tokio::test]
async fn the_binary_drains_and_exits_zero_on_sigterm() {
    let child = Command::new(env!("CARGO_BIN_EXE_hearken"))
        .args([
            "serve",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"),
        ])
        .env("HEARKEN__SERVER__PORT", "0")
        .env("HEARKEN__SERVER__WORKERS", "1")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut child = KillOnDrop(Some(child));
    let mut lines = BufReader::new(child.get().stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("binary logs its address").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Sessions are refused (503) until every model is loaded: as long as the shared
    // harness allows on a busy machine (tests/common: MODELS_WAIT).
    let ready = format!("http://{addr}/ready");
    let mut loaded = false;
    for _ in 0..2_400 {
        if reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
            loaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(loaded, "/ready never turned 200");
    let url = format!("ws://{addr}/v1/ws");
    let (mut a, _) = start_session(&url).await;
    let (mut b, _) = start_session(&url).await;

    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.get().id() as i32, libc::SIGTERM) };
    assert_eq!(close_code(&mut a).await, Some(1001));
    assert_eq!(close_code(&mut b).await, Some(1001));
    let mut process = child.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let log: Vec<String> = lines.map_while(Result::ok).collect();
    let shutdowns = log
        .iter()
        .filter(|l| l.contains("reason=server_shutdown"))
        .count();
    assert_eq!(shutdowns, 2, "{log:#?}");
}

/// The server process, killed if the test fails before it exits by itself.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn get(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("child present")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Read a server-sent event stream to its end; the `data:` events in it.
async fn read_to_end(
    mut body: impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
) -> Vec<serde_json::Value> {
    let mut seen = String::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("the stream ends in time")
    {
        seen.push_str(std::str::from_utf8(&chunk.expect("chunk")).unwrap());
    }
    seen.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect()
}

#[tokio::test]
async fn event_subscribers_receive_every_shutdown_disconnect_before_the_stream_ends() {
    let mut config = test_config();
    config.server.events_keepalive_ms = 100;
    let server = TestServer::start(config);
    let response = reqwest::get(server.http("/v1/events")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(eventually(|| server.metrics.event_subscribers.get() == 1).await);
    let mut ids = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let (ws, started) = start_session(&server.url("")).await;
        ids.push(conversation_id(&started));
        sessions.push(ws);
    }

    let stopper = std::thread::spawn(move || server.shutdown());
    let events = read_to_end(response.bytes_stream()).await;
    for id in &ids {
        let ended = events.iter().find(|e| {
            e["type"] == "connection_disconnected" && e["conversation_id"] == id.as_str()
        });
        let ended = ended.unwrap_or_else(|| panic!("no disconnect for {id} in {events:?}"));
        assert_eq!(ended["reason"], "server_shutdown");
    }
    assert_eq!(
        stopper.join().expect("shutdown thread"),
        Some(hearken::DrainOutcome::Clean)
    );
    drop(sessions);
}

#[tokio::test]
async fn event_subscribers_are_capped() {
    let mut config = test_config();
    config.server.max_event_subscribers = 2;
    config.server.events_keepalive_ms = 50;
    let server = TestServer::start(config);
    let first = reqwest::get(server.http("/v1/events")).await.unwrap();
    let second = reqwest::get(server.http("/v1/events")).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    let third = reqwest::get(server.http("/v1/events")).await.unwrap();
    assert_eq!(third.status(), 503);
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_subscribers");

    // A subscriber that leaves frees its place (noticed at the next keep-alive).
    drop(first);
    assert!(eventually(|| server.registry.sinks() < 2).await);
    let again = reqwest::get(server.http("/v1/events")).await.unwrap();
    assert_eq!(again.status(), 200);
    drop(second);
}

/// How long the server takes to close a raw connection after `sent` was written.
async fn closed_after(server: &TestServer, sent: &[u8]) -> std::time::Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(sent).await.unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the server closes the connection in time")
        {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => continue,
        }
    }
}

/// The HTTP timeouts come from the configuration, not actix's 5 s defaults. The bound
/// checked is ten times the configured value and well under the defaults.
#[tokio::test]
async fn slow_request_heads_and_idle_keep_alive_connections_are_closed() {
    let mut config = test_config();
    config.server.request_head_timeout_ms = 200;
    config.server.keep_alive_ms = 200;
    let server = TestServer::start(config);
    let bound = std::time::Duration::from_millis(2000);

    let slow_head = closed_after(&server, b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
    assert!(slow_head < bound, "slow head held {slow_head:?}");
    let idle = closed_after(&server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(idle < bound, "idle keep-alive held {idle:?}");
}
