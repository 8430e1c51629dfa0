//! Bench audio: WAV files read with `hound`, mixed to mono, resampled to the session rate
//! (`StreamResampler::convert_clip`) and cut into 20 ms frames, each ready to send as one
//! binary WebSocket frame (PCM16 LE samples, or one Opus packet). The frames are built
//! once and shared by every session, so the client spends its CPU on sockets, not codecs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use bytes::Bytes;

use crate::audio::opus_codec::OpusEncoder;
use crate::audio::pcm::f32_to_i16;
use crate::audio::resample::StreamResampler;

/// Length of one frame in milliseconds of audio: the size DESIGN.md §3 recommends.
pub const FRAME_MS: u64 = 20;

/// Wire codec of the bench sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Codec {
    Pcm16,
    Opus,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Pcm16 => "pcm16",
            Codec::Opus => "opus",
        }
    }
}

/// The audio a session loops: all files back to back, each followed by `gap_s` seconds of
/// silence, as 20 ms frames.
pub struct AudioLoop {
    pub frames: Vec<Bytes>,
}

impl AudioLoop {
    pub fn load(
        paths: &[PathBuf],
        codec: Codec,
        sample_rate: u32,
        gap_s: f64,
    ) -> anyhow::Result<AudioLoop> {
        if paths.is_empty() {
            bail!("give at least one --audio FILE.wav");
        }
        let mut samples = Vec::new();
        for path in paths {
            let (clip, rate) = read_wav(path)?;
            let converted = StreamResampler::convert_clip(rate, sample_rate, &clip)
                .with_context(|| format!("resampling {}", path.display()))?;
            samples.extend(converted.into_iter().map(f32_to_i16));
            samples.resize(samples.len() + (gap_s * sample_rate as f64) as usize, 0);
        }
        let frame_samples = (sample_rate as u64 * FRAME_MS / 1000) as usize;
        let frames = match codec {
            Codec::Pcm16 => samples
                .chunks(frame_samples)
                .map(|chunk| {
                    let mut bytes = Vec::with_capacity(frame_samples * 2);
                    for i in 0..frame_samples {
                        let sample = chunk.get(i).copied().unwrap_or(0);
                        bytes.extend_from_slice(&sample.to_le_bytes());
                    }
                    Bytes::from(bytes)
                })
                .collect(),
            Codec::Opus => {
                let mut encoder = OpusEncoder::new(sample_rate).context("opus encoder")?;
                let mut packets = encoder.push(&samples).context("opus encoding")?;
                packets.extend(encoder.finish().context("opus encoding")?);
                packets.into_iter().map(Bytes::from).collect()
            }
        };
        Ok(AudioLoop { frames })
    }
}

/// A WAV file as mono f32 samples in [-1, 1], with its sample rate.
fn read_wav(path: &Path) -> anyhow::Result<(Vec<f32>, u32)> {
    let reader =
        hound::WavReader::open(path).with_context(|| format!("opening {}", path.display()))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.into_samples::<f32>().collect::<Result<_, _>>(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
        }
    }
    .with_context(|| format!("reading samples of {}", path.display()))?;
    let mono = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    Ok((mono, spec.sample_rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16 kHz fixture sent at 24 kHz (as Realtime sessions send it): resampled to the
    /// same length of audio, in 960-byte frames, followed by the gap's silence.
    #[test]
    fn a_fixture_is_resampled_to_the_session_rate_and_framed() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/turns/moon.wav");
        let (clip, rate) = read_wav(&path).expect("fixture");
        assert_eq!(rate, 16_000);
        let clip_ms = clip.len() as u64 * 1000 / 16_000;
        let audio = AudioLoop::load(&[path], Codec::Pcm16, 24_000, 1.0).expect("loads");
        assert!(audio.frames.iter().all(|f| f.len() == 960));
        let loop_ms = audio.frames.len() as u64 * FRAME_MS;
        assert!(
            loop_ms.abs_diff(clip_ms + 1000) <= FRAME_MS,
            "{loop_ms} ms for {clip_ms} ms of speech and 1 s of gap"
        );
        let samples = |f: &Bytes| -> Vec<i16> {
            f.chunks_exact(2)
                .map(|p| i16::from_le_bytes([p[0], p[1]]))
                .collect()
        };
        let loud = audio.frames[..audio.frames.len() / 2]
            .iter()
            .any(|f| samples(f).iter().any(|s| s.unsigned_abs() > 3000));
        assert!(loud, "the speech survives");
        let last = audio.frames.last().expect("frames");
        assert!(samples(last).iter().all(|&s| s == 0), "the gap is silence");
    }
}
