//! Scaled dot-product attention of one query row, every head, for the batched
//! decoder. Each row attends alone (over its own sequence's caches), so a row's
//! result never depends on the rest of its batch; every sum runs in a fixed order.

use crate::kernels::halves::{self, Half};

/// Lanes of [`dot`]: independent partial sums the compiler keeps in one vector
/// register, added up in a fixed order, so the result is the same on every call.
const LANES: usize = 8;

/// One layer's cross-attention keys and values over a sequence's audio, transposed
/// to `[channel][frame]` (channel = head × head_dim + dim) and held as half floats.
///
/// Transposed, a query's scores over all frames are `head_dim` passes along contiguous
/// frames, and each output channel one long dot product. Row-major, they were one
/// 52-wide dot product per frame and head, each with its own horizontal sum: 22 % of a
/// batch-8 decoder step.
///
/// Half floats because these caches are what grows with every segment being
/// recognised: 8 layers × 2 × 416 channels × its frames, 6 MB in float32 for a
/// 5-second segment, 48 MB for a batch of eight, all read at every step. Half floats
/// keep ten bits of mantissa, well under what separates the attention scores
/// (transcripts identical to ONNX Runtime's on every fixture, `tests/stt_batch.rs`);
/// they widen back to float32 eight at a time (F16C) as they are read.
pub(super) struct CrossCache {
    keys: Vec<Half>,
    values: Vec<Half>,
    frames: usize,
}

impl CrossCache {
    /// From row-major `[frame][channel]` keys and values.
    pub fn new(keys: &[f32], values: &[f32], frames: usize) -> Self {
        CrossCache {
            keys: transpose_to_half(keys, frames),
            values: transpose_to_half(values, frames),
            frames,
        }
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * std::mem::size_of::<Half>()
    }

    /// Attention of `query` (one row, all heads) over every frame, into `out`.
    /// `scores` is scratch space, reused across calls.
    pub fn attend(&self, query: &[f32], head_dim: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2 and F16C (checked just above).
            return unsafe { self.attend_avx2(query, head_dim, scores, out) };
        }
        self.attend_here(query, head_dim, scores, out, halves::widen)
    }

    /// [`attend`](Self::attend) compiled for AVX2, half floats widened by F16C: the
    /// loops along frames run eight floats wide instead of the baseline's four. The
    /// sums are the same as the baseline's (no reordering, no fused multiply-add), only
    /// wider, and F16C widens exactly as the portable conversion does.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn attend_avx2(
        &self,
        query: &[f32],
        head_dim: usize,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        self.attend_here(query, head_dim, scores, out, halves::widen8_f16c)
    }

    #[inline(always)]
    fn attend_here(
        &self,
        query: &[f32],
        head_dim: usize,
        scores: &mut Vec<f32>,
        out: &mut [f32],
        widen: impl Fn(&[Half; LANES]) -> [f32; LANES] + Copy,
    ) {
        let frames = self.frames;
        let scale = 1.0 / (head_dim as f32).sqrt();
        scores.resize(frames, 0.0);
        let heads = query
            .chunks_exact(head_dim)
            .zip(out.chunks_exact_mut(head_dim));
        for (head, (head_query, head_out)) in heads.enumerate() {
            let channel = head * head_dim;
            scores.fill(0.0);
            for (d, &q) in head_query.iter().enumerate() {
                let q = q * scale;
                let keys = &self.keys[(channel + d) * frames..(channel + d + 1) * frames];
                add_scaled(scores, q, keys, widen);
            }
            softmax(scores);
            for (d, o) in head_out.iter_mut().enumerate() {
                let values = &self.values[(channel + d) * frames..(channel + d + 1) * frames];
                *o = dot_half(scores, values, widen);
            }
        }
    }
}

/// `sums[i] += q × halves[i]`, eight at a time.
#[inline(always)]
fn add_scaled(
    sums: &mut [f32],
    q: f32,
    halves: &[Half],
    widen: impl Fn(&[Half; LANES]) -> [f32; LANES],
) {
    let mut sum_chunks = sums.chunks_exact_mut(LANES);
    let mut half_chunks = halves.chunks_exact(LANES);
    for (sums, halves) in (&mut sum_chunks).zip(&mut half_chunks) {
        let Ok(halves) = <&[Half; LANES]>::try_from(halves) else {
            continue; // chunks_exact: never
        };
        let values = widen(halves);
        for (sum, value) in sums.iter_mut().zip(values) {
            *sum += q * value;
        }
    }
    let tail = sum_chunks.into_remainder().iter_mut();
    for (sum, half) in tail.zip(half_chunks.remainder()) {
        *sum += q * half.to_f32();
    }
}

