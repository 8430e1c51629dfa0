//! Opus packets in and out (the `opus` crate, libopus built from source).

use crate::audio::pcm::{f32_to_i16, i16_to_f32};

/// Encoder bitrate in bit/s.
const OPUS_BITRATE: i32 = 32_000;

/// Largest Opus frame: 120 ms at 48 kHz.
const MAX_FRAME_SAMPLES: usize = 5760;

#[derive(Debug, thiserror::Error)]
pub enum OpusError {
    #[error("opus: {0}")]
    Codec(#[from] opus::Error),
}

/// Decodes one mono stream at the session's rate.
pub struct OpusDecoder {
    decoder: opus::Decoder,
    scratch: Vec<i16>,
}

impl OpusDecoder {
    pub fn new(sample_rate: u32) -> Result<Self, OpusError> {
        Ok(OpusDecoder {
            decoder: opus::Decoder::new(sample_rate, opus::Channels::Mono)?,
            scratch: vec![0; MAX_FRAME_SAMPLES],
        })
    }

    /// Decode one packet, appending its samples to `out`.
    pub fn decode_into(&mut self, packet: &[u8], out: &mut Vec<i16>) -> Result<usize, OpusError> {
        let n = self.decoder.decode(packet, &mut self.scratch, false)?;
        out.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }
}

/// How many samples at `sample_rate` a packet holds, read from its table of contents
/// without decoding it (an error for a packet no decoder would accept).
pub fn packet_samples(packet: &[u8], sample_rate: u32) -> Result<usize, OpusError> {
    Ok(opus::packet::get_nb_samples(packet, sample_rate)?)
}

/// Encodes mono audio into 20 ms packets (used for TTS output and the bench client).
pub struct OpusEncoder {
    encoder: opus::Encoder,
    frame_samples: usize,
    pending: Vec<i16>,
}

impl OpusEncoder {
    pub fn new(sample_rate: u32) -> Result<Self, OpusError> {
        let mut encoder =
            opus::Encoder::new(sample_rate, opus::Channels::Mono, opus::Application::Voip)?;
        // Speech at 32 kbit/s keeps consonants a recogniser can tell apart.
        encoder.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))?;
        Ok(OpusEncoder {
            encoder,
            frame_samples: sample_rate as usize / 50,
            pending: Vec::new(),
        })
    }

    /// Append samples and return every complete 20 ms packet.
    pub fn push(&mut self, samples: &[i16]) -> Result<Vec<Vec<u8>>, OpusError> {
        self.pending.extend_from_slice(samples);
        let mut packets = Vec::new();
        while self.pending.len() >= self.frame_samples {
            let frame: Vec<i16> = self.pending.drain(..self.frame_samples).collect();
            packets.push(self.encoder.encode_vec(&frame, 4000)?);
        }
        Ok(packets)
    }

    /// Pad the remainder with silence to a whole packet.
    pub fn finish(&mut self) -> Result<Vec<Vec<u8>>, OpusError> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let missing = self.frame_samples - self.pending.len();
        self.push(&vec![0; missing])
    }
}

/// Convenience for f32 sources.
pub fn f32_frame_to_i16(samples: &[f32]) -> Vec<i16> {
    samples.iter().copied().map(f32_to_i16).collect()
}

pub fn i16_frame_to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().copied().map(i16_to_f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_keeps_length() {
        let mut enc = OpusEncoder::new(16_000).unwrap();
        let tone: Vec<i16> = (0..1600)
            .map(|i| ((i as f32 * 0.1).sin() * 8000.0) as i16)
            .collect();
        let packets = enc.push(&tone).unwrap();
        assert_eq!(packets.len(), 5);
        let mut dec = OpusDecoder::new(16_000).unwrap();
        let mut out = Vec::new();
        for p in &packets {
            dec.decode_into(p, &mut out).unwrap();
        }
        assert_eq!(out.len(), 1600);
    }

    #[test]
    fn a_packet_tells_its_length_without_decoding() {
        let mut enc = OpusEncoder::new(16_000).unwrap();
        let packets = enc.push(&[0; 320]).unwrap();
        assert_eq!(packet_samples(&packets[0], 16_000).unwrap(), 320);
        assert_eq!(packet_samples(&packets[0], 48_000).unwrap(), 960);
        // Code 3 announcing 63 frames of 20 ms: more than the 120 ms a packet may hold.
        assert!(packet_samples(&[0xff, 0xff], 16_000).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = OpusDecoder::new(16_000).unwrap();
        let mut out = Vec::new();
        // TOC byte announcing an invalid frame count.
        assert!(dec
            .decode_into(&[0xff, 0xff, 0xff, 0xff, 0x00], &mut out)
            .is_err());
    }
}
