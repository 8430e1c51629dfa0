//! Operator endpoints: liveness, readiness, Prometheus metrics, live conversations.

use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::authorised;
use super::AppState;
use crate::registry::ListConversations;

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let ready = state.status.is_ready();
    let body = serde_json::json!({ "ready": ready });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.services.metrics.render())
}

#[derive(serde::Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

impl TokenQuery {
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// `GET /v1/cluster`: this node's id and every node with its live sessions (404 when
/// the cluster is off, 503 while Redis is unreachable).
pub async fn cluster(
    req: HttpRequest,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !authorised(&req, query.token(), &state.services.config) {
        return HttpResponse::Unauthorized().finish();
    }
    let Some(cluster) = &state.services.cluster else {
        return HttpResponse::NotFound()
            .json(serde_json::json!({ "error": { "code": "cluster_off" } }));
    };
    match cluster.nodes().await {
        Ok(nodes) => HttpResponse::Ok().json(serde_json::json!({
            "node_id": cluster.node_id(),
            "nodes": nodes,
        })),
        Err(error) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "error": { "code": "redis_unavailable", "message": error.to_string() }
        })),
    }
}

pub async fn conversations(
    req: HttpRequest,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !authorised(&req, query.token(), &state.services.config) {
        return HttpResponse::Unauthorized().finish();
    }
    match state.services.registry.addr.send(ListConversations).await {
        Ok(list) => HttpResponse::Ok().json(serde_json::json!({ "conversations": list })),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}
