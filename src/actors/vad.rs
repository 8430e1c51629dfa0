//! `VadActor`: decodes the client's audio, resamples it to 16 kHz and finds speech.
//!
//! The work runs on the Silero batcher (or, for webrtc-vad, the DSP pool), never on
//! the arbiter. The actor's [`Ingest`] state
//! (decoder, resampler, VAD, segmenter) travels with each job together with every frame
//! that arrived since the last one, so under load frames batch up naturally and one
//! conversation's state is only ever touched by one thread. The mailbox and the pending
//! list are bounded; frames beyond them are dropped and counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::{AudioFrames, ChildEvent, FlushSpeech, SegmentKind};
use crate::audio::ingest::{Ingest, IngestError, IngestOutput, VadEngine, WebrtcVadConfig};
use crate::audio::segmenter::{SegmenterConfig, SpeechEvent};
use crate::config;
use crate::metrics::{ActorKind, BadInput, GaugeGuard};
use crate::protocol::ErrorCode;
use crate::workers::silero_batcher::VadReply;
use crate::workers::JobError;

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
            turn_check_after_ms: 0,
            turn_max_silence_ms: config.vad.turn_max_silence_ms,
            // Segments are only kept when a recogniser will read them.
            collect_audio: config.stt.enabled,
        };
        let engine = match config.vad.engine {
            config::VadEngine::Silero => VadEngine::Silero,
            config::VadEngine::Webrtc => VadEngine::Webrtc(WebrtcVadConfig {
                mode: config.vad.webrtc_mode,
            }),
        };
        let ingest = Ingest::new(env.params.codec, env.params.sample_rate, engine, segmenter)?
            .keep_native(config.recorder.enabled);
        Ok(VadActor {
            parent: env.parent.clone(),
            max_pending: MAX_PENDING_FRAMES,
            forward_decoded: config.recorder.enabled,
            ingest: Some(Box::new(ingest)),
            pending: Vec::new(),
            flush_pending: false,
            last_arrival: None,
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
                        act.deliver(out, arrival, clock_ms);
                        act.dispatch(ctx);
                    }
                    Err(JobError::Cancelled) => {}
                    Err(error) => act.fail(error.to_string()),
                }),
        );
    }

    /// Hand a job's results to the conversation. `arrival` is when the newest audio of
    /// the job arrived and `clock_ms` where the audio clock stood after it.
    fn deliver(&mut self, out: IngestOutput, arrival: Instant, clock_ms: u64) {
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

child_controls!(VadActor, ChildRole::Vad);
