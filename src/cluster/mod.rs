//! Several hearken nodes on one Redis, with the disconnect guarantee cluster-wide.
//!
//! Off unless `cluster.redis_url` is set. Then each node runs:
//! - [`node`]: one task that owns the node's Redis connection. A registry sink like a
//!   `/v1/events` stream, it publishes every lifecycle event (`PUBLISH` on
//!   `cluster.events_channel`, `XADD` to the capped stream of the same name) in order
//!   and at most once, from a bounded buffer that rides out Redis outages; it takes,
//!   renews and releases conversation leases, heartbeats, and reports lost nodes.
//! - [`control`]: one task on the node's control channel, where other nodes ask it to
//!   end a session whose conversation they are taking over.
//! - [`history`]: with `llm.history_store = "redis"`, each conversation's history in
//!   Redis, written and read through the node task (so in order with its leases).
//!
//! Sessions meet the cluster once: before registering, a session asks
//! [`ClusterHandle::acquire`] for its conversation's lease and keeps the [`Claim`] with
//! its registry lease, so the claim ends after the local teardown.
//! `docs/deploy-cluster.md` has the keys, channels and failure cases.

mod claims;
mod control;
mod event;
mod history;
mod keys;
mod node;
mod outbox;
mod scripts;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::{Config, HistoryStoreKind};
use crate::lifecycle::ExitReason;
use crate::metrics::Metrics;
use crate::registry::{RegistryHandle, SubscribeError};

pub use history::{Loaded, RedisHistory};
pub use keys::Keys;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis_url: {0}")]
    Url(#[source] redis::RedisError),
    #[error("cluster: cannot subscribe to the registry: {0}")]
    Subscribe(#[from] SubscribeError),
    #[error("cluster: Redis is unreachable")]
    Unavailable,
    #[error("cluster: cannot start the bridge's thread")]
    Thread,
}

/// How a start got its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The lease was free (or already this node's).
    Leased,
    /// Another node held it; it ended its session and released the lease.
    TakenOver,
    /// Redis was unreachable: started without a lease, taken once Redis is back.
    Unverified,
}

/// What sessions and the claim guards tell the node task. One channel for both, so a
/// claim's end is never seen before its acquire; unbounded because each session sends
/// at most one of each (bounded by `server.max_sessions`), and a guard's `Drop` cannot
/// wait for room.
pub(crate) enum Command {
    Acquire {
        id: Uuid,
        reply: oneshot::Sender<Grant>,
    },
    Ended {
        id: Uuid,
        granted: bool,
    },
    ListNodes {
        reply: oneshot::Sender<Option<Vec<NodeInfo>>>,
    },
    /// Read a conversation's history (one per resumed session).
    LoadHistory {
        id: Uuid,
        reply: oneshot::Sender<Loaded>,
    },
}

/// Messages on a node's control channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// End the local session of this conversation (another node is taking it over).
    EndSession {
        conversation_id: Uuid,
        reason: ExitReason,
        from: String,
    },
}

/// One row of `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    pub node_id: String,
    /// Its heartbeat is current.
    pub alive: bool,
    /// Live sessions at its last heartbeat.
    pub sessions: i64,
}

/// A local session's claim on a conversation's lease. Kept by the registry lease once
/// the tree starts ([`crate::registry::Lease::attach`]), so it ends after the teardown;
/// dropping it tells the node task.
pub struct Claim {
    id: Uuid,
    granted: bool,
    grant: Grant,
    commands: mpsc::UnboundedSender<Command>,
}

impl Claim {
    /// The session got a tree: its disconnect will be published, and the lease is
    /// released after it.
    pub fn granted(mut self) -> Self {
        self.granted = true;
        self
    }

    pub fn grant(&self) -> Grant {
        self.grant
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Ended {
            id: self.id,
            granted: self.granted,
        });
    }
}

/// What the rest of the server holds.
#[derive(Clone)]
pub struct ClusterHandle {
    node_id: Arc<str>,
    commands: mpsc::UnboundedSender<Command>,
    history: Option<RedisHistory>,
}

impl ClusterHandle {
    /// This node's id (its name and a suffix unique to this start).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Claim `id`'s lease for a local session, taking it over from another node if
    /// needed (that node ends its session with `superseded`). Waits as long as the
    /// other node takes; callers bound the wait (`session.register_timeout_ms`), and
    /// dropping the future withdraws the claim.
    pub async fn acquire(&self, id: Uuid) -> Claim {
        let (reply, answer) = oneshot::channel();
        let mut claim = Claim {
            id,
            granted: false,
            grant: Grant::Unverified,
            commands: self.commands.clone(),
        };
        if self.commands.send(Command::Acquire { id, reply }).is_ok() {
            claim.grant = answer.await.unwrap_or(Grant::Unverified);
        }
        claim
    }

