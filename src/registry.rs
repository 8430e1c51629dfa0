//! The registry: one actor per server that owns the map of live conversations and
//! broadcasts their lifecycle events.
//!
//! Registration and removal are atomic because one actor owns the map. A conversation
//! holds a [`Lease`]; dropping the lease (after the conversation's children have stopped,
//! or during a panic's unwinding) is what deregisters it, so no code path can forget.
//! A second connection for a live conversation id supersedes the first and waits for
//! its removal before it gets a lease: never two trees for one conversation. A request
//! answers through its own channel, so a requester that gave up (its wait timed out, its
//! client left) is noticed at grant time and never gets a tree, nor a started event.
//!
//! Event sinks (`/v1/events` streams, and later bridges) take an [`EventSubscription`]:
//! at shutdown, once every conversation is gone, [`RegistryHandle::close_events`] ends
//! every subscription only after it has delivered each event published before, and
//! waits (bounded) until each sink has let go, so no sink misses a shutdown disconnect.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, oneshot, watch};
use uuid::Uuid;

use crate::lifecycle::{unix_millis, ExitReason};
use crate::metrics::{GaugeGuard, Metrics};

/// Lifecycle events buffered for slow subscribers before they start missing events.
const EVENT_BUFFER: usize = 4096;

/// Lifecycle events, as published to subscribers and on `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LifecycleEvent {
    ConnectionStarted {
        conversation_id: Uuid,
        client_id: String,
        timestamp_ms: u64,
        resumed: bool,
    },
    /// The seed format: exactly these four fields.
    ConnectionDisconnected {
        conversation_id: Uuid,
        timestamp_ms: u64,
        reason: ExitReason,
    },
}

/// Sent to a session's transport to make it close with the reason's close code.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct EndSession {
    pub reason: ExitReason,
}

/// Ask for a lease on a conversation id; see [`RegistryHandle::register`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub conversation_id: Uuid,
    pub client_id: String,
    pub session: Recipient<EndSession>,
    /// The answer. Dropping the receiver withdraws the request: a lease granted to a
    /// closed channel is discarded without any event.
    pub reply: oneshot::Sender<Result<Lease, RegisterError>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("a newer connection for this conversation arrived first")]
    Superseded,
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Sent by a dropped [`Lease`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct Deregister {
    conversation_id: Uuid,
    lease_id: u64,
    reason: ExitReason,
    ended_at: Instant,
}

/// End a conversation's live session, if this registry holds one (another node took
/// the conversation over, or this node's cluster lease was lost). Answers whether it did.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "bool")]
pub struct EndConversation {
    pub conversation_id: Uuid,
    pub reason: ExitReason,
}

/// Mark whether a conversation's TTS is speaking (shown on `/v1/conversations`).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SetTtsActive {
    pub conversation_id: Uuid,
    pub active: bool,
}

/// One row of `GET /v1/conversations`.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationInfo {
    pub conversation_id: Uuid,
    pub client_id: String,
    pub state: &'static str,
    pub started_ms: u64,
    pub tts_active: bool,
}

#[derive(Message)]
#[rtype(result = "Vec<ConversationInfo>")]
pub struct ListConversations;

/// Stop admitting, end every conversation with `server_shutdown`, and answer once the
/// map is empty.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainAll;

/// End every event subscription once it has delivered what was published so far.
/// Handled by the registry actor, so it is ordered after every earlier publish.
#[derive(Message)]
#[rtype(result = "()")]
struct CloseEvents;

struct Entry {
    lease_id: u64,
    client_id: String,
    started_ms: u64,
    session: Recipient<EndSession>,
    tts_active: bool,
    ending: bool,
}

struct Pending {
    request: Register,
}

/// The registry actor. Start one per server with [`Registry::start_new`].
pub struct Registry {
    entries: HashMap<Uuid, Entry>,
    pending: HashMap<Uuid, Pending>,
    next_lease: u64,
    events: broadcast::Sender<Arc<LifecycleEvent>>,
    sinks: Arc<watch::Sender<Sinks>>,
    metrics: Arc<Metrics>,
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
}

