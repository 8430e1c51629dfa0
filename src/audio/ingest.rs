//! The per-conversation audio front end: client frames in, speech events and segments out.
//!
//! It decodes (PCM16 or Opus), resamples to 16 kHz, scores speech and feeds the
//! segmenter. It is plain state with no threads of its own: the VadActor moves it into a
//! worker job together with every frame that arrived meanwhile, and gets it back with
//! the results, so one conversation's state is touched by one thread at a time.
//!
//! With webrtc-vad, [`Ingest::process`] does everything. With Silero, `process` decodes
//! and cuts 32 ms windows; the Silero batcher then scores the windows of many
//! conversations in one model call and hands the scores back through
//! [`Ingest::apply_silero`].

use bytes::Bytes;

use super::g711::{self, Law};
use super::opus_codec::OpusDecoder;
use super::pcm::{decode_pcm16_into, f32_to_i16, i16_to_f32};
use super::resample::StreamResampler;
use super::segmenter::{PauseKey, Segmenter, SegmenterConfig, SegmenterOutput};
use super::MODEL_RATE;
use crate::models::{SileroState, WINDOW_SAMPLES};
use crate::protocol::{AudioCodec, AudioFormat};

/// webrtc-vad frame: 20 ms at 16 kHz.
const WEBRTC_FRAME: usize = 320;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("PCM16 frame has an odd number of bytes ({0})")]
    OddLengthPcm(usize),
    #[error("undecodable Opus packet: {0}")]
    BadOpus(String),
    #[error("{0}")]
    Setup(String),
}

/// libfvad keeps no thread-affine state, so moving it between threads is sound; the
/// wrapper exists because the crate's `Vad` holds a raw pointer and is not `Send`.
struct WebrtcVad(webrtc_vad::Vad);

// SAFETY: `Vad` owns its `Fvad` instance exclusively and libfvad uses no thread-locals;
// `Ingest` is only ever used by one thread at a time (it moves with its job).
unsafe impl Send for WebrtcVad {}

/// Which detector scores speech, with its per-conversation state.
pub enum VadEngine {
    Webrtc(WebrtcVadConfig),
    Silero,
}

#[derive(Debug, Clone, Copy)]
pub struct WebrtcVadConfig {
    /// Aggressiveness 0..=3.
    pub mode: u8,
}

enum Detector {
    Webrtc(WebrtcVad),
    Silero {
        state: Box<SileroState>,
        /// Windows cut by `process`, waiting for scores.
        windows: Vec<[f32; WINDOW_SAMPLES]>,
    },
}

pub struct Ingest {
    codec: AudioCodec,
    opus: Option<OpusDecoder>,
    resampler: Option<StreamResampler>,
    detector: Detector,
    /// 16 kHz samples not yet scored (less than one frame or window).
    vad_buf: Vec<i16>,
    /// The 16 kHz samples of each pending Silero window, for the segmenter.
    window_pcm: Vec<i16>,
    segmenter: Segmenter,
    /// Copy decoded audio to [`IngestOutput::native`] (only the recorder reads it).
    keep_native: bool,
    scratch_native: Vec<i16>,
    scratch_f32: Vec<f32>,
    scratch_16k: Vec<f32>,
}

/// Results of one batch of frames.
#[derive(Debug, Default)]
pub struct IngestOutput {
    /// Decoded audio at the session's rate (for the recorder).
    pub native: Vec<i16>,
    pub speech: SegmenterOutput,
    pub errors: Vec<IngestError>,
    /// A flush found nothing to hand on (no open segment, no manual audio).
    pub nothing_to_commit: bool,
}

impl Ingest {
    pub fn new(
        format: AudioFormat,
        engine: VadEngine,
        segmenter: SegmenterConfig,
    ) -> Result<Self, IngestError> {
        let (codec, opus, resampler) = Self::decoding(format)?;
        let detector = match engine {
            VadEngine::Webrtc(config) => {
                let mode = match config.mode {
                    0 => webrtc_vad::VadMode::Quality,
                    1 => webrtc_vad::VadMode::LowBitrate,
                    2 => webrtc_vad::VadMode::Aggressive,
                    _ => webrtc_vad::VadMode::VeryAggressive,
                };
                let rate = webrtc_vad::SampleRate::Rate16kHz;
                Detector::Webrtc(WebrtcVad(webrtc_vad::Vad::new_with_rate_and_mode(
                    rate, mode,
                )))
            }
            VadEngine::Silero => Detector::Silero {
                state: Box::default(),
                windows: Vec::new(),
            },
        };
        Ok(Ingest {
            codec,
            opus,
            resampler,
            detector,
            vad_buf: Vec::with_capacity(WINDOW_SAMPLES * 2),
            window_pcm: Vec::new(),
            segmenter: Segmenter::new(segmenter),
            keep_native: false,
            scratch_native: Vec::new(),
            scratch_f32: Vec::new(),
            scratch_16k: Vec::new(),
        })
    }

