//! One layer's cross-attention keys and values over a sequence's audio, and the
//! attention of a query row over them.
//!
//! These caches are what grows with every segment being recognised (8 layers × 2 ×
//! 416 channels × its frames) and what a decoder step reads in full for every
//! sequence in its batch: at batch 8 they were 24 MB a step as half floats, half
//! again the weights' 41 MB, and the step waited on memory for them. They are held
//! as int8 in runs of [`FRAME_BLOCK`] frames of one channel, each run with its own
//! scale (as Q8_0 does for weights, and llama.cpp for its KV cache): 1.9 MB for a
//! 5-second segment instead of 3. Each run's scale folds into the query (keys) or
//! into the run's partial sums (values), so the arithmetic is float32 over exact
//! integers; transcripts stay identical to ONNX Runtime's on every fixture
//! (`tests/stt_batch.rs`).
//!
//! Keys are laid out per head in blocks of frames, each block `[dim][frame]`: a
//! block's scores are summed in registers over the head's dimensions while the block
//! is read front to back. Values are `[channel][frame]`, so each output channel is
//! one dot product along the frames. Both are zero past the last frame.

use super::attention::softmax;
#[cfg(target_arch = "x86_64")]
use super::cross_cache_x86;

/// Frames per run of one channel with its own scale, and per block of keys.
pub(super) const FRAME_BLOCK: usize = 32;

/// Lanes of the value sums (one AVX2 register), added up in order at the end.
pub(super) const LANES: usize = 8;

/// See the module documentation.
pub(super) struct CrossCache {
    /// Per head, per block of frames, `[dim][FRAME_BLOCK]`.
    keys: Vec<i8>,
    /// One per row of `keys`: per head, per block, per dim.
    key_scales: Vec<f32>,
    /// `[channel][blocks × FRAME_BLOCK]`.
    values: Vec<i8>,
    /// `[channel][block]`.
    value_scales: Vec<f32>,
    frames: usize,
    head_dim: usize,
}

impl CrossCache {
    /// From row-major `[frame][channel]` keys and values, channels in heads of
    /// `head_dim`.
    pub fn new(keys: &[f32], values: &[f32], frames: usize, head_dim: usize) -> Self {
        let (keys, key_scales) = quantize_runs(&block_keys(keys, frames, head_dim));
        let (values, value_scales) = quantize_runs(&padded_channels(values, frames));
        CrossCache {
            keys,
            key_scales,
            values,
            value_scales,
            frames,
            head_dim,
        }
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        let scales = self.key_scales.len() + self.value_scales.len();
        self.keys.len() + self.values.len() + scales * std::mem::size_of::<f32>()
    }

    /// Attention of `query` (one row, all heads) over every frame, into `out`.
    /// `scores` is scratch space, reused across calls.
    pub fn attend(&self, query: &[f32], scores: &mut Vec<f32>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if cross_cache_x86::available() {
            // SAFETY: the CPU has what the intrinsics need (checked just above).
            return unsafe { self.attend_x86(query, scores, out) };
        }
        self.attend_here(query, scores, out)
    }