/// What the rest of the server holds: the actor's address and the event stream.
#[derive(Clone)]
pub struct RegistryHandle {
    pub addr: Addr<Registry>,
    events: broadcast::Sender<Arc<LifecycleEvent>>,
    sinks: Arc<watch::Sender<Sinks>>,
}

/// Open event subscriptions, and whether the stream has been closed for shutdown.
#[derive(Debug, Default)]
pub struct Sinks {
    open: usize,
    closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many event subscribers")]
    TooMany,
    #[error("the event stream has ended: the server is shutting down")]
    Closed,
}

impl RegistryHandle {
    /// A raw subscription to every lifecycle event published from now on. It does not
    /// end at shutdown and shutdown does not wait for it (in-process observers, tests);
    /// sinks that must see every event take [`RegistryHandle::try_subscribe`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LifecycleEvent>> {
        self.events.subscribe()
    }

    /// A sink's subscription, refused past `limit` open ones (`None`: no limit) and once
    /// the stream is closed. Shutdown waits for it to deliver every event and end.
    pub fn try_subscribe(&self, limit: Option<usize>) -> Result<EventSubscription, SubscribeError> {
        let mut refused = None;
        // Check and count under the watch's lock, so the cap holds under races.
        self.sinks.send_if_modified(|sinks| {
            if sinks.closed {
                refused = Some(SubscribeError::Closed);
            } else if limit.is_some_and(|limit| sinks.open >= limit) {
                refused = Some(SubscribeError::TooMany);
            } else {
                sinks.open += 1;
            }
            refused.is_none()
        });
        if let Some(error) = refused {
            return Err(error);
        }
        Ok(EventSubscription {
            events: self.events.subscribe(),
            closed: self.sinks.subscribe(),
            _sink: SinkGuard {
                sinks: Arc::clone(&self.sinks),
            },
        })
    }

    /// Ask for a lease on `conversation_id`. Dropping the returned future withdraws the
    /// request (a lease granted afterwards is discarded without any event).
    pub fn register(
        &self,
        conversation_id: Uuid,
        client_id: String,
        session: Recipient<EndSession>,
    ) -> impl Future<Output = Result<Lease, RegisterError>> + 'static {
        let (reply, answer) = oneshot::channel();
        self.addr.do_send(Register {
            conversation_id,
            client_id,
            session,
            reply,
        });
        async move { answer.await.unwrap_or(Err(RegisterError::ShuttingDown)) }
    }

    /// End every sink's subscription after it has delivered what was published so far,
    /// and wait until every sink has let go, at most until `deadline`. True when all did.
    pub async fn close_events(&self, deadline: tokio::time::Instant) -> bool {
        let mut sinks = self.sinks.subscribe();
        let flushed = async {
            // Through the actor: ordered after every disconnect it published before.
            self.addr.send(CloseEvents).await.ok()?;
            sinks.wait_for(|s| s.open == 0).await.ok()
        };
        let flushed = tokio::time::timeout_at(deadline, flushed).await;
        matches!(flushed, Ok(Some(_)))
    }

    /// Open sink subscriptions.
    pub fn sinks(&self) -> usize {
        self.sinks.borrow().open
    }
}

/// What an [`EventSubscription`] yields.
#[derive(Debug, Clone)]
pub enum SinkItem {
    Event(Arc<LifecycleEvent>),
    /// The sink fell this many events behind and they are lost to it.
    Lagged(u64),
}

/// One sink's view of the lifecycle events. Holding it keeps shutdown waiting (bounded)
/// until it has delivered every event and been dropped.
pub struct EventSubscription {
    events: broadcast::Receiver<Arc<LifecycleEvent>>,
    closed: watch::Receiver<Sinks>,
    _sink: SinkGuard,
}

