//! One sequence's attention state and its causal, grouped-query attention, in plain
//! arithmetic with a fixed order.
//!
//! Why not candle ops: each new token used to copy the whole cache (`cat`), then copy
//! it again per query head, and its matmuls picked kernels by shape, so a token's
//! result depended on how many tokens shared its pass (a prompt read in chunks of 8
//! came out a hair different from one read in chunks of 32, and a near-tie flipped a
//! reply). Here keys and values are appended in place (copied only when a kept state
//! shares them), and every score and sum runs in the same order whatever the chunk or
//! batch: reading ahead, batching and chunking change nothing in a reply.
//!
//! Keys are kept in blocks of [`KEY_BLOCK`] positions, stored dimension by dimension,
//! so one query scores a whole block with one vector operation per dimension and no
//! horizontal sums: at ~200 positions a position-major layout spent most of attention
//! summing the eight lanes of each score. The sums are the same ones, in the same order,
//! as a position-major dot product in eight lanes: the layout changed no result.
//!
//! Keys and values are held as half floats ([`crate::kernels::halves`]): 23 KiB a
//! position for this model instead of 45, so the prefix cache keeps twice the
//! conversations in the same bound, and each step reads half the bytes. They are
//! rounded once, when written, so every path that reads them (batched, chunked, kept
//! and continued) sees the same values.

use std::sync::Arc;

use crate::kernels::exp::exp;
use crate::kernels::halves::{self, Half};

/// Positions per block of keys (one AVX-512 vector of scores).
pub(super) const KEY_BLOCK: usize = 16;

/// Partial sums per score, added up in a fixed order at the end.
const LANES: usize = 8;

/// Keys and values of one layer, as half floats. Keys: blocks of [`KEY_BLOCK`]
/// positions, `[blocks, kv heads, head size, KEY_BLOCK]` (a block's unused tail is
/// zero); values position-major, `[positions, kv heads, head size]`.
#[derive(Clone, Default)]
struct LayerKv {
    keys: Vec<Half>,
    values: Vec<Half>,
}

impl LayerKv {
    /// Keep the first `position` positions and append `n` more (`keys` and `values`
    /// are `[n, kv heads × head size]`, position-major).
    fn write(&mut self, position: usize, kv_heads: usize, hd: usize, keys: &[f32], values: &[f32]) {
        let width = kv_heads * hd;
        let n = keys.len() / width;
        let block_len = width * KEY_BLOCK;
        self.keys.truncate(position.div_ceil(KEY_BLOCK) * block_len);
        self.keys
            .resize((position + n).div_ceil(KEY_BLOCK) * block_len, Half::ZERO);
        for (r, key) in keys.chunks_exact(width).enumerate() {
            let (block, slot) = ((position + r) / KEY_BLOCK, (position + r) % KEY_BLOCK);
            let base = block * block_len + slot;
            for (channel, &x) in key.iter().enumerate() {
                self.keys[base + channel * KEY_BLOCK] = Half::from_f32(x);
            }
        }
        self.values.truncate(position * width);
        self.values
            .extend(values.iter().copied().map(Half::from_f32));
    }

    /// The keys of `kv_head` in block `block`: `[head size, KEY_BLOCK]`.
    fn key_block(&self, block: usize, kv_head: usize, kv_heads: usize, hd: usize) -> &[Half] {
        let len = hd * KEY_BLOCK;
        &self.keys[(block * kv_heads + kv_head) * len..][..len]
    }
}

/// One sequence's attention state: each layer's keys and values so far. Cloning shares
/// them; the first append after a clone copies that layer once (copy on write).
#[derive(Clone)]
pub struct KvState {
    layers: Vec<Arc<LayerKv>>,
    len: usize,
}

impl KvState {
    pub(super) fn new(layers: usize) -> Self {
        KvState {
            layers: (0..layers).map(|_| Arc::new(LayerKv::default())).collect(),
            len: 0,
        }
    }

