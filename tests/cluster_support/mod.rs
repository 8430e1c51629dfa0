//! Plumbing for the cluster tests: a private `redis-server` per test on a free loopback
//! port (killed by `Drop`, also when the test panics), a real Redis subscriber on the
//! events channel, the events stream, and hearken nodes as child processes (so one can
//! be killed with SIGKILL). `redis-server` is required: without it these tests fail and
//! name `scripts/setup.sh`, which installs Debian's `redis-server`.

#![allow(dead_code)]

pub mod nginx;
pub mod node;
pub mod redis_server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use hearken::Config;
use serde_json::Value;

use crate::common::{light_config, WAIT};

pub use nginx::Nginx;
pub use node::NodeProcess;
pub use redis_server::RedisServer;

/// Short heartbeats so the lost-node cases run in seconds.
pub const HEARTBEAT_MS: u64 = 200;
pub const NODE_TTL_MS: u64 = 1000;

/// A light node (no models beyond webrtc-vad) on `redis_url`.
pub fn cluster_config(redis_url: &str, name: &str) -> Config {
    let mut config = light_config();
    config.tts.enabled = false;
    let cluster = &mut config.cluster;
    cluster.redis_url = redis_url.to_string();
    cluster.node_name = name.to_string();
    cluster.heartbeat_ms = HEARTBEAT_MS;
    cluster.node_ttl_ms = NODE_TTL_MS;
    config
}

/// A Redis connection for the test's own commands.
pub async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("redis url");
    tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .expect("redis answers in time")
        .expect("redis connection")
}

/// Every message on the events channel since the subscription, in arrival order.
pub struct Subscriber {
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribed (the server confirmed) when this returns.
    pub async fn start(url: &str, channel: &str) -> Subscriber {
        let client = redis::Client::open(url).expect("redis url");
        let mut pubsub = tokio::time::timeout(WAIT, client.get_async_pubsub())
            .await
            .expect("redis answers in time")
            .expect("pubsub connection");
        pubsub.subscribe(channel).await.expect("subscribe");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let payload: String = message.get_payload().expect("text payload");
                let event: Value = serde_json::from_str(&payload).expect("JSON event");
                sink.lock().expect("lock").push(event);
            }
        });
        Subscriber { seen, task }
    }

    pub fn events(&self) -> Vec<Value> {
        self.seen.lock().expect("lock").clone()
    }

    /// Wait (bounded) until `check` holds for what arrived; returns it either way.
    pub async fn until(&self, mut check: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        loop {
            let events = self.events();
            if check(&events) || tokio::time::Instant::now() >= deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The events stream's entries, oldest first.
pub async fn stream_events(url: &str, stream: &str) -> Vec<Value> {
    let mut conn = redis(url).await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(_, fields)| {
            let (_, json) = fields
                .into_iter()
                .find(|(name, _)| name == "event")
                .expect("event field");
            serde_json::from_str(&json).expect("JSON event")
        })
        .collect()
}

/// Keys matching `pattern` (small test databases only).
pub async fn keys(url: &str, pattern: &str) -> Vec<String> {
    let mut conn = redis(url).await;
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .expect("KEYS")
}

/// Events of one type, by conversation id, counting each.
pub fn count_by_conversation(
    events: &[Value],
    kind: &str,
) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for event in events.iter().filter(|e| e["type"] == kind) {
        let id = event["conversation_id"].as_str().expect("id").to_string();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Check a disconnect has exactly the seed's four fields plus `node_id` (and, for a
/// lost node's conversation, `node_lost` and `reported_by`).
pub fn assert_seed_fields(event: &Value) {
    let object = event.as_object().expect("object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let lost = object.contains_key("node_lost");
    let expected: &[&str] = if lost {
        &[
            "conversation_id",
            "node_id",
            "node_lost",
            "reason",
            "reported_by",
            "timestamp_ms",
            "type",
        ]
    } else {
        &[
            "conversation_id",
            "node_id",
            "reason",
            "timestamp_ms",
            "type",
        ]
    };
    assert_eq!(keys, expected, "fields of {event}");
    assert!(event["timestamp_ms"].as_u64().is_some_and(|t| t > 0));
    assert!(uuid::Uuid::parse_str(event["conversation_id"].as_str().unwrap_or("")).is_ok());
}
