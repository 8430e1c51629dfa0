//! WebSocket plumbing every bench command shares: open a session (connect, then wait for
//! `session.started`, both bounded), wait for the server's Close, leave politely, and the
//! stop signal that ends a run.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Bound on connecting and, separately, on waiting for `session.started`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect and wait for `session.started`; on failure, a short reason for the report.
pub async fn open(url: &str) -> Result<Ws, String> {
    let mut ws = match timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(Error::Http(response))) => {
            return Err(format!("connect: HTTP {}", response.status().as_u16()))
        }
        Ok(Err(Error::Io(io))) => return Err(format!("connect: {}", io.kind())),
        Ok(Err(other)) => return Err(format!("connect: {other}")),
        Err(_) => return Err("connect: timeout".into()),
    };
    let started = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(text) = msg {
                let event: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                if event["type"] == "session.started" {
                    return true;
                }
            }
        }
        false
    };
    match timeout(CONNECT_TIMEOUT, started).await {
        Ok(true) => Ok(ws),
        _ => Err("no session.started".into()),
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