    /// [`attend`](Self::attend) in AVX2 intrinsics: the portable path's sums in the
    /// same order, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn attend_x86(&self, query: &[f32], scores: &mut Vec<f32>, out: &mut [f32]) {
        let scale = self.prepare(scores);
        for (head, (query, out)) in self.heads(query, out) {
            let (keys, key_scales) = self.head_keys(head);
            cross_cache_x86::head_scores(query, scale, keys, key_scales, scores);
            self.softmax(scores);
            let (values, value_scales) = self.head_values(head);
            cross_cache_x86::mix_values(scores, values, value_scales, out);
        }
    }

    fn attend_here(&self, query: &[f32], scores: &mut Vec<f32>, out: &mut [f32]) {
        let scale = self.prepare(scores);
        for (head, (query, out)) in self.heads(query, out) {
            let (keys, key_scales) = self.head_keys(head);
            let blocks = keys.chunks_exact(self.head_dim * FRAME_BLOCK);
            let block_scales = key_scales.chunks_exact(self.head_dim);
            for ((block, block_scales), scores) in blocks
                .zip(block_scales)
                .zip(scores.chunks_exact_mut(FRAME_BLOCK))
            {
                scores.copy_from_slice(&block_scores(query, scale, block, block_scales));
            }
            self.softmax(scores);
            let (values, value_scales) = self.head_values(head);
            let rows = values.chunks_exact(scores.len());
            let row_scales = value_scales.chunks_exact(scores.len() / FRAME_BLOCK);
            for ((o, values), scales) in out.iter_mut().zip(rows).zip(row_scales) {
                *o = mix_row(scores, values, scales);
            }
        }
    }

    /// Sizes the scratch scores to whole blocks; the query scale.
    fn prepare(&self, scores: &mut Vec<f32>) -> f32 {
        scores.resize(self.frames.div_ceil(FRAME_BLOCK) * FRAME_BLOCK, 0.0);
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Softmax over the real frames; the padding's weights are zero.
    fn softmax(&self, scores: &mut [f32]) {
        let (real, padding) = scores.split_at_mut(self.frames);
        softmax(real);
        padding.fill(0.0);
    }

    /// Each head's query and output, by head index.
    fn heads<'a>(
        &self,
        query: &'a [f32],
        out: &'a mut [f32],
    ) -> impl Iterator<Item = (usize, (&'a [f32], &'a mut [f32]))> {
        let head_dim = self.head_dim;
        query
            .chunks_exact(head_dim)
            .zip(out.chunks_exact_mut(head_dim))
            .enumerate()
    }

    /// One head's key blocks and their scales.
    fn head_keys(&self, head: usize) -> (&[i8], &[f32]) {
        let blocks = self.frames.div_ceil(FRAME_BLOCK);
        let rows = blocks * self.head_dim;
        (
            &self.keys[head * rows * FRAME_BLOCK..(head + 1) * rows * FRAME_BLOCK],
            &self.key_scales[head * rows..(head + 1) * rows],
        )
    }

    /// One head's value rows and their scales.
    fn head_values(&self, head: usize) -> (&[i8], &[f32]) {
        let blocks = self.frames.div_ceil(FRAME_BLOCK);
        let runs = blocks * self.head_dim;
        (
            &self.values[head * runs * FRAME_BLOCK..(head + 1) * runs * FRAME_BLOCK],
            &self.value_scales[head * runs..(head + 1) * runs],
        )
    }
}

/// `[frame][channel]` keys → per head, per block of frames, `[dim][FRAME_BLOCK]`,
/// zero past the last frame.
fn block_keys(keys: &[f32], frames: usize, head_dim: usize) -> Vec<f32> {
    let width = keys.len() / frames.max(1);
    let blocks = frames.div_ceil(FRAME_BLOCK);
    let mut out = vec![0f32; width * blocks * FRAME_BLOCK];
    for (frame, row) in keys.chunks_exact(width).enumerate() {
        let (block, slot) = (frame / FRAME_BLOCK, frame % FRAME_BLOCK);
        for (channel, &key) in row.iter().enumerate() {
            let (head, dim) = (channel / head_dim, channel % head_dim);
            out[((head * blocks + block) * head_dim + dim) * FRAME_BLOCK + slot] = key;
        }
    }
    out
}

/// `[frame][channel]` → `[channel][blocks × FRAME_BLOCK]`, zero past the last frame.
fn padded_channels(values: &[f32], frames: usize) -> Vec<f32> {
    let width = values.len() / frames.max(1);
    let padded = frames.div_ceil(FRAME_BLOCK) * FRAME_BLOCK;
    let mut out = vec![0f32; width * padded];
    for (frame, row) in values.chunks_exact(width).enumerate() {
        for (channel, &value) in row.iter().enumerate() {
            out[channel * padded + frame] = value;
        }
    }
    out
}

/// Each run of [`FRAME_BLOCK`] values as int8 scaled by its largest magnitude / 127,
/// rounded to nearest (ties to even); the scales, one per run.
fn quantize_runs(values: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut quants = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / FRAME_BLOCK);
    for run in values.chunks_exact(FRAME_BLOCK) {
        let max = run.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inverse = if max == 0.0 { 0.0 } else { 1.0 / scale };
        quants.extend(run.iter().map(|v| (v * inverse).round_ties_even() as i8));
        scales.push(scale);
    }
    (quants, scales)
}

