//! `SttActor`: turns VAD-cut speech segments into `transcript.final` events.
//!
//! Segments go to the STT batcher (`workers::stt_batcher`: encoder threads, then one
//! decoder thread advancing every conversation's segments together), tagged with the
//! conversation's cancel token: once the conversation ends, queued segments are
//! skipped and a running decode leaves the batch at its next step. At most
//! [`MAX_QUEUED_SEGMENTS`] segments per conversation wait at once; more are refused
//! with an `overloaded` error rather than queued without bound.
//!
//! Drafts hide the decode behind the end-of-speech wait: early in a pause the VAD hands
//! over the segment as it would end, and, if the batcher has room, it is decoded at
//! once. If the final segment turns out to be that draft, its transcript is
//! published as soon as it is ready; if speech resumed instead, the draft is stopped
//! mid-decode and forgotten. Drafts never queue behind other work, so under load they
//! cost nothing.
//!
//! Partials guide: while speech goes on, the segment so far is decoded now and then
//! (again only when the batcher has room). Every decode of a segment leaves its tokens as the
//! guess for the next decode of the same segment, which the decoder checks in one pass
//! instead of producing token by token (`moonshine::GuidedGreedy`), so the draft
//! that matters, the one at the final pause, mostly just confirms what is known.

mod item;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::{ChildEvent, DropDraft, SegmentKind, Transcribe};
use crate::audio::pcm::i16_to_f32;
use crate::audio::segmenter::SpeechSegment;
use crate::metrics::{ActorKind, GaugeGuard};
use crate::protocol::ErrorCode;
use crate::workers::{JobError, Priority, SttRequest};

/// Segments of one conversation queued or running at once (drafts included).
const MAX_QUEUED_SEGMENTS: usize = 4;

/// How one decode ended.
enum Decode {
    Text {
        text: String,
        tokens: Vec<i64>,
        elapsed: Duration,
    },
    /// Stopped or skipped: the conversation is ending, or the draft went stale.
    Stopped,
    Failed(String),
}

/// The speculative decode of the segment in progress.
struct Draft {
    id: u64,
    segment_key: SpeechSegment,
    stop: Arc<AtomicBool>,
    state: DraftState,
}

enum DraftState {
    Running,
    /// Its final segment arrived: publish as soon as the decode is done.
    Claimed {
        audio_ms: u64,
        segment: SpeechSegment,
    },
    Done {
        text: String,
        elapsed: Duration,
    },
}

pub struct SttActor {
    env: ChildEnv,
    parent: Recipient<ChildEvent>,
    queued: usize,
    draft: Option<Draft>,
    drafts_started: u64,
    /// The stop flag of the partial decode running, if any.
    partial: Option<Arc<AtomicBool>>,
    /// Tokens of the latest decode, with the start of the segment they belong to.
    guess: Option<(u64, Vec<i64>)>,
    link: ChildLink,
    _live: GaugeGuard,
}

