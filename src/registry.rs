//! The registry: one actor per server that owns the map of live conversations and
//! broadcasts their lifecycle events.
//!
//! Registration and removal are atomic because one actor owns the map. A conversation
//! holds a [`Lease`]; dropping the lease (after the conversation's children have stopped,
//! or during a panic's unwinding) is what deregisters it, so no code path can forget.
//! A second connection for a live conversation id supersedes the first and waits for
//! its removal before it gets a lease: never two trees for one conversation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};
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

/// Ask for a lease on a conversation id.
#[derive(Message)]
#[rtype(result = "Result<Lease, RegisterError>")]
pub struct Register {
    pub conversation_id: Uuid,
    pub client_id: String,
    pub session: Recipient<EndSession>,
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
    reply: oneshot::Sender<Result<Lease, RegisterError>>,
}

/// The registry actor. Start one per server with [`Registry::start_new`].
pub struct Registry {
    entries: HashMap<Uuid, Entry>,
    pending: HashMap<Uuid, Pending>,
    next_lease: u64,
    events: broadcast::Sender<Arc<LifecycleEvent>>,
    metrics: Arc<Metrics>,
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
}

/// What the rest of the server holds: the actor's address and the event stream.
#[derive(Clone)]
pub struct RegistryHandle {
    pub addr: Addr<Registry>,
    events: broadcast::Sender<Arc<LifecycleEvent>>,
}

impl RegistryHandle {
    /// A new subscription to every lifecycle event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LifecycleEvent>> {
        self.events.subscribe()
    }
}

impl Registry {
    pub fn start_new(metrics: Arc<Metrics>) -> RegistryHandle {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let registry = Registry {
            entries: HashMap::new(),
            pending: HashMap::new(),
            next_lease: 1,
            events: events.clone(),
            metrics,
            draining: false,
            drained: Vec::new(),
        };
        RegistryHandle {
            addr: registry.start(),
            events,
        }
    }

    fn publish(&self, event: LifecycleEvent) {
        // No subscribers is fine: the event is still logged and counted.
        let _ = self.events.send(Arc::new(event));
    }

    /// Insert the entry and hand out its lease; `None` if the requester already left.
    fn grant(
        &mut self,
        request: Register,
        resumed: bool,
        reply: oneshot::Sender<Result<Lease, RegisterError>>,
        me: Addr<Registry>,
    ) {
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
        };
        if let Err(Ok(mut lease)) = reply.send(Ok(lease)) {
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

    fn notify_if_drained(&mut self) {
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
    type Result = ResponseFuture<Result<Lease, RegisterError>>;

    fn handle(&mut self, request: Register, ctx: &mut Context<Self>) -> Self::Result {
        if self.draining {
            return Box::pin(async { Err(RegisterError::ShuttingDown) });
        }
        let (reply, answer) = oneshot::channel();
        let id = request.conversation_id;
        match self.entries.get_mut(&id) {
            None => self.grant(request, false, reply, ctx.address()),
            Some(old) => {
                // Supersede the live session; the newest waiter wins.
                if !old.ending {
                    old.ending = true;
                    old.session.do_send(EndSession {
                        reason: ExitReason::Superseded,
                    });
                }
                if let Some(earlier) = self.pending.insert(id, Pending { request, reply }) {
                    let _ = earlier.reply.send(Err(RegisterError::Superseded));
                }
            }
        }
        Box::pin(async move { answer.await.unwrap_or(Err(RegisterError::ShuttingDown)) })
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
            self.grant(waiting.request, true, waiting.reply, ctx.address());
        }
        self.notify_if_drained();
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
            let _ = waiting.reply.send(Err(RegisterError::ShuttingDown));
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
    }
}
