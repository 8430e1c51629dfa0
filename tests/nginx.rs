//! hearken behind a real nginx, configured from `config/nginx.conf` as committed: only
//! the upstream address and the listen address are replaced. nginx runs as the current
//! user on a free 127.0.0.1 port, with its pid, logs and temp paths in a directory of its
//! own, and is stopped and reaped by a `Drop` guard. Everything below goes through
//! nginx's `/hearken/` prefix: sessions over WebSockets, `/v1/events`, `/metrics`.
//!
//! nginx is required: without it these tests fail and name `scripts/setup.sh`.

mod common;
#[path = "model_support/mod.rs"]
mod model_support;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, Stream, StreamExt};
use hearken::ExitReason;
use model_support::{fixture_text, wer};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

/// The deployment config under test.
const SITE_CONF: &str = include_str!("../config/nginx.conf");
/// Its lines the test replaces; each must occur exactly once.
const UPSTREAM_LINE: &str = "server 127.0.0.1:8080;";
const LISTEN_LINE: &str = "listen 80;";
/// The path prefix `config/nginx.conf` serves hearken under.
const PREFIX: &str = "/hearken";
/// Fresh ports tried when another process takes the free port before nginx binds it.
const START_ATTEMPTS: usize = 5;
/// How long nginx may take to stop after SIGTERM before its process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Gauges that are not per session and so stay above zero at rest: the espeak-ng pool
/// lives as long as the server, and histories outlive their sessions (llm.history_ttl_ms).
const SERVER_LIFETIME_GAUGES: [&str; 2] =
    ["hearken_child_processes", "hearken_stored_conversations"];

/// Gauges of the process heap (what malloc holds): server-wide figures, not per session.
const HEAP_GAUGES: &str = "hearken_heap_";

/// A running nginx in front of one hearken server. Dropping it stops and reaps nginx
/// (master and workers) and removes its directory, also when a test panics.
struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// Start nginx in front of `upstream` and wait until `/hearken/ready` answers 200
    /// through it.
    async fn start(upstream: SocketAddr) -> Nginx {
        let binary = nginx_binary();
        let mut attempt = 1;
        loop {
            let mut nginx = Nginx::spawn(&binary, upstream, free_port());
            match nginx.wait_ready().await {
                Ok(()) => return nginx,
                Err(log) if log.contains("Address already in use") && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                Err(log) => panic!("nginx ({}) did not come up:\n{log}", binary.display()),
            }
        }
    }

    fn spawn(binary: &Path, upstream: SocketAddr, port: u16) -> Nginx {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hearken-nginx-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create nginx directory");
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, upstream, port)).expect("write nginx.conf");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("create stderr.log");
        let mut command = Command::new(binary);
        command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group, so the guard can reach the workers too.
            .process_group(0);
        // SAFETY: prctl(2) is async-signal-safe. If the test process dies without
        // running the guard (SIGKILL), the kernel sends nginx's master SIGTERM, and the
        // master stops its workers.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run scripts/setup.sh to install nginx",
                binary.display()
            )
        });
        Nginx {
            child: Some(child),
            dir,
            port,
        }
    }

    /// Poll (bounded) until hearken answers `/ready` through nginx; the logs if nginx
    /// exits (then it is reaped here) or never answers.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        let ready = self.http("/ready");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("nginx exited ({status})\n{}", self.logs()));
                }
            }
            if reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "no 200 from {ready} within {WAIT:?}\n{}",
            self.logs()
        ))
    }

    fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "--- stderr ---\n{}--- error.log ---\n{}",
            read("stderr.log"),
            read("error.log")
        )
    }

    /// An HTTP URL of hearken's `path` under the prefix.
    fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{PREFIX}{path}", self.port)
    }

    /// The WebSocket URL under the prefix.
    fn ws(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}{PREFIX}/v1/ws?{query}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            // SAFETY: kill(2) on our own child. SIGTERM is nginx's fast shutdown: the
            // master stops its workers, then exits.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_GRACE;
            let exited = loop {
                match child.try_wait() {
                    Ok(Some(_)) => break true,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break false,
                }
            };
            if !exited {
                // The master is not reaped yet, so its process group id is still ours.
                // SAFETY: kill(2) on the process group we created for nginx.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("nginx logs ({}):\n{}", self.dir.display(), self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx on PATH, else Debian's `/usr/sbin/nginx` (not on a normal user's PATH).
fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nginx"))
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed (not on PATH, not /usr/sbin/nginx): \
                 run scripts/setup.sh, which installs the Debian package `nginx`"
            )
        })
}

