//! The x86 kernels of [`super::int8`]: int8 weights (one f32 scale per span of
//! blocks of 32) dotted with up to [`ROW_GROUP`] quantized input rows while the weights
//! sit in registers. The integer sum of each span is exact in all of them; they differ
//! only in the order of the float accumulation, and a row's result never depends on
//! the other rows in its group.

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

    /// Quantizes `values` in spans of `len` (a whole number of blocks) into `quants`
    /// and one scale per span into `scales`, as the portable `int8::quantize_here`
    /// does and to the same bits: the largest magnitude (`max` keeps the lane when
    /// either is NaN, as the portable `>` does), then each value times the span's
    /// inverse scale, rounded to nearest even by `cvtps2dq` (MXCSR's default mode,
    /// which Rust never changes) and packed to bytes 32 at a time. The portable loop
    /// converted one value at a time: 5.6 % of a batch-8 Moonshine decoder step.
    ///
    /// # Safety
    /// The CPU has AVX2; `len` is a multiple of [`BLOCK`] dividing `values.len()`,
    /// `quants` is as long as `values` and `scales` holds one per span. Values are
    /// finite (a NaN would quantize to -128 here and 0 there).
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize(values: &[f32], len: usize, quants: &mut [i8], scales: &mut [f32]) {
        debug_assert!(len.is_multiple_of(BLOCK) && values.len().is_multiple_of(len));
        debug_assert!(quants.len() == values.len() && scales.len() * len == values.len());
        let magnitude = _mm256_set1_ps(f32::from_bits(0x7fff_ffff));
        // Dwords after the two packs hold values 0–3, 8–11, 16–19, 24–27, 4–7, …
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (span, scale) in scales.iter_mut().enumerate() {
            let from = values.as_ptr().add(span * len);
            let mut lanes = _mm256_setzero_ps();
            for i in (0..len).step_by(8) {
                let k = _mm256_and_ps(_mm256_loadu_ps(from.add(i)), magnitude);
                lanes = _mm256_max_ps(k, lanes);
            }
            let mut max = [0f32; 8];
            _mm256_storeu_ps(max.as_mut_ptr(), lanes);
            let max = max.into_iter().fold(0.0, |m, k| if k > m { k } else { m });
            *scale = max / 127.0;
            let inverse = _mm256_set1_ps(if max == 0.0 { 0.0 } else { 1.0 / *scale });
            let to = quants.as_mut_ptr().add(span * len);
            for i in (0..len).step_by(BLOCK) {
                let round = |at: usize| {
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(from.add(i + at)), inverse))
                };
                let low = _mm256_packs_epi32(round(0), round(8));
                let high = _mm256_packs_epi32(round(16), round(24));
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(low, high), order);
                _mm256_storeu_si256(to.add(i) as *mut __m256i, bytes);
            }
        }
    }
}

/// AVX-512 with VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later), on weights laid out
/// in tiles of [`TILE`] output columns: each 64-byte register holds four consecutive
/// input positions of sixteen columns, so one `vpdpbusd` with the input row's four
/// bytes broadcast advances sixteen dot products at once. Unlike a row-at-a-time dot,
/// nothing is summed across lanes (each lane is one column from start to end), and a
/// span's convert and scale are paid once per sixteen columns instead of once per
/// column.
pub(super) mod avx512 {
    use super::*;

    /// Output columns per tile: one per 32-bit lane of a 512-bit register.
    pub const TILE: usize = 16;

    /// Input positions per lane of one `vpdpbusd`.
    const QUAD: usize = 4;

    /// `vpdpbusd` multiplies unsigned bytes by signed ones: weights are stored as
    /// `w + 128` and the input stays signed, so each lane gets `Σ w · x + 128 · Σ x`;
    /// the second term is the input's own (see [`offset_sums`]) and taken off per span.
    const OFFSET: i32 = 128;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    /// `[out, width]` int8 weights (row-major) and their `[out, spans]` scales
    /// re-laid as tiles: per tile, per quad of positions, sixteen columns' four bytes
    /// (`w + 128`), and per span the sixteen columns' scales. Columns past `out` in
    /// the last tile are zero weights with zero scale.
    pub struct Tiles {
        pub quants: Vec<u8>,
        pub scales: Vec<f32>,
    }

    impl Tiles {
        pub fn new(quants: &[i8], scales: &[f32], out: usize, width: usize, spans: usize) -> Self {
            let tiles = out.div_ceil(TILE);
            let quads = width / QUAD;
            let mut tiled = vec![OFFSET as u8; tiles * quads * TILE * QUAD];
            let mut tiled_scales = vec![0f32; tiles * spans * TILE];
            for column in 0..out {
                let (tile, lane) = (column / TILE, column % TILE);
                let row = &quants[column * width..(column + 1) * width];
                for (quad, values) in row.chunks_exact(QUAD).enumerate() {
                    let at = ((tile * quads + quad) * TILE + lane) * QUAD;
                    for (slot, &w) in tiled[at..at + QUAD].iter_mut().zip(values) {
                        *slot = (w as u8) ^ 0x80; // w + 128 as an unsigned byte
                    }
                }
                for span in 0..spans {
                    tiled_scales[(tile * spans + span) * TILE + lane] =
                        scales[column * spans + span];
                }
            }
            Tiles {
                quants: tiled,
                scales: tiled_scales,
            }
        }
    }

    /// `128 · Σ x` over each span of each quantized input row: what the weights'
    /// offset adds to that span's integer sums.
    pub fn offset_sums(quants: &[i8], span_len: usize) -> Vec<i32> {
        quants
            .chunks_exact(span_len)
            .map(|span| OFFSET * span.iter().map(|&x| i32::from(x)).sum::<i32>())
            .collect()
    }

