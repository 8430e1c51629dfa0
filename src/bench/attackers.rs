//! Hostile clients for `abuse` and `soak`: each attacker holds one connection at a time,
//! and when the server ends it, opens the next after `reconnect_delay`, until the stop
//! signal. Every connection's end is counted by how it ended (the server's Close code, an
//! HTTP status, end of stream, reset, or still open at the stop) with its lifetime.
//!
//! - [`Kind::Slowloris`]: raw TCP, a request head trickled one byte a second, never
//!   finished; `server.request_head_timeout_ms` must drop it.
//! - [`Kind::NeverReading`]: a raw WebSocket with a 4 KiB receive buffer that streams
//!   real-time audio and ten unknown events a second (each answered with an `error` that
//!   echoes its 16 KiB type name, under the flood limit), and never reads: only the
//!   write-stall deadline can end it.
//! - [`Kind::Flooder`]: a WebSocket sending `ping` text frames as fast as it can; flood
//!   control must close it with 1008.
//! - [`Kind::GarbageOpus`]: a `codec=opus` session sending random bytes as 20 ms packets
//!   in real time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{interval, sleep, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::audio_src::FRAME_MS;
use super::stats::{Hist, Summary};
use super::wsconn::{self, stopped};

/// Pause between two bytes of a slowloris head.
const TRICKLE: Duration = Duration::from_secs(1);
/// Receive buffer of a never-reading client: small, so the server's output backs up soon.
const NEVER_READING_RCVBUF: u32 = 4096;
/// Unknown events a never-reading client sends per second: under the default flood
/// limit (`session.client_events_per_s = 20`), so only the stall deadline can end it.
const NEVER_READING_EVENTS_PER_S: u64 = 10;
/// Length of the unknown event type a never-reading client sends; the server's `error`
/// names it, so each event makes ~16 KiB of output, 160 KiB/s. The server's writes
/// stall only once the kernel's send buffer is full, and on loopback it grows to
/// `tcp_wmem`'s maximum (4 MiB on Debian): at 2 KiB an event no stall came in a minute.
const NEVER_READING_TYPE_BYTES: usize = 16 * 1024;
/// Text frames a flooder queues between two flushes.
const FLOOD_BATCH: usize = 64;
/// Longest random packet a garbage-Opus sender makes (bytes; real 20 ms packets at
/// 32 kbit/s are ~80).
const GARBAGE_MAX_BYTES: usize = 400;
/// Bound on connecting, on the upgrade answer and on the Close echo at the stop.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds of hostile client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Slowloris,
    NeverReading,
    Flooder,
    GarbageOpus,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Slowloris,
        Kind::NeverReading,
        Kind::Flooder,
        Kind::GarbageOpus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Slowloris => "slowloris",
            Kind::NeverReading => "never_reading",
            Kind::Flooder => "flooder",
            Kind::GarbageOpus => "garbage_opus",
        }
    }
}

/// How many attackers of each kind run at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Force {
    pub slowloris: usize,
    pub never_reading: usize,
    pub flooders: usize,
    pub garbage_opus: usize,
}

impl Force {
    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Slowloris => self.slowloris,
            Kind::NeverReading => self.never_reading,
            Kind::Flooder => self.flooders,
            Kind::GarbageOpus => self.garbage_opus,
        }
    }
}

/// Where the attackers go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The WebSocket endpoint, e.g. `ws://127.0.0.1:8080/v1/ws`.
    pub url: String,
    pub addr: SocketAddr,
    /// `host:port` for the `Host` header.
    pub host: String,
    /// The endpoint's path, e.g. `/v1/ws`.
    pub path: String,
}

impl Target {
    pub async fn resolve(url: &str) -> anyhow::Result<Target> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("bad --url {url}"))?;
        let host = parsed.host_str().context("--url has no host")?.to_string();
        let port = parsed
            .port_or_known_default()
            .context("--url has no port")?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .with_context(|| format!("{host} does not resolve"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
            host: format!("{host}:{port}"),
            path: parsed.path().to_string(),
        })
    }
}

