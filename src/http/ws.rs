//! `GET /v1/ws`: validate, authenticate and admit *before* the upgrade, then hand the
//! socket to a new [`SessionActor`] speaking the native protocol. The checks and the
//! upgrade are shared with `GET /v1/realtime` (`realtime.rs`). Every refusal is an HTTP
//! status, counted, with no actor ever started. The session's response body is watched for write stalls
//! (`actors/write_stall.rs`), since a session whose client stopped reading is never
//! polled again and cannot time itself out.

use std::rc::Rc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde_json::json;

use super::auth::{authorised, client_ip};
use super::AppState;
use crate::actors::write_stall::{ConnectionSocket, StallSignal, WatchedBody};
use crate::actors::SessionActor;
use crate::admission::{AdmissionError, Permit};
use crate::metrics::{BadInput, Metrics};
use crate::protocol::native::ParseError;
use crate::protocol::native_wire::{NativeLimits, NativeWire};
use crate::protocol::{SessionParams, SessionQuery, Wire};

fn refuse(status: actix_web::http::StatusCode, code: &str, message: String) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": { "code": code, "message": message } }))
}

/// A request refused before the upgrade: bad parameters (400).
pub(super) fn bad_request(metrics: &Metrics, kind: BadInput, message: String) -> HttpResponse {
    metrics.count_bad_input(kind);
    metrics.count_rejected("bad_request");
    refuse(StatusCode::BAD_REQUEST, kind.as_str(), message)
}

/// The server takes sessions: it is ready and not draining.
/// A refusal before the upgrade (boxed: it is large, and rare).
pub(super) type Refused = Box<HttpResponse>;

pub(super) fn gate(state: &AppState) -> Result<(), Refused> {
    let metrics = &state.services.metrics;
    if state.status.is_draining() {
        metrics.count_rejected("draining");
        return Err(Box::new(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down".into(),
        )));
    }
    if !state.status.is_ready() {
        metrics.count_rejected("not_ready");
        return Err(Box::new(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "models are still loading".into(),
        )));
    }
    Ok(())
}

/// The client is authorised (`token`: one offered outside the `Authorization` header).
pub(super) fn authorise(
    req: &HttpRequest,
    state: &AppState,
    token: Option<&str>,
) -> Result<(), Refused> {
    if authorised(req, token, &state.services.config) {
        return Ok(());
    }
    state.services.metrics.count_rejected("unauthorised");
    Err(Box::new(refuse(
        StatusCode::UNAUTHORIZED,
        "unauthorised",
        "a valid bearer token is required".into(),
    )))
}

/// The client's address is known and within the session limits: its permit.
pub(super) fn admit(req: &HttpRequest, state: &AppState) -> Result<Permit, Refused> {
    let metrics = &state.services.metrics;
    let Some(ip) = client_ip(req, &state.services.config) else {
        metrics.count_rejected("bad_request");
        return Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            "no_peer",
            "peer address unknown".into(),
        )));
    };
    state.admission.try_admit(ip).map_err(|error| {
        let reason = match error {
            AdmissionError::ServerFull => "server_full",
            AdmissionError::PerIpLimit => "per_ip_limit",
        };
        metrics.count_rejected(reason);
        Box::new(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            reason,
            error.to_string(),
        ))
    })
}

/// Upgrade to a WebSocket served by a new session speaking `wire`, its body watched
/// for write stalls. `response` is the handshake (with any chosen subprotocol).
pub(super) fn start_session(
    req: &HttpRequest,
    stream: web::Payload,
    state: &AppState,
    session: Session,
    mut response: actix_web::HttpResponseBuilder,
) -> HttpResponse {
    let config = &state.services.config;
    tracing::debug!(
        conversation_id = %session.params.conversation_id,
        client_id = %session.params.client_id,
        "upgrading"
    );
    let stall = Rc::new(StallSignal::default());
    let actor = SessionActor::new(
        session.params,
        state.services.clone(),
        session.wire,
        session.permit,
        Rc::clone(&stall),
    );
    let codec = actix_http::ws::Codec::new().max_size(session.max_frame_bytes);
    let body = ws::WebsocketContext::with_codec(actor, stream, codec);
    let watched = WatchedBody::new(
        body,
        stall,
        req.conn_data::<ConnectionSocket>().copied(),
        Duration::from_millis(config.session.write_stall_ms),
        state.services.metrics.clone(),
    );
    response.streaming(watched)
}

/// What a protocol's upgrade hands on to its session.
pub(super) struct Session {
    pub params: SessionParams,
    pub wire: Box<dyn Wire>,
    pub permit: Permit,
    /// Largest WebSocket frame the session accepts.
    pub max_frame_bytes: usize,
}

pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let metrics = &state.services.metrics;
    let config = &state.services.config;
    if let Err(refused) = gate(&state) {
        return Ok(*refused);
    }
    let query = match web::Query::<SessionQuery>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(error) => return Ok(bad_request(metrics, BadInput::BadQuery, error.to_string())),
    };
    if let Err(refused) = authorise(&req, &state, query.token.as_deref()) {
        return Ok(*refused);
    }
    let params = match query.validate() {
        Ok(params) => params,
        Err(error) => {
            let kind = match error {
                ParseError::UnsupportedSampleRate(_) => BadInput::UnsupportedSampleRate,
                _ => BadInput::BadQuery,
            };
            return Ok(bad_request(metrics, kind, error.to_string()));
        }
    };
    let permit = match admit(&req, &state) {
        Ok(permit) => permit,
        Err(refused) => return Ok(*refused),
    };
    let response = ws::handshake(&req)?;
    let limits = NativeLimits {
        max_system_prompt_bytes: config.llm.max_system_prompt_bytes,
        fault_injection: config.debug.fault_injection,
    };
    let session = Session {
        wire: Box::new(NativeWire::new(params.input, limits)),
        params,
        permit,
        max_frame_bytes: config.session.max_frame_bytes,
    };
    Ok(start_session(&req, stream, &state, session, response))
}