impl EventSubscription {
    /// The next event, or `None` once the stream is closed and every event published
    /// before the close has been delivered. Cancel-safe.
    pub async fn next(&mut self) -> Option<SinkItem> {
        loop {
            if self.closed.borrow_and_update().closed {
                // Everything published before the close is already in our queue.
                return match self.events.try_recv() {
                    Ok(event) => Some(SinkItem::Event(event)),
                    Err(TryRecvError::Lagged(missed)) => Some(SinkItem::Lagged(missed)),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => None,
                };
            }
            tokio::select! {
                biased;
                received = self.events.recv() => return match received {
                    Ok(event) => Some(SinkItem::Event(event)),
                    Err(RecvError::Lagged(missed)) => Some(SinkItem::Lagged(missed)),
                    Err(RecvError::Closed) => None,
                },
                changed = self.closed.changed() => {
                    if changed.is_err() {
                        return None; // the registry is gone
                    }
                }
            }
        }
    }
}

/// Counts one open sink until dropped.
struct SinkGuard {
    sinks: Arc<watch::Sender<Sinks>>,
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        self.sinks
            .send_modify(|sinks| sinks.open = sinks.open.saturating_sub(1));
    }
}

impl Registry {
    pub fn start_new(metrics: Arc<Metrics>) -> RegistryHandle {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let sinks = Arc::new(watch::Sender::new(Sinks::default()));
        let registry = Registry {
            entries: HashMap::new(),
            pending: HashMap::new(),
            next_lease: 1,
            events: events.clone(),
            sinks: Arc::clone(&sinks),
            metrics,
            draining: false,
            drained: Vec::new(),
        };
        RegistryHandle {
            addr: registry.start(),
            events,
            sinks,
        }
    }

    fn publish(&self, event: LifecycleEvent) {
        // No subscribers is fine: the event is still logged and counted.
        let _ = self.events.send(Arc::new(event));
    }

    /// Insert the entry and hand out its lease, unless the requester already left.
    fn grant(&mut self, request: Register, resumed: bool, me: Addr<Registry>) {
        let lease_id = self.next_lease;
        self.next_lease += 1;
        let lease = Lease {
            conversation_id: request.conversation_id,
            lease_id,
            resumed,
            registry: Some(me),
            reason: None,
            ended_at: None,
            gauge: Some(GaugeGuard::new(self.metrics.conversations.clone())),
            attachment: None,
        };
        if let Err(Ok(mut lease)) = request.reply.send(Ok(lease)) {
            // The session went away while it waited; it never started a tree.
            lease.registry = None;
            tracing::debug!(conversation_id = %request.conversation_id, "registration abandoned");
            return;
        }
        let started_ms = unix_millis();
        tracing::info!(
            conversation_id = %request.conversation_id,
            client_id = %request.client_id,
            resumed,
            "connection started"
        );
        self.publish(LifecycleEvent::ConnectionStarted {
            conversation_id: request.conversation_id,
            client_id: request.client_id.clone(),
            timestamp_ms: started_ms,
            resumed,
        });
        self.entries.insert(
            request.conversation_id,
            Entry {
                lease_id,
                client_id: request.client_id,
                started_ms,
                session: request.session,
                tts_active: false,
                ending: false,
            },
        );
    }

    /// Forget waiting requests whose requester gave up.
    fn prune_abandoned(&mut self) {
        self.pending.retain(|_, p| !p.request.reply.is_closed());
    }

    fn notify_if_drained(&mut self) {
        self.prune_abandoned();
        if self.entries.is_empty() && self.pending.is_empty() {
            for waiter in self.drained.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Handler<Register> for Registry {
    type Result = ();

    fn handle(&mut self, request: Register, ctx: &mut Context<Self>) {
        if self.draining {
            let _ = request.reply.send(Err(RegisterError::ShuttingDown));
            return;
        }
        self.prune_abandoned();
        let id = request.conversation_id;
        match self.entries.get_mut(&id) {
            None => self.grant(request, false, ctx.address()),
            Some(old) => {
                // Supersede the live session; the newest waiter wins.
                if !old.ending {
                    old.ending = true;
                    old.session.do_send(EndSession {
                        reason: ExitReason::Superseded,
                    });
                }
                if let Some(earlier) = self.pending.insert(id, Pending { request }) {
                    let _ = earlier.request.reply.send(Err(RegisterError::Superseded));
                }
            }
        }
    }
}

impl Handler<Deregister> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Deregister, ctx: &mut Context<Self>) {
        let current = self.entries.get(&msg.conversation_id).map(|e| e.lease_id);
        if current != Some(msg.lease_id) {
            self.metrics.duplicate_disconnects.inc();
            tracing::warn!(
                conversation_id = %msg.conversation_id,
                reason = %msg.reason,
                "ignoring disconnect for an unknown or already removed conversation"
            );
            return;
        }
        self.entries.remove(&msg.conversation_id);
        let teardown = msg.ended_at.elapsed();
        self.metrics
            .count_disconnect(msg.reason, teardown.as_secs_f64());
        tracing::info!(
            conversation_id = %msg.conversation_id,
            reason = %msg.reason,
            teardown_us = teardown.as_micros() as u64,
            "connection disconnected"
        );
        self.publish(LifecycleEvent::ConnectionDisconnected {
            conversation_id: msg.conversation_id,
            timestamp_ms: unix_millis(),
            reason: msg.reason,
        });
        if let Some(waiting) = self.pending.remove(&msg.conversation_id) {
            self.grant(waiting.request, true, ctx.address());
        }
        self.notify_if_drained();
    }
}

impl Handler<EndConversation> for Registry {
    type Result = bool;

