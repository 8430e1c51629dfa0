//! Lifecycle costs: what it takes to add and remove one conversation.
//!
//! `registry/register_lease_disconnect` is the bookkeeping floor: inside one actix
//! system, a `RegistryHandle::register` to the [`Registry`] actor (with a do-nothing
//! session recipient), the lease dropped with a recorded exit reason, and the
//! `connection_disconnected` event received on a subscription. No sockets, no
//! conversation tree.
//!
//! `teardown/...` is the real thing over a real WebSocket: a server from
//! [`Server::start`] on `127.0.0.1:0` (webrtc-vad, no recogniser, like the tests'
//! `light_config`) runs in its own actix system thread, and a tokio-tungstenite client
//! on the bench thread opens a session and waits for `session.started` (not timed). The
//! timed part runs from sending the Close frame to receiving that conversation's
//! `connection_disconnected` on `server.registry().subscribe()`: the session notices
//! the close, the conversation tree stops child by child, the lease is dropped and the
//! registry publishes. `teardown/with_1000_idle_sessions` measures the same while 1,000
//! other sessions sit connected and idle, which is the "teardown p99 < 5 ms with 1,000
//! live idle sessions" target. Criterion reports mean and median only, so after each
//! teardown benchmark a fixed pass of [`PERCENTILE_SAMPLES`] teardowns prints p50, p90,
//! p99 and max from our own samples.
//!
//! Nothing installs a tracing subscriber, so log formatting is not in these numbers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::Criterion;
use futures_util::{SinkExt, StreamExt};
use hearken::metrics::Metrics;
use hearken::registry::{EndSession, LifecycleEvent, Registry, RegistryHandle};
use hearken::{Config, ExitReason, Server};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Events = broadcast::Receiver<Arc<LifecycleEvent>>;

/// Bound on any single wait: a stuck teardown fails the bench instead of hanging it.
const WAIT: Duration = Duration::from_secs(20);

/// Idle sessions held open for the loaded teardown benchmark (the target's load).
const IDLE_SESSIONS: usize = 1_000;

/// Idle sessions opened concurrently while loading; well under the 4096 listen backlog.
const CONNECT_CONCURRENCY: usize = 64;

/// Teardowns in the fixed pass that gives p50/p99 (criterion does not report tails).
/// 1,000 puts ten samples above p99, enough for it not to be a single outlier.
const PERCENTILE_SAMPLES: usize = 1_000;

/// Idle timeout for bench servers (ms): far beyond any run, so no idle session is
/// ended by the server while we measure.
const BENCH_IDLE_TIMEOUT_MS: u64 = 3_600_000;

/// File descriptors the loaded benchmark needs: a client and a server socket per
/// session, plus headroom for the runtime, pools and criterion's files.
const FDS_NEEDED: u64 = 2 * IDLE_SESSIONS as u64 + 1_024;

// ---------------------------------------------------------------------------------------
// (a) registry bookkeeping

/// Stands in for a session transport: the registry only ever sends it `EndSession`,
/// and only to supersede or drain, which this benchmark never does.
struct NullSession;

impl Actor for NullSession {
    type Context = Context<Self>;
}

impl Handler<EndSession> for NullSession {
    type Result = ();

    fn handle(&mut self, _: EndSession, _: &mut Context<Self>) {}
}

fn registry_cycle(c: &mut Criterion) {
    let system = actix::System::new();
    let (registry, session, mut events) = system.block_on(async {
        let registry = Registry::start_new(Metrics::new());
        let session = NullSession.start().recipient::<EndSession>();
        let events = registry.subscribe();
        (registry, session, events)
    });
    // Sequential ids: cheaper than v4 and never repeated, so no registration supersedes.
    let mut next_id = 0u128;
    c.bench_function("registry/register_lease_disconnect", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    next_id += 1;
                    let conversation_id = Uuid::from_u128(next_id);
                    let mut lease = registry
                        .register(conversation_id, "bench".into(), session.clone())
                        .await
                        .expect("lease granted");
                    lease.set_exit(ExitReason::ClientDisconnect, Instant::now());
                    drop(lease);
                    disconnect_of(&mut events, conversation_id).await;
                }
                start.elapsed()
            })
        })
    });
}