/// One kind's connections and how they ended.
#[derive(Debug, Serialize)]
pub struct KindReport {
    /// Attackers of this kind at once.
    pub concurrent: usize,
    pub connections: u64,
    /// How connections ended: `close 1008`, `HTTP 408`, `eof`, `reset`, `open at stop`, ...
    pub outcomes: BTreeMap<String, u64>,
    /// Lifetime of connections the server ended (those still open at the stop left out).
    pub lifetime_ended_by_server: Summary,
    pub frames_sent: u64,
    pub bytes_sent: u64,
}

#[derive(Default)]
struct Tally {
    connections: u64,
    outcomes: BTreeMap<String, u64>,
    lifetime: Hist,
    frames_sent: u64,
    bytes_sent: u64,
}

/// How one connection ended.
struct Ending {
    outcome: String,
    /// The server ended it (not our stop, not a failure to connect).
    by_server: bool,
    frames: u64,
    bytes: u64,
}

impl Ending {
    fn server(outcome: impl Into<String>, frames: u64, bytes: u64) -> Ending {
        Ending {
            outcome: outcome.into(),
            by_server: true,
            frames,
            bytes,
        }
    }

    fn ours(outcome: impl Into<String>, frames: u64, bytes: u64) -> Ending {
        Ending {
            outcome: outcome.into(),
            by_server: false,
            frames,
            bytes,
        }
    }
}

/// A running set of attackers.
pub struct Attack {
    force: Force,
    tallies: Arc<Mutex<BTreeMap<Kind, Tally>>>,
    set: JoinSet<()>,
}

impl Attack {
    /// Start every attacker of `force`, each looping until `stop`.
    pub fn start(
        target: &Target,
        force: Force,
        reconnect_delay: Duration,
        pcm_frames: Arc<Vec<Bytes>>,
        stop: &watch::Receiver<bool>,
    ) -> Attack {
        let tallies: Arc<Mutex<BTreeMap<Kind, Tally>>> = Arc::default();
        let mut set = JoinSet::new();
        for kind in Kind::ALL {
            for index in 0..force.count(kind) {
                let attacker = Attacker {
                    kind,
                    index,
                    target: target.clone(),
                    pcm_frames: Arc::clone(&pcm_frames),
                    stop: stop.clone(),
                };
                let tallies = Arc::clone(&tallies);
                set.spawn(async move { attacker.run(reconnect_delay, &tallies).await });
            }
        }
        Attack {
            force,
            tallies,
            set,
        }
    }