/// A port that was free a moment ago (nginx binds it itself; `Nginx::start` retries).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// A whole nginx.conf around `config/nginx.conf`: everything nginx writes lives in
/// `dir`, so it runs without root.
fn nginx_conf(dir: &Path, upstream: SocketAddr, port: u16) -> String {
    let site = replace_once(SITE_CONF, UPSTREAM_LINE, &format!("server {upstream};"));
    let site = replace_once(&site, LISTEN_LINE, &format!("listen 127.0.0.1:{port};"));
    let dir = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;

events {{
    worker_connections 512;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

{site}
}}
"
    )
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "config/nginx.conf must contain `{from}` exactly once (tests/nginx.rs replaces it)"
    );
    text.replacen(from, to, 1)
}

/// `/v1/events` read as a client does: one JSON object per `data:` line.
struct EventStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl EventStream {
    async fn open(url: &str) -> EventStream {
        let response = reqwest::get(url).await.expect("GET /v1/events");
        assert_eq!(response.status(), 200);
        let kind = response.headers().get("content-type").cloned();
        assert_eq!(
            kind.as_ref().and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        EventStream {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    /// The next event, skipping comments (the opening line, keep-alives).
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("UTF-8 event");
                if let Some(json) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(json).expect("event JSON");
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("an event in time")
                .expect("event stream open")
                .expect("event stream readable");
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Every event up to and including the disconnect of `id`.
    async fn until_disconnect_of(&mut self, id: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let last = event["type"] == "connection_disconnected" && event["conversation_id"] == id;
            seen.push(event);
            if last {
                return seen;
            }
        }
    }
}

async fn metrics_text(nginx: &Nginx) -> String {
    let response = reqwest::get(nginx.http("/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics body")
}

/// The samples of every per-session gauge (each family `# TYPE`d `gauge`, except the
/// server-lifetime and heap ones) in a Prometheus text exposition: (sample, value).
fn session_gauges(text: &str) -> Vec<(String, f64)> {
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" gauge"))
        .filter(|name| !SERVER_LIFETIME_GAUGES.contains(name) && !name.starts_with(HEAP_GAUGES))
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(sample, _)| {
            let family = sample.split('{').next().unwrap_or_default();
            families.contains(&family)
        })
        .map(|(sample, value)| (sample.to_string(), value.parse().expect("gauge value")))
        .collect()
}

