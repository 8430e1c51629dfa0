//! Gathers the client's small audio frames into batches before they enter the tree.
//!
//! Clients send a frame every 10–20 ms. Handing each one through the conversation and
//! the VAD actor to a worker thread costs two mailbox hops, a job and a thread wake-up,
//! which at hundreds of sessions costs more CPU than the model itself. Batches of
//! `target_ms` (one or two Silero windows) cut that work several-fold while adding at
//! most `target_ms` to VAD latency. Frames stay whole: Opus packets are decoded one by
//! one, and a bad frame is still reported as itself.

use bytes::Bytes;

use crate::protocol::{AudioCodec, AudioFormat};

/// Duration assumed for a frame whose length cannot be read (a bad Opus packet); the
/// decoder reports it later.
const UNKNOWN_FRAME_US: u64 = 20_000;

pub struct FrameCoalescer {
    format: AudioFormat,
    target_us: u64,
    frames: Vec<Bytes>,
    buffered_us: u64,
}

impl FrameCoalescer {
    /// `target_ms = 0` hands every frame on alone.
    pub fn new(format: AudioFormat, target_ms: u32) -> Self {
        FrameCoalescer {
            format,
            target_us: u64::from(target_ms) * 1000,
            frames: Vec::new(),
            buffered_us: 0,
        }
    }

    /// Adds one frame; returns the batch once it holds at least `target_ms` of audio.
    pub fn push(&mut self, frame: Bytes) -> Option<Vec<Bytes>> {
        self.buffered_us += self.duration_us(&frame);
        self.frames.push(frame);
        if self.buffered_us >= self.target_us {
            self.take()
        } else {
            None
        }
    }

    /// Whatever is buffered, e.g. before `audio.end` or when the client pauses.
    pub fn take(&mut self) -> Option<Vec<Bytes>> {
        if self.frames.is_empty() {
            return None;
        }
        self.buffered_us = 0;
        Some(std::mem::take(&mut self.frames))
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The format frames arrive in now.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Frames from now on come in `format` (take the buffered ones first).
    pub fn set_format(&mut self, format: AudioFormat) {
        self.format = format;
    }

    fn duration_us(&self, frame: &[u8]) -> u64 {
        let rate = self.format.sample_rate;
        let samples = match self.format.codec {
            AudioCodec::Pcm16 => frame.len() as u64 / 2,
            AudioCodec::Pcmu | AudioCodec::Pcma => frame.len() as u64,
            AudioCodec::Opus => match opus::packet::get_nb_samples(frame, rate) {
                Ok(samples) => samples as u64,
                Err(_) => return UNKNOWN_FRAME_US,
            },
        };
        samples * 1_000_000 / u64::from(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm_ms(ms: usize) -> Bytes {
        Bytes::from(vec![0u8; ms * 16 * 2])
    }

    #[test]
    fn pcm_frames_are_batched_by_duration() {
        let mut coalescer = FrameCoalescer::new(AudioFormat::new(AudioCodec::Pcm16, 16_000), 60);
        assert!(coalescer.push(pcm_ms(20)).is_none());
        assert!(coalescer.push(pcm_ms(20)).is_none());
        let batch = coalescer.push(pcm_ms(20)).expect("60 ms buffered");
        assert_eq!(batch.len(), 3);
        assert!(coalescer.is_empty());
        assert!(coalescer.take().is_none());
    }

    #[test]
    fn a_long_frame_passes_at_once_and_zero_target_never_holds() {
        let mut coalescer = FrameCoalescer::new(AudioFormat::new(AudioCodec::Pcm16, 16_000), 60);
        assert_eq!(coalescer.push(pcm_ms(100)).map(|b| b.len()), Some(1));
        let mut unbatched = FrameCoalescer::new(AudioFormat::new(AudioCodec::Pcm16, 16_000), 0);
        assert_eq!(unbatched.push(pcm_ms(10)).map(|b| b.len()), Some(1));
    }

    #[test]
    fn opus_packets_count_their_own_duration_and_garbage_counts_as_a_frame() {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let packet = Bytes::from(encoder.encode_vec(&[0i16; 960], 4000).unwrap());
        let mut coalescer = FrameCoalescer::new(AudioFormat::new(AudioCodec::Opus, 48_000), 40);
        assert!(coalescer.push(packet.clone()).is_none());
        assert_eq!(coalescer.push(packet).map(|b| b.len()), Some(2));
        assert!(coalescer
            .push(Bytes::from_static(&[0xff, 0xff, 0xff]))
            .is_none());
        assert_eq!(coalescer.take().map(|b| b.len()), Some(1));
    }
}