    /// [`dot_tile`] for `rows` (1..=[`ROW_GROUP`]) rows: each count its own
    /// instance, so the accumulators are registers.
    ///
    /// # Safety
    /// As [`dot_tile`] with `R = rows`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dot_tile_rows(
        rows: usize,
        quants: &[u8],
        scales: &[f32],
        inputs: &[i8],
        input_scales: &[f32],
        input_offsets: &[i32],
        blocks: usize,
        span: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        macro_rules! with_rows {
            ($r:literal) => {
                dot_tile::<$r>(
                    quants,
                    scales,
                    inputs,
                    input_scales,
                    input_offsets,
                    blocks,
                    span,
                    out,
                    stride,
                )
            };
        }
        match rows {
            1 => with_rows!(1),
            2 => with_rows!(2),
            3 => with_rows!(3),
            4 => with_rows!(4),
            5 => with_rows!(5),
            6 => with_rows!(6),
            7 => with_rows!(7),
            8 => with_rows!(8),
            _ => unreachable!("row groups hold 1 to {ROW_GROUP} rows"),
        }
    }

    /// One tile (sixteen columns) against `R` (≤ [`ROW_GROUP`]) input rows: row `r`'s
    /// sixteen results go to `out[r * stride..][..16]`. Per span, the exact integer sums
    /// are converted once and added as `fma(sum, weight scale · input scale, acc)`:
    /// the portable kernel's arithmetic, so the results are the same to the bit.
    ///
    /// # Safety
    /// The CPU has what [`available`] checks; `quants`/`scales` are one tile of
    /// [`Tiles`] for rows of `blocks` blocks in spans of `span`; `inputs` hold `R`
    /// signed rows of `blocks` blocks, `input_scales` and `input_offsets`
    /// ([`offset_sums`]) one per span of each; `out` holds `(R - 1) * stride + 16`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dot_tile<const R: usize>(
        quants: &[u8],
        scales: &[f32],
        inputs: &[i8],
        input_scales: &[f32],
        input_offsets: &[i32],
        blocks: usize,
        span: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        let width = blocks * BLOCK;
        let spans = blocks / span;
        let quads_per_span = span * BLOCK / QUAD;
        debug_assert!(R <= ROW_GROUP && spans * span == blocks);
        debug_assert!(quants.len() >= width * TILE && scales.len() >= spans * TILE);
        debug_assert!(inputs.len() >= R * width && input_scales.len() >= R * spans);
        debug_assert!(input_offsets.len() >= R * spans);
        debug_assert!(R > 0 && out.len() >= (R - 1) * stride + TILE);
        let mut acc = [_mm512_setzero_ps(); R];
        for s in 0..spans {
            let mut sums = [_mm512_setzero_si512(); R];
            for q in s * quads_per_span..(s + 1) * quads_per_span {
                let w = _mm512_loadu_si512(quants.as_ptr().add(q * TILE * QUAD) as *const __m512i);
                for (r, sum) in sums.iter_mut().enumerate() {
                    let at = inputs.as_ptr().add(r * width + q * QUAD) as *const i32;
                    let x = _mm512_set1_epi32(at.read_unaligned());
                    *sum = _mm512_dpbusd_epi32(*sum, w, x);
                }
            }
            let weight_scales = _mm512_loadu_ps(scales.as_ptr().add(s * TILE));
            for (r, acc) in acc.iter_mut().enumerate() {
                // Σ (w + 128) · x − 128 · Σ x = Σ w · x, exactly.
                let offset = _mm512_set1_epi32(input_offsets[r * spans + s]);
                let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums[r], offset));
                let d = _mm512_mul_ps(weight_scales, _mm512_set1_ps(input_scales[r * spans + s]));
                *acc = _mm512_fmadd_ps(dot, d, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * stride), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::avx512::{offset_sums, Tiles, TILE};

    #[test]
    fn tiles_interleave_sixteen_columns_by_quads_and_pad_the_last() {
        // 17 columns of 8 positions, one span: two tiles, the second holding column 16.
        let (out, width) = (17, 8);
        let quants: Vec<i8> = (0..out * width).map(|i| (i % 100) as i8 - 50).collect();
        let scales: Vec<f32> = (0..out).map(|c| c as f32).collect();
        let tiles = Tiles::new(&quants, &scales, out, width, 1);
        assert_eq!(tiles.quants.len(), 2 * (width / 4) * TILE * 4);
        let at = |tile: usize, quad: usize, lane: usize| ((tile * 2 + quad) * TILE + lane) * 4;
        // Column 3, positions 4..8, sit in tile 0, quad 1, lane 3, offset by 128.
        let expect: Vec<u8> = quants[3 * width + 4..3 * width + 8]
            .iter()
            .map(|&w| (i32::from(w) + 128) as u8)
            .collect();
        assert_eq!(tiles.quants[at(0, 1, 3)..at(0, 1, 3) + 4], expect[..]);
        assert_eq!(tiles.scales[TILE], 16.0); // tile 1, lane 0: column 16
                                              // Padding lanes (tile 1, lanes 1..16): weight 0 (128 stored), scale 0.
        for quad in 0..2 {
            assert!(tiles.quants[at(1, quad, 1)..at(1, quad, TILE)]
                .iter()
                .all(|&b| b == 128));
        }
        assert!(tiles.scales[TILE + 1..].iter().all(|&s| s == 0.0));
    }

    #[test]
    fn offset_sums_are_128_times_each_span_sum() {
        assert_eq!(offset_sums(&[1, 2, -3, 4, 5, -6], 3), vec![0, 3 * 128]);
    }
}
