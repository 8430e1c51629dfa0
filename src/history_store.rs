//! Where conversation histories live (`llm.history_store`), behind the one interface
//! the actors use.
//!
//! - `memory`: this node's [`ConversationStore`] alone; a reconnect to another node
//!   starts afresh.
//! - `redis`: the same store, and a copy of every conversation in Redis
//!   ([`RedisHistory`], written through the cluster's node task). Every change the
//!   actors make (a stored turn or reply, an item edit, a system prompt) queues the
//!   conversation's newest copy and returns at once; nothing here waits on Redis.
//!   When a session resumes a conversation, [`HistoryStore::resume`] reads the copy
//!   (bounded by `cluster.command_timeout_ms`) before the tree starts and keeps it if it
//!   is newer than what this node has. Redis away or slow: the session starts with
//!   what this node has (usually nothing), counted, never an error to the client.
//!
//! Reads for prompts always come from memory, so the actors' interface stays
//! synchronous and cheap.

use uuid::Uuid;

use crate::cluster::{Loaded, RedisHistory};
use crate::llm::chat::ChatMessage;
use crate::llm::history::{ConversationStore, HistoryError};
use crate::llm::snapshot::Snapshot;
use crate::protocol::pipeline::Item;

pub struct HistoryStore {
    local: ConversationStore,
    /// The copies in Redis, with `llm.history_store = "redis"`.
    redis: Option<RedisHistory>,
}

impl HistoryStore {
    /// Histories in this node's memory only.
    pub fn memory(local: ConversationStore) -> Self {
        HistoryStore { local, redis: None }
    }

    /// Histories in memory and in Redis.
    pub fn redis(local: ConversationStore, redis: RedisHistory) -> Self {
        HistoryStore {
            local,
            redis: Some(redis),
        }
    }

    /// Conversations are also kept in Redis.
    pub fn in_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Queue the conversation's newest copy for Redis, after a change.
    fn changed(&self, id: Uuid) {
        let Some(redis) = &self.redis else {
            return;
        };
        if let Some(snapshot) = self.local.snapshot(id) {
            redis.save(id, snapshot.to_json());
        }
    }

    /// Before a resumed conversation starts: take Redis's copy if it is newer than this
    /// node's. Bounded; a failed or slow read leaves what this node has. True when the
    /// copy from Redis was taken.
    pub async fn resume(&self, id: Uuid) -> bool {
        let Some(redis) = &self.redis else {
            return false;
        };
        match redis.load(id).await {
            Loaded::Found(json) => match Snapshot::from_json(&json) {
                Ok(snapshot) => self.local.restore(id, snapshot),
                Err(error) => {
                    tracing::warn!(conversation_id = %id, %error, "history in Redis ignored");
                    false
                }
            },
            Loaded::Absent | Loaded::Failed => false,
        }
    }

    pub fn contains(&self, id: Uuid) -> bool {
        self.local.contains(id)
    }

    /// Messages stored for the conversation.
    pub fn items(&self, id: Uuid) -> usize {
        self.local.items(id)
    }

    pub fn push(&self, id: Uuid, message: ChatMessage) {
        self.local.push(id, message);
        self.changed(id);
    }

    pub fn insert(
        &self,
        id: Uuid,
        item: &Item,
        previous: Option<&str>,
    ) -> Result<(), HistoryError> {
        self.local.insert(id, item, previous)?;
        self.changed(id);
        Ok(())
    }

    pub fn item(&self, id: Uuid, item_id: &str) -> Result<Item, HistoryError> {
        self.local.item(id, item_id)
    }

    pub fn delete(&self, id: Uuid, item_id: &str) -> Result<(), HistoryError> {
        self.local.delete(id, item_id)?;
        self.changed(id);
        Ok(())
    }

    pub fn rewrite_reply(&self, id: Uuid, item_id: &str, text: String) -> Result<(), HistoryError> {
        self.local.rewrite_reply(id, item_id, text)?;
        self.changed(id);
        Ok(())
    }

    /// See [`ConversationStore::set_system_prompt`].
    pub fn set_system_prompt(&self, id: Uuid, prompt: String) -> bool {
        let set = self.local.set_system_prompt(id, prompt);
        if set {
            self.changed(id);
        }
        set
    }

    /// See [`ConversationStore::transcript`].
    pub fn transcript(
        &self,
        id: Uuid,
        default_system: &str,
        min_recent: usize,
        max_recent: usize,
        pending: usize,
    ) -> Vec<ChatMessage> {
        self.local
            .transcript(id, default_system, min_recent, max_recent, pending)
    }

    /// Remove expired conversations from memory (Redis expires its copies itself).
    pub fn sweep(&self) -> usize {
        self.local.sweep()
    }

    pub fn len(&self) -> usize {
        self.local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.local.is_empty()
    }
}
