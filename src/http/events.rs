//! `GET /v1/events`: the registry's lifecycle events as server-sent events, one JSON
//! object per event. Each stream holds a subscriber gauge guard and ends when the client
//! goes away or the server starts draining. A gone client is only noticed on a write, so
//! a keep-alive comment goes out every `server.events_keepalive_ms`: without it, an idle
//! stream whose client vanished would be held forever.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream;
use tokio::sync::broadcast::error::RecvError;

use super::auth::authorised;
use super::ops::TokenQuery;
use super::AppState;
use crate::metrics::GaugeGuard;

pub async fn events(
    req: HttpRequest,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let services = &state.services;
    if !authorised(&req, query.token(), &services.config) {
        return HttpResponse::Unauthorized().finish();
    }
    let subscription = services.registry.subscribe();
    let shutdown = state.status.shutdown_signal();
    let guard = GaugeGuard::new(services.metrics.event_subscribers.clone());
    let opening = Bytes::from_static(b": hearken lifecycle events\n\n");
    let initial = (subscription, shutdown, guard, Some(opening));
    let keepalive = std::time::Duration::from_millis(services.config.server.events_keepalive_ms);
    let body = stream::unfold(
        initial,
        move |(mut events, mut shutdown, guard, opening)| async move {
            if let Some(opening) = opening {
                return Some((
                    Ok::<_, actix_web::Error>(opening),
                    (events, shutdown, guard, None),
                ));
            }
            if *shutdown.borrow() {
                return None;
            }
            let chunk = tokio::select! {
            _ = tokio::time::sleep(keepalive) => Bytes::from_static(b": keepalive\n\n"),
                received = events.recv() => match received {
                    Ok(event) => {
                        let json = serde_json::to_string(&*event).unwrap_or_default();
                        Bytes::from(format!("data: {json}\n\n"))
                    }
                    Err(RecvError::Lagged(missed)) => Bytes::from(format!(": lagged {missed}\n\n")),
                    Err(RecvError::Closed) => return None,
                },
                _ = shutdown.changed() => return None,
            };
            Some((Ok(chunk), (events, shutdown, guard, None)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}
