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

use std::sync::Arc;

/// Keys and values of one layer, position-major: `[positions, kv heads, head size]`.
#[derive(Clone, Default)]
struct LayerKv {
    keys: Vec<f32>,
    values: Vec<f32>,
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
    /// what it really costs while nothing else shares it.
    pub fn heap_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|kv| (kv.keys.capacity() + kv.values.capacity()) * std::mem::size_of::<f32>())
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
        let n = q.len() / (heads * hd);
        let position = state.len;
        let mut q = q.to_vec();
        let mut k = k.to_vec();
        self.rope(&mut q, heads, position);
        self.rope(&mut k, kv_heads, position);
        let kv = Arc::make_mut(&mut state.layers[layer]);
        kv.keys.truncate(position * kv_heads * hd);
        kv.values.truncate(position * kv_heads * hd);
        kv.keys.extend_from_slice(&k);
        kv.values.extend_from_slice(v);
        let group = heads / kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; n * heads * hd];
        let mut scores = Vec::with_capacity(position + n);
        for row in 0..n {
            let visible = position + row + 1; // causal: itself and everything before
            for head in 0..heads {
                let kv_head = head / group;
                let query = &q[(row * heads + head) * hd..][..hd];
                scores.clear();
                scores.extend(
                    (0..visible).map(|j| {
                        dot(query, &kv.keys[(j * kv_heads + kv_head) * hd..][..hd]) * scale
                    }),
                );
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
                let mut total = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    total += *s;
                }
                let result = &mut out[(row * heads + head) * hd..][..hd];
                for (j, weight) in scores.iter().enumerate() {
                    let value = &kv.values[(j * kv_heads + kv_head) * hd..][..hd];
                    for (r, v) in result.iter_mut().zip(value) {
                        *r += weight * v;
                    }
                }
                let inverse = 1.0 / total;
                result.iter_mut().for_each(|r| *r *= inverse);
            }
        }
        out
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

/// A dot product in eight fixed lanes, summed in a fixed order: vectorisable, and the
/// same result every time.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks_a = a.chunks_exact(8);
    let mut chunks_b = b.chunks_exact(8);
    for (x, y) in (&mut chunks_a).zip(&mut chunks_b) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in chunks_a.remainder().iter().zip(chunks_b.remainder()) {
        tail += x * y;
    }
    lanes.iter().sum::<f32>() + tail
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
        assert_eq!(kept.layers[0].keys.len(), 4);
        assert_eq!(first.layers[0].keys.len(), 8);
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
        // 2 layers × (keys + values) × 5 positions × 1 head × 4 wide × 4 bytes.
        let exact = 2 * 2 * 5 * 4 * 4;
        assert!(state.heap_bytes() > exact, "appends leave spare capacity");
        let kept = state.clone();
        state.compact();
        assert!(kept.heap_bytes() > exact, "shared layers are left alone");
        drop(kept);
        state.compact();
        assert_eq!(state.heap_bytes(), exact);
    }

    /// The first position attends only to itself: its output is its own value.
    #[test]
    fn the_first_position_sees_only_itself() {
        let attention = Attention::new(2, 1, 4, 16, 10_000.0);
        let mut state = KvState::new(1);
        let v = values(4, 0.3);
        let out = attention.attend(&mut state, 0, &values(8, 0.0), &values(4, 1.0), &v);
        for head in out.chunks(4) {
            for (a, b) in head.iter().zip(&v) {
                assert!((a - b).abs() < 1e-6);
            }
        }
    }
}