    /// Positions read so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn advance(&mut self, positions: usize) {
        self.len += positions;
    }

    /// Give back the spare capacity of the layers this state alone holds, before it is
    /// kept. A state grows by doubling while it reads (amortised appends), so without
    /// this a kept state held up to twice the bytes its tokens cost, and the prefix
    /// cache, bounded by tokens × bytes per token, held up to twice its bound, in
    /// buffers of every size (which also fragments the heap). Layers shared with a kept
    /// state were sized exactly when they were copied, and are left alone.
    pub fn compact(&mut self) {
        for layer in &mut self.layers {
            if let Some(kv) = Arc::get_mut(layer) {
                kv.keys.shrink_to_fit();
                kv.values.shrink_to_fit();
            }
        }
    }

    /// Heap bytes of keys and values this state points to (shared layers included):
    /// what it really costs while nothing else shares it. Keys are held in whole
    /// blocks, so up to `KEY_BLOCK - 1` positions' keys more than its tokens.
    pub fn heap_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|kv| (kv.keys.capacity() + kv.values.capacity()) * std::mem::size_of::<Half>())
            .sum()
    }
}

/// Head layout and RoPE tables shared by every layer.
pub(super) struct Attention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// `[positions, head size / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    pub max_positions: usize,
}

impl Attention {
    pub fn new(
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        max_positions: usize,
        base: f32,
    ) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for position in 0..max_positions {
            for i in 0..half {
                let theta = 1.0 / base.powf((2 * i) as f32 / head_dim as f32);
                let angle = position as f32 * theta;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Attention {
            heads,
            kv_heads,
            head_dim,
            cos,
            sin,
            max_positions,
        }
    }

    /// Attention of `n` new rows in layer `layer` of `state` (which has read
    /// `state.len()` positions; the caller advances it after the last layer). `q`, `k`,
    /// `v` are the rows' projections (`[n, heads × head size]` and `[n, kv heads ×
    /// head size]`); returns `[n, heads × head size]`.
    pub fn attend(
        &self,
        state: &mut KvState,
        layer: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Vec<f32> {
        let (hd, heads, kv_heads) = (self.head_dim, self.heads, self.kv_heads);
        let position = state.len;
        let mut q = q.to_vec();
        let mut k = k.to_vec();
        self.rope(&mut q, heads, position);
        self.rope(&mut k, kv_heads, position);
        let kv = Arc::make_mut(&mut state.layers[layer]);
        kv.write(position, kv_heads, hd, &k, v);
        let mut out = vec![0f32; q.len()];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            unsafe { self.attend_rows_avx512(kv, &q, position, &mut out) };
            return out;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2 and F16C (checked just above).
            unsafe { self.attend_rows_avx2(kv, &q, position, &mut out) };
            return out;
        }
        self.attend_rows(kv, &q, position, &mut out, halves::widen);
        out
    }

    /// [`attend_rows`](Self::attend_rows) compiled for AVX2 with F16C, for CPUs without
    /// AVX-512: the half floats widened eight per instruction rather than one by one.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn attend_rows_avx2(&self, kv: &LayerKv, q: &[f32], position: usize, out: &mut [f32]) {
        self.attend_rows(kv, q, position, out, halves::widen16_f16c)
    }

