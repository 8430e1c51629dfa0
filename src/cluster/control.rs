//! The control listener: this node's own Redis pub/sub connection on its control
//! channel. Another node that needs a conversation this node holds asks here; the
//! listener tells the registry to end the local session (`superseded`, close 4001), and
//! the lease is released after that session's disconnect is published. Reconnects with
//! a backoff while Redis is away; ends when the node task ends.

use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::oneshot;

use super::ControlMessage;
use crate::registry::{EndConversation, RegistryHandle};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(super) async fn listen(
    client: Client,
    channel: String,
    registry: RegistryHandle,
    connect_timeout: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let connecting = tokio::time::timeout(connect_timeout, client.get_async_pubsub());
        let pubsub = tokio::select! {
            connected = connecting => connected,
            _ = &mut stop => return,
        };
        if let Ok(Ok(mut pubsub)) = pubsub {
            if pubsub.subscribe(&channel).await.is_ok() {
                backoff = MIN_BACKOFF;
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => on_message(message.get_payload_bytes(), &registry),
                            None => break,
                        },
                        _ = &mut stop => return,
                    }
                }
                tracing::warn!(%channel, "cluster: control channel lost");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn on_message(payload: &[u8], registry: &RegistryHandle) {
    match serde_json::from_slice::<ControlMessage>(payload) {
        Ok(ControlMessage::EndSession {
            conversation_id,
            reason,
            from,
        }) => {
            tracing::info!(%conversation_id, %from, %reason, "cluster: asked to end a session");
            registry.addr.do_send(EndConversation {
                conversation_id,
                reason,
            });
        }
        Err(error) => tracing::warn!(%error, "cluster: unreadable control message"),
    }
}