/// [`dot`] of floats with half floats: the same lanes and the same order.
#[inline(always)]
fn dot_half(a: &[f32], b: &[Half], widen: impl Fn(&[Half; LANES]) -> [f32; LANES]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        let Ok(y) = <&[Half; LANES]>::try_from(y) else {
            continue; // chunks_exact: never
        };
        let y = widen(y);
        for lane in 0..LANES {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        sum += x * y.to_f32();
    }
    sum
}

/// Attention of `query` (one row, all heads of `head_dim`) over the first `len`
/// rows of row-major `keys`/`values` (a sequence's own tokens, a few dozen at most).
pub(super) fn attend_rows(
    query: &[f32],
    keys: &[f32],
    values: &[f32],
    len: usize,
    head_dim: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let width = query.len();
    let scale = 1.0 / (head_dim as f32).sqrt();
    scores.resize(len, 0.0);
    for start in (0..width).step_by(head_dim) {
        let span = start..start + head_dim;
        let q = &query[span.clone()];
        for (t, score) in scores.iter_mut().enumerate() {
            *score = dot(q, &keys[t * width + span.start..t * width + span.end]) * scale;
        }
        softmax(scores);
        let o = &mut out[span.clone()];
        o.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let v = &values[t * width + span.start..t * width + span.end];
            for (o, v) in o.iter_mut().zip(v) {
                *o += p * v;
            }
        }
    }
}

/// `[rows][columns]` → `[columns][rows]`.
fn transpose(matrix: &[f32], rows: usize) -> Vec<f32> {
    let columns = matrix.len() / rows.max(1);
    let mut out = vec![0f32; matrix.len()];
    for (r, row) in matrix.chunks_exact(columns).enumerate() {
        for (c, &value) in row.iter().enumerate() {
            out[c * rows + r] = value;
        }
    }
    out
}

/// [`transpose`], rounded to half floats.
fn transpose_to_half(matrix: &[f32], rows: usize) -> Vec<Half> {
    halves::to_halves(&transpose(matrix, rows))
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_body, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for lane in 0..LANES {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

#[inline(always)]
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_covers_every_element() {
        let a: Vec<f32> = (0..52).map(|i| i as f32).collect();
        let b = vec![1.0; 52];
        assert_eq!(dot(&a, &b), (0..52).sum::<i32>() as f32);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut s = [1.0, 2.0, 3.0];
        softmax(&mut s);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[2] > s[1] && s[1] > s[0]);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }

    fn wave(seed: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 0.8)
            .collect()
    }

    /// The transposed half-float cross-attention agrees with the row-major one it
    /// replaced, given the same half-float keys and values.
    #[test]
    fn cross_cache_attends_as_rows_do() {
        let (frames, head_dim, heads) = (37, 52, 3);
        let width = head_dim * heads;
        let (keys, values, query) = (
            wave(1.0, frames * width),
            wave(2.0, frames * width),
            wave(3.0, width),
        );
        let rounded =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| Half::from_f32(x).to_f32()).collect() };
        let mut scratch = Vec::new();
        let mut by_rows = vec![0f32; width];
        attend_rows(
            &query,
            &rounded(&keys),
            &rounded(&values),
            frames,
            head_dim,
            &mut scratch,
            &mut by_rows,
        );
        let mut by_cache = vec![0f32; width];
        CrossCache::new(&keys, &values, frames).attend(
            &query,
            head_dim,
            &mut scratch,
            &mut by_cache,
        );
        for (a, b) in by_rows.iter().zip(&by_cache) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// F16C widens exactly as the portable conversion: the same scores bit for bit.
    #[test]
    fn both_widenings_give_the_same_result() {
        let (frames, head_dim, heads) = (45, 52, 2);
        let width = head_dim * heads;
        let cache = CrossCache::new(
            &wave(0.5, frames * width),
            &wave(1.5, frames * width),
            frames,
        );
        let query = wave(2.5, width);
        let mut scratch = Vec::new();
        let mut portable = vec![0f32; width];
        cache.attend_here(&query, head_dim, &mut scratch, &mut portable, halves::widen);
        let mut chosen = vec![0f32; width];
        cache.attend(&query, head_dim, &mut scratch, &mut chosen);
        assert_eq!(portable, chosen);
        assert_eq!(cache.bytes(), 2 * frames * width * 2);
    }
}