    /// What decodes `format` and brings it to 16 kHz.
    #[allow(clippy::type_complexity)]
    fn decoding(
        format: AudioFormat,
    ) -> Result<(AudioCodec, Option<OpusDecoder>, Option<StreamResampler>), IngestError> {
        let setup = |e: &dyn std::fmt::Display| IngestError::Setup(e.to_string());
        let rate = format.sample_rate;
        let opus = match format.codec {
            AudioCodec::Opus => Some(OpusDecoder::new(rate).map_err(|e| setup(&e))?),
            AudioCodec::Pcm16 | AudioCodec::Pcmu | AudioCodec::Pcma => None,
        };
        let resampler = if rate == MODEL_RATE {
            None
        } else {
            Some(StreamResampler::new(rate, MODEL_RATE).map_err(|e| setup(&e))?)
        };
        Ok((format.codec, opus, resampler))
    }

    /// Decode `format` from now on. The detector and segmenter (and so the audio
    /// clock) carry on.
    pub fn set_input(&mut self, format: AudioFormat) -> Result<(), IngestError> {
        let (codec, opus, resampler) = Self::decoding(format)?;
        (self.codec, self.opus, self.resampler) = (codec, opus, resampler);
        Ok(())
    }

    /// New segmenter settings (see `Segmenter::set_config`).
    pub fn set_segmenter(&mut self, config: SegmenterConfig) {
        self.segmenter.set_config(config);
    }

    /// Forget the open segment without handing it on.
    pub fn clear(&mut self) {
        self.segmenter.clear();
    }

    /// Also hand back the decoded audio at the session's rate (for the recorder).
    pub fn keep_native(mut self, keep: bool) -> Self {
        self.keep_native = keep;
        self
    }

    /// Decode frames in arrival order and score what can be scored here. A bad frame is
    /// reported and skipped; the rest of the batch still runs.
    pub fn process(&mut self, frames: &[Bytes], out: &mut IngestOutput) {
        for frame in frames {
            if let Err(error) = self.decode(frame) {
                out.errors.push(error);
                continue;
            }
            if self.keep_native {
                out.native.extend_from_slice(&self.scratch_native);
            }
            if let Err(error) = self.resample_to_model_rate() {
                out.errors.push(error);
                continue;
            }
            self.score_available(&mut out.speech);
        }
    }

    /// The client says speech is over: close any open segment. (With Silero, call it
    /// after [`Ingest::apply_silero`].)
    pub fn flush(&mut self, out: &mut IngestOutput) {
        out.nothing_to_commit = !self.segmenter.flush(&mut out.speech);
    }

    /// Silero's pending windows and the state they advance (empty for webrtc).
    pub fn silero_work(&mut self) -> (Option<&mut SileroState>, &[[f32; WINDOW_SAMPLES]]) {
        match &mut self.detector {
            Detector::Silero { state, windows } => (Some(state), windows),
            Detector::Webrtc(_) => (None, &[]),
        }
    }

    /// Number of Silero windows waiting for a score.
    pub fn pending_windows(&self) -> usize {
        match &self.detector {
            Detector::Silero { windows, .. } => windows.len(),
            Detector::Webrtc(_) => 0,
        }
    }

    /// An end-of-turn verdict for the pause `key` (see `Segmenter::end_turn`):
    /// complete, incomplete, or none to come.
    pub fn apply_turn_verdict(
        &mut self,
        key: PauseKey,
        complete: Option<bool>,
        out: &mut IngestOutput,
    ) {
        match complete {
            Some(true) => {
                self.segmenter.end_turn(key, &mut out.speech);
            }
            Some(false) => self.segmenter.turn_incomplete(key),
            None => self.segmenter.turn_unknown(key, &mut out.speech),
        }
    }

    /// Milliseconds of 16 kHz audio analysed so far.
    pub fn clock_ms(&self) -> u64 {
        self.segmenter.clock_ms()
    }

    /// Feed the scores of the pending windows (in order) to the segmenter.
    pub fn apply_silero(&mut self, scores: &[f32], out: &mut IngestOutput) {
        if let Detector::Silero { windows, .. } = &mut self.detector {
            windows.clear();
        }
        let pcm = std::mem::take(&mut self.window_pcm);
        for (window, &score) in pcm.chunks_exact(WINDOW_SAMPLES).zip(scores) {
            self.segmenter.push(window, score, &mut out.speech);
        }
        self.window_pcm = pcm;
        self.window_pcm.clear();
    }

    fn decode(&mut self, frame: &Bytes) -> Result<(), IngestError> {
        self.scratch_native.clear();
        match self.codec {
            AudioCodec::Pcm16 => decode_pcm16_into(frame, &mut self.scratch_native)
                .ok_or(IngestError::OddLengthPcm(frame.len())),
            AudioCodec::Pcmu => {
                g711::decode_into(Law::Mu, frame, &mut self.scratch_native);
                Ok(())
            }
            AudioCodec::Pcma => {
                g711::decode_into(Law::A, frame, &mut self.scratch_native);
                Ok(())
            }
            AudioCodec::Opus => {
                let opus = self
                    .opus
                    .as_mut()
                    .ok_or_else(|| IngestError::Setup("no Opus decoder".into()))?;
                opus.decode_into(frame, &mut self.scratch_native)
                    .map(|_| ())
                    .map_err(|e| IngestError::BadOpus(e.to_string()))
            }
        }
    }

