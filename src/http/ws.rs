//! `GET /v1/ws`: validate, authenticate and admit *before* the upgrade, then hand the
//! socket to a new [`SessionActor`]. Every refusal is an HTTP status, counted, with no
//! actor ever started. The session's response body is watched for write stalls
//! (`actors/write_stall.rs`), since a session whose client stopped reading is never
//! polled again and cannot time itself out.

use std::rc::Rc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde_json::json;

use super::auth::{authorised, client_ip};
use super::AppState;
use crate::actors::write_stall::{ConnectionSocket, StallSignal, WatchedBody};
use crate::actors::SessionActor;
use crate::admission::AdmissionError;
use crate::metrics::BadInput;
use crate::protocol::native::ParseError;
use crate::protocol::SessionQuery;

fn refuse(status: actix_web::http::StatusCode, code: &str, message: String) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": { "code": code, "message": message } }))
}

pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    use actix_web::http::StatusCode;
    let metrics = &state.services.metrics;
    let config = &state.services.config;

    if state.status.is_draining() {
        metrics.count_rejected("draining");
        return Ok(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down".into(),
        ));
    }
    if !state.status.is_ready() {
        metrics.count_rejected("not_ready");
        return Ok(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "models are still loading".into(),
        ));
    }
    let query = match web::Query::<SessionQuery>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(error) => {
            metrics.count_bad_input(BadInput::BadQuery);
            metrics.count_rejected("bad_request");
            return Ok(refuse(
                StatusCode::BAD_REQUEST,
                "bad_query",
                error.to_string(),
            ));
        }
    };
    if !authorised(&req, query.token.as_deref(), config) {
        metrics.count_rejected("unauthorised");
        return Ok(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorised",
            "a valid bearer token is required".into(),
        ));
    }
    let params = match query.validate() {
        Ok(params) => params,
        Err(error) => {
            let kind = match error {
                ParseError::UnsupportedSampleRate(_) => BadInput::UnsupportedSampleRate,
                _ => BadInput::BadQuery,
            };
            metrics.count_bad_input(kind);
            metrics.count_rejected("bad_request");
            return Ok(refuse(
                StatusCode::BAD_REQUEST,
                kind.as_str(),
                error.to_string(),
            ));
        }
    };
    let Some(ip) = client_ip(&req, config) else {
        metrics.count_rejected("bad_request");
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "no_peer",
            "peer address unknown".into(),
        ));
    };
    let permit = match state.admission.try_admit(ip) {
        Ok(permit) => permit,
        Err(error) => {
            let reason = match error {
                AdmissionError::ServerFull => "server_full",
                AdmissionError::PerIpLimit => "per_ip_limit",
            };
            metrics.count_rejected(reason);
            return Ok(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                reason,
                error.to_string(),
            ));
        }
    };
    tracing::debug!(
        conversation_id = %params.conversation_id,
        client_id = %params.client_id,
        %ip,
        "upgrading"
    );
    let mut response = ws::handshake(&req)?;
    let stall = Rc::new(StallSignal::default());
    let session = SessionActor::new(params, state.services.clone(), permit, Rc::clone(&stall));
    let codec = actix_http::ws::Codec::new().max_size(config.session.max_frame_bytes);
    let body = ws::WebsocketContext::with_codec(session, stream, codec);
    let watched = WatchedBody::new(
        body,
        stall,
        req.conn_data::<ConnectionSocket>().copied(),
        Duration::from_millis(config.session.write_stall_ms),
        state.services.metrics.clone(),
    );
    Ok(response.streaming(watched))
}
