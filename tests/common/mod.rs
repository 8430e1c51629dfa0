//! Shared integration-test plumbing: a real hearken server on 127.0.0.1:0 in its own
//! actix system thread, real WebSocket clients (tokio-tungstenite), fixture audio, and
//! gauge snapshots. Waits are bounded (they fail a test, they never time a claim).

#![allow(dead_code)]

pub mod fake_llm;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hearken::metrics::{ActorKind, Metrics};
use hearken::registry::{LifecycleEvent, RegistryHandle};
use hearken::{Config, DrainOutcome, Server};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for any single wait in a test; generous so slow CI never flakes.
pub const WAIT: Duration = Duration::from_secs(20);
/// Upper bound for a server's models to load: every model thread loads its own copy,
/// CPU-bound, and on a shared two-core machine that alone has taken over `WAIT`.
pub const MODELS_WAIT: Duration = Duration::from_secs(120);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A config for tests: ephemeral port, small worker counts.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.port = 0;
    config.server.workers = 2;
    config.server.shutdown_drain_ms = 5000;
    config.models.dir = format!("{}/models", env!("CARGO_MANIFEST_DIR")).into();
    // Replies are tested on their own (tests/llm*.rs); elsewhere they would only add load.
    config.llm.backend = hearken::config::LlmBackendKind::None;
    config
}

/// The same with webrtc-vad and no recogniser: lifecycle tests that need no models.
pub fn light_config() -> Config {
    let mut config = test_config();
    config.vad.engine = hearken::config::VadEngine::Webrtc;
    config.stt.enabled = false;
    config
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub registry: RegistryHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<DrainOutcome>>>,
}

impl TestServer {
    pub fn start(config: Config) -> TestServer {
        hearken::llm::embedded::pin_candle_threads(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = Server::start(config).await.expect("server starts");
                let deadline = std::time::Instant::now() + MODELS_WAIT;
                while !server.models_loaded() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = ready_tx.send((server.local_addr(), server.metrics(), server.registry()));
                let _ = stopped.await;
                server.shutdown().await.ok()
            })
        });
        let (addr, metrics, registry) = ready_rx.recv().expect("server thread reports its address");
        TestServer {
            addr,
            metrics,
            registry,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/v1/ws?{}", self.addr, query)
    }

    /// `/v1/realtime`, the OpenAI Realtime API.
    pub fn realtime_url(&self, query: &str) -> String {
        format!("ws://{}/v1/realtime?{}", self.addr, query)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn events(&self) -> broadcast::Receiver<Arc<LifecycleEvent>> {
        self.registry.subscribe()
    }

    /// Every leak gauge, by name.
    pub fn gauges(&self) -> Vec<(String, i64)> {
        gauges(&self.metrics)
    }

    /// Drain the server and report how it went.
    pub fn shutdown(mut self) -> Option<DrainOutcome> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Option<DrainOutcome> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

pub fn gauges(metrics: &Metrics) -> Vec<(String, i64)> {
    let mut all: Vec<(String, i64)> = ActorKind::ALL
        .iter()
        .map(|kind| {
            (
                format!("live_actors{{{}}}", kind.as_str()),
                metrics.live_actors(*kind),
            )
        })
        .collect();
    all.push(("conversations".into(), metrics.conversations.get()));
    all.push(("open_files".into(), metrics.open_files.get()));
    all.push(("inflight_jobs".into(), metrics.inflight_jobs.get()));
    all
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("upgrade accepted");
    ws
}

/// Connect and wait for `session.started`; returns the socket and the event.
pub async fn start_session(url: &str) -> (Ws, Value) {
    let mut ws = connect(url).await;
    let started = next_event_of(&mut ws, "session.started").await;
    (ws, started)
}

/// What the server sent next, skipping nothing.
pub enum Incoming {
    Event(Value),
    Audio(Vec<u8>),
    Closed(Option<u16>),
}

pub async fn next_incoming(ws: &mut Ws) -> Incoming {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("server answered in time");
        match msg {
            Some(Ok(Message::Text(text))) => {
                return Incoming::Event(serde_json::from_str(text.as_str()).expect("server JSON"))
            }
            Some(Ok(Message::Binary(data))) => return Incoming::Audio(data.to_vec()),
            Some(Ok(Message::Close(frame))) => {
                return Incoming::Closed(frame.map(|f| u16::from(f.code)))
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Incoming::Closed(None),
        }
    }
}

/// The next JSON event of the given type, skipping others (audio, other events).
pub async fn next_event_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        match next_incoming(ws).await {
            Incoming::Event(event) if event["type"] == kind => return event,
            Incoming::Event(_) | Incoming::Audio(_) => continue,
            Incoming::Closed(code) => panic!("closed ({code:?}) while waiting for {kind}"),
        }
    }
}

