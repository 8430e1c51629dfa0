//! `VadActor`: decodes the client's audio, resamples it to 16 kHz and finds speech.
//!
//! The work runs on the Silero batcher (or, for webrtc-vad, the DSP pool), never on
//! the arbiter. The actor's [`Ingest`] state
//! (decoder, resampler, VAD, segmenter) travels with each job together with every frame
//! that arrived since the last one, so under load frames batch up naturally and one
//! conversation's state is only ever touched by one thread. The mailbox and the pending
//! list are bounded; frames beyond them are dropped and counted.
//!
//! A protocol may change the turn detection mid-session (`ConfigureInput`: other
//! thresholds, Smart Turn on or off, manual turns) and the input format before any
//! audio arrived; changes apply between jobs, like verdicts.
//!
//! With `vad.turn = "smart"`, early in each pause the turn so far goes to the Smart
//! Turn pool; its verdict ends the turn at once (complete) or lets the pause run longer
//! (incomplete). A verdict is applied to the segmenter between jobs, so it only ever
//! acts on the pause it was asked about.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::{
    AudioFrames, ChildEvent, ClearSpeech, ConfigureInput, FlushSpeech, SegmentKind,
};
use crate::audio::ingest::{Ingest, IngestError, IngestOutput, VadEngine, WebrtcVadConfig};
use crate::audio::pcm::i16_to_f32;
use crate::audio::segmenter::{PauseKey, SegmenterConfig, SpeechEvent, TurnCheck};
use crate::config;
use crate::metrics::{ActorKind, BadInput, GaugeGuard};
use crate::protocol::pipeline::TurnDetection;
use crate::protocol::{AudioFormat, ErrorCode};
use crate::workers::silero_batcher::VadReply;
use crate::workers::{JobError, Priority};

/// Frames held while a job is out. Senders wait when this actor's mailbox is full, so
/// this only fills if a job takes seconds; beyond it the oldest audio is shed (counted).
const MAX_PENDING_FRAMES: usize = 500;

/// Longest segment handed to the recogniser, in ms (Moonshine wants under ~30 s).
const MAX_SEGMENT_MS: u32 = 30_000;

pub struct VadActor {
    env: ChildEnv,
    parent: Recipient<ChildEvent>,
    /// `None` while a job holds it.
    ingest: Option<Box<Ingest>>,
    pending: Vec<Bytes>,
    flush_pending: bool,
    /// When the newest pending audio arrived: with the audio clock, it dates the end
    /// of speech on the wall clock (audio arrives in real time).
    last_arrival: Option<Instant>,
    /// Arrival and audio clock of the last job's newest audio (see `deliver`).
    processed: (Instant, u64),
    /// End-of-turn verdicts (complete, incomplete, none to come) that came back while
    /// a job held the state.
    verdicts: Vec<(PauseKey, Option<bool>)>,
    /// Turns end by Smart Turn verdicts (else by silence alone).
    smart_turn: bool,
    /// Smart Turn probability at or above which a turn is complete.
    turn_threshold: f32,
    /// The segmenter settings from the configuration, which `ConfigureInput` adjusts.
    base: SegmenterConfig,
    /// The format being decoded.
    format: AudioFormat,
    /// A configuration, or a clear, that came while a job held the state.
    reconfigure: Option<(SegmenterConfig, AudioFormat)>,
    clear_pending: bool,
    max_pending: usize,
    forward_decoded: bool,
    link: ChildLink,
    _live: GaugeGuard,
}