/// Poll `/metrics` through nginx (bounded) until every per-session gauge is zero.
async fn assert_gauges_zero_through_nginx(nginx: &Nginx) {
    let deadline = Instant::now() + WAIT;
    loop {
        let gauges = session_gauges(&metrics_text(nginx).await);
        assert!(
            gauges
                .iter()
                .any(|(s, _)| s == "hearken_live_actors{kind=\"session\"}"),
            "no session gauge on /metrics: {gauges:?}"
        );
        let above: Vec<_> = gauges.iter().filter(|(_, v)| *v != 0.0).collect();
        if above.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "gauges above zero: {above:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket upgrade through nginx carrying `X-Forwarded-For: forwarded_for`.
async fn connect_for(url: &str, forwarded_for: &'static str) -> Result<Ws, tungstenite::Error> {
    let mut request = url.into_client_request().expect("WebSocket request");
    request
        .headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static(forwarded_for));
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade answered in time")
        .map(|(ws, _)| ws)
}

#[tokio::test]
async fn a_session_through_the_prefix_ends_with_one_client_disconnect() {
    let mut config = test_config();
    // A closed /v1/events stream is noticed on the next keep-alive write.
    config.server.events_keepalive_ms = 100;
    let server = TestServer::start(config);
    let nginx = Nginx::start(server.addr).await;
    let mut registry_events = server.events();
    let mut sse = EventStream::open(&nginx.http("/v1/events")).await;
    assert!(eventually(|| server.metrics.event_subscribers.get() == 1).await);

    let (mut ws, started) =
        start_session(&nginx.ws("client_id=behind-nginx&sample_rate=16000")).await;
    let id = conversation_id(&started);
    assert_eq!(started["resumed"], false);
    let (speech, rate) = fixture("fox_16k.wav");
    stream_pcm(&mut ws, &speech, rate, false).await;
    send_json(&mut ws, json!({"type": "audio.end"})).await;
    let transcript = next_event_of(&mut ws, "transcript.final").await;
    let text = transcript["text"].as_str().expect("transcript text");
    let reference = fixture_text("fox_16k", "text");
    assert!(wer(&reference, text) <= 0.2, "{text:?} for {reference:?}");
    send_close(&mut ws).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(1000),
        "the close echoed through nginx"
    );

    let (reason, _) = disconnect_of(&mut registry_events, &id).await;
    assert_eq!(reason, "client_disconnect");

    // A marker session afterwards: the registry publishes in order, so once the marker's
    // disconnect is on the stream, every event of `id` is too.
    let (mut marker, started) = start_session(&nginx.ws("client_id=marker")).await;
    let marker_id = conversation_id(&started);
    send_close(&mut marker).await;
    close_code(&mut marker).await;
    let seen = sse.until_disconnect_of(&marker_id).await;
    let of_id: Vec<&Value> = seen
        .iter()
        .filter(|e| e["conversation_id"] == id.as_str())
        .collect();
    assert_eq!(of_id.len(), 2, "{seen:#?}");
    assert_eq!(of_id[0]["type"], "connection_started");
    assert_eq!(of_id[0]["client_id"], "behind-nginx");
    assert_eq!(of_id[1]["type"], "connection_disconnected");
    assert_eq!(of_id[1]["reason"], "client_disconnect");
    assert_eq!(server.metrics.disconnects(ExitReason::ClientDisconnect), 2);
    assert_eq!(server.metrics.duplicate_disconnects.get(), 0);

    // nginx passes the end of the event stream on to hearken.
    drop(sse);
    assert!(
        eventually(|| server.metrics.event_subscribers.get() == 0).await,
        "/v1/events subscriber still open after the client left nginx"
    );
    assert_gauges_zero_through_nginx(&nginx).await;
}

/// How a churn cycle leaves.
#[derive(Clone, Copy, Debug)]
enum Leave {
    CloseFrame,
    DropTcp,
    IdleTimeout,
}

impl Leave {
    fn reason(self) -> &'static str {
        match self {
            Leave::CloseFrame | Leave::DropTcp => "client_disconnect",
            Leave::IdleTimeout => "timeout",
        }
    }
}

const CHURN_CYCLES: usize = 30;
const CHURN_CONCURRENCY: usize = 5;

/// One session through nginx: start, 300 ms of real speech, leave; its conversation id.
async fn cycle(url: String, leave: Leave, audio: Arc<Vec<u8>>) -> String {
    let (mut ws, started) = start_session(&url).await;
    for frame in audio.chunks(640).take(15) {
        ws.send(Message::binary(frame.to_vec()))
            .await
            .expect("send audio");
    }
    match leave {
        Leave::CloseFrame => {
            send_close(&mut ws).await;
            assert_eq!(close_code(&mut ws).await, Some(1000));
        }
        Leave::DropTcp => drop(ws),
        Leave::IdleTimeout => assert_eq!(close_code(&mut ws).await, Some(4000)),
    }
    conversation_id(&started)
}

