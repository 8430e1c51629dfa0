//! `SttActor`: turns VAD-cut speech segments into `transcript.final` events.
//!
//! Its place in the tree is fixed now so the lifecycle is proven with it in; the
//! recogniser (Moonshine through ort on the inference workers) is the next step. Until
//! a model is configured it receives no segments (the VAD does not collect them) and
//! says nothing: no transcript is ever invented.

use actix::prelude::*;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::{ChildEvent, Transcribe};
use crate::metrics::{ActorKind, GaugeGuard};

pub struct SttActor {
    parent: Recipient<ChildEvent>,
    _env: ChildEnv,
    _link: ChildLink,
    _live: GaugeGuard,
}

impl SttActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Self {
        SttActor {
            parent: env.parent.clone(),
            _live: env.services.metrics.actor_guard(ActorKind::Stt),
            _env: env,
            _link: link,
        }
    }
}

impl Actor for SttActor {
    type Context = Context<Self>;
}

impl Handler<Transcribe> for SttActor {
    type Result = ();

    fn handle(&mut self, msg: Transcribe, _: &mut Context<Self>) {
        tracing::debug!(
            start_ms = msg.segment.start_ms,
            end_ms = msg.segment.end_ms,
            "no recogniser loaded; segment not transcribed"
        );
    }
}

child_controls!(SttActor, ChildRole::Stt);
