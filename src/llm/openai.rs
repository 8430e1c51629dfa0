//! The OpenAI-compatible backend: `POST {base_url}/chat/completions` with
//! `stream: true`, deltas read as server-sent events. Works with llama.cpp's server,
//! Ollama, vLLM and OpenAI. Each reply is one task on the calling arbiter (network I/O,
//! no blocking); aborting it drops the response body, which closes that connection.
//! Connect and per-chunk read timeouts surface as errors, and a circuit breaker shared by
//! all conversations stops hammering a backend that is down.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::backend::{BackendError, Generation, GenerationRequest, LlmBackend, LlmEvent};
use super::breaker::CircuitBreaker;
use crate::workers::CancelToken;

pub struct OpenAiConfig {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_tokens: u32,
}

pub struct OpenAiBackend {
    client: reqwest::Client,
    config: OpenAiConfig,
    breaker: Arc<CircuitBreaker>,
}

impl OpenAiBackend {
    pub fn new(
        config: OpenAiConfig,
        breaker: Arc<CircuitBreaker>,
    ) -> Result<Arc<Self>, BackendError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        Ok(Arc::new(OpenAiBackend {
            client,
            config,
            breaker,
        }))
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl LlmBackend for OpenAiBackend {
    fn start(&self, request: GenerationRequest) -> Result<Generation, BackendError> {
        let Some(attempt) = self.breaker.try_acquire() else {
            return Err(BackendError::Unavailable(
                "circuit open after repeated failures".into(),
            ));
        };
        let (events, receiver) = mpsc::channel(64);
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let mut http = self.client.post(url).json(&json!({
            "model": self.config.model,
            "messages": request.messages,
            "stream": true,
            "max_tokens": self.config.max_tokens,
        }));
        if let Some(key) = &self.config.api_key {
            http = http.bearer_auth(key);
        }
        let (read_timeout, hold) = (self.config.read_timeout, request.hold);
        // The attempt lives in the task: aborting the task (a cancelled reply) drops it
        // unresolved, which gives a half-open probe slot back.
        let task = tokio::task::spawn_local(async move {
            let _hold = hold;
            let outcome = stream_reply(http, read_timeout, &events).await;
            match &outcome {
                Ok(()) => attempt.succeeded(),
                Err(_) => attempt.failed(),
            }
            let last = outcome.map_or_else(LlmEvent::Failed, |()| LlmEvent::Finished);
            let _ = events.send(last).await;
        });
        Ok(Generation::with_task(receiver, CancelToken::new(), task))
    }
}

/// Send the request and forward each content delta until `[DONE]` or the end.
async fn stream_reply(
    http: reqwest::RequestBuilder,
    read_timeout: Duration,
    events: &mpsc::Sender<LlmEvent>,
) -> Result<(), String> {
    let response = tokio::time::timeout(read_timeout, http.send())
        .await
        .map_err(|_| "timed out waiting for the response".to_string())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut pending = String::new();
    loop {
        let chunk = tokio::time::timeout(read_timeout, body.next())
            .await
            .map_err(|_| "timed out reading the stream".to_string())?;
        let Some(chunk) = chunk else {
            return Ok(());
        };
        pending.push_str(&String::from_utf8_lossy(&chunk.map_err(|e| e.to_string())?));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            match parse_sse_line(line.trim()) {
                SseLine::Delta(text) => {
                    if events.send(LlmEvent::Delta(text)).await.is_err() {
                        return Ok(()); // nobody listens: the reply was cancelled
                    }
                }
                SseLine::Done => return Ok(()),
                SseLine::Other => {}
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum SseLine {
    Delta(String),
    Done,
    Other,
}

fn parse_sse_line(line: &str) -> SseLine {
    let Some(data) = line.strip_prefix("data:").map(str::trim) else {
        return SseLine::Other;
    };
    if data == "[DONE]" {
        return SseLine::Done;
    }
    let delta = serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        });
    delta.map_or(SseLine::Other, SseLine::Delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_are_parsed() {
        let delta = r#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#;
        assert_eq!(parse_sse_line(delta), SseLine::Delta("Hel".into()));
        assert_eq!(parse_sse_line("data: [DONE]"), SseLine::Done);
        assert_eq!(parse_sse_line(": keep-alive"), SseLine::Other);
        let role_only = r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#;
        assert_eq!(parse_sse_line(role_only), SseLine::Other);
    }
}
