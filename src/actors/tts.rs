//! `TtsActor`: speaks the streamed reply, sentence by sentence, in the session's codec.
//!
//! Reply text is cut into sentences as it arrives, so the first sentence is synthesised
//! while the model is still writing the rest. One sentence at a time goes to the Piper
//! pool (phonemes from the shared espeak-ng processes, synthesis, resampling from
//! 22,050 Hz and encoding all happen on the worker); the frames that come back are sent
//! at real-time pace, at most `tts.lead_ms` ahead, so a barge-in (`StopSpeaking`)
//! silences the reply within one frame of being processed and drops everything queued.
//! The conversation's registry entry shows `tts_active` while audio is going out.
//!
//! Synthesis runs just in time: after the first piece, the next starts only once the
//! audio still to play is under `tts.synthesis_ahead_ms`, due at the moment that audio
//! runs dry (earliest deadline first in the pool). Replies are often cut off by the
//! next question: speech synthesised well ahead of need is then never heard, and its
//! CPU is taken from replies whose listeners still wait for a first word. For the
//! same reason a cut reply's piece still waiting in the Piper queue leaves it: each
//! reply's jobs carry the reply's own cancel token.
//!
//! The first frame of each piece carries the piece's words: when it goes out, the
//! conversation hears `SpokenText`, so a protocol can pair the audio with exactly the
//! words it says (the Realtime API's transcript, and where a truncated reply was cut).
//!
//! A speculative reply arrives *held*: its first piece is synthesised at once, so the
//! audio is ready when the turn is confirmed, but nothing goes out (and nothing more
//! is synthesised) until [`ReleaseSpeech`]. A held reply that is dropped never made a
//! sound.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use uuid::Uuid;

use super::child::{child_controls, ChildEnv, ChildLink, ChildRole};
use super::messages::{
    ChildEvent, ReleaseSpeech, SetOutputFormat, SpeakDelta, SpeakEnd, StopSpeaking,
};
use crate::audio::g711::{self, Law};
use crate::audio::opus_codec::OpusEncoder;
use crate::audio::pcm::{encode_pcm16, f32_to_i16};
use crate::audio::resample::StreamResampler;
use crate::metrics::{ActorKind, GaugeGuard};
use crate::protocol::{AudioCodec, AudioFormat, ErrorCode};
use crate::registry::SetTtsActive;
use crate::tts::SentenceSplitter;
use crate::workers::cancel::CancelOnDrop;
use crate::workers::{JobError, Priority};

/// One frame of audio on the wire.
const FRAME: Duration = Duration::from_millis(20);

/// Fewest words cut from an unfinished sentence to keep the audio going: one word
/// alone is choppier than the pause it saves.
const EARLY_WORDS_MIN: usize = 2;

/// The reply being spoken.
struct Speech {
    response_id: Uuid,
    splitter: SentenceSplitter,
    /// Sentences waiting for synthesis, each counted in `hearken_tts_queue_depth`.
    queue: VecDeque<(String, GaugeGuard)>,
    synthesizing: bool,
    text_done: bool,
    /// Frames to send; the first of each piece carries the piece's words.
    frames: VecDeque<(Bytes, Option<String>)>,
    /// When the current run of frames started, and how much of it has been sent.
    clock: Option<(Instant, Duration)>,
    audio_started: bool,
    /// Speculative and not yet confirmed: synthesise the first piece, send nothing.
    held: bool,
    /// Pieces sent to synthesis so far.
    pieces_started: usize,
    /// No frame has gone out since the audio last ran dry (or ever).
    dry: bool,
    /// The reply's synthesis jobs (a child of the conversation's token): dropping the
    /// reply (cut off, replaced, the actor stopped) takes its waiting job out of the
    /// Piper queue, where it would otherwise still run for a reply nobody hears.
    synthesis: CancelOnDrop,
}

impl Speech {
    /// Synthesised audio not yet played: frames waiting, plus what was sent ahead of
    /// real time.
    fn audio_ahead(&self, now: Instant) -> Duration {
        let waiting = FRAME * self.frames.len() as u32;
        let sent_ahead = self.clock.map_or(Duration::ZERO, |(start, sent)| {
            sent.saturating_sub(now.duration_since(start))
        });
        waiting + sent_ahead
    }

    /// Nothing is being synthesised, a held reply has not had its first piece yet, and
    /// (after the first piece) the audio left to play is under `ahead` (zero: no limit).
    fn ready_to_synthesize(&self, now: Instant, ahead: Duration) -> bool {
        let held_back = self.held && self.pieces_started > 0;
        let enough_ahead =
            self.pieces_started > 0 && !ahead.is_zero() && self.audio_ahead(now) >= ahead;
        !(self.synthesizing || held_back || enough_ahead)
    }