    /// A shareable view of the connection count, for a progress line.
    pub fn counter(&self) -> impl Fn() -> u64 + Send + 'static {
        let tallies = Arc::clone(&self.tallies);
        move || lock(&tallies).values().map(|t| t.connections).sum()
    }

    /// Wait (bounded) for every attacker to notice the stop, then report per kind.
    pub async fn finish(mut self, bound: Duration) -> BTreeMap<String, KindReport> {
        let _ = timeout(bound, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        self.set.abort_all();
        let tallies = lock(&self.tallies);
        Kind::ALL
            .into_iter()
            .filter(|kind| self.force.count(*kind) > 0)
            .map(|kind| {
                let report = match tallies.get(&kind) {
                    Some(t) => KindReport {
                        concurrent: self.force.count(kind),
                        connections: t.connections,
                        outcomes: t.outcomes.clone(),
                        lifetime_ended_by_server: t.lifetime.summary(),
                        frames_sent: t.frames_sent,
                        bytes_sent: t.bytes_sent,
                    },
                    None => KindReport {
                        concurrent: self.force.count(kind),
                        connections: 0,
                        outcomes: BTreeMap::new(),
                        lifetime_ended_by_server: Summary::default(),
                        frames_sent: 0,
                        bytes_sent: 0,
                    },
                };
                (kind.as_str().to_string(), report)
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Print one line per kind.
pub fn print_reports(reports: &BTreeMap<String, KindReport>) {
    for (kind, r) in reports {
        println!(
            "{kind} (x{}): {} connections; ended: {}; lifetime when ended by the server p50 {:.1} s, max {:.1} s; {} frames / {} bytes sent",
            r.concurrent,
            r.connections,
            super::stats::format_counts(&r.outcomes),
            r.lifetime_ended_by_server.p50_ms / 1000.0,
            r.lifetime_ended_by_server.max_ms / 1000.0,
            r.frames_sent,
            r.bytes_sent
        );
    }
}

struct Attacker {
    kind: Kind,
    index: usize,
    target: Target,
    pcm_frames: Arc<Vec<Bytes>>,
    stop: watch::Receiver<bool>,
}

impl Attacker {
    async fn run(mut self, reconnect_delay: Duration, tallies: &Mutex<BTreeMap<Kind, Tally>>) {
        let mut round = 0u64;
        while !*self.stop.borrow() {
            let begin = Instant::now();
            let ending = match self.kind {
                Kind::Slowloris => self.slowloris().await,
                Kind::NeverReading => self.never_reading().await,
                Kind::Flooder => self.flooder().await,
                Kind::GarbageOpus => self.garbage_opus(round).await,
            };
            round += 1;
            {
                let mut t = lock(tallies);
                let tally = t.entry(self.kind).or_default();
                tally.connections += 1;
                *tally.outcomes.entry(ending.outcome).or_default() += 1;
                tally.frames_sent += ending.frames;
                tally.bytes_sent += ending.bytes;
                if ending.by_server {
                    tally.lifetime.record(begin.elapsed());
                }
            }
            tokio::select! {
                _ = stopped(&mut self.stop) => break,
                _ = sleep(reconnect_delay) => {}
            }
        }
    }

    async fn connect(&self, rcvbuf: Option<u32>) -> Result<TcpStream, Ending> {
        let failed = |e: std::io::Error| Ending::ours(format!("connect: {}", e.kind()), 0, 0);
        let socket = TcpSocket::new_v4().map_err(failed)?;
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).map_err(failed)?;
        }
        match timeout(STEP_TIMEOUT, socket.connect(self.target.addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(failed(e)),
            Err(_) => Err(Ending::ours("connect: timeout", 0, 0)),
        }
    }

    /// A request head trickled a byte a second; never finished.
    async fn slowloris(&mut self) -> Ending {
        let mut stream = match self.connect(None).await {
            Ok(stream) => stream,
            Err(ending) => return ending,
        };
        let head = format!(
            "GET {}?client_id=slowloris-{} HTTP/1.1\r\nHost: {}\r\n",
            self.target.path, self.index, self.target.host
        );
        if let Err(e) = stream.write_all(head.as_bytes()).await {
            return Ending::server(io_outcome(&e), 0, 0);
        }
        let mut sent = head.len() as u64;
        let trickle = b"X-Slowloris: a-header-that-never-ends";
        let mut buf = [0u8; 512];
        let mut answer = Vec::new();
        let mut tick = interval(TRICKLE);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(&mut self.stop) => return Ending::ours("open at stop", 0, sent),
                _ = tick.tick() => {
                    let byte = trickle[sent as usize % trickle.len()];
                    if let Err(e) = stream.write_all(&[byte]).await {
                        return Ending::server(http_or(&answer, io_outcome(&e)), 0, sent);
                    }
                    sent += 1;
                }
                read = stream.read(&mut buf) => match read {
                    Ok(0) => return Ending::server(http_or(&answer, "eof".into()), 0, sent),
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e) => return Ending::server(http_or(&answer, io_outcome(&e)), 0, sent),
                },
            }
        }
    }

    /// Upgrade over raw TCP; the 101 head is read, nothing after it ever is.
    async fn raw_upgrade(&self, stream: &mut TcpStream, query: &str) -> Result<(), Ending> {
        let request = format!(
            "GET {}?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.target.path, self.target.host
        );
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            return Err(Ending::ours(format!("upgrade: {}", io_outcome(&e)), 0, 0));
        }
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        let read_head = async {
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return false,
                }
            }
            true
        };
        match timeout(STEP_TIMEOUT, read_head).await {
            Ok(true) if head.starts_with(b"HTTP/1.1 101") => Ok(()),
            Ok(true) => Err(Ending::ours(http_or(&head, "upgrade refused".into()), 0, 0)),
            Ok(false) => Err(Ending::ours("upgrade: closed", 0, 0)),
            Err(_) => Err(Ending::ours("upgrade: timeout", 0, 0)),
        }
    }

    /// Streams audio and unknown events in real time, never reads.
    async fn never_reading(&mut self) -> Ending {
        let mut stream = match self.connect(Some(NEVER_READING_RCVBUF)).await {
            Ok(stream) => stream,
            Err(ending) => return ending,
        };
        let query = format!(
            "client_id=never-reading-{}&conversation_id={}",
            self.index,
            uuid::Uuid::new_v4()
        );
        if let Err(ending) = self.raw_upgrade(&mut stream, &query).await {
            return ending;
        }
        let name = "x".repeat(NEVER_READING_TYPE_BYTES);
        let event = masked_frame(0x1, format!(r#"{{"type":"{name}"}}"#).as_bytes());
        let every = (1000 / FRAME_MS / NEVER_READING_EVENTS_PER_S).max(1);
        let mut tick = interval(Duration::from_millis(FRAME_MS));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let (mut frames, mut bytes) = (0u64, 0u64);
        loop {
            tokio::select! {
                _ = stopped(&mut self.stop) => return Ending::ours("open at stop", frames, bytes),
                _ = tick.tick() => {}
            }
            let audio = &self.pcm_frames[(self.index + frames as usize) % self.pcm_frames.len()];
            let mut out = masked_frame(0x2, audio);
            if frames % every == 0 {
                out.extend_from_slice(&event);
            }
            // Once the server stops reading, this write blocks: until the stall deadline
            // resets the socket, or our stop.
            tokio::select! {
                _ = stopped(&mut self.stop) => return Ending::ours("open at stop", frames, bytes),
                written = stream.write_all(&out) => if let Err(e) = written {
                    return Ending::server(io_outcome(&e), frames, bytes);
                },
            }
            frames += 1;
            bytes += out.len() as u64;
        }
    }

    /// `ping` text frames as fast as the socket takes them.
    async fn flooder(&mut self) -> Ending {
        let url = match super::session_url(
            &self.target.url,
            &[("client_id", format!("flooder-{}", self.index))],
        ) {
            Ok(url) => url,
            Err(e) => return Ending::ours(format!("url: {e}"), 0, 0),
        };
        let ws = match wsconn::open(&url).await {
            Ok(ws) => ws,
            Err(e) => return Ending::ours(e.to_string(), 0, 0),
        };
        let (mut sink, mut stream) = ws.split();
        let ping = Message::text(r#"{"type":"ping"}"#);
        let frames = AtomicU64::new(0);
        let flood = async {
            loop {
                for _ in 0..FLOOD_BATCH {
                    if sink.feed(ping.clone()).await.is_err() {
                        return;
                    }
                    frames.fetch_add(1, Ordering::Relaxed);
                }
                if sink.flush().await.is_err() {
                    return;
                }
                // Let the reader see the Close between two batches.
                tokio::task::yield_now().await;
            }
        };
        let end = tokio::select! {
            code = close_of(&mut stream) => End::Closed(code),
            _ = flood => End::SendFailed,
            _ = stopped(&mut self.stop) => End::Stop,
        };
        let frames = frames.into_inner();
        let bytes = frames * r#"{"type":"ping"}"#.len() as u64;
        end.into_ending(&mut sink, &mut stream, frames, bytes).await
    }

    /// Random bytes as Opus packets, 50 a second.
    async fn garbage_opus(&mut self, round: u64) -> Ending {
        let url = match super::session_url(
            &self.target.url,
            &[
                ("codec", "opus".to_string()),
                ("sample_rate", "48000".to_string()),
                ("client_id", format!("garbage-opus-{}", self.index)),
            ],
        ) {
            Ok(url) => url,
            Err(e) => return Ending::ours(format!("url: {e}"), 0, 0),
        };
        let ws = match wsconn::open(&url).await {
            Ok(ws) => ws,
            Err(e) => return Ending::ours(e.to_string(), 0, 0),
        };
        let (mut sink, mut stream) = ws.split();
        let mut rng = XorShift::new(self.index as u64 * 7919 + round * 104_729 + 1);
        let (frames, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut tick = interval(Duration::from_millis(FRAME_MS));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let send = async {
            loop {
                tick.tick().await;
                let len = 1 + rng.next() as usize % GARBAGE_MAX_BYTES;
                let packet: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if sink.send(Message::binary(packet)).await.is_err() {
                    return;
                }
                frames.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
        };
        let end = tokio::select! {
            code = close_of(&mut stream) => End::Closed(code),
            _ = send => End::SendFailed,
            _ = stopped(&mut self.stop) => End::Stop,
        };
        end.into_ending(
            &mut sink,
            &mut stream,
            frames.into_inner(),
            bytes.into_inner(),
        )
        .await
    }
}

/// How a WebSocket attacker's connection ended, before its close is read.
enum End {
    /// The server's Close (its code), an error or the end of the stream.
    Closed(String),
    /// Our send failed: the server's Close is read next, bounded.
    SendFailed,
    /// Our stop: we close politely.
    Stop,
}

impl End {
    async fn into_ending<K, S>(
        self,
        sink: &mut K,
        stream: &mut S,
        frames: u64,
        bytes: u64,
    ) -> Ending
    where
        K: futures_util::Sink<Message> + Unpin,
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        match self {
            End::Closed(code) => Ending::server(code, frames, bytes),
            End::SendFailed => Ending::server(close_of_bounded(stream).await, frames, bytes),
            End::Stop => {
                let _ = timeout(STEP_TIMEOUT, wsconn::send_close(sink, "abuse done")).await;
                let _ = timeout(STEP_TIMEOUT, close_of(stream)).await;
                Ending::ours("open at stop", frames, bytes)
            }
        }
    }
}

/// Read until the server's Close (its code), an error or the end of the stream.
async fn close_of<S>(stream: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Close(frame))) => return format!("close {}", wsconn::code_of(frame)),
            Some(Ok(_)) => {}
            Some(Err(e)) => return ws_error_outcome(&e),
            None => return "eof".to_string(),
        }
    }
}