#[tokio::test]
async fn churn_through_nginx_leaves_every_gauge_at_zero() {
    let mut config = light_config();
    // Long enough that no Close or TCP-drop cycle idles out by accident on a busy machine.
    config.session.idle_timeout_ms = 1000;
    let server = TestServer::start(config);
    let nginx = Nginx::start(server.addr).await;
    let mut events = server.events();
    let (speech, _) = fixture("fox_16k.wav");
    let audio = Arc::new(pcm_bytes(&speech[16_000..]));

    let permits = Arc::new(Semaphore::new(CHURN_CONCURRENCY));
    let mut tasks = Vec::with_capacity(CHURN_CYCLES);
    for i in 0..CHURN_CYCLES {
        let leave = [Leave::CloseFrame, Leave::DropTcp, Leave::IdleTimeout][i % 3];
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("semaphore open");
        let url = nginx.ws(&format!("client_id=churn-{i}"));
        let audio = Arc::clone(&audio);
        tasks.push(tokio::spawn(async move {
            let id = cycle(url, leave, audio).await;
            drop(permit);
            (id, leave)
        }));
    }
    let mut sessions = Vec::with_capacity(CHURN_CYCLES);
    for task in tasks {
        sessions.push(task.await.expect("cycle finished"));
    }

    let published = disconnects(&mut events, CHURN_CYCLES).await;
    for (id, leave) in &sessions {
        assert_eq!(
            published.get(id).map(String::as_str),
            Some(leave.reason()),
            "{id} left by {leave:?}"
        );
    }
    let metrics = &server.metrics;
    let total = || {
        ExitReason::ALL
            .iter()
            .map(|r| metrics.disconnects(*r))
            .sum::<u64>()
    };
    // Gauges fall just before the registry counts the event: wait for the last count.
    assert!(eventually(|| total() >= CHURN_CYCLES as u64).await);
    assert_eq!(total(), CHURN_CYCLES as u64, "one event per session");
    assert_eq!(metrics.duplicate_disconnects.get(), 0);
    assert_gauges_zero_through_nginx(&nginx).await;
}

/// The test client stands in for a proxy in front of nginx that forwards for clients at
/// 203.0.113.9 and 203.0.113.10 (TEST-NET-3). nginx appends its own peer (127.0.0.1)
/// and connects to hearken from 127.0.0.1, a trusted proxy; hearken takes the right-most
/// address of the chain that is not a trusted proxy. (On one loopback address nginx's
/// addition is itself trusted, so this cannot tell appending from passing the header on;
/// the right-most rule is unit-tested in src/http/auth.rs.)
#[tokio::test]
async fn the_per_ip_limit_counts_the_forwarded_client_address() {
    let mut config = light_config();
    config.server.max_sessions_per_ip = 1;
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    let server = TestServer::start(config);
    let nginx = Nginx::start(server.addr).await;
    let mut events = server.events();
    let url = nginx.ws("");

    let mut first = connect_for(&url, "203.0.113.9")
        .await
        .expect("first admitted");
    let started = next_event_of(&mut first, "session.started").await;
    let first_id = conversation_id(&started);

    match connect_for(&url, "203.0.113.9").await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = response.body().as_deref().unwrap_or_default();
            let body = String::from_utf8_lossy(body);
            assert!(body.contains("per_ip_limit"), "{body}");
        }
        Err(other) => panic!("expected HTTP 503, got {other}"),
        Ok(_) => panic!("a second session from 203.0.113.9 was admitted"),
    }
    assert!(metrics_text(&nginx)
        .await
        .contains("hearken_rejected_connections_total{reason=\"per_ip_limit\"} 1"));

    // Not nginx's address: another forwarded client gets in.
    let mut other = connect_for(&url, "203.0.113.10")
        .await
        .expect("other client admitted");
    next_event_of(&mut other, "session.started").await;

    // The first session still works.
    send_json(&mut first, json!({"type": "ping"})).await;
    next_event_of(&mut first, "pong").await;

    // Its place comes back when it ends.
    send_close(&mut first).await;
    close_code(&mut first).await;
    let (reason, _) = disconnect_of(&mut events, &first_id).await;
    assert_eq!(reason, "client_disconnect");
    let mut again = connect_for(&url, "203.0.113.9")
        .await
        .expect("admitted again");
    next_event_of(&mut again, "session.started").await;

    for ws in [&mut other, &mut again] {
        send_close(ws).await;
        close_code(ws).await;
    }
    assert_gauges_zero_through_nginx(&nginx).await;
}
