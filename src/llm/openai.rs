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

use super::backend::{
    BackendError, Completion, Generation, GenerationRequest, LlmBackend, LlmEvent,
};
use super::breaker::CircuitBreaker;
use crate::workers::CancelToken;

pub struct OpenAiConfig {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
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
            "max_tokens": request.max_tokens,
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
                Ok(_) => attempt.succeeded(),
                Err(_) => attempt.failed(),
            }
            let last = outcome.map_or_else(LlmEvent::Failed, LlmEvent::Finished);
            let _ = events.send(last).await;
        });
        Ok(Generation::with_task(receiver, CancelToken::new(), task))
    }
}

/// Send the request and forward each content delta until `[DONE]` or the end. The
/// server reports no token counts in a stream: each delta counts as one output token.
async fn stream_reply(
    http: reqwest::RequestBuilder,
    read_timeout: Duration,
    events: &mpsc::Sender<LlmEvent>,
) -> Result<Completion, String> {
    let mut completion = Completion::default();
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
            return Ok(completion);
        };
        pending.push_str(&String::from_utf8_lossy(&chunk.map_err(|e| e.to_string())?));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            match parse_sse_line(line.trim()) {
                SseLine::Delta(text) => {
                    completion.output_tokens += 1;
                    if events.send(LlmEvent::Delta(text)).await.is_err() {
                        return Ok(completion); // nobody listens: the reply was cancelled
                    }
                }
                SseLine::Length => completion.length_limited = true,
                SseLine::Done => return Ok(completion),
                SseLine::Other => {}
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum SseLine {
    Delta(String),
    /// The reply was cut at `max_tokens` (`finish_reason: "length"`).
    Length,
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
    let Ok(chunk) = serde_json::from_str::<serde_json::Value>(data) else {
        return SseLine::Other;
    };
    let choice = &chunk["choices"][0];
    match choice["delta"]["content"].as_str() {
        Some(text) if !text.is_empty() => SseLine::Delta(text.to_string()),
        _ if choice["finish_reason"] == "length" => SseLine::Length,
        _ => SseLine::Other,
    }
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
        let cut = r#"data: {"choices":[{"delta":{},"finish_reason":"length"}]}"#;
        assert_eq!(parse_sse_line(cut), SseLine::Length);
    }
}
