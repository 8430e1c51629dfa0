//! Conversation histories in Redis (`llm.history_store = "redis"`): one JSON string per
//! conversation (`{prefix}:history:{id}`, a [`crate::llm::snapshot::Snapshot`]) with
//! `PX llm.history_ttl_ms`, so a client that reconnects to any node resumes.
//!
//! Writes go through the node task, on its one connection, in the order of everything
//! else it sends: a conversation's last write (queued before its teardown ends) reaches
//! Redis before the lease release that follows its disconnect, so a node that takes the
//! conversation over next always reads it. They are queued here, not sent by the
//! caller: an actor hands over the conversation's newest JSON and returns at once. One
//! entry per conversation, the newest replacing an older one not yet sent, so the
//! queue is bounded by the number of conversations (and by a capacity on top; past it
//! writes are dropped and counted). A write that fails is not retried: every write
//! carries the whole conversation, so its next turn repairs the copy.
//!
//! Reads (one per resumed session) also go through the node task, after any queued
//! writes, and are bounded by `cluster.command_timeout_ms`: a read that fails or times
//! out means "nothing to resume", counted in `hearken_cluster_history_total`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::Command;

/// What a read from Redis found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The conversation's JSON.
    Found(String),
    /// No copy (never written, or expired).
    Absent,
    /// Redis unreachable, failing, or slower than `cluster.command_timeout_ms`.
    Failed,
}

/// Writes waiting for the node task: the newest JSON per conversation, oldest first.
pub(crate) struct SaveQueue {
    saves: Mutex<Saves>,
    /// Wakes the node task when a write is queued.
    pub(crate) notify: Notify,
    capacity: usize,
}

#[derive(Default)]
struct Saves {
    newest: HashMap<Uuid, String>,
    order: VecDeque<Uuid>,
}

impl SaveQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        SaveQueue {
            saves: Mutex::new(Saves::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Saves) -> T) -> T {
        let mut saves = self.saves.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut saves)
    }

    /// Queue `json` as `id`'s newest copy; false when the queue is full.
    fn push(&self, id: Uuid, json: String) -> bool {
        let queued = self.with(|saves| {
            if let Some(older) = saves.newest.get_mut(&id) {
                *older = json;
                return true;
            }
            if saves.order.len() >= self.capacity {
                return false;
            }
            saves.newest.insert(id, json);
            saves.order.push_back(id);
            true
        });
        if queued {
            self.notify.notify_one();
        }
        queued
    }

    /// Up to `max` queued writes, oldest first; they leave the queue.
    pub(crate) fn take(&self, max: usize) -> Vec<(Uuid, String)> {
        self.with(|saves| {
            let n = max.min(saves.order.len());
            let ids: Vec<Uuid> = saves.order.drain(..n).collect();
            ids.into_iter()
                .filter_map(|id| saves.newest.remove(&id).map(|json| (id, json)))
                .collect()
        })
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.with(|saves| saves.order.is_empty())
    }
}

/// What the conversation store holds to keep its copies in Redis.
#[derive(Clone)]
pub struct RedisHistory {
    saves: Arc<SaveQueue>,
    commands: mpsc::UnboundedSender<Command>,
    timeout: Duration,
    counts: IntCounterVec,
}

impl RedisHistory {
    pub(crate) fn new(
        saves: Arc<SaveQueue>,
        commands: mpsc::UnboundedSender<Command>,
        timeout: Duration,
        counts: IntCounterVec,
    ) -> Self {
        RedisHistory {
            saves,
            commands,
            timeout,
            counts,
        }
    }

    /// Queue the conversation's newest JSON for Redis; never waits.
    pub fn save(&self, id: Uuid, json: String) {
        if !self.saves.push(id, json) {
            self.counts.with_label_values(&["save", "dropped"]).inc();
        }
    }

    /// The conversation's copy in Redis, waiting at most `cluster.command_timeout_ms`.
    pub async fn load(&self, id: Uuid) -> Loaded {
        let (reply, answer) = oneshot::channel();
        let asked = self
            .commands
            .send(Command::LoadHistory { id, reply })
            .is_ok();
        let loaded = match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(loaded)) if asked => loaded,
            Ok(_) => Loaded::Failed,
            Err(_) => {
                tracing::warn!(conversation_id = %id, "cluster: history read timed out");
                self.counts.with_label_values(&["load", "timeout"]).inc();
                return Loaded::Failed;
            }
        };
        let outcome = match &loaded {
            Loaded::Found(_) => "found",
            Loaded::Absent => "absent",
            Loaded::Failed => "failed",
        };
        self.counts.with_label_values(&["load", outcome]).inc();
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_write_per_conversation_waits_in_order_and_the_queue_is_bounded() {
        let queue = SaveQueue::new(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(queue.push(a, "a1".into()));
        assert!(queue.push(b, "b1".into()));
        assert!(queue.push(a, "a2".into()), "replaces a's older write");
        assert!(!queue.push(c, "c1".into()), "full");
        assert_eq!(queue.take(1), [(a, "a2".to_string())]);
        assert!(queue.push(c, "c1".into()));
        assert_eq!(queue.take(10), [(b, "b1".into()), (c, "c1".into())]);
        assert!(queue.is_empty());
    }
}
