//! `LlmActor`: answers transcripts with a streamed, cancellable reply.
//!
//! Part of every conversation tree from the start, so its start, stop and supervision
//! are covered by the lifecycle tests; the backends (embedded SmolLM2 and any
//! OpenAI-compatible server) plug in behind it.

use actix::prelude::*;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::ChildEvent;
use crate::metrics::{ActorKind, GaugeGuard};

pub struct LlmActor {
    parent: Recipient<ChildEvent>,
    _env: ChildEnv,
    _link: ChildLink,
    _live: GaugeGuard,
}

impl LlmActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Self {
        LlmActor {
            parent: env.parent.clone(),
            _live: env.services.metrics.actor_guard(ActorKind::Llm),
            _env: env,
            _link: link,
        }
    }
}

impl Actor for LlmActor {
    type Context = Context<Self>;
}

child_controls!(LlmActor, ChildRole::Llm);
