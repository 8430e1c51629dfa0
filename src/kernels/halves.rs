//! Half floats (IEEE binary16) for attention state: keys and values are what grows
//! with every conversation and every position, and what attention reads in full at
//! each step, so they are held in half the bytes and widened back to `f32` as they are
//! read. The arithmetic stays in `f32`; widening is exact, so every path (F16C, AVX-512,
//! portable) gives the same bits.

pub use half::f16 as Half;

/// `values` rounded to half floats (to nearest, ties to even).
pub fn to_halves(values: &[f32]) -> Vec<Half> {
    values.iter().copied().map(Half::from_f32).collect()
}

/// Widen `N` half floats, portably.
#[inline(always)]
pub fn widen<const N: usize>(halves: &[Half; N]) -> [f32; N] {
    halves.map(Half::to_f32)
}

/// Eight half floats in one F16C instruction. Only for functions compiled with F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn widen8_f16c(halves: &[Half; 8]) -> [f32; 8] {
    use std::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let mut out = [0f32; 8];
    // SAFETY: 8 halves are 16 bytes, read unaligned, and 8 floats are written to `out`;
    // the caller is compiled with F16C (the only contract of this function).
    unsafe {
        let packed = _mm_loadu_si128(halves.as_ptr().cast());
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(packed));
    }
    out
}

/// Sixteen half floats in two F16C instructions. Only for functions compiled with F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn widen16_f16c(halves: &[Half; 16]) -> [f32; 16] {
    let mut out = [0f32; 16];
    let (eights, _) = halves.as_chunks::<8>();
    for (out, eight) in out.chunks_exact_mut(8).zip(eights) {
        out.copy_from_slice(&widen8_f16c(eight));
    }
    out
}

/// Sixteen half floats in one AVX-512 instruction. Only for functions compiled with
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn widen16_avx512(halves: &[Half; 16]) -> [f32; 16] {
    use std::arch::x86_64::{_mm256_loadu_si256, _mm512_cvtph_ps, _mm512_storeu_ps};
    let mut out = [0f32; 16];
    // SAFETY: 16 halves are 32 bytes, read unaligned, and 16 floats are written to
    // `out`; the caller is compiled with AVX-512F.
    unsafe {
        let packed = _mm256_loadu_si256(halves.as_ptr().cast());
        _mm512_storeu_ps(out.as_mut_ptr(), _mm512_cvtph_ps(packed));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<f32> {
        (0..64)
            .map(|i| (i as f32 * 0.91).sin() * 300.0 - 7.0)
            .collect()
    }

    #[test]
    fn rounding_keeps_ten_bits() {
        for (x, h) in samples().iter().zip(to_halves(&samples())) {
            assert!((x - h.to_f32()).abs() <= x.abs() / 1024.0, "{x} vs {h}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_instructions_widen_as_the_portable_code_does() {
        let halves = to_halves(&samples());
        if std::arch::is_x86_feature_detected!("f16c") {
            for chunk in halves.chunks_exact(8) {
                let chunk: &[Half; 8] = chunk.try_into().unwrap();
                // SAFETY: F16C is present (checked above).
                let wide = unsafe { widen8_checked(chunk) };
                assert_eq!(wide, widen(chunk));
            }
            for chunk in halves.chunks_exact(16) {
                let chunk: &[Half; 16] = chunk.try_into().unwrap();
                // SAFETY: F16C is present (checked above).
                let wide = unsafe { widen16_checked_f16c(chunk) };
                assert_eq!(wide, widen(chunk));
            }
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            for chunk in halves.chunks_exact(16) {
                let chunk: &[Half; 16] = chunk.try_into().unwrap();
                // SAFETY: AVX-512F is present (checked above).
                let wide = unsafe { widen16_checked(chunk) };
                assert_eq!(wide, widen(chunk));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "f16c")]
    unsafe fn widen8_checked(halves: &[Half; 8]) -> [f32; 8] {
        widen8_f16c(halves)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "f16c")]
    unsafe fn widen16_checked_f16c(halves: &[Half; 16]) -> [f32; 16] {
        widen16_f16c(halves)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn widen16_checked(halves: &[Half; 16]) -> [f32; 16] {
        widen16_avx512(halves)
    }
}
