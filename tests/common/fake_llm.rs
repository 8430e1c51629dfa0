//! A real local HTTP server speaking the OpenAI streaming protocol, for tests: it
//! records request bodies, answers per its [`Upstream`] mode, and reports connections
//! the client hung up on while it was streaming.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How the fake upstream answers.
#[derive(Clone, Copy, PartialEq)]
pub enum Upstream {
    /// Stream "Hello" and " there", then `[DONE]`.
    Quick,
    /// One delta every 100 ms until the client goes away.
    Endless,
    /// HTTP 500.
    Broken,
    /// Stream this text word by word, then `[DONE]`.
    Scripted(&'static str),
}

pub struct FakeLlm {
    pub base_url: String,
    /// Request bodies, in order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    pub mode: Arc<Mutex<Upstream>>,
    /// One message per connection the client closed while we were streaming.
    pub closed: mpsc::UnboundedReceiver<()>,
}

pub async fn fake_llm(mode: Upstream) -> FakeLlm {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let mode = Arc::new(Mutex::new(mode));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let (seen, current) = (Arc::clone(&requests), Arc::clone(&mode));
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (seen, current, closed_tx) =
                (Arc::clone(&seen), Arc::clone(&current), closed_tx.clone());
            tokio::spawn(async move { serve(socket, seen, current, closed_tx).await });
        }
    });
    FakeLlm {
        base_url,
        requests,
        mode,
        closed,
    }
}

async fn serve(
    mut socket: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<Value>>>,
    mode: Arc<Mutex<Upstream>>,
    closed: mpsc::UnboundedSender<()>,
) {
    loop {
        // Read one request: headers, then Content-Length bytes of JSON.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Value = serde_json::from_slice(&buf[header_end..header_end + length]).unwrap();
        seen.lock().unwrap().push(body);
        let mode = *mode.lock().unwrap();
        if mode == Upstream::Broken {
            let reply = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";
            if socket.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        if socket.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let delta = |text: &str| {
            let line = format!(
                "data: {}\n\n",
                json!({"choices":[{"delta":{"content": text}}]})
            );
            format!("{:x}\r\n{line}\r\n", line.len())
        };
        if let Upstream::Scripted(text) = mode {
            let mut out = String::new();
            for (i, word) in text.split(' ').enumerate() {
                out += &delta(&if i == 0 {
                    word.to_string()
                } else {
                    format!(" {word}")
                });
            }
            let done = "data: [DONE]\n\n";
            out += &format!("{:x}\r\n{done}\r\n0\r\n\r\n", done.len());
            if socket.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if mode == Upstream::Quick {
            let mut out = delta("Hello") + &delta(" there");
            let done = "data: [DONE]\n\n";
            out += &format!("{:x}\r\n{done}\r\n0\r\n\r\n", done.len());
            if socket.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        // Endless: stream until the client hangs up.
        loop {
            if socket
                .write_all(delta("This reply goes on and on. ").as_bytes())
                .await
                .is_err()
            {
                let _ = closed.send(());
                return;
            }
            let mut probe = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(100), socket.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    let _ = closed.send(());
                    return;
                }
                _ => {}
            }
        }
    }
}
