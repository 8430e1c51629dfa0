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
    fn softmax_sums_to_one() {
        let mut s = [1.0, 2.0, 3.0];
        softmax(&mut s);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[2] > s[1] && s[1] > s[0]);
    }
}
