//! Audio plumbing: PCM framing, Opus, resampling, speech segmentation, WAV files.
//! Everything here is plain synchronous code that runs on worker threads.

pub mod clip;
pub mod coalesce;
pub mod g711;
pub mod ingest;
pub mod opus_codec;
pub mod pcm;
pub mod resample;
pub mod segmenter;
pub mod wav;

/// The rate VAD and STT work at (Hz).
pub const MODEL_RATE: u32 = 16_000;
