//! The node task: the one owner of this node's Redis connection. It is a registry sink
//! (like a `/v1/events` stream): every lifecycle event goes into its bounded
//! [`Outbox`] and out to Redis in order, in batches, by one script that publishes each
//! at most once. It also takes and renews conversation leases, asks other nodes to
//! give a conversation up, heartbeats and reports lost nodes, and lists the cluster.
//!
//! One Redis command is in flight at a time, so what the node does reaches Redis in the
//! order it decided it. Nothing on a session's teardown path waits for this task: the
//! registry's broadcast never blocks, and a Redis outage only fills the outbox. A failed
//! command drops the connection; the task reconnects with a backoff and sends what is
//! still queued.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::claims::Claims;
use super::event::payload;
use super::history::{Loaded, SaveQueue};
use super::keys::Keys;
use super::outbox::{Kind, Outbox};
use super::scripts;
use super::{Command, ControlMessage, Grant, NodeInfo};
use crate::config::ClusterConfig;
use crate::lifecycle::ExitReason;
use crate::metrics::Metrics;
use crate::registry::{
    EndConversation, EventSubscription, LifecycleEvent, ListConversations, RegistryHandle, SinkItem,
};

/// First wait before reconnecting; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A start that found its lease held elsewhere tries again this often: the owner's
/// release comes right after its disconnect, typically within a few milliseconds.
const ACQUIRE_RETRY: Duration = Duration::from_millis(20);
/// The takeover request is repeated this often while the owner still holds the lease
/// (its session may have been waiting for its own registration when the first came).
const CONTROL_RETRY: Duration = Duration::from_millis(500);
/// Sequence numbers outlive any retry by far (a day).
const SEQ_TTL_MS: u64 = 86_400_000;

type OpFuture = Pin<Box<dyn Future<Output = Done>>>;

/// A start waiting for its conversation's lease.
struct Pending {
    id: Uuid,
    reply: oneshot::Sender<Grant>,
    /// Another node held the lease at an earlier try.
    conflicted: bool,
    due: Instant,
    control_due: Instant,
}

/// What a finished Redis command reports back.
enum Done {
    Connected(RedisResult<MultiplexedConnection>),
    Published {
        sent: usize,
        result: RedisResult<(u64, u64)>,
    },
    Acquired {
        pending: Pending,
        result: RedisResult<Option<String>>,
    },
    Controlled(RedisResult<()>),
    Beat(RedisResult<(i64, u64)>),
    Renewed {
        ids: Vec<Uuid>,
        result: RedisResult<Vec<usize>>,
    },
    Listed {
        replies: Vec<oneshot::Sender<Option<Vec<NodeInfo>>>>,
        result: RedisResult<Vec<String>>,
    },
    Saved {
        count: u64,
        result: RedisResult<()>,
    },
    Loaded {
        replies: Vec<oneshot::Sender<Loaded>>,
        result: RedisResult<Vec<Option<String>>>,
    },
}

/// Conversation histories to write (`llm.history_store = "redis"`).
pub(super) struct HistorySink {
    pub(super) saves: Arc<SaveQueue>,
    /// `PX` of each write: `llm.history_ttl_ms`.
    pub(super) ttl_ms: u64,
}

pub(super) struct Node {
    keys: Keys,
    config: ClusterConfig,
    client: Client,
    conn: Option<MultiplexedConnection>,
    registry: RegistryHandle,
    metrics: Arc<Metrics>,
    outbox: Outbox,
    claims: Claims,
    acquiring: VecDeque<Pending>,
    /// Takeover requests to send: (owner node, conversation).
    controls: VecDeque<(String, Uuid)>,
    lists: Vec<oneshot::Sender<Option<Vec<NodeInfo>>>>,
    history: Option<HistorySink>,
    /// History reads waiting to be sent.
    loads: Vec<(Uuid, oneshot::Sender<Loaded>)>,
    inflight: Option<OpFuture>,
    backoff: Duration,
    reconnect_due: Instant,
    heartbeat_due: Instant,
    renew_due: Instant,
    /// A heartbeat has been accepted once: a later "new in the node set" means a
    /// survivor had reported this node lost.
    joined: bool,
}

