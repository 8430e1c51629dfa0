//! `SessionActor`: the WebSocket transport of one client, and nothing else.
//!
//! Its wire protocol ([`Wire`]: native or the Realtime API) turns frames into commands
//! and audio and the conversation's events into frames; the session carries them out,
//! enforces the idle timeout, frame limits and flood control, and closes the socket
//! with the right code. It holds no pipeline state. On start it asks the registry for a lease (waiting out a
//! superseded predecessor, at most `session.register_timeout_ms`; in a cluster, first
//! the conversation's lease in Redis, ending a session of it on another node), then
//! starts its conversation. However it ends — Close frame, dropped TCP, timeout, a write stall (the
//! watchdog in `write_stall.rs` drops it), a supervisor's request, a panic — its `Drop`
//! tells the conversation, which then tears the tree down.
//!
//! Activity, for the idle timeout, is what shows a client taking part: an audio frame
//! that carries samples, or a client event that parses. WebSocket Ping/Pong, empty
//! binary frames and rejected input are not activity, so they cannot keep a tree alive.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;

use super::conversation::{ConversationActor, SessionHandle};
use super::messages::{AudioFrames, ClientCommand, Outbound, SessionEnded};
use super::throttle::{AudioBudget, TokenBucket};
use super::write_stall::StallSignal;
use crate::admission::Permit;
use crate::audio::coalesce::FrameCoalescer;
use crate::audio::opus_codec::packet_samples;
use crate::lifecycle::{close_code, ExitReason};
use crate::metrics::{ActorKind, BadInput, GaugeGuard};
use crate::protocol::{
    Action, Command, ErrorCode, Fault, Outbox, PipelineEvent, SessionParams, SessionStart, Wire,
};
use crate::registry::{EndSession, Lease, RegisterError};
use crate::services::Services;

/// The conversation's lease: in a cluster first its Redis lease (the claim then rides
/// with the registry lease, so it ends after the local teardown), then the registry's.
/// With histories in Redis, a client-chosen conversation's history is read in between:
/// once this node holds the lease, the previous owner has written its last turn. True
/// when the conversation was taken over from another node. Dropping the future
/// withdraws both requests.
fn register(
    services: &Services,
    params: &SessionParams,
    session: Recipient<EndSession>,
) -> impl std::future::Future<Output = Result<(Lease, bool), RegisterError>> + 'static {
    let registry = services.registry.clone();
    let cluster = services.cluster.clone();
    let conversation_id = params.conversation_id;
    let client_id = params.client_id.clone();
    let history = (params.conversation_id_given && services.conversations.in_redis())
        .then(|| Arc::clone(&services.conversations));
    async move {
        let claim = match &cluster {
            Some(cluster) => Some(cluster.acquire(conversation_id).await),
            None => None,
        };
        if let Some(history) = history {
            history.resume(conversation_id).await;
        }
        let mut lease = registry
            .register(conversation_id, client_id, session)
            .await?;
        let taken_over = claim
            .as_ref()
            .is_some_and(|c| c.grant() == crate::cluster::Grant::TakenOver);
        if let Some(claim) = claim {
            lease.attach(claim.granted());
        }
        Ok((lease, taken_over))
    }
}

pub struct SessionActor {
    params: SessionParams,
    services: Arc<Services>,
    /// The wire protocol: frames in and out.
    wire: Box<dyn Wire>,
    /// Reused between frames: what the wire asks the session to do.
    outbox: Outbox,
    conversation: Option<Addr<ConversationActor>>,
    link: Option<ConversationLink>,
    /// Audio frames gathered into batches before they are handed on.
    coalescer: FrameCoalescer,
    /// Hands a partial batch on when the client pauses mid-batch.
    coalesce_timer: Option<SpawnHandle>,
    /// Last client activity (see the module docs), for the idle timeout.
    last_heard: Instant,
    /// Flood control: client events, Pings and error replies take tokens.
    flood: TokenBucket,
    /// How far the client's audio may run ahead of real time.
    audio_budget: AudioBudget,
    /// Undecodable frames allowed before the stream counts as corrupt.
    bad_audio: TokenBucket,
    /// Set by the write-stall watchdog; read by the conversation link on drop.
    stall: Rc<StallSignal>,
    exit: Option<ExitReason>,
    /// The conversation was taken over from another node of the cluster.
    taken_over: bool,
    _permit: Permit,
    _live: GaugeGuard,
}

