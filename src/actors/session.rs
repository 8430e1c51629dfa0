//! `SessionActor`: the WebSocket transport of one client, and nothing else.
//!
//! It parses frames into typed events, writes outbound events and audio, enforces the idle
//! timeout and frame limits, and closes the socket with the right code. It holds no
//! pipeline state. On start it asks the registry for a lease (waiting out a superseded
//! predecessor), then starts its conversation. However it ends — Close frame, dropped
//! TCP, timeout, a supervisor's request, a panic — its `Drop` tells the conversation,
//! which then tears the tree down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;

use super::conversation::{ConversationActor, SessionHandle};
use super::messages::{AudioFrames, ClientCommand, Outbound, SessionEnded};
use crate::admission::Permit;
use crate::audio::coalesce::FrameCoalescer;
use crate::lifecycle::{close_code, ExitReason};
use crate::metrics::{ActorKind, BadInput, GaugeGuard};
use crate::protocol::native::ClientEvent;
use crate::protocol::{AudioCodec, ErrorCode, ServerEvent, SessionParams};
use crate::registry::{EndSession, Register, RegisterError};
use crate::services::Services;

pub struct SessionActor {
    params: SessionParams,
    services: Arc<Services>,
    conversation: Option<Addr<ConversationActor>>,
    link: Option<ConversationLink>,
    /// Audio frames gathered into batches before they are handed on.
    coalescer: FrameCoalescer,
    /// Hands a partial batch on when the client pauses mid-batch.
    coalesce_timer: Option<SpawnHandle>,
    last_heard: Instant,
    exit: Option<ExitReason>,
    _permit: Permit,
    _live: GaugeGuard,
}

impl SessionActor {
    pub fn new(params: SessionParams, services: Arc<Services>, permit: Permit) -> Self {
        let live = services.metrics.actor_guard(ActorKind::Session);
        let coalesce_ms = services.config.session.audio_batch_ms;
        SessionActor {
            coalescer: FrameCoalescer::new(params.codec, params.sample_rate, coalesce_ms),
            coalesce_timer: None,
            params,
            services,
            conversation: None,
            link: None,
            last_heard: Instant::now(),
            exit: None,
            _permit: permit,
            _live: live,
        }
    }

    /// Decide the exit reason, once; false if it was already decided.
    fn mark_exit(&mut self, reason: ExitReason) -> bool {
        if self.exit.is_some() {
            return false;
        }
        self.exit = Some(reason);
        if let Some(link) = self.link.as_mut() {
            link.reason = reason;
            link.at = Some(Instant::now());
        }
        true
    }

    /// End the session: decide the reason once, send the close frame, stop.
    fn end(&mut self, reason: ExitReason, code: u16, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.mark_exit(reason) {
            return;
        }
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: Some(reason.as_str().to_string()),
        }));
        ctx.stop();
    }

    fn send_event(&self, event: &ServerEvent, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.text(event.to_json());
    }

    fn client_error(&self, code: ErrorCode, message: String, ctx: &mut ws::WebsocketContext<Self>) {
        self.send_event(&ServerEvent::error(code, message), ctx);
    }

    fn bad_input(
        &self,
        kind: BadInput,
        code: ErrorCode,
        message: String,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        self.services.metrics.count_bad_input(kind);
        self.client_error(code, message, ctx);
    }

    fn on_audio(&mut self, data: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        if self.params.codec == AudioCodec::Pcm16 && data.len() % 2 != 0 {
            let message = format!("PCM16 frame has an odd byte count ({})", data.len());
            return self.bad_input(BadInput::OddLengthPcm, ErrorCode::BadAudio, message, ctx);
        }
        if self.conversation.is_none() {
            return;
        }
        match self.coalescer.push(data) {
            Some(frames) => self.hand_on(frames, ctx),
            None if self.coalesce_timer.is_none() => {
                let batch_ms = u64::from(self.services.config.session.audio_batch_ms);
                let wait = Duration::from_millis(2 * batch_ms);
                self.coalesce_timer = Some(ctx.run_later(wait, |act, ctx| {
                    act.coalesce_timer = None;
                    act.hand_on_partial(ctx);
                }));
            }
            None => {}
        }
    }

    /// Hand on a partial batch, e.g. before a client event that must follow its audio.
    fn hand_on_partial(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(frames) = self.coalescer.take() {
            self.hand_on(frames, ctx);
        }
    }

    fn hand_on(&mut self, frames: Vec<Bytes>, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(timer) = self.coalesce_timer.take() {
            ctx.cancel_future(timer);
        }
        let Some(conversation) = self.conversation.as_ref() else {
            return;
        };
        match conversation.try_send(AudioFrames { frames }) {
            Ok(()) => {}
            Err(SendError::Full(frame)) => {
                // Backpressure, not loss: stop reading the socket until the
                // conversation has room. TCP then slows the client down.
                self.services.metrics.audio_backpressure.inc();
                let accepted = conversation.send(frame).into_actor(self);
                ctx.wait(accepted.map(|result, act, ctx| {
                    if result.is_err() {
                        act.end(ExitReason::ServerError, close_code::SERVER_ERROR, ctx);
                    }
                }));
            }
            Err(SendError::Closed(_)) => {
                self.end(ExitReason::ServerError, close_code::SERVER_ERROR, ctx)
            }
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        if !text.trim_start().starts_with('{') {
            let message = "text frames carry JSON events; send audio as binary frames".into();
            return self.bad_input(
                BadInput::TextInsteadOfAudio,
                ErrorCode::UnexpectedFrame,
                message,
                ctx,
            );
        }
        let event = match ClientEvent::parse(text) {
            Ok(event) => event,
            Err((code, message)) => {
                let kind = match code {
                    ErrorCode::UnknownEvent => BadInput::UnknownEvent,
                    _ => BadInput::MalformedJson,
                };
                return self.bad_input(kind, code, message, ctx);
            }
        };
        match event {
            ClientEvent::Ping => self.send_event(&ServerEvent::Pong, ctx),
            ClientEvent::DebugFailChild { .. } if !self.services.config.debug.fault_injection => {
                let message = "unknown event type `debug.fail_child`".to_string();
                self.bad_input(
                    BadInput::UnknownEvent,
                    ErrorCode::UnknownEvent,
                    message,
                    ctx,
                );
            }
            event => {
                // Events follow the audio sent before them (`audio.end` above all).
                self.hand_on_partial(ctx);
                if let Some(conversation) = self.conversation.as_ref() {
                    // Control events are rare and small: they bypass the audio bound.
                    conversation.do_send(ClientCommand { event });
                }
            }
        }
    }

    fn start_conversation(
        &mut self,
        lease: crate::registry::Lease,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        // Resumed: it took over a live session, or its history is still kept.
        let resumed = lease.resumed()
            || self
                .services
                .conversations
                .contains(self.params.conversation_id);
        let session = SessionHandle {
            outbound: ctx.address().recipient(),
            end: ctx.address().recipient(),
        };
        let conversation = ConversationActor::new(
            self.params.clone(),
            Arc::clone(&self.services),
            session,
            lease,
        );
        let capacity = self.services.config.session.audio_queue_frames;
        let addr = ConversationActor::create(|cctx| {
            cctx.set_mailbox_capacity(capacity);
            conversation
        });
        self.link = Some(ConversationLink {
            conversation: addr.clone(),
            reason: ExitReason::ClientDisconnect,
            at: None,
        });
        self.conversation = Some(addr);
        let started = ServerEvent::SessionStarted {
            conversation_id: self.params.conversation_id,
            resumed,
            codec: self.params.codec,
            sample_rate: self.params.sample_rate,
        };
        self.send_event(&started, ctx);
    }

    fn check_idle(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let idle = Duration::from_millis(self.services.config.session.idle_timeout_ms);
        if self.last_heard.elapsed() >= idle {
            self.end(ExitReason::Timeout, close_code::IDLE_TIMEOUT, ctx);
        }
    }
}

