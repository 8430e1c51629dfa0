//! `TtsActor`: speaks replies back, sentence by sentence, in the session's codec.
//!
//! Part of every conversation tree from the start, so its start, stop and supervision
//! are covered by the lifecycle tests; synthesis (Piper through ort) plugs in behind it.

use actix::prelude::*;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::ChildEvent;
use crate::metrics::{ActorKind, GaugeGuard};

pub struct TtsActor {
    parent: Recipient<ChildEvent>,
    _env: ChildEnv,
    _link: ChildLink,
    _live: GaugeGuard,
}

impl TtsActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Self {
        TtsActor {
            parent: env.parent.clone(),
            _live: env.services.metrics.actor_guard(ActorKind::Tts),
            _env: env,
            _link: link,
        }
    }
}

impl Actor for TtsActor {
    type Context = Context<Self>;
}

child_controls!(TtsActor, ChildRole::Tts);