/// The scores of one block's frames: `Σ_d (query[d] · scale · s_d) · key[d][frame]`
/// with `s_d` the scale of the block's row `d`, summed over `d` in order from zero.
fn block_scores(query: &[f32], scale: f32, block: &[i8], scales: &[f32]) -> [f32; FRAME_BLOCK] {
    let mut sums = [0f32; FRAME_BLOCK];
    let rows = block.chunks_exact(FRAME_BLOCK).zip(scales);
    for (&q, (keys, &row_scale)) in query.iter().zip(rows) {
        let q = q * scale * row_scale;
        for (sum, &key) in sums.iter_mut().zip(keys) {
            *sum += q * f32::from(key);
        }
    }
    sums
}

/// `Σ_f scores[f] · value[f]` over one value row: per run, lane sums of the products
/// (in order of the run's vectors), scaled by the run's scale into the row's lanes;
/// the lanes added up in order.
fn mix_row(scores: &[f32], values: &[i8], scales: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let runs = scores
        .chunks_exact(FRAME_BLOCK)
        .zip(values.chunks_exact(FRAME_BLOCK));
    for ((scores, values), &run_scale) in runs.zip(scales) {
        let mut run = [0f32; LANES];
        for (x, y) in scores.chunks_exact(LANES).zip(values.chunks_exact(LANES)) {
            for lane in 0..LANES {
                run[lane] += x[lane] * f32::from(y[lane]);
            }
        }
        for (lane, run) in lanes.iter_mut().zip(run) {
            *lane += run_scale * run;
        }
    }
    lanes.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::super::attention::attend_rows;
    use super::*;

    fn wave(seed: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 0.8)
            .collect()
    }

    #[test]
    fn runs_round_to_within_half_a_step_and_zero_runs_stay_zero() {
        let mut values = wave(0.3, 2 * FRAME_BLOCK);
        values[FRAME_BLOCK..].fill(0.0);
        let (quants, scales) = quantize_runs(&values);
        assert_eq!(scales[1], 0.0);
        assert!(quants[FRAME_BLOCK..].iter().all(|&q| q == 0));
        for (v, q) in values.iter().zip(&quants).take(FRAME_BLOCK) {
            assert!((v - scales[0] * f32::from(*q)).abs() <= scales[0] / 2.0 + 1e-7);
        }
    }

    /// The int8 cross-attention agrees with plain row-major attention over float
    /// keys and values to within what the rounding allows.
    #[test]
    fn attends_as_rows_do() {
        let (frames, head_dim, heads) = (77, 52, 3);
        let width = head_dim * heads;
        let (keys, values, query) = (
            wave(1.0, frames * width),
            wave(2.0, frames * width),
            wave(3.0, width),
        );
        let mut scratch = Vec::new();
        let mut by_rows = vec![0f32; width];
        attend_rows(
            &query,
            &keys,
            &values,
            frames,
            head_dim,
            &mut scratch,
            &mut by_rows,
        );
        let mut by_cache = vec![0f32; width];
        CrossCache::new(&keys, &values, frames, head_dim).attend(
            &query,
            &mut scratch,
            &mut by_cache,
        );
        for (a, b) in by_rows.iter().zip(&by_cache) {
            assert!((a - b).abs() < 0.01, "{a} vs {b}");
        }
    }

    /// The AVX2 path (scores blocked in registers, value sums in groups) sums as the
    /// portable one does: the same result bit for bit, over sizes that leave every
    /// kind of remainder (a partial block of frames, dimensions past a group).
    #[test]
    fn both_paths_give_the_same_result() {
        for (frames, head_dim, heads) in [(45, 52, 2), (225, 52, 1), (7, 6, 3), (32, 10, 2)] {
            let width = head_dim * heads;
            let cache = CrossCache::new(
                &wave(0.5, frames * width),
                &wave(1.5, frames * width),
                frames,
                head_dim,
            );
            let query = wave(2.5, width);
            let mut scratch = Vec::new();
            let mut portable = vec![0f32; width];
            cache.attend_here(&query, &mut scratch, &mut portable);
            let mut chosen = vec![0f32; width];
            cache.attend(&query, &mut scratch, &mut chosen);
            assert_eq!(portable, chosen, "{frames} frames, {head_dim} dims");
            let runs = 2 * width * frames.div_ceil(FRAME_BLOCK);
            assert_eq!(cache.bytes(), runs * (FRAME_BLOCK + 4));
        }
    }
}
