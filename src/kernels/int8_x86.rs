//! The x86 kernels of [`super::int8`]: one weight row (blocks of 32 signed bytes,
//! one f32 scale per span of blocks) dotted with up to [`ROW_GROUP`] quantized input
//! rows while each weight block sits in a register. The integer sum of each span is
//! exact in all of them; they differ only in the order of the float accumulation, and
//! a row's result never depends on the other rows in its group.

use std::arch::x86_64::*;

use super::int8::{BLOCK, ROW_GROUP};

/// AVX2 + FMA (Haswell, Zen 1 and later).
pub(super) mod avx2 {
    use super::*;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// Integer dot of 32 signed bytes, as 8 i32 lanes: `|w| · (x · sign w)` with
    /// `maddubs` (unsigned × signed), then pairs summed with `madd`.
    #[inline(always)]
    unsafe fn dot32(abs_w: __m256i, w: __m256i, x: __m256i, ones: __m256i) -> __m256i {
        let signed_x = _mm256_sign_epi8(x, w);
        let pairs = _mm256_maddubs_epi16(abs_w, signed_x);
        _mm256_madd_epi16(pairs, ones)
    }

    #[inline(always)]
    unsafe fn sum_lanes(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        _mm_cvtss_f32(one)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `weights` hold `blocks` blocks and `scales` one per
    /// `span` of them, `inputs`/`input_scales` `out.len()` (≤ [`ROW_GROUP`]) rows of
    /// the same.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_group(
        weights: &[i8],
        scales: &[f32],
        inputs: &[i8],
        input_scales: &[f32],
        blocks: usize,
        span: usize,
        out: &mut [f32],
    ) {
        let rows = out.len();
        let spans = blocks / span;
        debug_assert!(rows <= ROW_GROUP && spans * span == blocks);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); ROW_GROUP];
        for s in 0..spans {
            let mut sums = [_mm256_setzero_si256(); ROW_GROUP];
            for b in s * span..(s + 1) * span {
                let w = _mm256_loadu_si256(weights.as_ptr().add(b * BLOCK) as *const __m256i);
                let abs_w = _mm256_sign_epi8(w, w);
                for (r, sum) in sums.iter_mut().enumerate().take(rows) {
                    let at = (r * blocks + b) * BLOCK;
                    let x = _mm256_loadu_si256(inputs.as_ptr().add(at) as *const __m256i);
                    *sum = _mm256_add_epi32(*sum, dot32(abs_w, w, x, ones));
                }
            }
            let scale = scales[s];
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                let d = _mm256_set1_ps(scale * input_scales[r * spans + s]);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r]), d, *acc);
            }
        }
        for (r, result) in out.iter_mut().enumerate() {
            *result = sum_lanes(acc[r]);
        }
    }
}

/// AVX-512 with VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later): two blocks per
/// instruction, and `vpdpbusd` takes the byte products and their sums in one step.
/// With the input scales spread ahead (see [`spread_scales`]) a pair of blocks costs
/// an input row six instructions, where the AVX2 kernel takes about eight per block.
pub(super) mod avx512 {
    use super::*;

    /// Floats per pair of blocks in [`spread_scales`]' layout.
    pub const SPREAD: usize = 16;

    /// Byte mask of one block in a 64-byte register.
    const HALF: u64 = 0xFFFF_FFFF;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    /// Pairs of blocks in a row of `blocks` (the last one may be half empty).
    pub fn pairs(blocks: usize) -> usize {
        blocks.div_ceil(2)
    }

    /// Each row's block scales as the kernel multiplies them: per pair of blocks
    /// `[s₀ ×8, s₁ ×8]` (s₁ = 0 past the row's end), so a pair's scales are one load.
    pub fn spread_scales(scales: &[f32], blocks: usize) -> Vec<f32> {
        let pairs = pairs(blocks);
        let mut spread = vec![0f32; scales.len() / blocks.max(1) * pairs * SPREAD];
        for (row, out) in scales
            .chunks_exact(blocks)
            .zip(spread.chunks_exact_mut(pairs * SPREAD))
        {
            for (b, &scale) in row.iter().enumerate() {
                let at = b / 2 * SPREAD + b % 2 * (SPREAD / 2);
                out[at..at + SPREAD / 2].fill(scale);
            }
        }
        spread
    }

    /// Each quantized input value `x` as the unsigned byte `x + 128` (its sign bit
    /// flipped), once per call: `vpdpbusd` multiplies unsigned by signed bytes, and
    /// `Σ (x + 128) · w − 128 · Σ w` is `Σ x · w` exactly, so the kernel subtracts a
    /// per-weight-block constant instead of fixing signs for every input row.
    pub fn offset_to_unsigned(quants: &mut [i8]) {
        for q in quants {
            *q = (*q as u8 ^ 0x80) as i8;
        }
    }

