//! `ConversationActor`: the supervisor of one conversation.
//!
//! It owns its children (routing between them is in `routing.rs`; the user's turns
//! in `input.rs`; replies in `reply.rs`; the protocol's commands in `commands.rs`): it
//! starts them, restarts one that reports a recoverable failure (capped), and ends the whole
//! conversation with `server_error` when a child panics or the cap is reached. Every end
//! runs the same teardown: decide the reason once, cancel queued work, ask the session
//! to close and every child to stop, wait (bounded) until the session and each child —
//! with every job and file it handed to a worker — are gone, then stop. Dropping the
//! registry [`Lease`] (the last field) publishes `connection_disconnected`.

mod commands;
mod input;
mod reply;
mod routing;
mod spoken;
mod turn;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::child::{child_link, ChildEnv, ChildOutcome, ChildRole, ChildWatch};
use crate::actors::llm::LlmActor;
use crate::actors::messages::{ConfigureInput, InjectFailure, Outbound, SessionEnded, StopChild};
use crate::actors::recorder::RecorderActor;
use crate::actors::stt::SttActor;
use crate::actors::throttle::NoticeThrottle;
use crate::actors::tts::TtsActor;
use crate::actors::vad::VadActor;
use crate::lifecycle::ExitReason;
use crate::metrics::{ActorKind, GaugeGuard};
use crate::protocol::pipeline::TurnPolicy;
use crate::protocol::PipelineEvent;
use crate::protocol::{ErrorCode, SessionParams};
use crate::registry::{EndSession, Lease};
use crate::services::Services;
use crate::workers::cancel::CancelOnDrop;

/// Restarts of failed children a conversation allows before it gives up.
const MAX_CHILD_RESTARTS: u32 = 3;
/// Bound of each child's mailbox for audio-rate messages.
const CHILD_MAILBOX: usize = 256;

/// How the conversation reaches its transport.
pub struct SessionHandle {
    pub outbound: Recipient<Outbound>,
    pub end: Recipient<EndSession>,
}

#[derive(Default)]
struct Children {
    vad: Option<Addr<VadActor>>,
    stt: Option<Addr<SttActor>>,
    llm: Option<Addr<LlmActor>>,
    tts: Option<Addr<TtsActor>>,
    recorder: Option<Addr<RecorderActor>>,
}

pub struct ConversationActor {
    params: SessionParams,
    services: Arc<Services>,
    session: SessionHandle,
    session_alive: bool,
    children: Children,
    /// Current generation of each role; exits of older generations are expected.
    generations: HashMap<ChildRole, u64>,
    /// Children (of any generation) whose watch has not resolved yet.
    children_alive: usize,
    restarts: u32,
    ending: bool,
    overload_notice: NoticeThrottle,
    /// The reply started on a draft transcript, held until its turn is confirmed.
    speculation: Option<turn::Speculation>,
    /// Replies discarded lately: their events still in flight are dropped unseen.
    discarded: VecDeque<uuid::Uuid>,
    turn: turn::TurnTimes,
    /// How turns are found and answered (the protocol may change it).
    policy: TurnPolicy,
    /// The user's turns on their way to becoming items.
    input: input::InputTurns,
    /// Replies until both their text and their speech are over.
    replies: reply::Replies,
    cancel: CancelOnDrop,
    _live: GaugeGuard,
    /// Dropped last: publishes the disconnect once everything above is gone.
    lease: Lease,
}

impl ConversationActor {
    pub fn new(
        params: SessionParams,
        services: Arc<Services>,
        session: SessionHandle,
        lease: Lease,
    ) -> Self {
        let live = services.metrics.actor_guard(ActorKind::Conversation);
        let policy = TurnPolicy::from_config(&services.config, services.turn.is_some());
        ConversationActor {
            params,
            services,
            session,
            session_alive: true,
            children: Children::default(),
            generations: HashMap::new(),
            children_alive: 0,
            restarts: 0,
            ending: false,
            overload_notice: NoticeThrottle::default(),
            speculation: None,
            discarded: VecDeque::new(),
            turn: turn::TurnTimes::default(),
            policy,
            input: input::InputTurns::default(),
            replies: reply::Replies::default(),
            cancel: CancelOnDrop(crate::workers::CancelToken::new()),
            _live: live,
            lease,
        }
    }