impl SttActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Self {
        SttActor {
            parent: env.parent.clone(),
            queued: 0,
            draft: None,
            drafts_started: 0,
            partial: None,
            guess: None,
            _live: env.services.metrics.actor_guard(ActorKind::Stt),
            env,
            link,
        }
    }

    /// A final segment was skipped: the client hears why, and its item that no
    /// transcript will come.
    fn overloaded(&self, message: &str, audio_ms: u64) {
        self.env.services.metrics.overloaded.inc();
        self.parent.do_send(ChildEvent::ClientError {
            code: ErrorCode::Overloaded,
            message: message.to_string(),
        });
        self.parent.do_send(ChildEvent::TranscriptFailed {
            audio_ms,
            message: message.to_string(),
        });
    }

    fn fail(&self, error: String) {
        self.parent.do_send(ChildEvent::Failed {
            role: ChildRole::Stt,
            error,
        });
    }

    /// The current turn's priority (finals and drafts): urgent, unless the client has
    /// sent bad input lately; then it waits behind everyone else's turns
    /// (`protocol::standing`).
    fn turn_priority(&self) -> Priority {
        if self.env.params.standing.is_good(Instant::now()) {
            Priority::Urgent
        } else {
            Priority::Normal
        }
    }

    /// Queue one decode; `stop` ends it early (drafts). Finals and drafts are the
    /// current turn (urgent); partials only guide later decodes.
    fn decode(
        &self,
        segment: &SpeechSegment,
        stop: Option<Arc<AtomicBool>>,
        priority: Priority,
    ) -> Result<impl Future<Output = (u64, Decode)> + 'static, JobError> {
        let stt = self
            .env
            .services
            .stt
            .as_ref()
            .ok_or(JobError::PoolClosed { pool: "stt" })?;
        let samples = segment.samples.clone();
        let guess = match &self.guess {
            Some((start_ms, tokens)) if *start_ms == segment.start_ms => tokens.clone(),
            _ => Vec::new(),
        };
        let request = SttRequest {
            audio: Box::new(move || Ok(samples.into_iter().map(i16_to_f32).collect())),
            guess,
            stop,
        };
        let answer = stt.submit(priority, &self.env.cancel, self.link.hold(), request)?;
        let start_ms = segment.start_ms;
        Ok(async move {
            let decode = match answer.await {
                Ok(Ok(Some(t))) => Decode::Text {
                    text: t.text,
                    tokens: t.tokens,
                    elapsed: t.elapsed,
                },
                Ok(Ok(None)) | Ok(Err(JobError::Cancelled)) => Decode::Stopped,
                Ok(Err(error)) => Decode::Failed(error.to_string()),
                Err(_) => Decode::Failed("the STT batcher dropped the job".into()),
            };
            (start_ms, decode)
        })
    }

    /// Keep a decode's tokens as the guess for the next decode of its segment.
    fn remember(&mut self, start_ms: u64, decode: &Decode) {
        if let Decode::Text { tokens, .. } = decode {
            self.guess = Some((start_ms, tokens.clone()));
        }
    }

    /// Every final segment gets its transcript, empty when no words were heard (its
    /// item is then complete with no words).
    fn publish(&self, text: String, elapsed: Duration, audio_ms: u64) {
        let metrics = &self.env.services.metrics;
        metrics.stt_seconds.observe(elapsed.as_secs_f64());
        if !text.is_empty() {
            metrics.transcripts.inc();
        }
        self.parent.do_send(ChildEvent::Transcript {
            text,
            audio_ms,
            stt_ms: elapsed.as_millis() as u64,
        });
    }

    /// A final segment: publish its draft's transcript, or decode it now.
    fn transcribe_final(&mut self, segment: SpeechSegment, ctx: &mut Context<Self>) {
        let audio_ms = segment.end_ms;
        if self.draft_claimed() {
            // An earlier segment's draft is still decoding; this one goes its own way.
            return self.transcribe(segment, ctx);
        }
        match self.draft.take() {
            Some(draft) if draft.segment_key.anticipates(&segment) => match draft.state {
                DraftState::Done { text, elapsed } => {
                    self.env.services.metrics.stt_drafts_used.inc();
                    self.publish(text, elapsed, audio_ms);
                    self.guess = None;
                }
                _ => {
                    let state = DraftState::Claimed { audio_ms, segment };
                    self.draft = Some(Draft { state, ..draft });
                }
            },
            stale => {
                self.draft = stale;
                self.drop_draft();
                self.transcribe(segment, ctx);
            }
        }
    }

    fn draft_claimed(&self) -> bool {
        matches!(
            self.draft,
            Some(Draft {
                state: DraftState::Claimed { .. },
                ..
            })
        )
    }

    fn transcribe(&mut self, segment: SpeechSegment, ctx: &mut Context<Self>) {
        let audio_ms = segment.end_ms;
        if self.queued >= MAX_QUEUED_SEGMENTS {
            let message = "speech recognition is behind; a segment was skipped";
            return self.overloaded(message, audio_ms);
        }
        let decode = match self.decode(&segment, None, self.turn_priority()) {
            Ok(decode) => decode,
            Err(JobError::Overloaded { .. }) => {
                let message = "speech recognition is at capacity; a segment was skipped";
                return self.overloaded(message, audio_ms);
            }
            Err(error) => return self.fail(error.to_string()),
        };
        self.queued += 1;
        ctx.spawn(decode.into_actor(self).map(move |(_, decode), act, _| {
            act.queued -= 1;
            match decode {
                Decode::Text { text, elapsed, .. } => act.publish(text, elapsed, audio_ms),
                Decode::Stopped => {}
                Decode::Failed(error) => act.fail(error),
            }
        }));
    }

    fn batcher_has_room(&self) -> bool {
        self.env
            .services
            .stt
            .as_ref()
            .is_some_and(|stt| stt.has_room())
    }

    /// Start decoding a draft, if the batcher has room right now (or is only busy
    /// with this conversation's partial, which the draft replaces).
    fn start_draft(&mut self, segment: SpeechSegment, ctx: &mut Context<Self>) {
        let idle = self.batcher_has_room() || self.partial.is_some();
        if !idle || self.draft_claimed() || self.queued >= MAX_QUEUED_SEGMENTS {
            return;
        }
        if let Some(partial) = self.partial.take() {
            partial.store(true, Ordering::Release);
        }
        self.drop_draft();
        let stop = Arc::new(AtomicBool::new(false));
        let Ok(decode) = self.decode(&segment, Some(Arc::clone(&stop)), self.turn_priority())
        else {
            return; // A draft is optional: a full pool just means no head start.
        };
        self.drafts_started += 1;
        let id = self.drafts_started;
        self.queued += 1;
        ctx.spawn(
            decode
                .into_actor(self)
                .map(move |decode, act, ctx| act.draft_done(id, decode, ctx)),
        );
        let mut segment_key = segment;
        segment_key.samples = Vec::new();
        self.draft = Some(Draft {
            id,
            segment_key,
            stop,
            state: DraftState::Running,
        });
    }

    /// Decode the segment so far to guide later decodes, if the batcher has room,
    /// nothing of this conversation is being decoded, and no reply on this machine
    /// waits to start (a partial is guesswork: under load the CPU goes to answers).
    fn start_partial(&mut self, segment: SpeechSegment, ctx: &mut Context<Self>) {
        let replies_waiting = (self.env.services.llm.as_ref()).is_some_and(|l| l.replies_waiting());
        if !self.batcher_has_room() || self.queued > 0 || replies_waiting {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let Ok(decode) = self.decode(&segment, Some(Arc::clone(&stop)), Priority::Normal) else {
            return;
        };
        self.queued += 1;
        self.partial = Some(Arc::clone(&stop));
        ctx.spawn(
            decode
                .into_actor(self)
                .map(move |(start_ms, decode), act, _| {
                    act.queued -= 1;
                    if act.partial.as_ref().is_some_and(|s| Arc::ptr_eq(s, &stop)) {
                        act.partial = None;
                    }
                    act.remember(start_ms, &decode);
                    if let Decode::Text { text, .. } = decode {
                        if !text.is_empty() {
                            act.parent.do_send(ChildEvent::PartialTranscript { text });
                        }
                    }
                }),
        );
    }

    fn draft_done(&mut self, id: u64, (start_ms, decode): (u64, Decode), ctx: &mut Context<Self>) {
        self.queued -= 1;
        self.remember(start_ms, &decode);
        let Some(draft) = self.draft.take_if(|d| d.id == id) else {
            return; // Superseded or dropped: nobody waits for it.
        };
        match (decode, draft.state) {
            (Decode::Text { text, elapsed, .. }, DraftState::Claimed { audio_ms, .. }) => {
                self.env.services.metrics.stt_drafts_used.inc();
                self.publish(text, elapsed, audio_ms);
                self.guess = None;
            }
            (Decode::Text { text, elapsed, .. }, _) => {
                if !text.is_empty() {
                    // A head start for a speculative reply.
                    let draft_text = text.clone();
                    self.parent
                        .do_send(ChildEvent::DraftTranscript { text: draft_text });
                }
                let state = DraftState::Done { text, elapsed };
                self.draft = Some(Draft { state, ..draft });
            }
            // The draft did not finish, but its final segment waits: decode that.
            (_, DraftState::Claimed { segment, .. }) => self.transcribe(segment, ctx),
            (_, _) => self.env.services.metrics.stt_drafts_dropped.inc(),
        }
    }

    /// Forget the current draft (speech resumed, or another segment came): stop it.
    fn drop_draft(&mut self) {
        if let Some(draft) = self.draft.take() {
            draft.stop.store(true, Ordering::Release);
            self.env.services.metrics.stt_drafts_dropped.inc();
        }
    }
}

impl Actor for SttActor {
    type Context = Context<Self>;
}

impl Handler<Transcribe> for SttActor {
    type Result = ();

    fn handle(&mut self, msg: Transcribe, ctx: &mut Context<Self>) {
        if self.env.services.stt.is_none() {
            return;
        }
        match msg.kind {
            SegmentKind::Final => self.transcribe_final(msg.segment, ctx),
            SegmentKind::Draft => self.start_draft(msg.segment, ctx),
            SegmentKind::Partial => self.start_partial(msg.segment, ctx),
        }
    }
}

impl Handler<DropDraft> for SttActor {
    type Result = ();

    fn handle(&mut self, _: DropDraft, _: &mut Context<Self>) {
        if !self.draft_claimed() {
            self.drop_draft();
        }
    }
}

child_controls!(SttActor, ChildRole::Stt);
