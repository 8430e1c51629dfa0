//! WebSocket plumbing every bench command shares: open a session (connect, then wait for
//! `session.started`, both bounded), tell a refusal at a session limit from a failure,
//! wait for the server's Close, leave politely, and the stop signal that ends a run.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Read buffer per connection (see `open`).
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Bound on connecting and, separately, on waiting for `session.started`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The server answered the upgrade request with an HTTP status.
    Refused(Refusal),
    /// Anything else (connect error, timeout, no `session.started`): a short reason.
    Failed(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused(refusal) => write!(f, "connect: HTTP {refusal}"),
            OpenError::Failed(reason) => f.write_str(reason),
        }
    }
}

/// A refused upgrade: the HTTP status and the `error.code` of the server's JSON body
/// (src/http/ws.rs). Both session limits answer 503, like "still loading" and "shutting
/// down", so the code is what tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// `server_full`, `per_ip_limit`, `not_ready`, `shutting_down`, `unauthorised`, ...;
    /// `None` when the body did not come with the headers or is not the server's JSON.
    pub code: Option<String>,
}

/// `error.code` of the global session limit (`server.max_sessions`).
pub const SERVER_FULL: &str = "server_full";
/// `error.code` of the per-address limit (`server.max_sessions_per_ip`).
pub const PER_IP_LIMIT: &str = "per_ip_limit";
/// Codes the server sends before an upgrade, looked for when the body is cut short.
const KNOWN_CODES: [&str; 6] = [
    SERVER_FULL,
    PER_IP_LIMIT,
    "not_ready",
    "shutting_down",
    "unauthorised",
    "bad_query",
];

impl Refusal {
    /// Classify a refused upgrade from its status and whatever body arrived with it.
    pub fn classify(status: u16, body: Option<&[u8]>) -> Refusal {
        let body = body.unwrap_or_default();
        let code = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .or_else(|| {
                // A body split from its headers arrives partly: look for a known code.
                let text = String::from_utf8_lossy(body);
                KNOWN_CODES
                    .iter()
                    .find(|code| text.contains(&format!("\"{code}\"")))
                    .map(|code| code.to_string())
            });
        Refusal { status, code }
    }

    /// Refused by `server.max_sessions` or `server.max_sessions_per_ip`: the limit working
    /// as configured, not a failure.
    pub fn is_limit(&self) -> bool {
        self.status == 503 && matches!(self.code.as_deref(), Some(SERVER_FULL | PER_IP_LIMIT))
    }
}

impl std::fmt::Display for Refusal {
    /// `503 server_full`, or the bare status when the reason is unknown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} {code}", self.status),
            None => write!(f, "{}", self.status),
        }
    }
}

/// Connect and wait for `session.started`; on failure, why.
pub async fn open(url: &str) -> Result<Ws, OpenError> {
    open_until(url, "session.started").await
}

/// Connect and wait for the server's first event, `ready` (the Realtime API's is
/// `session.created`); on failure, why.
pub async fn open_until(url: &str, ready: &str) -> Result<Ws, OpenError> {
    let failed = |reason: String| Err(OpenError::Failed(reason));
    // tungstenite zero-fills its whole read buffer (128 KiB by default) on every read;
    // with hundreds of sessions that was a third of the bench's CPU. Server messages
    // are small, and larger ones still arrive whole across reads. No Nagle delay for
    // real-time frames.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let mut ws = match timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(Error::Http(response))) => {
            let refusal = Refusal::classify(response.status().as_u16(), response.body().as_deref());
            return Err(OpenError::Refused(refusal));
        }
        Ok(Err(Error::Io(io))) => return failed(format!("connect: {}", io.kind())),
        Ok(Err(other)) => return failed(format!("connect: {other}")),
        Err(_) => return failed("connect: timeout".into()),
    };
    let started = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(text) = msg {
                let event: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                if event["type"] == ready {
                    return true;
                }
            }
        }
        false
    };
    match timeout(CONNECT_TIMEOUT, started).await {
        Ok(true) => Ok(ws),
        _ => failed(format!("no {ready}")),
    }
}

/// The code of a Close frame as the report shows it.
pub fn code_of(frame: Option<CloseFrame>) -> String {
    frame.map_or("none".into(), |f| u16::from(f.code).to_string())
}

/// Read (discarding events) until the server's Close; its code, or what happened instead.
pub async fn close_code<S>(ws: &mut S, bound: Duration) -> String
where
    S: futures_util::Stream<Item = Result<Message, Error>> + Unpin,
{
    let wait = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return code_of(frame),
                Ok(_) => {}
                Err(_) => return "none (error)".to_string(),
            }
        }
        "none (eof)".to_string()
    };
    timeout(bound, wait)
        .await
        .unwrap_or_else(|_| "close timeout".into())
}

/// Send a normal (1000) Close frame.
pub async fn send_close<S>(ws: &mut S, reason: &'static str) -> Result<(), String>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: reason.into(),
    };
    ws.send(Message::Close(Some(frame)))
        .await
        .map_err(|_| "send close failed".to_string())
}

/// Resolves once the stop signal is raised (or its sender is gone). Returns `()` so no
/// non-`Send` watch guard lives in a `select!` output.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str) -> Vec<u8> {
        serde_json::json!({ "error": { "code": code, "message": "..." } })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn refusals_at_the_limits_are_told_from_other_refusals() {
        let full = Refusal::classify(503, Some(&body("server_full")));
        assert!(full.is_limit());
        assert_eq!(full.to_string(), "503 server_full");
        let per_ip = Refusal::classify(503, Some(&body("per_ip_limit")));
        assert!(per_ip.is_limit());
        assert_eq!(per_ip.to_string(), "503 per_ip_limit");
        // Also 503, but not a limit: the run is invalid, a failure.
        assert!(!Refusal::classify(503, Some(&body("not_ready"))).is_limit());
        assert!(!Refusal::classify(503, Some(&body("shutting_down"))).is_limit());
        assert!(!Refusal::classify(401, Some(&body("unauthorised"))).is_limit());
        let bare = Refusal::classify(503, None);
        assert!(!bare.is_limit());
        assert_eq!(
            OpenError::Refused(bare).to_string(),
            "connect: HTTP 503",
            "no body: the status alone"
        );
    }

    #[test]
    fn a_cut_body_still_names_its_code() {
        let cut = &body("per_ip_limit")[..32];
        assert!(serde_json::from_slice::<Value>(cut).is_err());
        assert_eq!(
            Refusal::classify(503, Some(cut)).code.as_deref(),
            Some("per_ip_limit")
        );
    }
}