    fn child_env(&self, ctx: &Context<Self>) -> ChildEnv {
        ChildEnv {
            params: self.params.clone(),
            services: Arc::clone(&self.services),
            cancel: self.cancel.0.clone(),
            parent: ctx.address().recipient(),
        }
    }

    /// Start (or restart) the child of `role` and watch it.
    fn spawn_child(&mut self, role: ChildRole, ctx: &mut Context<Self>) -> Result<(), String> {
        let (link, watch) = child_link();
        let env = self.child_env(ctx);
        match role {
            ChildRole::Vad => {
                let actor = VadActor::new(env, link).map_err(|e| e.to_string())?;
                let vad = with_mailbox(actor);
                // A restarted VAD keeps the turn detection the protocol chose.
                vad.do_send(ConfigureInput {
                    detection: self.policy.detection,
                    format: self.params.input,
                });
                self.children.vad = Some(vad);
            }
            ChildRole::Stt => self.children.stt = Some(with_mailbox(SttActor::new(env, link))),
            ChildRole::Llm => self.children.llm = Some(with_mailbox(LlmActor::new(env, link))),
            ChildRole::Tts => self.children.tts = Some(with_mailbox(TtsActor::new(env, link))),
            ChildRole::Recorder => {
                self.children.recorder = Some(with_mailbox(RecorderActor::new(env, link)))
            }
        }
        let generation = self.generations.entry(role).or_default();
        *generation += 1;
        let generation = *generation;
        self.watch_child(role, generation, watch, ctx);
        Ok(())
    }

    fn watch_child(
        &mut self,
        role: ChildRole,
        generation: u64,
        watch: ChildWatch,
        ctx: &mut Context<Self>,
    ) {
        self.children_alive += 1;
        ctx.spawn(
            watch
                .finished()
                .into_actor(self)
                .map(move |outcome, act, ctx| act.on_child_exit(role, generation, outcome, ctx)),
        );
    }

    fn on_child_exit(
        &mut self,
        role: ChildRole,
        generation: u64,
        outcome: ChildOutcome,
        ctx: &mut Context<Self>,
    ) {
        self.children_alive -= 1;
        let current = self.generations.get(&role) == Some(&generation);
        if !self.ending && current {
            match outcome {
                ChildOutcome::Died => tracing::error!(
                    conversation_id = %self.params.conversation_id,
                    child = role.as_str(),
                    "child panicked"
                ),
                ChildOutcome::Stopped => tracing::error!(
                    conversation_id = %self.params.conversation_id,
                    child = role.as_str(),
                    "child stopped on its own"
                ),
            }
            self.end(ExitReason::ServerError, Instant::now(), ctx);
        }
        self.finish_if_done(ctx);
    }

    /// A child reported a failure: restart it, or end the conversation.
    fn on_child_failed(&mut self, role: ChildRole, error: String, ctx: &mut Context<Self>) {
        if self.ending {
            return;
        }
        let conversation_id = self.params.conversation_id;
        if self.restarts >= MAX_CHILD_RESTARTS {
            tracing::error!(%conversation_id, child = role.as_str(), %error, "child failed; restart cap reached");
            return self.end(ExitReason::ServerError, Instant::now(), ctx);
        }
        tracing::warn!(%conversation_id, child = role.as_str(), %error, "restarting failed child");
        self.stop_child(role);
        self.orphaned_by(role, &error);
        self.restarts += 1;
        self.services.metrics.child_restarts.inc();
        if let Err(error) = self.spawn_child(role, ctx) {
            tracing::error!(%conversation_id, child = role.as_str(), %error, "child restart failed");
            self.end(ExitReason::ServerError, Instant::now(), ctx);
        }
    }

    fn stop_child(&mut self, role: ChildRole) {
        match role {
            ChildRole::Vad => stop(self.children.vad.take()),
            ChildRole::Stt => stop(self.children.stt.take()),
            ChildRole::Llm => stop(self.children.llm.take()),
            ChildRole::Tts => stop(self.children.tts.take()),
            ChildRole::Recorder => stop(self.children.recorder.take()),
        }
    }

