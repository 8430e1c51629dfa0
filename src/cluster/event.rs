//! The JSON a node publishes for a lifecycle event: the registry's event exactly as on
//! `/v1/events` (the seed's four fields for a disconnect), plus `node_id`. Events for
//! lost nodes are written by the reap script (`scripts::REAP`), with the same fields
//! and `node_lost: true`.

use serde::Serialize;

use crate::registry::LifecycleEvent;

#[derive(Serialize)]
struct Published<'a> {
    #[serde(flatten)]
    event: &'a LifecycleEvent,
    node_id: &'a str,
}

pub fn payload(event: &LifecycleEvent, node_id: &str) -> String {
    // Serialising plain fields into a String cannot fail.
    serde_json::to_string(&Published { event, node_id }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::ExitReason;
    use serde_json::Value;
    use uuid::Uuid;

    #[test]
    fn a_disconnect_carries_the_seed_fields_and_the_node() {
        let id = Uuid::new_v4();
        let event = LifecycleEvent::ConnectionDisconnected {
            conversation_id: id,
            timestamp_ms: 1_234_567_890_123,
            reason: ExitReason::ClientDisconnect,
        };
        let json: Value = serde_json::from_str(&payload(&event, "n1-abcd")).expect("json");
        let object = json.as_object().expect("object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "conversation_id",
                "node_id",
                "reason",
                "timestamp_ms",
                "type"
            ]
        );
        assert_eq!(json["type"], "connection_disconnected");
        assert_eq!(json["conversation_id"], id.to_string());
        assert_eq!(json["timestamp_ms"], 1_234_567_890_123u64);
        assert_eq!(json["reason"], "client_disconnect");
        assert_eq!(json["node_id"], "n1-abcd");
    }
}
