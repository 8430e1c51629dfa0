//! [`CrossCache`](super::cross_cache::CrossCache)'s attention in AVX2 intrinsics,
//! blocked so that partial sums stay in registers: a block's 32 scores are summed in
//! four vectors over all of a head's dimensions, and each vector of scores is loaded
//! once for four dimensions' value sums. Every sum runs in the portable path's order
//! (multiply, then add; no fused multiply-add; lanes added up in order), so both give
//! the same bits (tested there).

use std::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi32, _mm256_loadu_ps,
    _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm_loadl_epi64,
};

use super::cross_cache::{FRAME_BLOCK, LANES};

/// Vectors of scores in one block of frames.
const VECTORS: usize = FRAME_BLOCK / LANES;
/// Dimensions whose value sums advance together, sharing each load of the scores.
const VALUE_GROUP: usize = 4;

pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Eight int8 values at `at`, as floats (exactly).
///
/// # Safety
/// AVX2; `at` points to eight readable bytes.
#[inline(always)]
unsafe fn widen8(at: *const i8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(at.cast())))
}

/// Every block's scores for one head: `Σ_d (query[d] · scale · s_d) · key[d][f]`,
/// `d` in order from zero (`keys`: per block `[dim][FRAME_BLOCK]`; `scales`: per
/// block, per dim; `scores`: whole blocks).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn head_scores(
    query: &[f32],
    scale: f32,
    keys: &[i8],
    scales: &[f32],
    scores: &mut [f32],
) {
    let dims = query.len();
    assert!(
        keys.len() == scores.len() * dims && scales.len() * FRAME_BLOCK == keys.len(),
        "one block of keys per block of scores"
    );
    let blocks = keys
        .chunks_exact(dims * FRAME_BLOCK)
        .zip(scales.chunks_exact(dims));
    for ((block, scales), scores) in blocks.zip(scores.chunks_exact_mut(FRAME_BLOCK)) {
        let mut sums = [_mm256_setzero_ps(); VECTORS];
        for (d, (&q, &row_scale)) in query.iter().zip(scales).enumerate() {
            let q = _mm256_set1_ps(q * scale * row_scale);
            // SAFETY: d < dims: the row's FRAME_BLOCK bytes are inside this block.
            let row = block.as_ptr().add(d * FRAME_BLOCK);
            for (v, sum) in sums.iter_mut().enumerate() {
                *sum = _mm256_add_ps(*sum, _mm256_mul_ps(q, widen8(row.add(v * LANES))));
            }
        }
        for (v, sum) in sums.iter().enumerate() {
            _mm256_storeu_ps(scores.as_mut_ptr().add(v * LANES), *sum);
        }
    }
}

/// `out[d] = Σ_f scores[f] · value[d][f]` for one head (`values`: `[dim][frames]`
/// over whole blocks; `scales`: `[dim][block]`): per run of a block, lane sums of the
/// products scaled into the row's lanes, which are added up in order at the end.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn mix_values(scores: &[f32], values: &[i8], scales: &[f32], out: &mut [f32]) {
    let frames = scores.len();
    let blocks = frames / FRAME_BLOCK;
    assert!(
        values.len() == out.len() * frames && scales.len() == out.len() * blocks,
        "one row of values and of scales per dimension"
    );
    for (g, out) in out.chunks_mut(VALUE_GROUP).enumerate() {
        let d = g * VALUE_GROUP;
        let mut lanes = [_mm256_setzero_ps(); VALUE_GROUP];
        for b in 0..blocks {
            let mut runs = [_mm256_setzero_ps(); VALUE_GROUP];
            for v in 0..VECTORS {
                let at = b * FRAME_BLOCK + v * LANES;
                // SAFETY: at + LANES <= frames.
                let x = _mm256_loadu_ps(scores.as_ptr().add(at));
                for (k, run) in runs.iter_mut().enumerate().take(out.len()) {
                    // SAFETY: d + k < dims and at + LANES <= frames: inside `values`.
                    let y = widen8(values.as_ptr().add((d + k) * frames + at));
                    *run = _mm256_add_ps(*run, _mm256_mul_ps(x, y));
                }
            }
            for (k, (lane, run)) in lanes.iter_mut().zip(runs).enumerate().take(out.len()) {
                let run_scale = _mm256_set1_ps(scales[(d + k) * blocks + b]);
                *lane = _mm256_add_ps(*lane, _mm256_mul_ps(run_scale, run));
            }
        }
        for (o, lane) in out.iter_mut().zip(lanes) {
            let mut sums = [0f32; LANES];
            _mm256_storeu_ps(sums.as_mut_ptr(), lane);
            *o = sums.iter().sum();
        }
    }
}