    /// The whole words the model has written past the last piece, as a piece of their
    /// own, when the audio still to play has fallen under `running_low` (zero: never):
    /// a sentence the model is still writing would otherwise leave the listener in
    /// silence until its end. At sixteen conversations, where the model writes a
    /// sentence slower than a two-word first piece plays, nearly every reply ran dry
    /// after its first piece. Only for a reply already speaking (not held), with nothing
    /// queued or being synthesised, and at least [`EARLY_WORDS_MIN`] words.
    fn words_before_running_dry(&mut self, now: Instant, running_low: Duration) -> Option<String> {
        let speaking = self.pieces_started > 0 && !self.held && !self.synthesizing;
        if !speaking || running_low.is_zero() || !self.queue.is_empty() {
            return None;
        }
        if self.audio_ahead(now) >= running_low {
            return None;
        }
        self.splitter.take_words(EARLY_WORDS_MIN)
    }

    /// Everything said: no text, piece or frame is still to come.
    fn finished(&self) -> bool {
        !self.held
            && self.text_done
            && self.queue.is_empty()
            && !self.synthesizing
            && self.frames.is_empty()
    }
}

pub struct TtsActor {
    env: ChildEnv,
    parent: Recipient<ChildEvent>,
    speech: Option<Speech>,
    /// The output format of the reply being spoken, and of the next one.
    format: AudioFormat,
    next_format: AudioFormat,
    /// Bumped on every stop, so results of abandoned syntheses are ignored.
    epoch: u64,
    ticker: Option<SpawnHandle>,
    link: ChildLink,
    _live: GaugeGuard,
}