impl VadActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Result<Self, IngestError> {
        let config = &env.services.config;
        let segmenter = SegmenterConfig {
            start_threshold: config.vad.start_threshold,
            end_threshold: config.vad.end_threshold,
            min_speech_ms: config.vad.min_speech_ms,
            min_silence_ms: config.vad.min_silence_ms,
            pad_ms: config.vad.pad_ms,
            max_segment_ms: MAX_SEGMENT_MS,
            draft_after_ms: if config.stt.enabled {
                config.stt.draft_after_ms
            } else {
                0
            },
            partial_every_ms: if config.stt.enabled {
                config.stt.partial_every_ms
            } else {
                0
            },
            turn_check_after_ms: if env.services.turn.is_some() {
                config.vad.turn_check_after_ms
            } else {
                0
            },
            turn_max_silence_ms: config.vad.turn_max_silence_ms,
            // Segments are only kept when a recogniser will read them.
            collect_audio: config.stt.enabled,
            manual: false,
        };
        let smart_turn = env.services.turn.is_some();
        let engine = match config.vad.engine {
            config::VadEngine::Silero => VadEngine::Silero,
            config::VadEngine::Webrtc => VadEngine::Webrtc(WebrtcVadConfig {
                mode: config.vad.webrtc_mode,
            }),
        };
        let ingest =
            Ingest::new(env.params.input, engine, segmenter)?.keep_native(config.recorder.enabled);
        Ok(VadActor {
            parent: env.parent.clone(),
            max_pending: MAX_PENDING_FRAMES,
            forward_decoded: config.recorder.enabled,
            ingest: Some(Box::new(ingest)),
            pending: Vec::new(),
            flush_pending: false,
            last_arrival: None,
            processed: (Instant::now(), 0),
            verdicts: Vec::new(),
            smart_turn,
            turn_threshold: config.vad.turn_threshold,
            base: segmenter,
            format: env.params.input,
            reconfigure: None,
            clear_pending: false,
            _live: env.services.metrics.actor_guard(ActorKind::Vad),
            env,
            link,
        })
    }

    /// Send the state and everything pending to the DSP pool, unless a job is out.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.ingest.is_none() || (self.pending.is_empty() && !self.flush_pending) {
            return;
        }
        let Some(mut ingest) = self.ingest.take() else {
            return;
        };
        let frames = std::mem::take(&mut self.pending);
        let flush = std::mem::take(&mut self.flush_pending);
        let arrival = self.last_arrival.unwrap_or_else(Instant::now);
        let (services, token, hold) = (&self.env.services, &self.env.cancel, self.link.hold());
        let dropped = || Err(JobError::PoolClosed { pool: "vad" });
        let answer: Pin<Box<dyn Future<Output = VadReply>>> = match services.silero.as_ref() {
            Some(silero) => match silero.submit(token, hold, ingest, frames, flush) {
                Ok(rx) => Box::pin(async move { rx.await.unwrap_or_else(|_| dropped()) }),
                Err(error) => return self.fail(error.to_string()),
            },
            None => {
                let job = services.dsp.submit(token, hold, move |_| {
                    let mut out = IngestOutput::default();
                    ingest.process(&frames, &mut out);
                    if flush {
                        ingest.flush(&mut out);
                    }
                    (ingest, out)
                });
                match job {
                    Ok(rx) => Box::pin(async move { rx.await.unwrap_or_else(|_| dropped()) }),
                    Err(error) => return self.fail(error.to_string()),
                }
            }
        };
        ctx.spawn(
            answer
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok((ingest, out)) => {
                        let clock_ms = ingest.clock_ms();
                        act.ingest = Some(ingest);
                        act.processed = (arrival, clock_ms);
                        act.count_silence_ends(&out);
                        if out.nothing_to_commit {
                            act.parent.do_send(ChildEvent::NothingToCommit);
                        }
                        act.deliver(out, arrival, clock_ms, ctx);
                        for (key, complete) in std::mem::take(&mut act.verdicts) {
                            act.apply_verdict(key, complete, ctx);
                        }
                        act.apply_settings();
                        act.dispatch(ctx);
                    }
                    Err(JobError::Cancelled) => {}
                    Err(error) => act.fail(error.to_string()),
                }),
        );
    }

    /// Hand a job's results to the conversation. `arrival` is when the newest audio of
    /// the job arrived and `clock_ms` where the audio clock stood after it.
    fn deliver(
        &mut self,
        out: IngestOutput,
        arrival: Instant,
        clock_ms: u64,
        ctx: &mut Context<Self>,
    ) {
        let metrics = &self.env.services.metrics;
        for error in out.errors {
            let kind = match error {
                IngestError::OddLengthPcm(_) => BadInput::OddLengthPcm,
                IngestError::BadOpus(_) => BadInput::BadOpus,
                IngestError::Setup(_) => {
                    return self.fail(error.to_string());
                }
            };
            metrics.count_bad_input(kind);
            self.env
                .params
                .standing
                .bad_input(std::time::Instant::now());
            self.parent.do_send(ChildEvent::ClientError {
                code: ErrorCode::BadAudio,
                message: error.to_string(),
            });
        }
        if self.forward_decoded && !out.native.is_empty() {
            let samples: Arc<[i16]> = out.native.into();
            self.parent.do_send(ChildEvent::Decoded { samples });
        }
        if out.speech.resumed {
            self.parent.do_send(ChildEvent::SpeechResumed);
        }
        for check in out.speech.turn_checks {
            self.check_turn(check, ctx);
        }
        for event in out.speech.events {
            self.parent.do_send(ChildEvent::Speech { event });
            if let SpeechEvent::Stopped { audio_ms } = event {
                let behind = Duration::from_millis(clock_ms.saturating_sub(audio_ms));
                let voice_end = arrival.checked_sub(behind).unwrap_or(arrival);
                self.parent.do_send(ChildEvent::TurnEnded { voice_end });
            }
        }
        let segments = [
            (out.speech.partials, SegmentKind::Partial),
            (out.speech.drafts, SegmentKind::Draft),
            (out.speech.segments, SegmentKind::Final),
        ];
        for (batch, kind) in segments {
            for segment in batch {
                self.parent.do_send(ChildEvent::Segment { segment, kind });
            }
        }
    }

    /// Turns that ended on silence alone while Smart Turn decides (no verdict in time,
    /// or it said incomplete and the longer bound passed).
    fn count_silence_ends(&self, out: &IngestOutput) {
        if self.smart_turn {
            let ends = out.speech.events.iter();
            let silent = ends.filter(|e| matches!(e, SpeechEvent::Stopped { .. }));
            let latency = &self.env.services.metrics.latency;
            for _ in silent {
                latency.count_turn_decision("silence");
            }
        }
    }

    /// Ask Smart Turn whether the turn is over at this pause.
    fn check_turn(&mut self, check: TurnCheck, ctx: &mut Context<Self>) {
        let Some(pool) = self.env.services.turn.as_ref() else {
            return;
        };
        let samples: Vec<f32> = check.samples.iter().copied().map(i16_to_f32).collect();
        let job = pool.submit_with(
            Priority::Urgent,
            &self.env.cancel,
            self.link.hold(),
            move |model| {
                let started = Instant::now();
                (model.predict(&samples), started.elapsed())
            },
        );
        let key = check.key;
        // No verdict (pool full or closed): the pause ends the turn on silence alone.
        let Ok(answer) = job else {
            return self.apply_verdict(key, None, ctx);
        };
        ctx.spawn(answer.into_actor(self).map(move |result, act, ctx| {
            let (probability, elapsed) = match result {
                Ok(Ok((Ok(p), elapsed))) => (p, elapsed),
                Ok(Ok((Err(error), _))) => {
                    tracing::warn!(%error, "end-of-turn model failed; silence decides");
                    return act.apply_verdict(key, None, ctx);
                }
                _ => return act.apply_verdict(key, None, ctx),
            };
            let latency = &act.env.services.metrics.latency;
            latency.turn_model_seconds.observe(elapsed.as_secs_f64());
            let complete = probability >= act.turn_threshold;
            latency.count_turn_decision(if complete { "complete" } else { "incomplete" });
            tracing::debug!(
                conversation_id = %act.env.params.conversation_id,
                probability,
                complete,
                ms = elapsed.as_millis() as u64,
                "end-of-turn verdict"
            );
            act.apply_verdict(key, Some(complete), ctx);
        }));
    }

    /// Apply a verdict to the segmenter now, or after the job that holds it returns.
    fn apply_verdict(&mut self, key: PauseKey, complete: Option<bool>, ctx: &mut Context<Self>) {
        let Some(ingest) = self.ingest.as_mut() else {
            return self.verdicts.push((key, complete));
        };
        let mut out = IngestOutput::default();
        ingest.apply_turn_verdict(key, complete, &mut out);
        let (arrival, clock_ms) = self.processed;
        self.deliver(out, arrival, clock_ms, ctx);
    }

    /// The segmenter settings for `detection`, from the configured ones.
    fn segmenter_for(&self, detection: TurnDetection) -> SegmenterConfig {
        let config = &self.env.services.config;
        match detection {
            TurnDetection::Manual => SegmenterConfig {
                manual: true,
                ..self.base
            },
            TurnDetection::Vad(vad) => {
                let smart = vad.smart.filter(|_| self.env.services.turn.is_some());
                SegmenterConfig {
                    start_threshold: vad.start_threshold,
                    end_threshold: vad.end_threshold,
                    pad_ms: vad.pad_ms,
                    min_silence_ms: vad.min_silence_ms,
                    turn_check_after_ms: if smart.is_some() {
                        config.vad.turn_check_after_ms
                    } else {
                        0
                    },
                    turn_max_silence_ms: smart
                        .map_or(config.vad.turn_max_silence_ms, |s| s.max_silence_ms),
                    manual: false,
                    ..self.base
                }
            }
        }
    }

    /// Apply a configuration or clear that waited for the state to come home.
    fn apply_settings(&mut self) {
        let Some(ingest) = self.ingest.as_mut() else {
            return;
        };
        let mut failed = None;
        if let Some((segmenter, format)) = self.reconfigure.take() {
            ingest.set_segmenter(segmenter);
            self.smart_turn = segmenter.turn_check_after_ms > 0;
            if format != self.format {
                match ingest.set_input(format) {
                    Ok(()) => self.format = format,
                    Err(error) => failed = Some(error.to_string()),
                }
            }
        }
        if std::mem::take(&mut self.clear_pending) {
            ingest.clear();
        }
        if let Some(error) = failed {
            self.fail(error);
        }
    }

    fn fail(&mut self, error: String) {
        self.parent.do_send(ChildEvent::Failed {
            role: ChildRole::Vad,
            error,
        });
    }
}

