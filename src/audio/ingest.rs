//! The per-conversation audio front end: client frames in, speech events and segments out.
//!
//! It decodes (PCM16 or Opus), resamples to 16 kHz, runs the VAD on 20 ms frames and feeds
//! the segmenter. It is plain state with no threads of its own: the VadActor moves it into
//! a DSP-pool job together with every frame that arrived meanwhile, and gets it back with
//! the results, so one conversation's state is touched by one thread at a time.

use bytes::Bytes;

use super::opus_codec::OpusDecoder;
use super::pcm::{decode_pcm16, f32_to_i16, i16_to_f32};
use super::resample::StreamResampler;
use super::segmenter::{Segmenter, SegmenterConfig, SegmenterOutput};
use super::MODEL_RATE;
use crate::protocol::AudioCodec;

/// webrtc-vad frame: 20 ms at 16 kHz.
const VAD_FRAME: usize = 320;

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

pub struct Ingest {
    codec: AudioCodec,
    sample_rate: u32,
    opus: Option<OpusDecoder>,
    resampler: Option<StreamResampler>,
    vad: WebrtcVad,
    /// 16 kHz samples waiting to fill a VAD frame.
    vad_buf: Vec<i16>,
    segmenter: Segmenter,
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
}

impl Ingest {
    pub fn new(
        codec: AudioCodec,
        sample_rate: u32,
        webrtc_mode: u8,
        segmenter: SegmenterConfig,
    ) -> Result<Self, IngestError> {
        let opus = match codec {
            AudioCodec::Opus => {
                Some(OpusDecoder::new(sample_rate).map_err(|e| IngestError::Setup(e.to_string()))?)
            }
            AudioCodec::Pcm16 => None,
        };
        let resampler = if sample_rate == MODEL_RATE {
            None
        } else {
            Some(
                StreamResampler::new(sample_rate, MODEL_RATE)
                    .map_err(|e| IngestError::Setup(e.to_string()))?,
            )
        };
        let mode = match webrtc_mode {
            0 => webrtc_vad::VadMode::Quality,
            1 => webrtc_vad::VadMode::LowBitrate,
            2 => webrtc_vad::VadMode::Aggressive,
            _ => webrtc_vad::VadMode::VeryAggressive,
        };
        let vad = webrtc_vad::Vad::new_with_rate_and_mode(webrtc_vad::SampleRate::Rate16kHz, mode);
        Ok(Ingest {
            codec,
            sample_rate,
            opus,
            resampler,
            vad: WebrtcVad(vad),
            vad_buf: Vec::with_capacity(VAD_FRAME * 2),
            segmenter: Segmenter::new(segmenter),
            scratch_native: Vec::new(),
            scratch_f32: Vec::new(),
            scratch_16k: Vec::new(),
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Process frames in arrival order. A bad frame is reported and skipped; the rest
    /// of the batch still runs.
    pub fn process(&mut self, frames: &[Bytes], out: &mut IngestOutput) {
        for frame in frames {
            self.scratch_native.clear();
            let decoded = match self.codec {
                AudioCodec::Pcm16 => match decode_pcm16(frame) {
                    Some(samples) => {
                        self.scratch_native = samples;
                        Ok(())
                    }
                    None => Err(IngestError::OddLengthPcm(frame.len())),
                },
                AudioCodec::Opus => match self.opus.as_mut() {
                    Some(opus) => opus
                        .decode_into(frame, &mut self.scratch_native)
                        .map(|_| ())
                        .map_err(|e| IngestError::BadOpus(e.to_string())),
                    None => Err(IngestError::Setup("no Opus decoder".into())),
                },
            };
            if let Err(e) = decoded {
                out.errors.push(e);
                continue;
            }
            out.native.extend_from_slice(&self.scratch_native);
            if let Err(e) = self.resample_to_model_rate() {
                out.errors.push(e);
                continue;
            }
            self.run_vad(&mut out.speech);
        }
    }

    /// The client says speech is over: close any open segment.
    pub fn flush(&mut self, out: &mut IngestOutput) {
        self.segmenter.flush(&mut out.speech);
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

    fn run_vad(&mut self, out: &mut SegmenterOutput) {
        let whole = self.vad_buf.len() / VAD_FRAME * VAD_FRAME;
        for frame in self.vad_buf[..whole].chunks_exact(VAD_FRAME) {
            // 320 samples at 16 kHz is a valid webrtc-vad frame, so this cannot fail;
            // treat a failure as silence rather than trusting that forever.
            let voiced = self.vad.0.is_voice_segment(frame).unwrap_or(false);
            self.segmenter
                .push(frame, if voiced { 1.0 } else { 0.0 }, out);
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
            collect_audio: false,
        }
    }

    #[test]
    fn silence_gives_no_events_and_bad_frames_are_reported() {
        let mut ingest = Ingest::new(AudioCodec::Pcm16, 16_000, 2, segmenter()).unwrap();
        let mut out = IngestOutput::default();
        let silence = Bytes::from(vec![0u8; 640]);
        ingest.process(
            &[silence.clone(), Bytes::from_static(&[1, 2, 3]), silence],
            &mut out,
        );
        assert_eq!(out.native.len(), 640);
        assert!(out.speech.events.is_empty());
        assert!(matches!(out.errors[..], [IngestError::OddLengthPcm(3)]));
    }

    #[test]
    fn garbage_opus_is_reported() {
        let mut ingest = Ingest::new(AudioCodec::Opus, 48_000, 2, segmenter()).unwrap();
        let mut out = IngestOutput::default();
        ingest.process(&[Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])], &mut out);
        assert!(matches!(out.errors[..], [IngestError::BadOpus(_)]));
    }
}