impl TtsActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Self {
        TtsActor {
            parent: env.parent.clone(),
            speech: None,
            format: env.params.output,
            next_format: env.params.output,
            epoch: 0,
            ticker: None,
            _live: env.services.metrics.actor_guard(ActorKind::Tts),
            env,
            link,
        }
    }

    fn set_active(&self, active: bool) {
        self.env.services.registry.addr.do_send(SetTtsActive {
            conversation_id: self.env.params.conversation_id,
            active,
        });
    }

    /// Cut the current reply off: drop its queue and frames, close its audio.
    fn stop(&mut self, ctx: &mut Context<Self>) {
        self.epoch += 1;
        self.close(true, ctx);
    }

    /// End the current reply: stop the clock, drop what is left, bracket its audio.
    fn close(&mut self, cancelled: bool, ctx: &mut Context<Self>) {
        if let Some(ticker) = self.ticker.take() {
            ctx.cancel_future(ticker);
        }
        if let Some(speech) = self.speech.take() {
            // Every reply hears its end, audible or not: it is only over once its
            // speech is.
            self.parent.do_send(ChildEvent::AudioDone {
                response_id: speech.response_id,
                cancelled,
                audible: speech.audio_started,
            });
            if speech.audio_started {
                self.set_active(false);
            }
        }
    }

    fn enqueue(&mut self, sentences: impl IntoIterator<Item = String>) {
        let max = self.env.services.config.tts.max_queued_sentences;
        let metrics = &self.env.services.metrics;
        let Some(speech) = self.speech.as_mut() else {
            return;
        };
        for sentence in sentences {
            if speech.queue.len() >= max {
                metrics.overloaded.inc();
                continue;
            }
            let guard = GaugeGuard::new(metrics.tts_queue_depth.clone());
            speech.queue.push_back((sentence, guard));
        }
    }

    /// Start synthesising the next sentence unless one is in progress or enough audio
    /// is already waiting to be played.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let config = &self.env.services.config.tts;
        let ahead = Duration::from_millis(config.synthesis_ahead_ms);
        let running_low = Duration::from_millis(config.words_early_below_ms);
        let early_words = self
            .speech
            .as_mut()
            .filter(|s| s.ready_to_synthesize(now, ahead))
            .and_then(|s| s.words_before_running_dry(now, running_low));
        self.enqueue(early_words);
        let Some(tts) = self.env.services.tts.as_ref() else {
            return;
        };
        let Some(speech) = self
            .speech
            .as_mut()
            .filter(|s| s.ready_to_synthesize(now, ahead))
        else {
            return;
        };
        let Some((sentence, queued)) = speech.queue.pop_front() else {
            return;
        };
        speech.synthesizing = true;
        speech.pieces_started += 1;
        let first_piece = speech.pieces_started == 1;
        let response_id = speech.response_id;
        let phonemizer = std::sync::Arc::clone(&tts.phonemizer);
        let format = self.format;
        let words = sentence.clone();
        // The first clause is what the listener waits for: ahead of other replies' rest,
        // which is due when the audio before it runs dry.
        let priority = if first_piece {
            Priority::Urgent
        } else {
            Priority::By(now + speech.audio_ahead(now))
        };
        let metrics = std::sync::Arc::clone(&self.env.services.metrics);
        // A first piece's wait is part of the listener's; a later one's is slack.
        let stage = if first_piece {
            "tts_first_piece"
        } else {
            "tts"
        };
        let more_work = tts.voices.waiting_probe();
        let job = tts.voices.submit_with(
            priority,
            &speech.synthesis.0,
            self.link.hold(),
            move |voice| {
                metrics.batching.observe_queue_wait(stage, now.elapsed());
                let _queued = queued;
                let samples = voice
                    .speak_then(&phonemizer, &sentence, &more_work)
                    .map_err(|e| e.to_string())?;
                encode(&samples, voice.sample_rate(), format)
            },
        );
        let epoch = self.epoch;
        let answer = match job {
            Ok(answer) => answer,
            Err(error) => return self.report(error.to_string()),
        };
        ctx.spawn(answer.into_actor(self).map(move |result, act, ctx| {
            if act.epoch != epoch {
                return; // stopped meanwhile
            }
            if let Some(speech) = act.speech.as_mut() {
                speech.synthesizing = false;
            }
            match result {
                Ok(Ok(Ok(frames))) => {
                    if first_piece {
                        act.parent
                            .do_send(ChildEvent::FirstClauseReady { response_id });
                    }
                    let metrics = &act.env.services.metrics;
                    metrics.tts_frames_synthesized.inc_by(frames.len() as u64);
                    let mut held = false;
                    if let Some(speech) = act.speech.as_mut() {
                        let mut words = Some(words);
                        speech
                            .frames
                            .extend(frames.into_iter().map(|frame| (frame, words.take())));
                        held = speech.held;
                    }
                    if !held {
                        act.start_ticker(ctx);
                    }
                }
                Ok(Ok(Err(error))) | Ok(Err(JobError::Panicked(error))) => act.report(error),
                Ok(Err(JobError::Cancelled)) => return,
                Ok(Err(error)) => act.report(error.to_string()),
                Err(_) => act.report("the TTS pool dropped the job".into()),
            }
            act.pump(ctx);
            act.finish_if_done(ctx);
        }));
    }

    fn report(&self, error: String) {
        self.parent.do_send(ChildEvent::ClientError {
            code: ErrorCode::Unsupported,
            message: format!("speech synthesis failed: {error}"),
        });
    }

    fn start_ticker(&mut self, ctx: &mut Context<Self>) {
        if self.ticker.is_none() {
            self.ticker = Some(ctx.run_interval(FRAME, |act, ctx| act.tick(ctx)));
            self.tick(ctx);
        }
    }

    /// Send what real time allows (plus the lead), then see whether the reply is over.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let lead = Duration::from_millis(self.env.services.config.tts.lead_ms);
        let Some(speech) = self.speech.as_mut() else {
            return;
        };
        if !speech.frames.is_empty() && !speech.audio_started {
            speech.audio_started = true;
            let response_id = speech.response_id;
            self.parent
                .do_send(ChildEvent::AudioStarted { response_id });
            self.set_active(true);
        }
        let Some(speech) = self.speech.as_mut() else {
            return;
        };
        let now = Instant::now();
        let (start, sent) = speech.clock.get_or_insert((now, Duration::ZERO));
        while *sent <= now.duration_since(*start) + lead {
            let Some((frame, words)) = speech.frames.pop_front() else {
                // Ran dry: restart the clock with the next frames.
                speech.clock = None;
                if !speech.dry && !speech.finished() {
                    let waiting_for_text = speech.queue.is_empty() && !speech.synthesizing;
                    self.env.services.metrics.count_underrun(waiting_for_text);
                }
                speech.dry = true;
                break;
            };
            speech.dry = false;
            if let Some(text) = words {
                let response_id = speech.response_id;
                self.parent
                    .do_send(ChildEvent::SpokenText { response_id, text });
            }
            self.parent.do_send(ChildEvent::Audio { frame });
            self.env.services.metrics.tts_frames_sent.inc();
            *sent += FRAME;
        }
        self.pump(ctx);
        self.finish_if_done(ctx);
    }

    fn finish_if_done(&mut self, ctx: &mut Context<Self>) {
        if self.speech.as_ref().is_some_and(Speech::finished) {
            self.close(false, ctx);
        }
    }
}