/// The next JSON event of any of the given types.
pub async fn next_event_of_any(ws: &mut Ws, kinds: &[&str]) -> Value {
    loop {
        match next_incoming(ws).await {
            Incoming::Event(event) if kinds.iter().any(|k| event["type"] == *k) => return event,
            Incoming::Event(_) | Incoming::Audio(_) => continue,
            Incoming::Closed(code) => panic!("closed ({code:?}) while waiting for {kinds:?}"),
        }
    }
}

/// Read until the server closes; returns the close code.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        if let Incoming::Closed(code) = next_incoming(ws).await {
            return code;
        }
    }
}

pub async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send text");
}

pub async fn send_close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    let _ = ws.send(Message::Close(Some(frame))).await;
}

/// Samples of a 16-bit mono fixture WAV and its rate.
pub fn fixture(name: &str) -> (Vec<i16>, u32) {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut reader = hound::WavReader::open(&path).expect("fixture exists");
    let rate = reader.spec().sample_rate;
    let samples = reader
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    (samples, rate)
}

pub fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Stream samples as 20 ms PCM16 frames; `realtime` paces them like a microphone.
pub async fn stream_pcm(ws: &mut Ws, samples: &[i16], rate: u32, realtime: bool) {
    let frame = rate as usize / 50;
    for chunk in samples.chunks(frame) {
        ws.send(Message::binary(pcm_bytes(chunk)))
            .await
            .expect("send audio");
        if realtime {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The next `connection_disconnected` for `id`, skipping other events.
pub async fn disconnect_of(
    events: &mut broadcast::Receiver<Arc<LifecycleEvent>>,
    id: &str,
) -> (String, u64) {
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("disconnect published in time")
            .expect("event stream open");
        if let LifecycleEvent::ConnectionDisconnected {
            conversation_id,
            reason,
            timestamp_ms,
        } = &*event
        {
            if conversation_id.to_string() == id {
                return (reason.as_str().to_string(), *timestamp_ms);
            }
        }
    }
}

/// The next `n` disconnect events, as conversation id → reason.
pub async fn disconnects(
    events: &mut broadcast::Receiver<Arc<LifecycleEvent>>,
    n: usize,
) -> std::collections::HashMap<String, String> {
    let mut seen = std::collections::HashMap::new();
    while seen.len() < n {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("disconnects published in time")
            .expect("event stream open");
        if let LifecycleEvent::ConnectionDisconnected {
            conversation_id,
            reason,
            ..
        } = &*event
        {
            let earlier = seen.insert(conversation_id.to_string(), reason.as_str().to_string());
            assert!(earlier.is_none(), "two disconnects for {conversation_id}");
        }
    }
    seen
}

/// Poll until `check` holds, for at most `WAIT` (for effects that settle asynchronously,
/// like the kernel closing a socket).
pub async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

pub fn conversation_id(started: &Value) -> String {
    started["conversation_id"]
        .as_str()
        .expect("conversation id")
        .to_string()
}