    /// [`attend_rows`](Self::attend_rows) compiled for AVX-512: a block's sixteen
    /// scores in one register, sixteen half floats widened by one instruction. The same
    /// sums as the baseline (no reordering, no fused multiply-add), only wider.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn attend_rows_avx512(&self, kv: &LayerKv, q: &[f32], position: usize, out: &mut [f32]) {
        self.attend_rows(kv, q, position, out, halves::widen16_avx512)
    }

    /// Each of the rows `q` (the first at `position`) attends over itself and every
    /// position before it; results into `out`.
    #[inline(always)]
    fn attend_rows(
        &self,
        kv: &LayerKv,
        q: &[f32],
        position: usize,
        out: &mut [f32],
        widen: impl Fn(&[Half; KEY_BLOCK]) -> [f32; KEY_BLOCK] + Copy,
    ) {
        let (hd, heads, kv_heads) = (self.head_dim, self.heads, self.kv_heads);
        let n = q.len() / (heads * hd);
        let group = heads / kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = Vec::with_capacity((position + n).next_multiple_of(KEY_BLOCK));
        for row in 0..n {
            let visible = position + row + 1; // causal: itself and everything before
            for head in 0..heads {
                let kv_head = head / group;
                let query = &q[(row * heads + head) * hd..][..hd];
                scores.clear();
                for block in 0..visible.div_ceil(KEY_BLOCK) {
                    let keys = kv.key_block(block, kv_head, kv_heads, hd);
                    scores.extend(block_scores(query, keys, widen).map(|s| s * scale));
                }
                scores.truncate(visible);
                let total = exponentiate(&mut scores);
                let result = &mut out[(row * heads + head) * hd..][..hd];
                weighted_sum(
                    &scores,
                    &kv.values,
                    kv_head * hd,
                    kv_heads * hd,
                    result,
                    widen,
                );
                let inverse = 1.0 / total;
                result.iter_mut().for_each(|r| *r *= inverse);
            }
        }
    }

    /// Interleaved RoPE (pairs 2i, 2i+1, as llama.cpp runs llama) on rows of `heads`
    /// heads starting at `position`.
    fn rope(&self, rows: &mut [f32], heads: usize, position: usize) {
        let hd = self.head_dim;
        let half = hd / 2;
        for (r, row) in rows.chunks_exact_mut(heads * hd).enumerate() {
            let table = (position + r) * half;
            let (cos, sin) = (
                &self.cos[table..table + half],
                &self.sin[table..table + half],
            );
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = x0 * cos[i] - x1 * sin[i];
                    head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

/// Floats of a value row summed in registers at a time.
const VALUE_SPAN: usize = 64;

/// `result = Σ weights[j] × values[first + j × stride ..][.. result.len()]`, each
/// element summed over `j` in order from zero. Summed in a local array of
/// [`VALUE_SPAN`] floats (four AVX-512 registers), not in `result`: summing into memory
/// loaded and stored every element at every position.
#[inline(always)]
fn weighted_sum(
    weights: &[f32],
    values: &[Half],
    first: usize,
    stride: usize,
    result: &mut [f32],
    widen: impl Fn(&[Half; KEY_BLOCK]) -> [f32; KEY_BLOCK],
) {
    for (span, out) in result.chunks_mut(VALUE_SPAN).enumerate() {
        let start = first + span * VALUE_SPAN;
        let mut sums = [0f32; VALUE_SPAN];
        if out.len() == VALUE_SPAN {
            for (j, &weight) in weights.iter().enumerate() {
                let at = start + j * stride;
                let row = &values[at..at + VALUE_SPAN];
                for (sums, halves) in sums
                    .chunks_exact_mut(KEY_BLOCK)
                    .zip(row.chunks_exact(KEY_BLOCK))
                {
                    let Ok(halves) = <&[Half; KEY_BLOCK]>::try_from(halves) else {
                        continue; // chunks of exactly that length: never
                    };
                    for (sum, value) in sums.iter_mut().zip(widen(halves)) {
                        *sum += weight * value;
                    }
                }
            }
        } else {
            for (j, &weight) in weights.iter().enumerate() {
                let at = start + j * stride;
                for (sum, v) in sums.iter_mut().zip(&values[at..at + out.len()]) {
                    *sum += weight * v.to_f32();
                }
            }
        }
        out.copy_from_slice(&sums[..out.len()]);
    }
}

/// Scores to unnormalised softmax weights, `e^(score - max)`; returns their sum.
#[inline(always)]
fn exponentiate(scores: &mut [f32]) -> f32 {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
    scores.iter_mut().for_each(|s| *s = exp(*s - max));
    scores.iter().fold(0f32, |sum, s| sum + s)
}

/// `query`'s dot products with the [`KEY_BLOCK`] keys of `block` (`[head size,
/// KEY_BLOCK]`): each in [`LANES`] partial sums over the dimensions (dimension `d` in
/// lane `d % LANES`), then the lanes added in order, then the dimensions past the last
/// whole lane group: the sums a position-major dot product in eight lanes makes.
#[inline(always)]
fn block_scores(
    query: &[f32],
    block: &[Half],
    widen: impl Fn(&[Half; KEY_BLOCK]) -> [f32; KEY_BLOCK],
) -> [f32; KEY_BLOCK] {
    let mut lanes = [[0f32; KEY_BLOCK]; LANES];
    let mut queries = query.chunks_exact(LANES);
    let mut keys = block.chunks_exact(KEY_BLOCK);
    for group in &mut queries {
        for (lane, &q) in group.iter().enumerate() {
            let Some(Ok(keys)) = keys.next().map(<&[Half; KEY_BLOCK]>::try_from) else {
                continue; // a block holds head size × KEY_BLOCK keys: never
            };
            for (sum, key) in lanes[lane].iter_mut().zip(widen(keys)) {
                *sum += q * key;
            }
        }
    }
    let mut tail = [0f32; KEY_BLOCK];
    for (&q, keys) in queries.remainder().iter().zip(keys) {
        for (sum, key) in tail.iter_mut().zip(keys) {
            *sum += q * key.to_f32();
        }
    }
    std::array::from_fn(|p| lanes.iter().fold(-0.0f32, |sum, lane| sum + lane[p]) + tail[p])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
    }

    /// Reading rows in one chunk or one at a time gives the same bits.
    #[test]
    fn chunking_changes_nothing() {
        let attention = Attention::new(4, 2, 8, 64, 10_000.0);
        let (n, q_width, kv_width) = (5, 4 * 8, 2 * 8);
        let (q, k, v) = (
            values(n * q_width, 0.1),
            values(n * kv_width, 0.7),
            values(n * kv_width, 1.3),
        );
        let mut whole = KvState::new(1);
        let together = attention.attend(&mut whole, 0, &q, &k, &v);
        let mut stepwise = KvState::new(1);
        let mut apart = Vec::new();
        for row in 0..n {
            apart.extend(attention.attend(
                &mut stepwise,
                0,
                &q[row * q_width..(row + 1) * q_width],
                &k[row * kv_width..(row + 1) * kv_width],
                &v[row * kv_width..(row + 1) * kv_width],
            ));
            stepwise.advance(1);
        }
        assert_eq!(together, apart);
    }

    /// Half-float rounding, as the state stores keys and values.
    fn rounded(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&x| Half::from_f32(x).to_f32()).collect()
    }

    /// Attention as it was computed position-major (one eight-lane dot product per
    /// score) over keys and values rounded to half floats: the reference the blocked
    /// keys must match bit for bit.
    fn reference(attention: &Attention, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (hd, heads, kv_heads) = (attention.head_dim, attention.heads, attention.kv_heads);
        let (mut q, mut k) = (q.to_vec(), k.to_vec());
        attention.rope(&mut q, heads, 0);
        attention.rope(&mut k, kv_heads, 0);
        let (k, v) = (rounded(&k), rounded(v));
        let dot = |a: &[f32], b: &[f32]| {
            let mut lanes = [0f32; 8];
            let (mut xs, mut ys) = (a.chunks_exact(8), b.chunks_exact(8));
            for (x, y) in (&mut xs).zip(&mut ys) {
                for i in 0..8 {
                    lanes[i] += x[i] * y[i];
                }
            }
            let tail: f32 = xs
                .remainder()
                .iter()
                .zip(ys.remainder())
                .map(|(x, y)| x * y)
                .sum();
            lanes.iter().sum::<f32>() + tail
        };
        let n = q.len() / (heads * hd);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; n * heads * hd];
        for row in 0..n {
            for head in 0..heads {
                let kv_head = head / (heads / kv_heads);
                let query = &q[(row * heads + head) * hd..][..hd];
                let at = |j: usize| (j * kv_heads + kv_head) * hd;
                let mut scores: Vec<f32> = (0..=row)
                    .map(|j| dot(query, &k[at(j)..][..hd]) * scale)
                    .collect();
                let total = exponentiate(&mut scores);
                let result = &mut out[(row * heads + head) * hd..][..hd];
                for (j, weight) in scores.iter().enumerate() {
                    for (r, x) in result.iter_mut().zip(&v[at(j)..][..hd]) {
                        *r += weight * x;
                    }
                }
                result.iter_mut().for_each(|r| *r *= 1.0 / total);
            }
        }
        out
    }

    /// Blocked keys give the bits of position-major keys: across block boundaries, in
    /// chunks that start mid-block, with head sizes that are not a multiple of eight.
    #[test]
    fn blocked_keys_match_position_major_bit_for_bit() {
        for (heads, kv_heads, hd) in [(9, 3, 64), (4, 2, 12)] {
            let attention = Attention::new(heads, kv_heads, hd, 128, 10_000.0);
            let n = 2 * KEY_BLOCK + 7;
            let (q, k, v) = (
                values(n * heads * hd, 0.1),
                values(n * kv_heads * hd, 0.7),
                values(n * kv_heads * hd, 1.3),
            );
            let expected = reference(&attention, &q, &k, &v);
            let mut state = KvState::new(1);
            let mut got = Vec::new();
            for rows in [5, KEY_BLOCK, 1, n - KEY_BLOCK - 6] {
                let at = state.len();
                let (qw, kw) = (heads * hd, kv_heads * hd);
                got.extend(attention.attend(
                    &mut state,
                    0,
                    &q[at * qw..(at + rows) * qw],
                    &k[at * kw..(at + rows) * kw],
                    &v[at * kw..(at + rows) * kw],
                ));
                state.advance(rows);
            }
            assert_eq!(state.len(), n);
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&expected),
                "heads {heads}/{kv_heads}, size {hd}"
            );
        }
    }

    /// A state shared by a clone is not changed by the other's appends.
    #[test]
    fn a_kept_state_is_copied_on_write() {
        let attention = Attention::new(2, 1, 4, 16, 10_000.0);
        let mut first = KvState::new(1);
        attention.attend(
            &mut first,
            0,
            &values(8, 0.0),
            &values(4, 0.5),
            &values(4, 0.9),
        );
        first.advance(1);
        let kept = first.clone();
        attention.attend(
            &mut first,
            0,
            &values(8, 2.0),
            &values(4, 2.5),
            &values(4, 2.9),
        );
        assert_eq!(kept.layers[0].values.len(), 4);
        assert_eq!(first.layers[0].values.len(), 8);
    }

    /// A compacted state holds exactly what its positions cost, and a compacted copy
    /// that is still shared is not touched.
    #[test]
    fn a_compacted_state_holds_no_spare_capacity() {
        let attention = Attention::new(2, 1, 4, 64, 10_000.0);
        let mut state = KvState::new(2);
        for row in 0..5 {
            for layer in 0..2 {
                attention.attend(
                    &mut state,
                    layer,
                    &values(8, row as f32),
                    &values(4, 0.5),
                    &values(4, 0.9),
                );
            }
            state.advance(1);
        }
        // 2 layers × (one block of keys + 5 positions of values) × 1 head × 4 wide ×
        // 2 bytes.
        let exact = 2 * (KEY_BLOCK + 5) * 4 * 2;
        assert!(state.heap_bytes() > exact, "appends leave spare capacity");
        let kept = state.clone();
        state.compact();
        assert!(kept.heap_bytes() > exact, "shared layers are left alone");
        drop(kept);
        state.compact();
        assert_eq!(state.heap_bytes(), exact);
    }

    /// The first position attends only to itself: its output is its own value (as
    /// stored, in half floats).
    #[test]
    fn the_first_position_sees_only_itself() {
        let attention = Attention::new(2, 1, 4, 16, 10_000.0);
        let mut state = KvState::new(1);
        let v = values(4, 0.3);
        let out = attention.attend(&mut state, 0, &values(8, 0.0), &values(4, 1.0), &v);
        for head in out.chunks(4) {
            assert_eq!(head, rounded(&v));
        }
    }

    /// The AVX-512 path and the portable one give the same bits.
    #[test]
    fn every_path_gives_the_same_bits() {
        let attention = Attention::new(9, 3, 64, 128, 10_000.0);
        let n = KEY_BLOCK + 9;
        let (q, k, v) = (
            values(n * 9 * 64, 0.2),
            values(n * 3 * 64, 0.8),
            values(n * 3 * 64, 1.4),
        );
        let mut state = KvState::new(1);
        let chosen = attention.attend(&mut state, 0, &q, &k, &v);
        let mut rotated = q.clone();
        attention.rope(&mut rotated, 9, 0);
        let mut portable = vec![0f32; chosen.len()];
        attention.attend_rows(&state.layers[0], &rotated, 0, &mut portable, halves::widen);
        assert_eq!(chosen, portable);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            let mut avx2 = vec![0f32; chosen.len()];
            // SAFETY: the CPU has AVX2 and F16C (checked just above).
            unsafe { attention.attend_rows_avx2(&state.layers[0], &rotated, 0, &mut avx2) };
            assert_eq!(avx2, portable);
        }
    }
}