/// The counter a rejected input is counted under.
fn bad_input_kind(fault: Fault) -> BadInput {
    match fault {
        Fault::MalformedJson => BadInput::MalformedJson,
        Fault::UnknownEvent => BadInput::UnknownEvent,
        Fault::InvalidEvent => BadInput::InvalidEvent,
        Fault::BadAudio => BadInput::OddLengthPcm,
        Fault::TextInsteadOfAudio => BadInput::TextInsteadOfAudio,
        Fault::BinaryInsteadOfText => BadInput::BinaryInsteadOfText,
        Fault::PromptTooLarge => BadInput::PromptTooLarge,
        Fault::AudioTooLarge => BadInput::AudioTooLarge,
        Fault::BadBase64 => BadInput::BadBase64,
    }
}

impl SessionActor {
    pub fn new(
        params: SessionParams,
        services: Arc<Services>,
        wire: Box<dyn Wire>,
        permit: Permit,
        stall: Rc<StallSignal>,
    ) -> Self {
        let live = services.metrics.actor_guard(ActorKind::Session);
        let session = &services.config.session;
        let coalesce_ms = session.audio_batch_ms;
        let flood = TokenBucket::new(
            f64::from(session.client_events_burst),
            f64::from(session.client_events_per_s),
        );
        let audio_budget = AudioBudget::new(session.max_audio_speed, session.audio_burst_ms);
        let bad_audio = TokenBucket::new(f64::from(session.bad_audio_burst), 1.0);
        SessionActor {
            coalescer: FrameCoalescer::new(params.input, coalesce_ms),
            coalesce_timer: None,
            params,
            services,
            wire,
            outbox: Outbox::default(),
            conversation: None,
            link: None,
            last_heard: Instant::now(),
            flood,
            audio_budget,
            bad_audio,
            stall,
            exit: None,
            taken_over: false,
            _permit: permit,
            _live: live,
        }
    }

    /// Take one flood-control token; past the limit the session ends with 1008.
    /// False when the session is ending (the caller drops what it was doing).
    fn take_token(&mut self, ctx: &mut ws::WebsocketContext<Self>) -> bool {
        if self.exit.is_some() {
            return false;
        }
        if self.flood.take() {
            return true;
        }
        tracing::info!(conversation_id = %self.params.conversation_id, "client flood; closing");
        self.services.metrics.count_bad_input(BadInput::Flood);
        self.end(ExitReason::ServerError, close_code::POLICY, ctx);
        false
    }

