//! Streaming sample-rate conversion with rubato's FFT resampler.
//!
//! Audio arrives in frames of any length; the resampler wants fixed 20 ms chunks, so
//! input is buffered until a whole chunk is there. One resampler per stream keeps the
//! filter state continuous across frames (no clicks at frame edges).

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("resampler setup {from} Hz -> {to} Hz: {message}")]
    Setup { from: u32, to: u32, message: String },
    #[error("resampling: {0}")]
    Process(String),
}

pub struct StreamResampler {
    inner: Fft<f32>,
    chunk: usize,
    pending: Vec<f32>,
    out_buf: Vec<f32>,
}

/// Fewest input samples per FFT chunk that still filter cleanly.
const MIN_CHUNK_SAMPLES: usize = 512;

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        // 20 ms chunks, but never fewer than 512 samples: what the filter needs is
        // samples, not milliseconds (8 kHz speech came out garbled with 160-sample
        // chunks; 512 is 64 ms there). At 24 kHz (the Realtime API's rate) 64 ms
        // chunks had cost ~50 ms more decision lag than 16 kHz audio; 512 samples is
        // 21 ms. A chunk is the most latency the resampler adds before VAD.
        let chunk = (from as usize * 20 / 1000).max(MIN_CHUNK_SAMPLES);
        let inner = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input)
            .map_err(|e| ResampleError::Setup {
                from,
                to,
                message: e.to_string(),
            })?;
        let out_max = inner.output_frames_max();
        Ok(StreamResampler {
            inner,
            chunk,
            pending: Vec::with_capacity(chunk),
            out_buf: vec![0.0; out_max],
        })
    }

    /// Feed samples; resampled output for every completed chunk is appended to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let mut rest = input;
        while !rest.is_empty() {
            let take = (self.chunk - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == self.chunk {
                self.process_chunk(out)?;
                self.pending.clear();
            }
        }
        Ok(())
    }

    fn process_chunk(&mut self, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let frames_out = self.out_buf.len();
        let input = InterleavedSlice::new(&self.pending[..], 1, self.chunk)
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        let mut output = InterleavedSlice::new_mut(&mut self.out_buf[..], 1, frames_out)
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        let (_, produced) = self
            .inner
            .process_into_buffer(&input, &mut output, None)
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        out.extend_from_slice(&self.out_buf[..produced]);
        Ok(())
    }

    /// Resample a whole clip at once (fixtures, TTS output), trimming the filter delay.
    pub fn convert_clip(from: u32, to: u32, input: &[f32]) -> Result<Vec<f32>, ResampleError> {
        if from == to {
            return Ok(input.to_vec());
        }
        let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
            .map_err(|e| ResampleError::Setup {
                from,
                to,
                message: e.to_string(),
            })?;
        let input_buf = InterleavedSlice::new(input, 1, input.len())
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        let needed = resampler.process_all_needed_output_len(input.len());
        let mut out = vec![0.0f32; needed];
        let mut output = InterleavedSlice::new_mut(&mut out[..], 1, needed)
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        let (_, produced) = resampler
            .process_all_into_buffer(&input_buf, &mut output, input.len(), None)
            .map_err(|e| ResampleError::Process(e.to_string()))?;
        out.truncate(produced);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_48k_to_16k_keeps_the_rate() {
        let mut resampler = StreamResampler::new(48_000, 16_000).unwrap();
        let mut out = Vec::new();
        // One second in odd-sized frames.
        let tone: Vec<f32> = (0..48_000).map(|i| (i as f32 * 0.01).sin() * 0.5).collect();
        for frame in tone.chunks(700) {
            resampler.push(frame, &mut out).unwrap();
        }
        // The filter delay holds back a few samples, and a partial chunk waits.
        // Audio still short of a whole 64 ms chunk waits for more input.
        assert!((14_500..=16_000).contains(&out.len()), "{}", out.len());
    }

    #[test]
    fn clip_conversion_length() {
        let clip = vec![0.0f32; 8_000];
        let out = StreamResampler::convert_clip(8_000, 16_000, &clip).unwrap();
        assert!((out.len() as i64 - 16_000).abs() <= 2, "{}", out.len());
    }
}
