//! Scaled dot-product attention of one query row, every head, over a sequence's own
//! tokens, for the batched decoder (cross-attention over the audio is
//! [`CrossCache`](super::cross_cache::CrossCache)'s). Each row attends alone, so a
//! row's result never depends on the rest of its batch; every sum runs in a fixed
//! order.

use crate::kernels::exp::exp;

/// Lanes of [`dot`]: independent partial sums the compiler keeps in one vector
/// register, added up in a fixed order, so the result is the same on every call.
const LANES: usize = 8;

/// Attention of `query` (one row, all heads of `head_dim`) over the first `len`
/// rows of row-major `keys`/`values` (a sequence's own tokens, a few dozen at most).
#[inline(always)]
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
        mix(scores, values, width, span.start, &mut out[span]);
    }
}

/// `out[d] = Σ_t scores[t] · values[t][first + d]`, eight dimensions at a time with
/// their sums in a register across every position. Summed in place in `out`, each
/// position's store had to reach the next position's load first, and the compiler ran
/// 52 dimensions as one 32-wide pass and five 4-wide ones. The order of every sum is
/// unchanged, so are the bits (a batch-8 step ~5 % faster, docs/benchmarks.md).
#[inline(always)]
fn mix(scores: &[f32], values: &[f32], width: usize, first: usize, out: &mut [f32]) {
    for (c, out) in out.chunks_mut(LANES).enumerate() {
        let at = first + c * LANES;
        if let Ok(out) = <&mut [f32; LANES]>::try_from(&mut *out) {
            let mut sums = [0f32; LANES];
            for (t, &p) in scores.iter().enumerate() {
                let v = &values[t * width + at..][..LANES];
                for lane in 0..LANES {
                    sums[lane] += p * v[lane];
                }
            }
            *out = sums;
        } else {
            out.fill(0.0);
            for (t, &p) in scores.iter().enumerate() {
                let v = &values[t * width + at..][..out.len()];
                for (o, v) in out.iter_mut().zip(v) {
                    *o += p * v;
                }
            }
        }
    }
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

/// Scores into probabilities, in place: exponentials of the distances from the
/// largest, over their sum.
#[inline(always)]
pub(super) fn softmax(scores: &mut [f32]) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    scores.iter_mut().for_each(|s| *s = exp(*s - max));
    let sum = scores.iter().fold(0f32, |sum, s| sum + s);
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
    fn mix_sums_each_dimension_over_positions_in_order() {
        // 3 positions of width 24, mixing dimensions 2..13 (one full chunk, a tail of 3).
        let (width, first, dims) = (24, 2, 11);
        let values: Vec<f32> = (0..3 * width).map(|i| (i as f32 * 0.37).sin()).collect();
        let scores = [0.2, 0.5, 0.3];
        let mut out = vec![f32::NAN; dims];
        mix(&scores, &values, width, first, &mut out);
        for (d, &o) in out.iter().enumerate() {
            let mut expect = 0f32;
            for (t, p) in scores.iter().enumerate() {
                expect += p * values[t * width + first + d];
            }
            assert_eq!(o.to_bits(), expect.to_bits(), "dimension {d}");
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut s = [1.0, 2.0, 3.0];
        softmax(&mut s);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[2] > s[1] && s[1] > s[0]);
    }
}
