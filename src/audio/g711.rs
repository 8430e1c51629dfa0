//! G.711 μ-law and A-law, the 8 kHz telephony codecs (one byte per sample).
//!
//! The Realtime API offers them as `audio/pcmu` and `audio/pcma`; the native protocol
//! as `codec=pcmu|pcma`. Decoding runs on the VAD's worker and encoding on the TTS
//! worker, like every other codec. The arithmetic is the classic ITU-T reference
//! (Sun's `g711.c`): segment search plus a four-bit mantissa, no tables.

/// μ-law bias added before the segment search.
const ULAW_BIAS: i32 = 0x84;
/// Largest μ-law magnitude after the 14-bit shift.
const ULAW_CLIP: i32 = 8159;
/// Upper bounds of the eight μ-law segments (14-bit magnitudes).
const ULAW_SEGMENT_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
/// Upper bounds of the eight A-law segments (13-bit magnitudes).
const ALAW_SEGMENT_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

fn segment(value: i32, ends: &[i32; 8]) -> usize {
    ends.iter().position(|end| value <= *end).unwrap_or(8)
}

pub fn ulaw_encode(sample: i16) -> u8 {
    let mut value = i32::from(sample) >> 2;
    let mask = if value < 0 {
        value = -value;
        0x7F
    } else {
        0xFF
    };
    value = value.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
    let seg = segment(value, &ULAW_SEGMENT_END);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let code = ((seg as i32) << 4) | ((value >> (seg + 1)) & 0x0F);
    (code ^ mask) as u8
}

pub fn ulaw_decode(byte: u8) -> i16 {
    let u = i32::from(!byte);
    let magnitude = (((u & 0x0F) << 3) + ULAW_BIAS) << ((u & 0x70) >> 4);
    let value = if u & 0x80 != 0 {
        ULAW_BIAS - magnitude
    } else {
        magnitude - ULAW_BIAS
    };
    value as i16
}

pub fn alaw_encode(sample: i16) -> u8 {
    let mut value = i32::from(sample) >> 3;
    let mask = if value >= 0 {
        0xD5
    } else {
        value = -value - 1;
        0x55
    };
    let seg = segment(value, &ALAW_SEGMENT_END);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mantissa = if seg < 2 {
        (value >> 1) & 0x0F
    } else {
        (value >> seg) & 0x0F
    };
    (((seg as i32) << 4 | mantissa) ^ mask) as u8
}

pub fn alaw_decode(byte: u8) -> i16 {
    let a = i32::from(byte ^ 0x55);
    let mut value = (a & 0x0F) << 4;
    match (a & 0x70) >> 4 {
        0 => value += 8,
        1 => value += 0x108,
        seg => value = (value + 0x108) << (seg - 1),
    }
    let value = if a & 0x80 != 0 { value } else { -value };
    value as i16
}

/// Which G.711 law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    Mu,
    A,
}

/// Decode G.711 bytes into `out` (replacing its contents).
pub fn decode_into(law: Law, bytes: &[u8], out: &mut Vec<i16>) {
    out.clear();
    match law {
        Law::Mu => out.extend(bytes.iter().copied().map(ulaw_decode)),
        Law::A => out.extend(bytes.iter().copied().map(alaw_decode)),
    }
}

pub fn encode(law: Law, samples: &[i16]) -> Vec<u8> {
    match law {
        Law::Mu => samples.iter().copied().map(ulaw_encode).collect(),
        Law::A => samples.iter().copied().map(alaw_encode).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_has_its_reference_codes() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(alaw_decode(0xD5), 8);
    }

    #[test]
    fn round_trips_stay_within_the_segment_step() {
        for law in [Law::Mu, Law::A] {
            for sample in (i16::MIN..=i16::MAX).step_by(7) {
                let mut back = Vec::new();
                decode_into(law, &encode(law, &[sample]), &mut back);
                let error = (i32::from(back[0]) - i32::from(sample)).abs();
                // The quantisation step grows with the magnitude: 1/16 of it at most.
                let bound = (i32::from(sample).abs() / 16).max(16) + 8;
                assert!(error <= bound, "{law:?} {sample} -> {} ({error})", back[0]);
            }
        }
    }

    #[test]
    fn every_code_decodes_and_re_encodes_to_itself() {
        for byte in 0..=255u8 {
            assert_eq!(
                ulaw_encode(ulaw_decode(byte)),
                byte | if byte == 0x7F { 0x80 } else { 0 }
            );
            assert_eq!(alaw_encode(alaw_decode(byte)), byte);
        }
    }
}