    /// Input the session refused (and goes on): counted, and the session loses its
    /// good standing for a while (`protocol::standing`).
    fn bad_input(&self, kind: BadInput) {
        self.services.metrics.count_bad_input(kind);
        self.params.standing.bad_input(Instant::now());
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

    /// Let the wire act on something, then carry out what it asked for, in order.
    fn with_wire(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        act: impl FnOnce(&mut dyn Wire, &mut Outbox),
    ) {
        let mut out = std::mem::take(&mut self.outbox);
        act(self.wire.as_mut(), &mut out);
        self.carry_out(&mut out, ctx);
        self.outbox = out;
    }

    fn carry_out(&mut self, out: &mut Outbox, ctx: &mut ws::WebsocketContext<Self>) {
        for action in out.drain() {
            match action {
                Action::Text(text) => ctx.text(text),
                Action::Binary(data) => ctx.binary(data),
                Action::Reject { fault, text } => {
                    self.bad_input(bad_input_kind(fault));
                    let corrupt = fault == Fault::BadAudio && self.corrupt_stream(ctx);
                    if !corrupt && self.take_token(ctx) {
                        ctx.text(text);
                    }
                }
                Action::Audio(data) => self.on_audio(data, ctx),
                Action::InputFormat(format) => {
                    self.hand_on_partial(ctx);
                    self.coalescer.set_format(format);
                }
                Action::Command(command) => {
                    if !self.admit_item_audio(&command, ctx) {
                        continue;
                    }
                    // Commands follow the audio sent before them (a commit above all).
                    self.hand_on_partial(ctx);
                    if let Some(conversation) = self.conversation.as_ref() {
                        // Control events are rare and small: they bypass the audio bound.
                        conversation.do_send(ClientCommand { command });
                    }
                }
                Action::Activity => self.last_heard = Instant::now(),
                Action::Timer { after_ms, key } => {
                    ctx.run_later(Duration::from_millis(after_ms), move |act, ctx| {
                        act.with_wire(ctx, |wire, out| wire.timer(key, out));
                    });
                }
            }
        }
    }

    /// One more undecodable frame: past `session.bad_audio_burst` of them the stream
    /// is corrupt and the session ends (1007). True if it ended.
    fn corrupt_stream(&mut self, ctx: &mut ws::WebsocketContext<Self>) -> bool {
        if self.exit.is_some() || self.bad_audio.take() {
            return false;
        }
        tracing::info!(conversation_id = %self.params.conversation_id, "corrupt audio stream; closing");
        self.services
            .metrics
            .count_bad_input(BadInput::CorruptStream);
        let message = "too many undecodable audio frames; the audio stream is corrupt, closing";
        ctx.text(self.wire.error_text(ErrorCode::BadAudio, message));
        self.end(ExitReason::ServerError, close_code::INVALID_PAYLOAD, ctx);
        true
    }

    /// An error about the client's input that the session finds itself: counted, and
    /// it takes a flood-control token.
    fn reject(
        &mut self,
        kind: BadInput,
        code: ErrorCode,
        message: &str,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        self.bad_input(kind);
        let corrupt = code == ErrorCode::BadAudio && self.corrupt_stream(ctx);
        if !corrupt && self.take_token(ctx) {
            ctx.text(self.wire.error_text(code, message));
        }
    }

    /// A spoken item's audio costs the models what streamed audio costs: it is paced by
    /// the same budget (false: refused, with an error).
    fn admit_item_audio(
        &mut self,
        command: &Command,
        ctx: &mut ws::WebsocketContext<Self>,
    ) -> bool {
        let Command::AddSpokenItem { audio, format, .. } = command else {
            return true;
        };
        if self
            .audio_budget
            .admit(format.bytes_to_ms(audio.len()) as f64)
        {
            return true;
        }
        let speed = self.services.config.session.max_audio_speed;
        let message = format!("audio arrives faster than {speed}x real time; item refused");
        self.reject(
            BadInput::AudioTooFast,
            ErrorCode::AudioTooFast,
            &message,
            ctx,
        );
        false
    }

    fn on_audio(&mut self, data: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        if self.conversation.is_none() || data.is_empty() || self.exit.is_some() {
            return; // no samples, or the session is ending
        }
        let format = self.coalescer.format();
        let samples = match format.codec.bytes_per_sample() {
            Some(width) => data.len() / width as usize,
            None => match packet_samples(&data, format.sample_rate) {
                Ok(samples) => samples,
                Err(error) => {
                    let message = format!("undecodable Opus packet: {error}");
                    return self.reject(BadInput::BadOpus, ErrorCode::BadAudio, &message, ctx);
                }
            },
        };
        let audio_ms = samples as f64 * 1000.0 / f64::from(format.sample_rate);
        if !self.audio_budget.admit(audio_ms) {
            let speed = self.services.config.session.max_audio_speed;
            let message = format!("audio arrives faster than {speed}x real time; frame dropped");
            return self.reject(
                BadInput::AudioTooFast,
                ErrorCode::AudioTooFast,
                &message,
                ctx,
            );
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

    /// A client text frame: an event costs a flood-control token, audio does not (it
    /// is paced by backpressure).
    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        if self.exit.is_some() {
            return;
        }
        let mut out = std::mem::take(&mut self.outbox);
        self.wire.client_text(text, &mut out);
        if out.carries_audio() || self.take_token(ctx) {
            self.carry_out(&mut out, ctx);
        }
        out.drain();
        self.outbox = out;
    }

    fn start_conversation(
        &mut self,
        lease: crate::registry::Lease,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        // Resumed: it took over a live session (here or on another node), or its
        // history is still kept.
        let resumed = lease.resumed()
            || self.taken_over
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
            stall: Rc::clone(&self.stall),
        });
        self.conversation = Some(addr);
        let start = SessionStart {
            conversation_id: self.params.conversation_id,
            resumed,
        };
        self.with_wire(ctx, |wire, out| wire.started(start, out));
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

        // Wait (frames stay unread) until the registry grants the conversation: a
        // superseded predecessor is fully torn down before this tree starts. The wait is
        // bounded; giving up drops the request, which withdraws it.
        let request = register(&self.services, &self.params, ctx.address().recipient());
        let bound = Duration::from_millis(self.services.config.session.register_timeout_ms);
        ctx.wait(
            tokio::time::timeout(bound, request)
                .into_actor(self)
                .map(|answer, act, ctx| match answer {
                    Ok(Ok((lease, taken_over))) => {
                        act.taken_over = taken_over;
                        act.start_conversation(lease, ctx)
                    }
                    Ok(Err(RegisterError::Superseded)) => {
                        act.end(ExitReason::Superseded, close_code::SUPERSEDED, ctx)
                    }
                    Ok(Err(RegisterError::ShuttingDown)) => {
                        act.end(ExitReason::ServerShutdown, close_code::GOING_AWAY, ctx)
                    }
                    Err(_) => {
                        tracing::info!(
                            conversation_id = %act.params.conversation_id,
                            "the previous session of this conversation did not end in time"
                        );
                        let message = "the previous session of this conversation has not \
                                       ended; try again later";
                        ctx.text(act.wire.error_text(ErrorCode::ConversationBusy, message));
                        // No tree was started, so no event: the reason is only logged.
                        act.end(ExitReason::Timeout, close_code::TRY_AGAIN_LATER, ctx)
                    }
                }),
        );
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for SessionActor {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(ws::Message::Binary(data)) => {
                self.with_wire(ctx, |wire, out| wire.client_binary(data, out))
            }
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            // Answered (it costs a token), but not activity: a client library's
            // automatic pings must not hold a tree that never hears audio.
            Ok(ws::Message::Ping(payload)) => {
                if self.take_token(ctx) {
                    ctx.pong(&payload)
                }
            }
            Ok(ws::Message::Pong(_)) => {}
            Ok(ws::Message::Close(reason)) => {
                // Echo the client's close and end as a client disconnect.
                self.mark_exit(ExitReason::ClientDisconnect);
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Continuation(_)) => {
                let message = "fragmented messages are not supported";
                if self.take_token(ctx) {
                    ctx.text(self.wire.error_text(ErrorCode::Unsupported, message));
                }
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
            Outbound::Event(event) => {
                // Errors about the client's input (e.g. undecodable Opus) count like the
                // session's own replies; past the limit the client is flooding.
                if let PipelineEvent::Error { code, .. } = &event {
                    if *code == ErrorCode::BadAudio && self.corrupt_stream(ctx) {
                        return;
                    }
                    if code.is_client_fault() && !self.take_token(ctx) {
                        return;
                    }
                }
                self.with_wire(ctx, |wire, out| wire.pipeline_event(event, out));
            }
            Outbound::Audio(frame) => {
                self.with_wire(ctx, |wire, out| wire.pipeline_audio(frame, out))
            }
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
    /// A session dropped by the write-stall watchdog decided nothing itself.
    stall: Rc<StallSignal>,
}

impl Drop for ConversationLink {
    fn drop(&mut self) {
        let (reason, at) = match (self.at, self.stall.stalled_at()) {
            _ if std::thread::panicking() => (ExitReason::ServerError, self.at),
            (None, Some(stalled)) => (ExitReason::Timeout, Some(stalled)),
            (at, _) => (self.reason, at),
        };
        self.conversation.do_send(SessionEnded {
            reason,
            at: at.unwrap_or_else(Instant::now),
        });
    }
}