impl Actor for SessionActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let idle_ms = self.services.config.session.idle_timeout_ms;
        let tick = Duration::from_millis((idle_ms / 5).max(10));
        ctx.run_interval(tick, |act, ctx| act.check_idle(ctx));

        let register = Register {
            conversation_id: self.params.conversation_id,
            client_id: self.params.client_id.clone(),
            session: ctx.address().recipient(),
        };
        // Wait (frames stay unread) until the registry grants the conversation: a
        // superseded predecessor is fully torn down before this tree starts.
        let request = self.services.registry.addr.send(register);
        ctx.wait(
            request
                .into_actor(self)
                .map(|answer, act, ctx| match answer {
                    Ok(Ok(lease)) => act.start_conversation(lease, ctx),
                    Ok(Err(RegisterError::Superseded)) => {
                        act.end(ExitReason::Superseded, close_code::SUPERSEDED, ctx)
                    }
                    Ok(Err(RegisterError::ShuttingDown)) | Err(_) => {
                        act.end(ExitReason::ServerShutdown, close_code::GOING_AWAY, ctx)
                    }
                }),
        );
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for SessionActor {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match item {
            Ok(ws::Message::Binary(data)) => self.on_audio(data, ctx),
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) => {}
            Ok(ws::Message::Close(reason)) => {
                // Echo the client's close and end as a client disconnect.
                self.mark_exit(ExitReason::ClientDisconnect);
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Continuation(_)) => {
                let message = "fragmented messages are not supported".to_string();
                self.client_error(ErrorCode::Unsupported, message, ctx);
            }
            Ok(ws::Message::Nop) => {}
            Err(ws::ProtocolError::Overflow) => {
                self.services
                    .metrics
                    .count_bad_input(BadInput::FrameTooLarge);
                self.end(ExitReason::ServerError, close_code::TOO_BIG, ctx);
            }
            Err(ws::ProtocolError::Io(error)) => {
                // The connection broke (reset, aborted): the client is gone.
                tracing::debug!(%error, conversation_id = %self.params.conversation_id, "connection lost");
                ctx.stop();
            }
            Err(error) => {
                tracing::debug!(%error, conversation_id = %self.params.conversation_id, "protocol violation");
                self.end(ExitReason::ServerError, close_code::PROTOCOL, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The TCP stream ended without (or after) a Close frame.
        ctx.stop();
    }
}

impl Handler<Outbound> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        match msg {
            Outbound::Event(event) => self.send_event(&event, ctx),
            Outbound::Audio(data) => ctx.binary(data),
        }
    }
}

impl Handler<EndSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: EndSession, ctx: &mut Self::Context) {
        self.end(msg.reason, msg.reason.close_code(), ctx);
    }
}

/// The session's hold on its conversation. Its `Drop` is the one place a session's end
/// is announced, so it happens whether the session stopped, was dropped, or panicked.
struct ConversationLink {
    conversation: Addr<ConversationActor>,
    reason: ExitReason,
    /// When the end was decided; a dropped TCP stream is noticed at drop time.
    at: Option<Instant>,
}

impl Drop for ConversationLink {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() {
            ExitReason::ServerError
        } else {
            self.reason
        };
        self.conversation.do_send(SessionEnded {
            reason,
            at: self.at.unwrap_or_else(Instant::now),
        });
    }
}