/// Resample Piper's output to the output rate and cut it into 20 ms frames of the
/// output codec (the last one padded with silence). Runs on the TTS worker.
fn encode(samples: &[f32], from: u32, format: AudioFormat) -> Result<Vec<Bytes>, String> {
    let to = format.sample_rate;
    let resampled = StreamResampler::convert_clip(from, to, samples).map_err(|e| e.to_string())?;
    let mut pcm: Vec<i16> = resampled.into_iter().map(f32_to_i16).collect();
    let frame = to as usize / 50;
    pcm.resize(pcm.len().div_ceil(frame) * frame, 0);
    let frames = pcm.chunks(frame);
    match format.codec {
        AudioCodec::Pcm16 => Ok(frames.map(|c| Bytes::from(encode_pcm16(c))).collect()),
        AudioCodec::Pcmu => Ok(frames
            .map(|c| Bytes::from(g711::encode(Law::Mu, c)))
            .collect()),
        AudioCodec::Pcma => Ok(frames
            .map(|c| Bytes::from(g711::encode(Law::A, c)))
            .collect()),
        AudioCodec::Opus => {
            let mut encoder = OpusEncoder::new(to).map_err(|e| e.to_string())?;
            let packets = encoder.push(&pcm).map_err(|e| e.to_string())?;
            Ok(packets.into_iter().map(Bytes::from).collect())
        }
    }
}

impl Actor for TtsActor {
    type Context = Context<Self>;

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        self.stop(ctx);
    }
}

impl Handler<SpeakDelta> for TtsActor {
    type Result = ();

    fn handle(&mut self, msg: SpeakDelta, ctx: &mut Context<Self>) {
        if self.env.services.tts.is_none() {
            return;
        }
        if self.speech.as_ref().map(|s| s.response_id) != Some(msg.response_id) {
            self.stop(ctx); // a new reply replaces whatever was being said
            self.format = self.next_format;
            let early_words = self.env.services.config.tts.first_piece_words;
            self.speech = Some(Speech {
                response_id: msg.response_id,
                splitter: SentenceSplitter::with_first_piece_words(early_words),
                queue: VecDeque::new(),
                synthesizing: false,
                text_done: false,
                frames: VecDeque::new(),
                clock: None,
                audio_started: false,
                held: msg.held,
                pieces_started: 0,
                dry: true,
                synthesis: CancelOnDrop(self.env.cancel.child()),
            });
        }
        let sentences = match self.speech.as_mut() {
            Some(speech) => speech.splitter.push(&msg.text),
            None => return,
        };
        self.enqueue(sentences);
        self.pump(ctx);
    }
}

impl Handler<SpeakEnd> for TtsActor {
    type Result = ();

    fn handle(&mut self, msg: SpeakEnd, ctx: &mut Context<Self>) {
        let current = self.speech.as_ref().map(|s| s.response_id) == Some(msg.response_id);
        if !current {
            return;
        }
        if msg.cancelled {
            return self.stop(ctx);
        }
        let tail = self.speech.as_mut().and_then(|s| {
            s.text_done = true;
            s.splitter.finish()
        });
        self.enqueue(tail);
        self.pump(ctx);
        self.finish_if_done(ctx);
    }
}

impl Handler<StopSpeaking> for TtsActor {
    type Result = ();

    fn handle(&mut self, _: StopSpeaking, ctx: &mut Context<Self>) {
        self.stop(ctx);
    }
}

impl Handler<ReleaseSpeech> for TtsActor {
    type Result = ();

    fn handle(&mut self, msg: ReleaseSpeech, ctx: &mut Context<Self>) {
        let Some(speech) = self
            .speech
            .as_mut()
            .filter(|s| s.response_id == msg.response_id && s.held)
        else {
            return;
        };
        speech.held = false;
        if !speech.frames.is_empty() {
            self.start_ticker(ctx);
        }
        self.pump(ctx);
        self.finish_if_done(ctx);
    }
}

impl Handler<SetOutputFormat> for TtsActor {
    type Result = ();

    /// From the next reply on: one reply is never spoken in two formats.
    fn handle(&mut self, msg: SetOutputFormat, _: &mut Context<Self>) {
        self.next_format = msg.format;
    }
}

child_controls!(TtsActor, ChildRole::Tts);

#[cfg(test)]
mod tests;