/// Wait for `conversation_id`'s `connection_disconnected`, skipping other events.
async fn disconnect_of(events: &mut Events, conversation_id: Uuid) {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let LifecycleEvent::ConnectionDisconnected {
                        conversation_id: id,
                        ..
                    } = &*event
                    {
                        if *id == conversation_id {
                            return;
                        }
                    }
                }
                // Only other conversations' events can be lost this way: ours is
                // published after we start waiting and the buffer holds 4096.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => panic!("registry event stream closed"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("connection_disconnected within the wait bound");
}

// ---------------------------------------------------------------------------------------
// (b), (c) teardown over a real WebSocket

/// A hearken server in its own actix system thread; stopped (drained) on drop.
struct BenchServer {
    addr: SocketAddr,
    registry: RegistryHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BenchServer {
    fn start() -> BenchServer {
        let config = bench_config();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let server = Server::start(config).await.expect("server starts");
                // Sessions are refused until every model thread (here the TTS voice)
                // has loaded.
                let deadline = Instant::now() + WAIT;
                while !server.models_loaded() {
                    assert!(
                        Instant::now() < deadline,
                        "models loaded within the wait bound"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = ready_tx.send((server.local_addr(), server.registry()));
                let _ = stopped.await;
                let _ = server.shutdown().await;
            })
        });
        let (addr, registry) = ready_rx.recv().expect("server thread reports its address");
        BenchServer {
            addr,
            registry,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, client_id: &str) -> String {
        format!("ws://{}/v1/ws?client_id={client_id}", self.addr)
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The tests' `light_config` (ephemeral port, two HTTP workers, webrtc-vad, no
/// recogniser, no reply model), with admission and idle limits that let 1,000 idle sessions from one
/// address stay connected for the whole run.
fn bench_config() -> Config {
    let mut config = Config::default();
    config.server.port = 0;
    config.server.workers = 2;
    config.server.max_sessions = 2 * IDLE_SESSIONS;
    config.server.max_sessions_per_ip = 2 * IDLE_SESSIONS;
    config.session.idle_timeout_ms = BENCH_IDLE_TIMEOUT_MS;
    config.vad.engine = hearken::config::VadEngine::Webrtc;
    config.stt.enabled = false;
    config.llm.backend = hearken::config::LlmBackendKind::None;
    config.models.dir = format!("{}/models", env!("CARGO_MANIFEST_DIR")).into();
    config.validate().expect("bench config is valid");
    config
}

/// Connect and wait for `session.started`; returns the socket and the conversation id.
async fn start_session(url: &str) -> (Ws, Uuid) {
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect within the wait bound")
        .expect("upgrade accepted");
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("session.started within the wait bound")
            .expect("socket open")
            .expect("socket healthy");
        let Message::Text(text) = message else {
            continue;
        };
        let event: serde_json::Value = serde_json::from_str(text.as_str()).expect("server JSON");
        if event["type"] == "session.started" {
            let id = event["conversation_id"].as_str().expect("conversation id");
            return (ws, Uuid::parse_str(id).expect("conversation id is a UUID"));
        }
    }
}

/// One measured teardown: open a session (not timed), then time Close → the
/// conversation's `connection_disconnected`. Afterwards (not timed) we read the server's
/// Close reply and drop the socket, so none outlives its iteration. We do not wait for
/// the server to close TCP: actix-web holds it until its client-disconnect timeout (1 s)
/// expires, which would make every iteration last a second.
async fn teardown_once(url: &str, events: &mut Events) -> Duration {
    let (mut ws, conversation_id) = start_session(url).await;
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }));
    let start = Instant::now();
    ws.send(close).await.expect("send close");
    disconnect_of(events, conversation_id).await;
    let elapsed = start.elapsed();
    let close_reply = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        }
    };
    tokio::time::timeout(WAIT, close_reply)
        .await
        .expect("server answered the close frame");
    drop(ws);
    elapsed
}