impl Actor for VadActor {
    type Context = Context<Self>;
}

impl Handler<AudioFrames> for VadActor {
    type Result = ();

    fn handle(&mut self, audio: AudioFrames, ctx: &mut Context<Self>) {
        self.pending.extend(audio.frames);
        self.last_arrival = Some(Instant::now());
        let excess = self.pending.len().saturating_sub(self.max_pending);
        if excess > 0 {
            // The workers are behind: shed the oldest audio rather than grow.
            self.pending.drain(..excess);
            self.env
                .services
                .metrics
                .audio_frames_dropped
                .inc_by(excess as u64);
        }
        self.dispatch(ctx);
    }
}

impl Handler<FlushSpeech> for VadActor {
    type Result = ();

    fn handle(&mut self, _: FlushSpeech, ctx: &mut Context<Self>) {
        self.flush_pending = true;
        self.dispatch(ctx);
    }
}

impl Handler<ConfigureInput> for VadActor {
    type Result = ();

    fn handle(&mut self, msg: ConfigureInput, _: &mut Context<Self>) {
        if let TurnDetection::Vad(vad) = msg.detection {
            if let Some(smart) = vad.smart {
                self.turn_threshold = smart.threshold;
            }
        }
        self.reconfigure = Some((self.segmenter_for(msg.detection), msg.format));
        self.apply_settings();
    }
}

impl Handler<ClearSpeech> for VadActor {
    type Result = ();

    /// Audio not handed to a job yet is part of what is forgotten.
    fn handle(&mut self, _: ClearSpeech, _: &mut Context<Self>) {
        self.pending.clear();
        self.flush_pending = false;
        self.clear_pending = true;
        self.apply_settings();
    }
}

child_controls!(VadActor, ChildRole::Vad);
