//! [`CrossCache`](super::cross_cache::CrossCache)'s attention in intrinsics: the
//! scores as integer dot products with AVX-512 VNNI (exact, so in any order), and the
//! value sums in AVX2, blocked so that partial sums stay in registers (each vector of
//! scores is loaded once for four dimensions' value sums). The value sums run in the
//! portable path's order (multiply, then add; no fused multiply-add; lanes added up in
//! order), so both paths give the same bits (tested there).

use std::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi32, _mm256_loadu_ps,
    _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm512_cvtepi32_ps,
    _mm512_dpbusd_epi32, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mul_ps, _mm512_set1_epi32,
    _mm512_set1_ps, _mm512_setzero_si512, _mm512_storeu_ps, _mm512_sub_epi32, _mm_loadl_epi64,
};

use super::cross_cache::{QuantizedQuery, DIM_GROUP, FRAME_BLOCK, KEY_BLOCK, LANES};

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

/// Every key block's scores for one head, as the portable `head_scores` gives them:
/// sixteen frames' integer dot products in one register, four dimensions an
/// instruction, then `· query scale · key scale` in that order.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 VNNI; `keys`, `key_scales` and `scores` hold
/// the same whole blocks of [`KEY_BLOCK`] frames.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn head_scores(
    query: &QuantizedQuery,
    keys: &[u8],
    key_scales: &[f32],
    scores: &mut [f32],
) {
    let groups = query.quants.len() / DIM_GROUP;
    let block_bytes = groups * KEY_BLOCK * DIM_GROUP;
    let blocks = keys.len() / block_bytes;
    assert!(
        key_scales.len() == blocks * KEY_BLOCK && scores.len() >= blocks * KEY_BLOCK,
        "one scale and one score per frame of whole blocks"
    );
    let offset = _mm512_set1_epi32(query.offset);
    let query_scale = _mm512_set1_ps(query.scale);
    for b in 0..blocks {
        let block = keys.as_ptr().add(b * block_bytes);
        let mut sum = _mm512_setzero_si512();
        for g in 0..groups {
            // SAFETY: g < groups: the group's 64 bytes and 4 query bytes are in bounds.
            let k = _mm512_loadu_si512(block.add(g * KEY_BLOCK * DIM_GROUP).cast());
            let q = query.quants.as_ptr().add(g * DIM_GROUP).cast::<i32>();
            sum = _mm512_dpbusd_epi32(sum, k, _mm512_set1_epi32(q.read_unaligned()));
        }
        let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, offset));
        let scaled = _mm512_mul_ps(
            _mm512_mul_ps(dot, query_scale),
            _mm512_loadu_ps(key_scales.as_ptr().add(b * KEY_BLOCK)),
        );
        _mm512_storeu_ps(scores.as_mut_ptr().add(b * KEY_BLOCK), scaled);
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