impl Node {
    pub(super) fn new(
        keys: Keys,
        config: ClusterConfig,
        client: Client,
        registry: RegistryHandle,
        metrics: Arc<Metrics>,
        history: Option<HistorySink>,
    ) -> Self {
        let cluster = &metrics.cluster;
        let outbox = Outbox::new(
            config.buffer_events,
            cluster.events_buffered.clone(),
            cluster.events_dropped.clone(),
        );
        let now = Instant::now();
        Node {
            keys,
            config,
            client,
            conn: None,
            registry,
            metrics,
            outbox,
            claims: Claims::default(),
            acquiring: VecDeque::new(),
            controls: VecDeque::new(),
            lists: Vec::new(),
            history,
            loads: Vec::new(),
            inflight: None,
            backoff: MIN_BACKOFF,
            reconnect_due: now,
            heartbeat_due: now,
            renew_due: now,
            joined: false,
        }
    }

    /// Run until the registry closes the event stream (shutdown) and the outbox is sent
    /// or `drain` has passed since; then leave the cluster and let go of the sink.
    pub(super) async fn run(
        mut self,
        mut events: EventSubscription,
        mut commands: mpsc::UnboundedReceiver<Command>,
        drain: Duration,
    ) {
        let mut closing: Option<Instant> = None;
        loop {
            if self.inflight.is_none() {
                self.inflight = self.next_op(closing.is_some());
            }
            if let Some(since) = closing {
                let sent = self.outbox.is_empty() && self.inflight.is_none();
                if sent || since.elapsed() >= drain {
                    break;
                }
            }
            let wake = self.next_wake();
            let wake = closing.map_or(wake, |since| wake.min(since + drain));
            tokio::select! {
                item = events.next(), if closing.is_none() => match item {
                    Some(SinkItem::Event(event)) => self.on_event(&event),
                    Some(SinkItem::Lagged(missed)) => {
                        tracing::error!(missed, "cluster bridge fell behind the registry");
                        self.metrics.cluster.events_dropped.inc_by(missed);
                    }
                    None => closing = Some(Instant::now()),
                },
                Some(command) = commands.recv() => self.on_command(command),
                _ = queued(&self.history) => {}
                done = poll(&mut self.inflight), if self.inflight.is_some() => {
                    self.inflight = None;
                    self.on_done(done);
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.leave().await;
        drop(events);
    }

    fn on_event(&mut self, event: &LifecycleEvent) {
        let json = payload(event, &self.keys.node);
        match event {
            LifecycleEvent::ConnectionStarted {
                conversation_id, ..
            } => {
                self.outbox.push(Kind::Started, *conversation_id, json);
            }
            LifecycleEvent::ConnectionDisconnected {
                conversation_id, ..
            } => {
                self.outbox.push(Kind::Disconnected, *conversation_id, json);
                if self.claims.disconnected(*conversation_id) {
                    self.release(*conversation_id);
                }
            }
        }
    }

    fn release(&mut self, id: Uuid) {
        self.outbox.push(Kind::Release, id, String::new());
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Acquire { id, reply } => {
                self.claims.claim(id);
                if self.conn.is_none() {
                    // Availability first: the load balancer keeps a conversation on one
                    // node and the registry keeps one tree per node; the lease is taken
                    // (or the session ended) at the next renewal once Redis is back.
                    self.metrics.cluster.leases_unverified.inc();
                    let _ = reply.send(Grant::Unverified);
                    return;
                }
                let now = Instant::now();
                self.acquiring.push_back(Pending {
                    id,
                    reply,
                    conflicted: false,
                    due: now,
                    control_due: now,
                });
            }
            Command::Ended { id, granted } => {
                if self.claims.end(id, granted) {
                    self.release(id);
                }
            }
            Command::LoadHistory { id, reply } => {
                if self.conn.is_none() {
                    let _ = reply.send(Loaded::Failed);
                } else {
                    self.loads.push((id, reply));
                }
            }
            Command::ListNodes { reply } => {
                if self.conn.is_none() {
                    let _ = reply.send(None);
                } else {
                    self.lists.push(reply);
                }
            }
        }
    }

    /// When the loop must look again without a message: a timer, or now.
    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        if self.inflight.is_some() {
            return far;
        }
        if self.conn.is_none() {
            return self.reconnect_due;
        }
        let acquire = self.acquiring.iter().map(|p| p.due).min().unwrap_or(far);
        acquire.min(self.heartbeat_due).min(self.renew_due)
    }

    /// The next command to send, if any is due. Starts waiting for a lease go first,
    /// then takeover requests, history writes and reads, heartbeats, renewals,
    /// listings, then events. History writes go before events, so a conversation's
    /// last write reaches Redis before the release that follows its disconnect.
    fn next_op(&mut self, closing: bool) -> Option<OpFuture> {
        let now = Instant::now();
        let Some(conn) = self.conn.clone() else {
            self.drop_saves();
            if now < self.reconnect_due {
                return None;
            }
            return Some(self.connect());
        };
        self.acquiring.retain(|p| !p.reply.is_closed());
        if let Some(at) = self.acquiring.iter().position(|p| p.due <= now) {
            let pending = self.acquiring.remove(at)?;
            return Some(self.acquire(conn, pending));
        }
        if let Some((owner, id)) = self.controls.pop_front() {
            return Some(self.control(conn, &owner, id));
        }
        if let Some(op) = self.save(conn.clone()) {
            return Some(op);
        }
        self.loads.retain(|(_, reply)| !reply.is_closed());
        if !self.loads.is_empty() {
            return Some(self.load(conn));
        }
        if !closing && self.heartbeat_due <= now {
            self.heartbeat_due = now + Duration::from_millis(self.config.heartbeat_ms);
            return Some(self.heartbeat(conn));
        }
        if self.renew_due <= now {
            self.renew_due = now + Duration::from_millis(self.config.lease_ttl_ms / 3);
            if !self.claims.is_empty() {
                return Some(self.renew(conn));
            }
        }
        if !self.lists.is_empty() {
            return Some(self.list(conn));
        }
        if !self.outbox.is_empty() {
            return Some(self.publish(conn));
        }
        None
    }

    fn connect(&mut self) -> OpFuture {
        let client = self.client.clone();
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        Box::pin(async move {
            let connected = client
                .get_multiplexed_async_connection_with_config(&config)
                .await;
            Done::Connected(connected)
        })
    }

    fn publish(&mut self, mut conn: MultiplexedConnection) -> OpFuture {
        let batch = self.outbox.front(self.config.batch_events);
        let mut invocation = scripts::PUBLISH.prepare_invoke();
        invocation
            .key(self.keys.seq())
            .key(&self.keys.channel)
            .key(self.keys.conversations())
            .arg(&self.keys.channel)
            .arg(self.config.stream_maxlen)
            .arg(SEQ_TTL_MS)
            .arg(self.keys.lease_prefix())
            .arg(&self.keys.node);
        for item in &batch {
            invocation
                .arg(item.seq)
                .arg(item.kind.code())
                .arg(item.conversation_id.to_string())
                .arg(&item.payload);
        }
        let sent = batch.len();
        Box::pin(async move {
            let result = invocation.invoke_async(&mut conn).await;
            Done::Published { sent, result }
        })
    }

    /// Write the queued histories, a batch per round trip (`SET ... PX`).
    fn save(&mut self, mut conn: MultiplexedConnection) -> Option<OpFuture> {
        let history = self.history.as_ref()?;
        let batch = history.saves.take(self.config.batch_events);
        if batch.is_empty() {
            return None;
        }
        let mut pipe = redis::pipe();
        for (id, json) in &batch {
            pipe.cmd("SET")
                .arg(self.keys.history(*id))
                .arg(json)
                .arg("PX")
                .arg(history.ttl_ms.max(1))
                .ignore();
        }
        let count = batch.len() as u64;
        Some(Box::pin(async move {
            let result = pipe.query_async::<()>(&mut conn).await;
            Done::Saved { count, result }
        }))
    }

    /// Redis is away: queued history writes are dropped (counted), not kept for later,
    /// where they could overwrite what another node wrote meanwhile.
    fn drop_saves(&mut self) {
        let Some(history) = self.history.as_ref() else {
            return;
        };
        let dropped = history.saves.take(usize::MAX).len() as u64;
        if dropped > 0 {
            let counts = &self.metrics.cluster.history;
            counts
                .with_label_values(&["save", "failed"])
                .inc_by(dropped);
        }
    }

    /// Read every waiting history in one round trip.
    fn load(&mut self, mut conn: MultiplexedConnection) -> OpFuture {
        let loads = std::mem::take(&mut self.loads);
        let mut pipe = redis::pipe();
        let mut replies = Vec::with_capacity(loads.len());
        for (id, reply) in loads {
            pipe.cmd("GET").arg(self.keys.history(id));
            replies.push(reply);
        }
        Box::pin(async move {
            let result = pipe.query_async(&mut conn).await;
            Done::Loaded { replies, result }
        })
    }

    fn acquire(&mut self, mut conn: MultiplexedConnection, pending: Pending) -> OpFuture {
        let key = self.keys.lease(pending.id);
        let node = self.keys.node.clone();
        let ttl = self.config.lease_ttl_ms;
        Box::pin(async move {
            let result = scripts::ACQUIRE
                .key(key)
                .arg(node)
                .arg(ttl)
                .invoke_async(&mut conn)
                .await;
            Done::Acquired { pending, result }
        })
    }

    fn control(&mut self, mut conn: MultiplexedConnection, owner: &str, id: Uuid) -> OpFuture {
        let channel = self.keys.control_of(owner);
        let message = ControlMessage::EndSession {
            conversation_id: id,
            reason: ExitReason::Superseded,
            from: self.keys.node.clone(),
        };
        let json = serde_json::to_string(&message).unwrap_or_default();
        Box::pin(async move {
            let result = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(json)
                .query_async::<i64>(&mut conn)
                .await;
            Done::Controlled(result.map(|_| ()))
        })
    }

    fn heartbeat(&mut self, mut conn: MultiplexedConnection) -> OpFuture {
        let keys = self.keys.clone();
        let ttl = self.config.node_ttl_ms;
        let maxlen = self.config.stream_maxlen;
        let value = serde_json::json!({ "sessions": self.metrics.conversations.get() });
        Box::pin(async move {
            let beat = async {
                let new: i64 = scripts::HEARTBEAT
                    .key(keys.alive())
                    .key(keys.nodes())
                    .arg(&keys.node)
                    .arg(ttl)
                    .arg(value.to_string())
                    .invoke_async(&mut conn)
                    .await?;
                let reported: u64 = scripts::REAP
                    .arg(&keys.prefix)
                    .arg(&keys.node)
                    .arg(&keys.channel)
                    .arg(maxlen)
                    .invoke_async(&mut conn)
                    .await?;
                Ok((new, reported))
            };
            Done::Beat(beat.await)
        })
    }

    fn renew(&mut self, mut conn: MultiplexedConnection) -> OpFuture {
        let ids: Vec<Uuid> = self.claims.held().collect();
        let mut invocation = scripts::RENEW.prepare_invoke();
        for id in &ids {
            invocation.key(self.keys.lease(*id));
        }
        invocation
            .arg(&self.keys.node)
            .arg(self.config.lease_ttl_ms);
        Box::pin(async move {
            let result = invocation.invoke_async(&mut conn).await;
            Done::Renewed { ids, result }
        })
    }

    fn list(&mut self, mut conn: MultiplexedConnection) -> OpFuture {
        let replies = std::mem::take(&mut self.lists);
        let nodes = self.keys.nodes();
        let prefix = self.keys.prefix.clone();
        Box::pin(async move {
            let result = scripts::NODES
                .key(nodes)
                .arg(prefix)
                .invoke_async(&mut conn)
                .await;
            Done::Listed { replies, result }
        })
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Connected(Ok(conn)) => {
                tracing::info!(node = %self.keys.node, "cluster: connected to Redis");
                self.conn = Some(conn);
                self.metrics.cluster.redis_connected.set(1);
                self.backoff = MIN_BACKOFF;
                let now = Instant::now();
                self.heartbeat_due = now;
                // Take the leases of sessions that started while Redis was away.
                self.renew_due = now;
            }
            Done::Connected(Err(error)) => self.lost(&error),
            Done::Published { sent, result } => match result {
                Ok((published, superseded)) => {
                    self.outbox.confirm(sent);
                    let cluster = &self.metrics.cluster;
                    cluster.events_published.inc_by(published);
                    cluster.events_superseded.inc_by(superseded);
                }
                Err(error) => {
                    self.metrics.cluster.events_failed.inc();
                    self.lost(&error);
                }
            },
            Done::Acquired { pending, result } => self.acquired(pending, result),
            Done::Controlled(result) => {
                if let Err(error) = result {
                    self.lost(&error);
                }
            }
            Done::Beat(Ok((new, reported))) => {
                self.metrics.cluster.node_lost_events.inc_by(reported);
                if reported > 0 {
                    tracing::warn!(
                        reported,
                        "cluster: reported the conversations of lost nodes"
                    );
                }
                if new == 1 && self.joined {
                    self.reported_lost();
                }
                self.joined = true;
            }
            Done::Beat(Err(error)) => self.lost(&error),
            Done::Renewed { ids, result } => match result {
                Ok(lost) => {
                    for index in lost {
                        let Some(id) = index.checked_sub(1).and_then(|i| ids.get(i)) else {
                            continue;
                        };
                        tracing::warn!(conversation_id = %id, "cluster: lease held by another node");
                        self.metrics.cluster.leases_lost.inc();
                        self.end_local(*id, ExitReason::Superseded);
                    }
                }
                Err(error) => self.lost(&error),
            },
            Done::Saved { count, result } => {
                let counts = &self.metrics.cluster.history;
                match result {
                    Ok(()) => counts.with_label_values(&["save", "written"]).inc_by(count),
                    Err(error) => {
                        counts.with_label_values(&["save", "failed"]).inc_by(count);
                        self.lost(&error);
                    }
                }
            }
            Done::Loaded { replies, result } => match result {
                Ok(values) if values.len() == replies.len() => {
                    for (reply, value) in replies.into_iter().zip(values) {
                        let _ = reply.send(value.map_or(Loaded::Absent, Loaded::Found));
                    }
                }
                Ok(_) => {
                    for reply in replies {
                        let _ = reply.send(Loaded::Failed);
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Loaded::Failed);
                    }
                    self.lost(&error);
                }
            },
            Done::Listed { replies, result } => {
                let nodes = result.as_ref().ok().map(|flat| node_infos(flat));
                for reply in replies {
                    let _ = reply.send(nodes.clone());
                }
                if let Err(error) = result {
                    self.lost(&error);
                }
            }
        }
    }

    fn acquired(&mut self, mut pending: Pending, result: RedisResult<Option<String>>) {
        match result {
            Ok(None) => {
                let grant = if pending.conflicted {
                    self.metrics.cluster.takeovers.inc();
                    Grant::TakenOver
                } else {
                    Grant::Leased
                };
                if !self.claims.holds(pending.id) {
                    // The session gave up while the lease was being taken.
                    self.release(pending.id);
                }
                let _ = pending.reply.send(grant);
            }
            Ok(Some(owner)) => {
                let now = Instant::now();
                if !pending.conflicted {
                    pending.conflicted = true;
                    self.metrics.cluster.lease_conflicts.inc();
                }
                if pending.control_due <= now {
                    pending.control_due = now + CONTROL_RETRY;
                    self.controls.push_back((owner, pending.id));
                }
                pending.due = now + ACQUIRE_RETRY;
                self.acquiring.push_back(pending);
            }
            Err(error) => {
                self.metrics.cluster.leases_unverified.inc();
                let _ = pending.reply.send(Grant::Unverified);
                self.lost(&error);
            }
        }
    }

    /// A command failed: drop the connection and reconnect after a backoff. Starts
    /// waiting for a lease go ahead unverified (see `on_command`).
    fn lost(&mut self, error: &redis::RedisError) {
        if self.conn.take().is_some() {
            tracing::warn!(%error, "cluster: Redis connection lost");
        } else {
            tracing::debug!(%error, "cluster: Redis unreachable");
        }
        self.metrics.cluster.redis_connected.set(0);
        self.reconnect_due = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        for pending in self.acquiring.drain(..) {
            self.metrics.cluster.leases_unverified.inc();
            let _ = pending.reply.send(Grant::Unverified);
        }
        for reply in self.lists.drain(..) {
            let _ = reply.send(None);
        }
        for (_, reply) in self.loads.drain(..) {
            let _ = reply.send(Loaded::Failed);
        }
        self.drop_saves();
    }

    /// A survivor took this node for lost (its heartbeat lapsed) and reported every
    /// conversation it had listed: end them here too, so no tree outlives its event.
    fn reported_lost(&mut self) {
        tracing::error!(node = %self.keys.node, "cluster: this node was reported lost; ending its sessions");
        let registry = self.registry.clone();
        tokio::task::spawn_local(async move {
            let Ok(live) = registry.addr.send(ListConversations).await else {
                return;
            };
            for conversation in live {
                registry.addr.do_send(EndConversation {
                    conversation_id: conversation.conversation_id,
                    reason: ExitReason::ServerError,
                });
            }
        });
    }

    fn end_local(&self, id: Uuid, reason: ExitReason) {
        self.registry.addr.do_send(EndConversation {
            conversation_id: id,
            reason,
        });
    }

    /// Leave the node set at shutdown, if everything was sent (else the heartbeat just
    /// lapses and a survivor reports what is still listed).
    async fn leave(&mut self) {
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        if !self.outbox.is_empty() {
            return;
        }
        let keys = &self.keys;
        let left: RedisResult<i64> = scripts::LEAVE
            .key(keys.alive())
            .key(keys.nodes())
            .key(keys.conversations())
            .key(keys.seq())
            .arg(&keys.node)
            .invoke_async(&mut conn)
            .await;
        match left {
            Ok(1) => tracing::info!(node = %keys.node, "cluster: left"),
            Ok(_) => tracing::warn!(node = %keys.node, "cluster: left with conversations listed"),
            Err(error) => tracing::warn!(%error, "cluster: could not leave"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.metrics.cluster.redis_connected.set(0);
        for pending in self.acquiring.drain(..) {
            let _ = pending.reply.send(Grant::Unverified);
        }
    }
}

/// The finished command, or never (guarded by `inflight.is_some()` in the select).
async fn poll(inflight: &mut Option<OpFuture>) -> Done {
    match inflight {
        Some(op) => op.await,
        None => std::future::pending().await,
    }
}

/// A history write was queued (never, without a history sink).
async fn queued(history: &Option<HistorySink>) {
    match history {
        Some(history) => history.saves.notify.notified().await,
        None => std::future::pending().await,
    }
}

/// `NODES`' flat list into rows; a node whose heartbeat lapsed has no value.
fn node_infos(flat: &[String]) -> Vec<NodeInfo> {
    let mut nodes: Vec<NodeInfo> = flat
        .chunks(2)
        .filter_map(|pair| match pair {
            [node, value] => {
                let beat: Option<serde_json::Value> = serde_json::from_str(value).ok();
                Some(NodeInfo {
                    node_id: node.clone(),
                    alive: beat.is_some(),
                    sessions: beat
                        .as_ref()
                        .and_then(|b| b["sessions"].as_i64())
                        .unwrap_or(0),
                })
            }
            _ => None,
        })
        .collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    nodes
}