/// Open `n` sessions and leave them idle (never read or written until dropped).
async fn open_idle_sessions(server: &BenchServer, n: usize) -> Vec<Ws> {
    let mut sessions = Vec::with_capacity(n);
    let mut pending = futures_util::stream::iter(0..n)
        .map(|i| {
            let url = server.url(&format!("idle-{i}"));
            async move { start_session(&url).await.0 }
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    while let Some(ws) = pending.next().await {
        sessions.push(ws);
    }
    sessions
}

/// What a teardown benchmark keeps between criterion's calls of its routine.
struct TeardownFixture {
    server: BenchServer,
    events: Events,
    /// Never read or written: held only to keep the sessions connected.
    idle: Vec<Ws>,
}

impl TeardownFixture {
    fn start(runtime: &tokio::runtime::Runtime, idle: usize) -> TeardownFixture {
        let server = BenchServer::start();
        let idle = runtime.block_on(open_idle_sessions(&server, idle));
        // Subscribe after the idle sessions so their start events are not queued for us.
        let events = server.registry.subscribe();
        TeardownFixture {
            server,
            events,
            idle,
        }
    }
}

fn teardown(c: &mut Criterion, name: &str, idle: usize, percentiles: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    // Started on first use, so a filtered-out benchmark never opens 1,000 sessions.
    let mut fixture: Option<TeardownFixture> = None;
    c.bench_function(name, |b| {
        let fixture = fixture.get_or_insert_with(|| TeardownFixture::start(&runtime, idle));
        let url = fixture.server.url("bench");
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += teardown_once(&url, &mut fixture.events).await;
                }
                total
            })
        })
    });
    let Some(mut fixture) = fixture else {
        return;
    };
    if percentiles {
        let url = fixture.server.url("bench");
        let mut samples: Vec<Duration> = runtime.block_on(async {
            let mut samples = Vec::with_capacity(PERCENTILE_SAMPLES);
            for _ in 0..PERCENTILE_SAMPLES {
                samples.push(teardown_once(&url, &mut fixture.events).await);
            }
            samples
        });
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        println!(
            "{name}: {} teardowns, {idle} idle sessions: p50 {:.1} µs, p90 {:.1} µs, \
             p99 {:.1} µs, max {:.1} µs",
            samples.len(),
            micros(at(0.50)),
            micros(at(0.90)),
            micros(at(0.99)),
            micros(at(1.0)),
        );
    }
    // Close the idle clients before the server drains, so shutdown does not wait on
    // clients that never read its close frames.
    runtime.block_on(async {
        for mut ws in std::mem::take(&mut fixture.idle) {
            let _ = ws.close(None).await;
        }
    });
    drop(fixture);
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Raise the soft RLIMIT_NOFILE to the hard limit: 1,000 idle sessions hold two
/// descriptors each in this one process (client and server side).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        eprintln!("getrlimit(RLIMIT_NOFILE) failed; keeping the current limit");
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard
        // limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            eprintln!("setrlimit(RLIMIT_NOFILE) failed; keeping the current limit");
        }
    }
    if limit.rlim_cur < FDS_NEEDED {
        eprintln!(
            "RLIMIT_NOFILE is {}, the loaded teardown benchmark needs about {FDS_NEEDED}",
            limit.rlim_cur
        );
    }
}

fn main() {
    raise_open_file_limit();
    let mut c = Criterion::default().configure_from_args();
    // Like criterion itself: without `--bench` (e.g. `cargo test --benches`) each
    // benchmark runs once as a smoke test, so skip the extra percentile pass.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    registry_cycle(&mut c);
    teardown(&mut c, "teardown/no_other_sessions", 0, benchmarking);
    teardown(
        &mut c,
        "teardown/with_1000_idle_sessions",
        IDLE_SESSIONS,
        benchmarking,
    );
    c.final_summary();
}