    /// `[a ×8, b ×8]` from two consecutive floats.
    #[inline(always)]
    unsafe fn pair(at: *const f32, spread: __m512i) -> __m512 {
        let two = _mm_castpd_ps(_mm_load_sd(at as *const f64));
        _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(two))
    }

    /// # Safety
    /// The CPU has what [`available`] checks; `weights`/`scales` hold `blocks`
    /// blocks, `inputs` `out.len()` (≤ [`ROW_GROUP`]) rows of `blocks` blocks, offset
    /// by [`offset_to_unsigned`], and `input_spread` their [`spread_scales`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_group(
        weights: &[i8],
        scales: &[f32],
        inputs: &[i8],
        input_spread: &[f32],
        blocks: usize,
        out: &mut [f32],
    ) {
        let rows = out.len();
        let pairs = pairs(blocks);
        debug_assert!(rows <= ROW_GROUP);
        debug_assert!(weights.len() >= blocks * BLOCK && scales.len() >= blocks);
        debug_assert!(inputs.len() >= rows * blocks * BLOCK);
        debug_assert!(input_spread.len() >= rows * pairs * SPREAD);
        let zero = _mm512_setzero_si512();
        let offset = _mm512_set1_epi8(i8::MIN); // 0x80: 128 as an unsigned byte
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        let mut acc = [_mm512_setzero_ps(); ROW_GROUP];
        for p in 0..pairs {
            let b = 2 * p;
            // The last pair of an odd row is one block: the high half stays zero.
            let whole = b + 1 < blocks;
            let (w, weight_scales) = if whole {
                (
                    _mm512_loadu_si512(weights.as_ptr().add(b * BLOCK) as *const __m512i),
                    pair(scales.as_ptr().add(b), spread),
                )
            } else {
                (
                    _mm512_maskz_loadu_epi8(HALF, weights.as_ptr().add(b * BLOCK)),
                    _mm512_maskz_mov_ps(0x00FF, _mm512_set1_ps(scales[b])),
                )
            };
            // −128 · Σ w per lane: what the inputs' offset adds, taken off up front.
            let correction = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, w));
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                let at = inputs.as_ptr().add((r * blocks + b) * BLOCK);
                let x = if whole {
                    _mm512_loadu_si512(at as *const __m512i)
                } else {
                    _mm512_maskz_loadu_epi8(HALF, at)
                };
                // Σ (x + 128) · w − 128 · Σ w = Σ x · w, exactly.
                let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(correction, x, w));
                let input_scales =
                    _mm512_loadu_ps(input_spread.as_ptr().add((r * pairs + p) * SPREAD));
                let d = _mm512_mul_ps(weight_scales, input_scales);
                *acc = _mm512_fmadd_ps(dot, d, *acc);
            }
        }
        for (r, result) in out.iter_mut().enumerate() {
            *result = _mm512_reduce_add_ps(acc[r]);
        }
    }

    /// One weight row against up to [`ROW_GROUP`] input rows with one scale per span
    /// of `span` blocks (even): the integer sums run across a span's pairs of blocks
    /// (`vpdpbusd` alone per pair and row), and the convert and scale happen once per
    /// span, so a pair costs a row two instructions instead of six.
    ///
    /// # Safety
    /// The CPU has what [`available`] checks; `span` is even and divides `blocks`;
    /// `weights` hold `blocks` blocks and `scales` one per span, `inputs` `out.len()`
    /// (≤ [`ROW_GROUP`]) rows of `blocks` blocks offset by [`offset_to_unsigned`], and
    /// `input_scales` one per span of each row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_group_wide(
        weights: &[i8],
        scales: &[f32],
        inputs: &[i8],
        input_scales: &[f32],
        blocks: usize,
        span: usize,
        out: &mut [f32],
    ) {
        let rows = out.len();
        let spans = blocks / span;
        debug_assert!(rows <= ROW_GROUP && span.is_multiple_of(2) && spans * span == blocks);
        debug_assert!(weights.len() >= blocks * BLOCK && scales.len() >= spans);
        debug_assert!(inputs.len() >= rows * blocks * BLOCK);
        debug_assert!(input_scales.len() >= rows * spans);
        let zero = _mm512_setzero_si512();
        let offset = _mm512_set1_epi8(i8::MIN); // 0x80: 128 as an unsigned byte
        let mut acc = [_mm512_setzero_ps(); ROW_GROUP];
        for s in 0..spans {
            let mut sums = [zero; ROW_GROUP];
            // 128 · Σ w over the span: what the inputs' offset adds.
            let mut offset_sum = zero;
            for b in (s * span..(s + 1) * span).step_by(2) {
                let w = _mm512_loadu_si512(weights.as_ptr().add(b * BLOCK) as *const __m512i);
                offset_sum = _mm512_dpbusd_epi32(offset_sum, offset, w);
                for (r, sum) in sums.iter_mut().enumerate().take(rows) {
                    let at = inputs.as_ptr().add((r * blocks + b) * BLOCK);
                    *sum = _mm512_dpbusd_epi32(*sum, _mm512_loadu_si512(at as *const __m512i), w);
                }
            }
            let scale = scales[s];
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                // Σ (x + 128) · w − 128 · Σ w = Σ x · w, exactly.
                let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums[r], offset_sum));
                let d = _mm512_set1_ps(scale * input_scales[r * spans + s]);
                *acc = _mm512_fmadd_ps(dot, d, *acc);
            }
        }
        for (r, result) in out.iter_mut().enumerate() {
            *result = _mm512_reduce_add_ps(acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::avx512::{spread_scales, SPREAD};

    #[test]
    fn spread_scales_pair_blocks_and_pad_an_odd_row() {
        // Two rows of three blocks: pairs (0, 1) and (2, padding) per row.
        let spread = spread_scales(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3);
        assert_eq!(spread.len(), 2 * 2 * SPREAD);
        let half = SPREAD / 2;
        let expect = |at: usize, value: f32| {
            assert!(
                spread[at..at + half].iter().all(|&s| s == value),
                "{spread:?}"
            );
        };
        expect(0, 1.0);
        expect(half, 2.0);
        expect(SPREAD, 3.0);
        expect(SPREAD + half, 0.0);
        expect(2 * SPREAD, 4.0);
        expect(3 * SPREAD + half, 0.0);
    }
}
