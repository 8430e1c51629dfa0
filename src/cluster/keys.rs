//! Names of everything hearken keeps in Redis, in one place so `docs/deploy-cluster.md`
//! can list them and the scripts agree with the Rust side.
//!
//! - `{prefix}:nodes`: set of node ids that have heartbeated and were not found lost.
//! - `{prefix}:node:{id}:alive`: the heartbeat (`PX node_ttl_ms`), JSON `{sessions}`.
//! - `{prefix}:node:{id}:conversations`: conversations whose `connection_started` this
//!   node published and whose `connection_disconnected` nobody has yet: what a survivor
//!   reports when the node is lost.
//! - `{prefix}:node:{id}:seq`: the node's last published event number, so a batch
//!   retried after an ambiguous failure is not published twice.
//! - `{prefix}:lease:{conversation_id}`: the owning node id (`PX lease_ttl_ms`).
//! - `{prefix}:control:{id}`: the node's control channel (takeover requests).
//! - `{prefix}:history:{conversation_id}`: the conversation's history and settings as
//!   JSON (`PX llm.history_ttl_ms`), with `llm.history_store = "redis"`.
//! - `{events_channel}`: the pub/sub channel and the capped stream of lifecycle events.

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
    pub node: String,
    pub channel: String,
}

impl Keys {
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    pub fn alive(&self) -> String {
        node_key(&self.prefix, &self.node, "alive")
    }

    pub fn conversations(&self) -> String {
        node_key(&self.prefix, &self.node, "conversations")
    }

    pub fn seq(&self) -> String {
        node_key(&self.prefix, &self.node, "seq")
    }

    /// Lease keys are this prefix plus the conversation id (the scripts append it).
    pub fn lease_prefix(&self) -> String {
        format!("{}:lease:", self.prefix)
    }

    pub fn lease(&self, conversation_id: Uuid) -> String {
        format!("{}{conversation_id}", self.lease_prefix())
    }

    pub fn history(&self, conversation_id: Uuid) -> String {
        format!("{}:history:{conversation_id}", self.prefix)
    }

    pub fn control_of(&self, node: &str) -> String {
        format!("{}:control:{node}", self.prefix)
    }

    pub fn control(&self) -> String {
        self.control_of(&self.node)
    }
}

fn node_key(prefix: &str, node: &str, what: &str) -> String {
    format!("{prefix}:node:{node}:{what}")
}
