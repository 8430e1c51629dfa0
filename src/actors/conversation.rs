//! `ConversationActor`: the supervisor of one conversation.
//!
//! It routes audio → VAD → STT → LLM → TTS → session and owns its children: it starts
//! them, restarts one that reports a recoverable failure (capped), and ends the whole
//! conversation with `server_error` when a child panics or the cap is reached. Every end
//! runs the same teardown: decide the reason once, cancel queued work, ask the session
//! to close and every child to stop, wait (bounded) until the session and each child —
//! with every job and file it handed to a worker — are gone, then stop. Dropping the
//! registry [`Lease`] (the last field) publishes `connection_disconnected`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::child::{child_link, ChildEnv, ChildOutcome, ChildRole, ChildWatch};
use super::llm::LlmActor;
use super::messages::{
    AudioFrame, CancelResponse, ChildEvent, ClientCommand, FlushSpeech, InjectFailure, Outbound,
    Record, Respond, SessionEnded, SpeakDelta, SpeakEnd, StopChild, StopSpeaking, Transcribe,
};
use super::recorder::RecorderActor;
use super::stt::SttActor;
use super::throttle::NoticeThrottle;
use super::tts::TtsActor;
use super::vad::VadActor;
use crate::audio::segmenter::SpeechEvent;
use crate::lifecycle::ExitReason;
use crate::metrics::{ActorKind, GaugeGuard};
use crate::protocol::native::ClientEvent;
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

    fn cancel_reply(&self) {
        if let Some(llm) = self.children.llm.as_ref() {
            llm.do_send(CancelResponse);
        }
        if let Some(tts) = self.children.tts.as_ref() {
            tts.do_send(StopSpeaking);
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

impl Handler<AudioFrame> for ConversationActor {
    type Result = ();

    fn handle(&mut self, frame: AudioFrame, ctx: &mut Context<Self>) {
        let Some(vad) = self.children.vad.as_ref() else {
            return;
        };
        if let Err(SendError::Full(frame)) = vad.try_send(frame) {
            // Backpressure: hold this mailbox (and so the session's reads) until the
            // VAD has room. A dead VAD answers at once and is handled by supervision.
            self.services.metrics.audio_backpressure.inc();
            ctx.wait(vad.send(frame).into_actor(self).map(|_, _, _| ()));
        }
    }
}

impl Handler<ClientCommand> for ConversationActor {
    type Result = ();

    fn handle(&mut self, command: ClientCommand, _: &mut Context<Self>) {
        match command.event {
            ClientEvent::AudioEnd => {
                if let Some(vad) = self.children.vad.as_ref() {
                    vad.do_send(FlushSpeech);
                }
            }
            ClientEvent::DebugFailChild { role, mode } => self.inject_failure(&role, mode),
            ClientEvent::ResponseCancel => self.cancel_reply(),
            ClientEvent::SessionUpdate { llm } => {
                if let Some(prompt) = llm.and_then(|l| l.system_prompt) {
                    let id = self.params.conversation_id;
                    self.services.conversations.set_system_prompt(id, prompt);
                }
            }
            ClientEvent::Ping => self.to_client(ServerEvent::Pong),
        }
    }
}

impl Handler<ChildEvent> for ConversationActor {
    type Result = ();

    fn handle(&mut self, event: ChildEvent, ctx: &mut Context<Self>) {
        match event {
            ChildEvent::Speech { event } => self.to_client(match event {
                SpeechEvent::Started { audio_ms } => {
                    // Barge-in: the user talks over the reply.
                    self.cancel_reply();
                    ServerEvent::SpeechStarted { audio_ms }
                }
                SpeechEvent::Stopped { audio_ms } => ServerEvent::SpeechStopped { audio_ms },
            }),
            ChildEvent::Segment { segment } => {
                if let Some(stt) = self.children.stt.as_ref() {
                    if stt.try_send(Transcribe { segment }).is_err() {
                        self.report_overload();
                    }
                }
            }
            ChildEvent::Decoded { samples } => {
                if let Some(recorder) = self.children.recorder.as_ref() {
                    if recorder.try_send(Record { samples }).is_err() {
                        self.report_overload();
                    }
                }
            }
            ChildEvent::Transcript {
                text,
                audio_ms,
                stt_ms,
            } => {
                if let Some(llm) = self.children.llm.as_ref() {
                    llm.do_send(Respond { text: text.clone() });
                }
                self.to_client(ServerEvent::TranscriptFinal {
                    text,
                    audio_ms,
                    stt_ms,
                })
            }
            ChildEvent::ResponseDelta { response_id, text } => {
                if let Some(tts) = self.children.tts.as_ref() {
                    tts.do_send(SpeakDelta {
                        response_id,
                        text: text.clone(),
                    });
                }
                self.to_client(ServerEvent::ResponseTextDelta { response_id, text })
            }
            ChildEvent::ResponseDone {
                response_id,
                cancelled,
            } => {
                if let Some(tts) = self.children.tts.as_ref() {
                    tts.do_send(SpeakEnd {
                        response_id,
                        cancelled,
                    });
                }
                self.to_client(ServerEvent::ResponseDone {
                    response_id,
                    cancelled,
                })
            }
            ChildEvent::AudioStarted { response_id } => {
                self.to_client(ServerEvent::ResponseAudioStarted { response_id })
            }
            ChildEvent::Audio { frame } => {
                if self.session_alive {
                    self.session.outbound.do_send(Outbound::Audio(frame));
                }
            }
            ChildEvent::AudioDone {
                response_id,
                cancelled,
            } => self.to_client(ServerEvent::ResponseAudioDone {
                response_id,
                cancelled,
            }),
            ChildEvent::ClientError { code, message } => {
                self.to_client(ServerEvent::error(code, message))
            }
            ChildEvent::Failed { role, error } => self.on_child_failed(role, error, ctx),
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
