//! Clients that stop reading, over raw TCP against the real server: once the socket's
//! send buffer is full the session actor is never polled again, so only the write-stall
//! watchdog can end it. Each test checks the published event, the gauges at that moment,
//! and that nothing waits forever behind such a client.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpSocket;

/// Client text frames written per batch by the flooder.
const FRAMES_PER_BATCH: usize = 1000;

/// A config where only the stall deadline can end a non-reading flooder.
fn stall_config(write_stall_ms: u64) -> hearken::Config {
    let mut config = light_config();
    config.session.idle_timeout_ms = 2000;
    config.session.write_stall_ms = write_stall_ms;
    // Flood control would close the flooder first; these tests are about the stall.
    config.session.client_events_per_s = 1_000_000;
    config.session.client_events_burst = 1_000_000;
    config
}

/// A raw WebSocket client that upgrades, then floods malformed text frames (each
/// answered with an `error` event) and never reads again. Returns the read half (to
/// look at later) and the count of bytes written so far.
async fn never_reading_flooder(
    server: &TestServer,
    conversation_id: &str,
) -> (OwnedReadHalf, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let socket = TcpSocket::new_v4().expect("socket");
    // A small receive window fills sooner; the test does not depend on its size.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let request = format!(
        "GET /v1/ws?conversation_id={conversation_id} HTTP/1.1\r\nHost: {}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    write.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, read.read(&mut byte))
            .await
            .expect("upgrade answered in time")
            .expect("read");
        assert_eq!(n, 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    // Masked (all-zero mask) text frames "x": not JSON, so each gets an `error` event.
    let frame = [0x81u8, 0x81, 0, 0, 0, 0, b'x'];
    let batch: Vec<u8> = frame.repeat(FRAMES_PER_BATCH);
    let written = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&written);
    let flood = tokio::spawn(async move {
        while write.write_all(&batch).await.is_ok() {
            counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    });
    (read, written, flood)
}

/// Wait until the flooder's writes have made no progress for a while: the server has
/// stopped reading, because the session that should read is no longer polled.
async fn until_writes_stall(written: &AtomicU64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = written.load(Ordering::Relaxed);
    let mut quiet = 0;
    while quiet < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server kept reading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::Relaxed);
        quiet = if now == last && now > 0 { quiet + 1 } else { 0 };
        last = now;
    }
}

/// Read until the server has closed or reset the connection.
async fn until_closed(read: &mut OwnedReadHalf) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(WAIT, read.read(&mut buf))
            .await
            .expect("the server let the connection go in time")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn a_client_that_never_reads_is_ended_by_the_write_stall_deadline() {
    let server = TestServer::start(stall_config(500));
    let before = server.gauges();
    let mut events = server.events();
    let id = uuid::Uuid::new_v4().to_string();
    let (mut read, _written, flood) = never_reading_flooder(&server, &id).await;

    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "timeout");
    assert_eq!(
        server.gauges(),
        before,
        "the whole tree is gone at the event"
    );
    assert_eq!(server.metrics.write_stalls.get(), 1);
    assert_eq!(
        server.metrics.disconnects(hearken::ExitReason::Timeout),
        1,
        "exactly one event"
    );
    // The socket is let go too: the client sees the connection end.
    flood.abort();
    until_closed(&mut read).await;
}

#[tokio::test]
async fn a_reconnect_behind_a_stuck_predecessor_gets_an_error_and_1013() {
    let mut config = stall_config(60_000); // the predecessor stays stuck for the test
    config.session.register_timeout_ms = 300;
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let id = uuid::Uuid::new_v4().to_string();
    let (read, written, flood) = never_reading_flooder(&server, &id).await;
    until_writes_stall(&written).await;

    let mut again = connect(&server.url(&format!("conversation_id={id}"))).await;
    let error = next_event_of(&mut again, "error").await;
    assert_eq!(error["code"], "conversation_busy", "{error}");
    assert_eq!(close_code(&mut again).await, Some(1013));

    // The predecessor ends when its client goes; the reconnect that gave up gets no
    // tree (one event in all, every gauge back).
    flood.abort();
    drop(read);
    let (reason, _) = disconnect_of(&mut events, &id).await;
    assert_eq!(reason, "client_disconnect");
    assert_eq!(server.gauges(), before);
    let all: u64 = hearken::ExitReason::ALL
        .iter()
        .map(|r| server.metrics.disconnects(*r))
        .sum();
    assert_eq!(all, 1);
}
