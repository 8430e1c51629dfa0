//! `GET /v1/realtime`: the OpenAI Realtime API. The same checks, limits and session
//! tree as `/v1/ws` (`ws.rs`); only the query and the wire protocol differ.
//!
//! Query: `model` (echoed in the session), and hearken's own `conversation_id` (resume
//! a conversation) and `client_id`. Auth: `Authorization: Bearer <token>` as for
//! `/v1/ws`, or, for browsers (which cannot set headers on a WebSocket), the
//! `openai-insecure-api-key.<token>` subprotocol the OpenAI clients offer; the
//! `realtime` subprotocol is accepted when offered.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde::Deserialize;

use super::ws::{admit, authorise, bad_request, gate, start_session, Session};
use super::AppState;
use crate::metrics::BadInput;
use crate::protocol::native::{AudioCodec, AudioFormat};
use crate::protocol::pipeline::VadSettings;
use crate::protocol::realtime::{RealtimeWire, ServerDefaults};
use crate::protocol::SessionParams;
use crate::tts::PIPER_MODEL_FILE;

/// The model echoed when the client names none.
const DEFAULT_MODEL: &str = "gpt-realtime";
/// Longest `model` accepted, in bytes (it is echoed in every session event).
const MAX_MODEL_BYTES: usize = 128;
/// Subprotocol carrying a browser client's key.
const KEY_PROTOCOL: &str = "openai-insecure-api-key.";

#[derive(Debug, Default, Deserialize)]
struct RealtimeQuery {
    model: Option<String>,
    conversation_id: Option<String>,
    client_id: Option<String>,
}

/// A token offered as a WebSocket subprotocol.
fn subprotocol_token(req: &HttpRequest) -> Option<&str> {
    let offered = req.headers().get("sec-websocket-protocol")?.to_str().ok()?;
    offered
        .split(',')
        .map(str::trim)
        .find_map(|protocol| protocol.strip_prefix(KEY_PROTOCOL))
}

pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let metrics = &state.services.metrics;
    let services = &state.services;
    let config = &services.config;
    if let Err(refused) = gate(&state) {
        return Ok(*refused);
    }
    let query = match web::Query::<RealtimeQuery>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(error) => return Ok(bad_request(metrics, BadInput::BadQuery, error.to_string())),
    };
    if let Err(refused) = authorise(&req, &state, subprotocol_token(&req)) {
        return Ok(*refused);
    }
    let model = query.model.unwrap_or_else(|| DEFAULT_MODEL.to_string());
    if model.is_empty() || model.len() > MAX_MODEL_BYTES || model.chars().any(char::is_control) {
        let message = "model must be 1-128 printable characters".to_string();
        return Ok(bad_request(metrics, BadInput::BadQuery, message));
    }
    let (conversation_id, conversation_id_given, client_id) =
        match SessionParams::conversation(query.conversation_id, query.client_id) {
            Ok(ids) => ids,
            Err(error) => return Ok(bad_request(metrics, BadInput::BadQuery, error.to_string())),
        };
    let permit = match admit(&req, &state) {
        Ok(permit) => permit,
        Err(refused) => return Ok(*refused),
    };
    // The Realtime API's default: 24 kHz PCM both ways (a session.update may change it).
    let pcm = AudioFormat::new(AudioCodec::Pcm16, 24_000);
    let params = SessionParams {
        conversation_id,
        conversation_id_given,
        client_id,
        input: pcm,
        output: pcm,
        standing: crate::protocol::Standing::default(),
    };
    let defaults = ServerDefaults {
        model,
        voice: PIPER_MODEL_FILE.trim_end_matches(".onnx").to_string(),
        instructions: config.llm.system_prompt.clone(),
        max_output_tokens: config.llm.max_tokens,
        vad: VadSettings::from_config(config, services.turn.is_some()),
        speaks: services.tts.is_some(),
        max_instructions_bytes: config.llm.max_system_prompt_bytes,
        max_item_bytes: config.llm.history_max_bytes,
        max_append_ms: config.realtime.max_append_ms,
    };
    let response = ws::handshake_with_protocols(&req, &["realtime"])?;
    let session = Session {
        params,
        wire: Box::new(RealtimeWire::new(defaults)),
        permit,
        max_frame_bytes: config.realtime.max_event_bytes,
    };
    Ok(start_session(&req, stream, &state, session, response))
}