    fn handle(&mut self, msg: EndConversation, _: &mut Context<Self>) -> bool {
        let Some(entry) = self.entries.get_mut(&msg.conversation_id) else {
            return false;
        };
        if !entry.ending {
            entry.ending = true;
            entry.session.do_send(EndSession { reason: msg.reason });
        }
        true
    }
}

impl Handler<SetTtsActive> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SetTtsActive, _: &mut Context<Self>) {
        if let Some(entry) = self.entries.get_mut(&msg.conversation_id) {
            entry.tts_active = msg.active;
        }
    }
}

impl Handler<ListConversations> for Registry {
    type Result = MessageResult<ListConversations>;

    fn handle(&mut self, _: ListConversations, _: &mut Context<Self>) -> Self::Result {
        let mut list: Vec<ConversationInfo> = self
            .entries
            .iter()
            .map(|(id, e)| ConversationInfo {
                conversation_id: *id,
                client_id: e.client_id.clone(),
                state: if e.ending { "ending" } else { "live" },
                started_ms: e.started_ms,
                tts_active: e.tts_active,
            })
            .collect();
        list.sort_by_key(|c| c.started_ms);
        MessageResult(list)
    }
}

impl Handler<DrainAll> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: DrainAll, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        for (_, waiting) in self.pending.drain() {
            let _ = waiting.request.reply.send(Err(RegisterError::ShuttingDown));
        }
        for entry in self.entries.values_mut() {
            if !entry.ending {
                entry.ending = true;
                entry.session.do_send(EndSession {
                    reason: ExitReason::ServerShutdown,
                });
            }
        }
        let (done, wait) = oneshot::channel();
        self.drained.push(done);
        self.notify_if_drained();
        Box::pin(async move {
            let _ = wait.await;
        })
    }
}

impl Handler<CloseEvents> for Registry {
    type Result = ();

    fn handle(&mut self, _: CloseEvents, _: &mut Context<Self>) {
        self.sinks.send_modify(|sinks| sinks.closed = true);
    }
}

/// A conversation's registration. Dropping it removes the conversation from the registry
/// and publishes `connection_disconnected` with the recorded reason.
#[derive(Debug)]
pub struct Lease {
    conversation_id: Uuid,
    lease_id: u64,
    resumed: bool,
    registry: Option<Addr<Registry>>,
    reason: Option<ExitReason>,
    ended_at: Option<Instant>,
    /// Released before the deregistration is sent, so the gauge is down by the time
    /// anyone sees the disconnect event.
    gauge: Option<GaugeGuard>,
    /// Held for the conversation's life and dropped after the deregistration is sent
    /// (e.g. the conversation's cluster claim).
    attachment: Option<Attachment>,
}

/// Something a lease keeps alive until its conversation is gone.
pub struct Attachment(#[allow(dead_code)] Box<dyn std::any::Any + Send>);

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attachment")
    }
}

impl Lease {
    pub fn conversation_id(&self) -> Uuid {
        self.conversation_id
    }

