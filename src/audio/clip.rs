//! A whole clip of client audio brought to the models' rate in one go: the audio of a
//! spoken item a client creates (`conversation.item.create` with `input_audio`). The
//! streaming path (`ingest.rs`) keeps per-stream decoder and filter state; a clip has
//! none to keep, so it is decoded and resampled whole, on the recogniser's worker
//! thread (never on an arbiter).

use super::g711::{self, Law};
use super::pcm::{decode_pcm16, i16_to_f32};
use super::resample::{ResampleError, StreamResampler};
use super::MODEL_RATE;
use crate::protocol::{AudioCodec, AudioFormat};

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("PCM16 audio has an even number of bytes; this clip has {bytes}")]
    OddLength { bytes: usize },
    #[error("{codec:?} clips are not supported (fixed-size codecs only)")]
    Codec { codec: AudioCodec },
    #[error(transparent)]
    Resample(#[from] ResampleError),
}

/// The clip's samples at 16 kHz in [-1, 1].
pub fn to_model_rate(format: AudioFormat, bytes: &[u8]) -> Result<Vec<f32>, ClipError> {
    let samples = match format.codec {
        AudioCodec::Pcm16 => {
            decode_pcm16(bytes).ok_or(ClipError::OddLength { bytes: bytes.len() })?
        }
        AudioCodec::Pcmu | AudioCodec::Pcma => {
            let law = if format.codec == AudioCodec::Pcmu {
                Law::Mu
            } else {
                Law::A
            };
            let mut out = Vec::with_capacity(bytes.len());
            g711::decode_into(law, bytes, &mut out);
            out
        }
        codec @ AudioCodec::Opus => return Err(ClipError::Codec { codec }),
    };
    let samples: Vec<f32> = samples.into_iter().map(i16_to_f32).collect();
    Ok(StreamResampler::convert_clip(
        format.sample_rate,
        MODEL_RATE,
        &samples,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::pcm::encode_pcm16;

    fn tone(rate: u32, ms: u32) -> Vec<i16> {
        let n = (rate * ms / 1000) as usize;
        (0..n)
            .map(|i| {
                ((i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 8000.0) as i16
            })
            .collect()
    }

    #[test]
    fn pcm_at_24_khz_comes_out_at_16_khz_with_its_length() {
        let bytes = encode_pcm16(&tone(24_000, 500));
        let format = AudioFormat::new(AudioCodec::Pcm16, 24_000);
        let out = to_model_rate(format, &bytes).expect("decodes");
        assert!((out.len() as i64 - 8_000).abs() <= 16, "{}", out.len());
        assert!(out.iter().any(|s| s.abs() > 0.1), "the tone survives");
    }

    #[test]
    fn g711_is_decoded_and_upsampled() {
        let encoded = g711::encode(Law::A, &tone(8_000, 250));
        let format = AudioFormat::new(AudioCodec::Pcma, 8_000);
        let out = to_model_rate(format, &encoded).expect("decodes");
        assert!((out.len() as i64 - 4_000).abs() <= 16, "{}", out.len());
    }

    #[test]
    fn half_samples_and_opus_are_refused() {
        let format = AudioFormat::new(AudioCodec::Pcm16, 24_000);
        assert!(matches!(
            to_model_rate(format, &[1, 2, 3]),
            Err(ClipError::OddLength { bytes: 3 })
        ));
        let opus = AudioFormat::new(AudioCodec::Opus, 48_000);
        assert!(matches!(
            to_model_rate(opus, &[0; 4]),
            Err(ClipError::Codec { .. })
        ));
    }
}