    /// Conversation histories in Redis, with `llm.history_store = "redis"`.
    pub fn history(&self) -> Option<&RedisHistory> {
        self.history.as_ref()
    }

    /// Nodes in the cluster with their session counts.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::ListNodes { reply })
            .map_err(|_| ClusterError::Unavailable)?;
        answer.await.ok().flatten().ok_or(ClusterError::Unavailable)
    }
}

/// The running cluster tasks of one server, on an arbiter (thread) of their own.
///
/// Not on the registry's: the bridge builds and serialises every event, takes leases,
/// and its Redis connection's driver writes commands and parses answers, all on the
/// thread it runs on. On the registry's thread that was ~90 µs of CPU per session, six
/// times the registry's own work (measured per thread, `docs/benchmarks.md`), and a
/// `Deregister` — where every teardown ends — waited behind it, or behind the thread
/// being scheduled out for it on a busy machine. Here the registry's broadcast only
/// wakes this thread.
pub struct Cluster {
    handle: ClusterHandle,
    /// The node and control tasks, once the arbiter has started them.
    tasks: oneshot::Receiver<(JoinHandle<()>, JoinHandle<()>)>,
    arbiter: actix::Arbiter,
}

impl Cluster {
    /// Start the node and control tasks on an arbiter of their own, or nothing when
    /// `cluster.redis_url` is empty. Does not wait for Redis: a node starts (and serves
    /// sessions) while Redis is unreachable, and catches up once it answers.
    pub fn start(
        config: &Config,
        registry: &RegistryHandle,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Cluster>, ClusterError> {
        let cluster = &config.cluster;
        if !cluster.enabled() {
            return Ok(None);
        }
        let client = redis::Client::open(cluster.redis_url.as_str()).map_err(ClusterError::Url)?;
        let suffix = Uuid::new_v4().simple().to_string();
        let node_id = format!("{}-{}", cluster.node_name, &suffix[..8]);
        let keys = Keys {
            prefix: cluster.key_prefix.clone(),
            node: node_id.clone(),
            channel: cluster.events_channel.clone(),
        };
        let events = registry.try_subscribe(None)?;
        let (commands, received) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let drain = Duration::from_millis(config.server.shutdown_drain_ms);
        let timeout = Duration::from_millis(cluster.command_timeout_ms);
        let history = (config.llm.history_store == HistoryStoreKind::Redis).then(|| {
            let saves = Arc::new(history::SaveQueue::new(
                config.llm.history_max_conversations,
            ));
            let handle = RedisHistory::new(
                Arc::clone(&saves),
                commands.clone(),
                timeout,
                metrics.cluster.history.clone(),
            );
            let ttl_ms = config.llm.history_ttl_ms;
            (node::HistorySink { saves, ttl_ms }, handle)
        });
        let (sink, history) = history.unzip();
        let (registry, metrics, config) = (registry.clone(), Arc::clone(metrics), cluster.clone());
        let (listener, control_channel) = (client.clone(), keys.control());
        let (started, tasks) = oneshot::channel();
        let arbiter = actix::Arbiter::new();
        // The node task is not `Send` (its pending command is a local future): it is
        // built on the arbiter's thread from parts that are.
        let spawned = arbiter.spawn_fn(move || {
            let task = node::Node::new(keys, config, client, registry.clone(), metrics, sink);
            let node = tokio::task::spawn_local(async move {
                task.run(events, received, drain).await;
                drop(stop);
            });
            let control = control::listen(listener, control_channel, registry, timeout, stopped);
            let control = tokio::task::spawn_local(control);
            let _ = started.send((node, control));
        });
        if !spawned {
            return Err(ClusterError::Thread);
        }
        tracing::info!(node = %node_id, "cluster: node started");
        Ok(Some(Cluster {
            handle: ClusterHandle {
                node_id: node_id.into(),
                commands,
                history,
            },
            tasks,
            arbiter,
        }))
    }

    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// After shutdown's event flush: the node task has normally ended by itself (the
    /// registry closed its subscription); anything left is stopped here.
    pub async fn stop(self) {
        if let Ok((node, control)) = self.tasks.await {
            node.abort();
            let _ = node.await;
            control.abort();
            let _ = control.await;
        }
        self.arbiter.stop();
    }
}
