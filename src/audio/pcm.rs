//! PCM16 little-endian framing.

/// Decode little-endian 16-bit samples; `None` when the byte count is odd.
pub fn decode_pcm16(bytes: &[u8]) -> Option<Vec<i16>> {
    let mut samples = Vec::with_capacity(bytes.len() / 2);
    decode_pcm16_into(bytes, &mut samples)?;
    Some(samples)
}

/// Decode into `out` (replacing its contents, reusing its capacity); `None` when the
/// byte count is odd.
pub fn decode_pcm16_into(bytes: &[u8], out: &mut Vec<i16>) -> Option<()> {
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    out.clear();
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
    );
    Some(())
}

/// Encode samples as little-endian bytes.
pub fn encode_pcm16(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn i16_to_f32(sample: i16) -> f32 {
    f32::from(sample) / 32768.0
}

pub fn f32_to_i16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_odd_length() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN];
        assert_eq!(decode_pcm16(&encode_pcm16(&samples)).unwrap(), samples);
        assert_eq!(decode_pcm16(&[1, 2, 3]), None);
    }
}
