//! Shared by the speech-making examples (`say`, `turn_fixtures`): hearken's Piper
//! voice speaking into 16 kHz samples, Piper's quiet edges replaced by exact
//! silence of a chosen length, and 16 kHz mono PCM16 WAV files.
// Each example compiles its own copy and uses part of it.
#![allow(dead_code)]

use std::path::Path;

use anyhow::Context as _;
use hearken::audio::resample::StreamResampler;
use hearken::models::{init_runtime, ORT_DYLIB_FILE};
use hearken::tts::{PhonemizerPool, PiperVoice, PIPER_CONFIG_FILE, PIPER_MODEL_FILE};
use prometheus::IntGauge;

/// Output rate in Hz: what VAD, STT and Smart Turn take.
pub const OUT_RATE: u32 = 16_000;

/// Level below which Piper's edges count as silence: about -50 dBFS, under the
/// quietest speech sound and above the faint hiss Piper starts and ends with.
const SILENCE_LEVEL: f32 = 0.003;

/// Piper with one `espeak-ng` process, loaded once for many sentences.
pub struct Speaker {
    pub phonemizer: PhonemizerPool,
    pub voice: PiperVoice,
}

impl Speaker {
    /// Loads ONNX Runtime and the Piper voice from `models`.
    pub fn load(models: &Path) -> anyhow::Result<Self> {
        init_runtime(&models.join(ORT_DYLIB_FILE))?;
        let gauge = IntGauge::new("example_espeak", "espeak-ng processes")?;
        Ok(Self {
            phonemizer: PhonemizerPool::new(1, gauge)?,
            voice: PiperVoice::load(
                &models.join(PIPER_MODEL_FILE),
                &models.join(PIPER_CONFIG_FILE),
            )?,
        })
    }

    /// `text` spoken, resampled from the voice's rate to [`OUT_RATE`].
    pub fn speak_16k(&mut self, text: &str) -> anyhow::Result<Vec<f32>> {
        let audio = self.voice.speak(&self.phonemizer, text)?;
        anyhow::ensure!(!audio.is_empty(), "Piper produced no audio for {text:?}");
        Ok(StreamResampler::convert_clip(
            self.voice.sample_rate(),
            OUT_RATE,
            &audio,
        )?)
    }
}

/// Where the speech is: from the first to past the last sample above
/// [`SILENCE_LEVEL`].
pub fn speech_bounds(samples: &[f32]) -> (usize, usize) {
    let loud = |s: &f32| s.abs() > SILENCE_LEVEL;
    let start = samples.iter().position(loud).unwrap_or(0);
    let end = samples.iter().rposition(loud).map_or(start, |i| i + 1);
    (start, end)
}

/// The speech within [`speech_bounds`], with exact silence of the given lengths
/// before and after.
pub fn with_silence(samples: &[f32], leading_ms: u32, trailing_ms: u32) -> Vec<f32> {
    let (start, end) = speech_bounds(samples);
    let mut out = vec![0.0; ms_to_samples(leading_ms)];
    out.extend_from_slice(&samples[start..end]);
    out.resize(out.len() + ms_to_samples(trailing_ms), 0.0);
    out
}

/// Samples in `ms` milliseconds at [`OUT_RATE`].
pub fn ms_to_samples(ms: u32) -> usize {
    (ms * OUT_RATE / 1000) as usize
}

/// Writes 16-bit mono PCM at [`OUT_RATE`], samples clipped to the 16-bit range.
pub fn write_wav(path: &Path, samples: &[f32]) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: OUT_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec)
        .with_context(|| format!("creating {}", path.display()))?;
    for &s in samples {
        writer.write_sample((s * 32767.0).round().clamp(-32768.0, 32767.0) as i16)?;
    }
    writer.finalize()?;
    Ok(())
}