    /// The one teardown. Decides the reason (first caller wins) and starts stopping.
    fn end(&mut self, reason: ExitReason, at: Instant, ctx: &mut Context<Self>) {
        if self.ending {
            return;
        }
        self.ending = true;
        self.lease.set_exit(reason, at);
        self.cancel.0.cancel();
        if self.session_alive {
            self.session.end.do_send(EndSession { reason });
        }
        for role in [
            ChildRole::Vad,
            ChildRole::Stt,
            ChildRole::Llm,
            ChildRole::Tts,
            ChildRole::Recorder,
        ] {
            self.stop_child(role);
        }
        let deadline = Duration::from_millis(self.services.config.session.teardown_timeout_ms);
        ctx.run_later(deadline, |act, ctx| {
            tracing::error!(
                conversation_id = %act.params.conversation_id,
                children_alive = act.children_alive,
                session_alive = act.session_alive,
                "teardown deadline passed; stopping anyway"
            );
            ctx.stop();
        });
        self.finish_if_done(ctx);
    }

    fn finish_if_done(&mut self, ctx: &mut Context<Self>) {
        if self.ending && !self.session_alive && self.children_alive == 0 {
            ctx.stop();
        }
    }

    fn to_client(&self, event: PipelineEvent) {
        if self.session_alive {
            self.session.outbound.do_send(Outbound::Event(event));
        }
    }

    fn report_overload(&mut self) {
        self.services.metrics.audio_frames_dropped.inc();
        if self.overload_notice.due() {
            let message = "speech processing is behind; audio frames dropped";
            self.to_client(PipelineEvent::error(ErrorCode::Overloaded, message));
        }
    }

    /// A restarted child left work behind: whatever waited on it is told now.
    fn orphaned_by(&mut self, role: ChildRole, error: &str) {
        let events = match role {
            ChildRole::Stt => {
                let message = format!("speech recognition failed: {error}");
                let mut events = self.input.fail_all(&message);
                events.extend(self.input.spoken.fail_all(&message));
                events
            }
            ChildRole::Llm => self
                .replies
                .text_failed_all(&format!("the reply failed: {error}")),
            ChildRole::Tts => self.replies.speech_over_all(),
            ChildRole::Vad | ChildRole::Recorder => Vec::new(),
        };
        for event in events {
            self.reply_event(event);
        }
        if role == ChildRole::Stt {
            self.start_deferred_reply();
        }
    }

    fn inject_failure(&mut self, role: &str, mode: crate::protocol::native::FailureMode) {
        let failure = InjectFailure { mode };
        let sent = match ChildRole::parse(role) {
            Some(ChildRole::Vad) => self.children.vad.as_ref().map(|a| a.do_send(failure)),
            Some(ChildRole::Stt) => self.children.stt.as_ref().map(|a| a.do_send(failure)),
            Some(ChildRole::Llm) => self.children.llm.as_ref().map(|a| a.do_send(failure)),
            Some(ChildRole::Tts) => self.children.tts.as_ref().map(|a| a.do_send(failure)),
            Some(ChildRole::Recorder) => {
                self.children.recorder.as_ref().map(|a| a.do_send(failure))
            }
            None => None,
        };
        if sent.is_none() {
            let message = format!("no running child `{role}`");
            self.to_client(PipelineEvent::error(ErrorCode::UnknownEvent, message));
        }
    }
}

fn with_mailbox<A>(actor: A) -> Addr<A>
where
    A: Actor<Context = Context<A>>,
{
    A::create(|ctx| {
        ctx.set_mailbox_capacity(CHILD_MAILBOX);
        actor
    })
}

fn stop<A>(child: Option<Addr<A>>)
where
    A: Actor + Handler<StopChild>,
    A::Context: actix::dev::ToEnvelope<A, StopChild>,
{
    if let Some(addr) = child {
        addr.do_send(StopChild);
    }
}

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let mut roles = vec![
            ChildRole::Vad,
            ChildRole::Stt,
            ChildRole::Llm,
            ChildRole::Tts,
        ];
        if self.services.config.recorder.enabled {
            roles.push(ChildRole::Recorder);
        }
        for role in roles {
            if let Err(error) = self.spawn_child(role, ctx) {
                tracing::error!(
                    conversation_id = %self.params.conversation_id,
                    child = role.as_str(),
                    %error,
                    "child failed to start"
                );
                return self.end(ExitReason::ServerError, Instant::now(), ctx);
            }
        }
    }
}

impl Handler<SessionEnded> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, ctx: &mut Context<Self>) {
        self.session_alive = false;
        self.end(msg.reason, msg.at, ctx);
        self.finish_if_done(ctx);
    }
}