    /// Convert `scratch_native` to 16 kHz and append it to the VAD buffer.
    fn resample_to_model_rate(&mut self) -> Result<(), IngestError> {
        match self.resampler.as_mut() {
            None => self.vad_buf.extend_from_slice(&self.scratch_native),
            Some(resampler) => {
                self.scratch_f32.clear();
                self.scratch_f32
                    .extend(self.scratch_native.iter().copied().map(i16_to_f32));
                self.scratch_16k.clear();
                resampler
                    .push(&self.scratch_f32, &mut self.scratch_16k)
                    .map_err(|e| IngestError::Setup(e.to_string()))?;
                self.vad_buf
                    .extend(self.scratch_16k.iter().copied().map(f32_to_i16));
            }
        }
        Ok(())
    }

    /// Score (webrtc) or cut into windows (Silero) every whole frame in the buffer.
    fn score_available(&mut self, out: &mut SegmenterOutput) {
        let step = match self.detector {
            Detector::Webrtc(_) => WEBRTC_FRAME,
            Detector::Silero { .. } => WINDOW_SAMPLES,
        };
        let whole = self.vad_buf.len() / step * step;
        for frame in self.vad_buf[..whole].chunks_exact(step) {
            match &mut self.detector {
                Detector::Webrtc(vad) => {
                    // 320 samples at 16 kHz is a valid webrtc-vad frame, so this cannot
                    // fail; treat a failure as silence rather than trusting that forever.
                    let voiced = vad.0.is_voice_segment(frame).unwrap_or(false);
                    self.segmenter
                        .push(frame, if voiced { 1.0 } else { 0.0 }, out);
                }
                Detector::Silero { windows, .. } => {
                    let mut window = [0.0f32; WINDOW_SAMPLES];
                    for (w, &s) in window.iter_mut().zip(frame) {
                        *w = i16_to_f32(s);
                    }
                    windows.push(window);
                    self.window_pcm.extend_from_slice(frame);
                }
            }
        }
        self.vad_buf.drain(..whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segmenter() -> SegmenterConfig {
        SegmenterConfig {
            start_threshold: 0.5,
            end_threshold: 0.5,
            min_speech_ms: 100,
            min_silence_ms: 400,
            pad_ms: 200,
            max_segment_ms: 30_000,
            draft_after_ms: 0,
            turn_check_after_ms: 0,
            turn_max_silence_ms: 0,
            partial_every_ms: 0,
            collect_audio: false,
            manual: false,
        }
    }

    fn webrtc() -> VadEngine {
        VadEngine::Webrtc(WebrtcVadConfig { mode: 2 })
    }

    #[test]
    fn silence_gives_no_events_and_bad_frames_are_reported() {
        let mut ingest = Ingest::new(
            AudioFormat::new(AudioCodec::Pcm16, 16_000),
            webrtc(),
            segmenter(),
        )
        .unwrap()
        .keep_native(true);
        let mut out = IngestOutput::default();
        let silence = Bytes::from(vec![0u8; 640]);
        let frames = [silence.clone(), Bytes::from_static(&[1, 2, 3]), silence];
        ingest.process(&frames, &mut out);
        assert_eq!(out.native.len(), 640);
        assert!(out.speech.events.is_empty());
        assert!(matches!(out.errors[..], [IngestError::OddLengthPcm(3)]));
    }

    #[test]
    fn garbage_opus_is_reported() {
        let mut ingest = Ingest::new(
            AudioFormat::new(AudioCodec::Opus, 48_000),
            webrtc(),
            segmenter(),
        )
        .unwrap();
        let mut out = IngestOutput::default();
        ingest.process(&[Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])], &mut out);
        assert!(matches!(out.errors[..], [IngestError::BadOpus(_)]));
    }

    #[test]
    fn silero_engine_cuts_whole_windows_and_keeps_the_rest() {
        let mut ingest = Ingest::new(
            AudioFormat::new(AudioCodec::Pcm16, 16_000),
            VadEngine::Silero,
            segmenter(),
        )
        .unwrap();
        let mut out = IngestOutput::default();
        // 1300 samples: two whole windows, 276 samples left over.
        ingest.process(&[Bytes::from(vec![0u8; 2600])], &mut out);
        assert_eq!(ingest.pending_windows(), 2);
        ingest.apply_silero(&[0.1, 0.2], &mut out);
        assert_eq!(ingest.pending_windows(), 0);
        ingest.process(&[Bytes::from(vec![0u8; 2 * 236])], &mut out);
        assert_eq!(ingest.pending_windows(), 1);
    }
}
