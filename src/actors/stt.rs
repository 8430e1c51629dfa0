//! `SttActor`: turns VAD-cut speech segments into `transcript.final` events.
//!
//! Segments go to the Moonshine pool (dedicated threads, one model per thread), tagged
//! with the conversation's cancel token: once the conversation ends, queued segments are
//! skipped and a running decode stops at its next step. At most
//! [`MAX_QUEUED_SEGMENTS`] segments per conversation wait at once; more are refused
//! with an `overloaded` error rather than queued without bound.

use std::time::Instant;

use actix::prelude::*;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::{ChildEvent, Transcribe};
use crate::audio::pcm::i16_to_f32;
use crate::metrics::{ActorKind, GaugeGuard};
use crate::protocol::ErrorCode;
use crate::workers::JobError;

/// Segments of one conversation queued or running at once.
const MAX_QUEUED_SEGMENTS: usize = 4;

pub struct SttActor {
    env: ChildEnv,
    parent: Recipient<ChildEvent>,
    queued: usize,
    link: ChildLink,
    _live: GaugeGuard,
}

impl SttActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Self {
        SttActor {
            parent: env.parent.clone(),
            queued: 0,
            _live: env.services.metrics.actor_guard(ActorKind::Stt),
            env,
            link,
        }
    }

    fn overloaded(&self, message: &str) {
        self.env.services.metrics.overloaded.inc();
        self.parent.do_send(ChildEvent::ClientError {
            code: ErrorCode::Overloaded,
            message: message.to_string(),
        });
    }
}

impl Actor for SttActor {
    type Context = Context<Self>;
}

impl Handler<Transcribe> for SttActor {
    type Result = ();

    fn handle(&mut self, msg: Transcribe, ctx: &mut Context<Self>) {
        let Some(pool) = self.env.services.stt.as_ref() else {
            return;
        };
        if self.queued >= MAX_QUEUED_SEGMENTS {
            return self.overloaded("speech recognition is behind; a segment was skipped");
        }
        let segment = msg.segment;
        let audio_ms = segment.end_ms;
        let samples: Vec<f32> = segment.samples.iter().copied().map(i16_to_f32).collect();
        let token = self.env.cancel.clone();
        let job = pool.submit(&self.env.cancel, self.link.hold(), move |moonshine| {
            let started = Instant::now();
            let text = moonshine.transcribe_with(&samples, &|| token.is_cancelled());
            (text, started.elapsed())
        });
        let answer = match job {
            Ok(answer) => answer,
            Err(JobError::Overloaded { .. }) => {
                return self.overloaded("speech recognition is at capacity; a segment was skipped")
            }
            Err(error) => {
                return self.parent.do_send(ChildEvent::Failed {
                    role: ChildRole::Stt,
                    error: error.to_string(),
                })
            }
        };
        self.queued += 1;
        ctx.spawn(answer.into_actor(self).map(move |result, act, _| {
            act.queued -= 1;
            let metrics = &act.env.services.metrics;
            match result {
                Ok(Ok((Ok(Some(text)), elapsed))) => {
                    metrics.stt_seconds.observe(elapsed.as_secs_f64());
                    if text.is_empty() {
                        return;
                    }
                    metrics.transcripts.inc();
                    act.parent.do_send(ChildEvent::Transcript {
                        text,
                        audio_ms,
                        stt_ms: elapsed.as_millis() as u64,
                    });
                }
                // Stopped mid-decode, or skipped: the conversation is ending.
                Ok(Ok((Ok(None), _))) | Ok(Err(JobError::Cancelled)) => {}
                Ok(Ok((Err(error), _))) => act.parent.do_send(ChildEvent::Failed {
                    role: ChildRole::Stt,
                    error: error.to_string(),
                }),
                Ok(Err(error)) => act.parent.do_send(ChildEvent::Failed {
                    role: ChildRole::Stt,
                    error: error.to_string(),
                }),
                Err(_) => act.parent.do_send(ChildEvent::Failed {
                    role: ChildRole::Stt,
                    error: "the STT pool dropped the job".into(),
                }),
            }
        }));
    }
}

child_controls!(SttActor, ChildRole::Stt);