async fn close_of_bounded<S>(stream: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    timeout(STEP_TIMEOUT, close_of(stream))
        .await
        .unwrap_or_else(|_| "send failed, no close".to_string())
}

fn ws_error_outcome(error: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::Io(io) => io_outcome(io),
        Error::ConnectionClosed | Error::AlreadyClosed => "eof".to_string(),
        Error::Protocol(p) => format!("protocol: {p}"),
        other => format!("error: {other}"),
    }
}

fn io_outcome(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            "reset".to_string()
        }
        ErrorKind::UnexpectedEof => "eof".to_string(),
        other => format!("io: {other}"),
    }
}

/// `HTTP <status>` when the server answered with a status line, else `otherwise`.
fn http_or(answer: &[u8], otherwise: String) -> String {
    let text = String::from_utf8_lossy(answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .map_or(otherwise, |status| format!("HTTP {status}"))
}

/// One client WebSocket frame (FIN set) with an all-zero mask, so the payload goes as is.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A tiny PRNG for garbage packets (xorshift64*): no dependency, reproducible per seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_with_the_right_length_encoding() {
        assert_eq!(masked_frame(0x1, b"x"), [0x81, 0x81, 0, 0, 0, 0, b'x']);
        let mid = masked_frame(0x2, &[0; 300]);
        assert_eq!(mid[..4], [0x82, 0x80 | 126, 1, 44]);
        assert_eq!(mid.len(), 4 + 4 + 300);
    }

    #[test]
    fn outcomes_name_the_status_or_the_socket_end() {
        assert_eq!(
            http_or(b"HTTP/1.1 408 Request Timeout\r\n", "eof".into()),
            "HTTP 408"
        );
        assert_eq!(http_or(b"", "eof".into()), "eof");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(io_outcome(&reset), "reset");
    }
}
