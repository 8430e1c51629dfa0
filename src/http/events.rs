//! `GET /v1/events`: the registry's lifecycle events as server-sent events, one JSON
//! object per event. Each stream is a registry sink ([`EventSubscription`]): it is
//! refused past `server.max_event_subscribers`, and at shutdown it ends only after it
//! has sent every event published before the registry closed the stream (so subscribers
//! see every `server_shutdown` disconnect); shutdown waits for that, within its
//! deadline. A gone client is only noticed on a write, so a keep-alive comment goes out
//! every `server.events_keepalive_ms`: without it, an idle stream whose client vanished
//! would be held forever.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use serde_json::json;

use super::auth::authorised;
use super::ops::TokenQuery;
use super::AppState;
use crate::metrics::GaugeGuard;
use crate::registry::{EventSubscription, SinkItem, SubscribeError};

pub async fn events(
    req: HttpRequest,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let services = &state.services;
    if !authorised(&req, query.token(), &services.config) {
        return HttpResponse::Unauthorized().finish();
    }
    let limit = services.config.server.max_event_subscribers;
    let subscription = match services.registry.try_subscribe(Some(limit)) {
        Ok(subscription) => subscription,
        Err(error) => {
            let code = match error {
                SubscribeError::TooMany => "too_many_subscribers",
                SubscribeError::Closed => "shutting_down",
            };
            services.metrics.count_rejected(code);
            return HttpResponse::ServiceUnavailable()
                .json(json!({ "error": { "code": code, "message": error.to_string() } }));
        }
    };
    let guard = GaugeGuard::new(services.metrics.event_subscribers.clone());
    let keepalive = std::time::Duration::from_millis(services.config.server.events_keepalive_ms);
    let opening = Bytes::from_static(b": hearken lifecycle events\n\n");
    let body = stream::once(async { Ok::<_, actix_web::Error>(opening) }).chain(stream::unfold(
        (subscription, guard),
        move |(mut subscription, guard): (EventSubscription, GaugeGuard)| async move {
            let chunk = tokio::select! {
                _ = tokio::time::sleep(keepalive) => Bytes::from_static(b": keepalive\n\n"),
                item = subscription.next() => match item? {
                    SinkItem::Event(event) => {
                        let json = serde_json::to_string(&*event).unwrap_or_default();
                        Bytes::from(format!("data: {json}\n\n"))
                    }
                    SinkItem::Lagged(missed) => Bytes::from(format!(": lagged {missed}\n\n")),
                },
            };
            Some((Ok(chunk), (subscription, guard)))
        },
    ));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}
