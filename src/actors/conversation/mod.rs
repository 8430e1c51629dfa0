//! `ConversationActor`: the supervisor of one conversation.
//!
//! It owns its children (routing between them is in `routing.rs`): it starts
//! them, restarts one that reports a recoverable failure (capped), and ends the whole
//! conversation with `server_error` when a child panics or the cap is reached. Every end
//! runs the same teardown: decide the reason once, cancel queued work, ask the session
//! to close and every child to stop, wait (bounded) until the session and each child —
//! with every job and file it handed to a worker — are gone, then stop. Dropping the
//! registry [`Lease`] (the last field) publishes `connection_disconnected`.

mod routing;
mod turn;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::child::{child_link, ChildEnv, ChildOutcome, ChildRole, ChildWatch};
use crate::actors::llm::LlmActor;
use crate::actors::messages::{
    CancelResponse, DiscardResponse, InjectFailure, Outbound, Respond, SessionEnded, StopChild,
    StopSpeaking,
};
use crate::actors::recorder::RecorderActor;
use crate::actors::stt::SttActor;
use crate::actors::throttle::NoticeThrottle;
use crate::actors::tts::TtsActor;
use crate::actors::vad::VadActor;
use crate::lifecycle::ExitReason;
use crate::metrics::{ActorKind, GaugeGuard, Preemptive};
use crate::protocol::{ErrorCode, ServerEvent, SessionParams};
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
                self.children.vad = Some(with_mailbox(actor));
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

    fn to_client(&self, event: ServerEvent) {
        if self.session_alive {
            self.session.outbound.do_send(Outbound::Event(event));
        }
    }

    fn report_overload(&mut self) {
        self.services.metrics.audio_frames_dropped.inc();
        if self.overload_notice.due() {
            let message = "speech processing is behind; audio frames dropped";
            self.to_client(ServerEvent::error(ErrorCode::Overloaded, message));
        }
    }

    fn cancel_reply(&mut self) {
        self.discard_speculation();
        if let Some(llm) = self.children.llm.as_ref() {
            llm.do_send(CancelResponse);
        }
        if let Some(tts) = self.children.tts.as_ref() {
            tts.do_send(StopSpeaking);
        }
    }

    /// Answer `text`: a speculative reply (`speculative`) or the turn's answer.
    fn respond(&mut self, text: String, speculative: bool) {
        let Some(llm) = self.children.llm.as_ref() else {
            return;
        };
        let response_id = uuid::Uuid::new_v4();
        if speculative {
            self.speculation = Some(turn::Speculation::new(response_id, text.clone()));
            let metrics = &self.services.metrics.latency;
            metrics.count_preemptive(Preemptive::Started);
        }
        llm.do_send(Respond {
            response_id,
            text,
            speculative,
        });
        self.turn.reply_started(response_id);
    }

    /// Drop the speculative reply unseen: the LLM stores nothing of it, the TTS drops
    /// its held audio, and its events still on their way are ignored.
    fn discard_speculation(&mut self) {
        let Some(speculation) = self.speculation.take() else {
            return;
        };
        let metrics = &self.services.metrics.latency;
        metrics.count_preemptive(Preemptive::Discarded);
        let response_id = speculation.response_id;
        if let Some(llm) = self.children.llm.as_ref() {
            llm.do_send(DiscardResponse { response_id });
        }
        if let Some(tts) = self.children.tts.as_ref() {
            tts.do_send(StopSpeaking);
        }
        if self.discarded.len() >= 4 {
            self.discarded.pop_front();
        }
        self.discarded.push_back(response_id);
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
            self.to_client(ServerEvent::error(ErrorCode::UnknownEvent, message));
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