    /// Whether this lease took over a conversation that was live a moment ago.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Record why and when the conversation ended; the first call wins.
    pub fn set_exit(&mut self, reason: ExitReason, ended_at: Instant) {
        if self.reason.is_none() {
            self.reason = Some(reason);
            self.ended_at = Some(ended_at);
        }
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.reason
    }

    /// Keep `value` until the conversation is gone: it is dropped after the lease has
    /// sent its deregistration, so its own `Drop` runs after the local teardown.
    pub fn attach(&mut self, value: impl std::any::Any + Send) {
        self.attachment = Some(Attachment(Box::new(value)));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.gauge.take();
        let Some(registry) = self.registry.take() else {
            return;
        };
        // A lease dropped without a recorded reason belongs to a conversation that
        // died unexpectedly (a panic while unwinding): that is a server error.
        let reason = self.reason.unwrap_or(ExitReason::ServerError);
        registry.do_send(Deregister {
            conversation_id: self.conversation_id,
            lease_id: self.lease_id,
            reason,
            ended_at: self.ended_at.unwrap_or_else(Instant::now),
        });
        self.attachment.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session stand-in that ignores being told to end.
    struct Deaf;

    impl Actor for Deaf {
        type Context = Context<Self>;
    }

    impl Handler<EndSession> for Deaf {
        type Result = ();

        fn handle(&mut self, _: EndSession, _: &mut Context<Self>) {}
    }

    #[test]
    fn a_withdrawn_reconnect_gets_no_tree_and_no_event() {
        actix::System::new().block_on(async {
            let registry = Registry::start_new(Metrics::new());
            let mut events = registry.subscribe();
            let session = Deaf.start().recipient::<EndSession>();
            let id = Uuid::new_v4();
            let mut first = registry
                .register(id, "first".into(), session.clone())
                .await
                .expect("granted");
            assert!(matches!(
                &*events.recv().await.expect("started"),
                LifecycleEvent::ConnectionStarted { .. }
            ));
            // A reconnect waits behind the live session, then gives up (its wait timed
            // out, or its client left): dropping the future withdraws the request.
            let waiting = registry.register(id, "second".into(), session);
            drop(waiting);
            first.set_exit(ExitReason::ClientDisconnect, Instant::now());
            drop(first);
            let ended = events.recv().await.expect("disconnect");
            assert!(matches!(
                &*ended,
                LifecycleEvent::ConnectionDisconnected {
                    reason: ExitReason::ClientDisconnect,
                    ..
                }
            ));
            // The grant that followed in the same handler found nobody waiting.
            assert!(
                matches!(events.try_recv(), Err(TryRecvError::Empty)),
                "no tree may start for a withdrawn request"
            );
            let live = registry.addr.send(ListConversations).await.expect("list");
            assert!(live.is_empty());
        });
    }

    #[test]
    fn closing_the_stream_delivers_what_was_published_first() {
        actix::System::new().block_on(async {
            let registry = Registry::start_new(Metrics::new());
            let mut sink = registry.try_subscribe(Some(1)).expect("first sink");
            assert_eq!(
                registry.try_subscribe(Some(1)).err(),
                Some(SubscribeError::TooMany)
            );
            let session = Deaf.start().recipient::<EndSession>();
            let lease = registry
                .register(Uuid::new_v4(), "c".into(), session)
                .await
                .expect("granted");
            drop(lease);
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            let closing = registry.close_events(deadline);
            let reading = async {
                let mut kinds = Vec::new();
                while let Some(item) = sink.next().await {
                    if let SinkItem::Event(event) = item {
                        kinds.push(match &*event {
                            LifecycleEvent::ConnectionStarted { .. } => "started",
                            LifecycleEvent::ConnectionDisconnected { .. } => "disconnected",
                        });
                    }
                }
                drop(sink);
                kinds
            };
            let (flushed, kinds) = tokio::join!(closing, reading);
            assert_eq!(kinds, ["started", "disconnected"]);
            assert!(flushed, "the sink ended within the deadline");
            assert_eq!(registry.sinks(), 0);
            assert_eq!(
                registry.try_subscribe(None).err(),
                Some(SubscribeError::Closed)
            );
        });
    }
}
