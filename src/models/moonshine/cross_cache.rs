//! One layer's cross-attention keys and values over a sequence's audio, and the
//! attention of a query row over them.
//!
//! These caches are what grows with every segment being recognised (8 layers × 2 ×
//! 416 channels × its frames) and what a decoder step reads in full for every
//! sequence in its batch: at batch 8 they were 24 MB a step as half floats, half
//! again the weights' 41 MB, and the step waited on memory for them. They are held
//! as int8 (1.9 MB for a 5-second segment instead of 3), as llama.cpp holds its KV
//! cache; transcripts stay identical to ONNX Runtime's on every fixture
//! (`tests/stt_batch.rs`).
//!
//! - **Keys** are quantized per frame and head (one scale for a frame's 52
//!   dimensions), and each head's query is quantized the same way when it attends,
//!   so a score is an exact integer dot product times two scales. With AVX-512 VNNI
//!   one `vpdpbusd` takes four dimensions of sixteen frames: keys are laid out per
//!   head in blocks of [`KEY_BLOCK`] frames, per group of [`DIM_GROUP`] dimensions,
//!   `[frame][dim]`. In float arithmetic over int8 keys the scores were a third of
//!   a batch-8 decoder step's cross-attention; now a fifth (fifteenth session).
//! - **Values** are `[channel][frame]`, in runs of [`FRAME_BLOCK`] frames of one
//!   channel, each run with its own scale (Q8_0's scheme) folded into the run's
//!   partial sums, so each output channel is one dot product along the frames with
//!   the float weights of the softmax. (Weights as bytes and values in VNNI tiles
//!   were no faster: these sums wait on memory, and the tiles padded 52 channels to
//!   64.)
//!
//! Both are zero past the last frame.

use super::attention::softmax;
#[cfg(target_arch = "x86_64")]
use super::cross_cache_x86;

/// Frames per run of one channel of values with its own scale.
pub(super) const FRAME_BLOCK: usize = 32;

/// Frames per block of keys: one 32-bit lane of a 512-bit register each.
pub(super) const KEY_BLOCK: usize = 16;

/// Dimensions of one frame's key that one lane of `vpdpbusd` multiplies at once.
pub(super) const DIM_GROUP: usize = 4;

/// Keys are stored as unsigned bytes `k + 128` (`vpdpbusd` multiplies unsigned bytes
/// by signed ones); `128 · Σ q` is taken off each dot product.
pub(super) const KEY_OFFSET: i32 = 128;

/// Lanes of the value sums (one AVX2 register), added up in order at the end.
pub(super) const LANES: usize = 8;

/// See the module documentation.
pub(super) struct CrossCache {
    /// Per head, per block of [`KEY_BLOCK`] frames, per group of [`DIM_GROUP`]
    /// dimensions, `[frame][dim]` as `k + 128`; dimensions past the head's are zero.
    keys: Vec<u8>,
    /// Per head, per frame (whole key blocks): the scale of the frame's key.
    key_scales: Vec<f32>,
    /// `[channel][blocks × FRAME_BLOCK]`.
    values: Vec<i8>,
    /// `[channel][block]`.
    value_scales: Vec<f32>,
    frames: usize,
    head_dim: usize,
}

/// One head's query as int8 in whole groups of dimensions, what it adds to each
/// stored key's dot product (`128 · Σ q`), and the scale of its scores.
pub(super) struct QuantizedQuery {
    pub quants: Vec<i8>,
    pub offset: i32,
    pub scale: f32,
}

impl CrossCache {
    /// From row-major `[frame][channel]` keys and values, channels in heads of
    /// `head_dim`.
    pub fn new(keys: &[f32], values: &[f32], frames: usize, head_dim: usize) -> Self {
        let (keys, key_scales) = quantize_keys(keys, frames, head_dim);
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

    /// [`attend`](Self::attend) in intrinsics: the scores' integer dot products with
    /// AVX-512 VNNI where the CPU has it, the value sums in AVX2 in the portable
    /// path's order, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn attend_x86(&self, query: &[f32], scores: &mut Vec<f32>, out: &mut [f32]) {
        let scale = self.prepare(scores);
        let vnni = crate::kernels::avx512_vnni_available();
        let mut quantized = QuantizedQuery::empty(self.head_dim);
        for (head, (query, out)) in self.heads(query, out) {
            quantized.set(query, scale);
            let (keys, key_scales) = self.head_keys(head);
            if vnni {
                cross_cache_x86::head_scores(&quantized, keys, key_scales, scores);
            } else {
                head_scores(&quantized, keys, key_scales, scores);
            }
            self.softmax(scores);
            let (values, value_scales) = self.head_values(head);
            cross_cache_x86::mix_values(scores, values, value_scales, out);
        }
    }

    fn attend_here(&self, query: &[f32], scores: &mut Vec<f32>, out: &mut [f32]) {
        let scale = self.prepare(scores);
        let mut quantized = QuantizedQuery::empty(self.head_dim);
        for (head, (query, out)) in self.heads(query, out) {
            quantized.set(query, scale);
            let (keys, key_scales) = self.head_keys(head);
            head_scores(&quantized, keys, key_scales, scores);
            self.softmax(scores);
            let (values, value_scales) = self.head_values(head);
            let rows = values.chunks_exact(scores.len());
            let row_scales = value_scales.chunks_exact(scores.len() / FRAME_BLOCK);
            for ((o, values), scales) in out.iter_mut().zip(rows).zip(row_scales) {
                *o = mix_row(scores, values, scales);
            }
        }
    }

    /// Sizes the scratch scores to whole blocks of values (which hold whole blocks of
    /// keys); the query scale.
    fn prepare(&self, scores: &mut Vec<f32>) -> f32 {
        scores.resize(self.frames.div_ceil(FRAME_BLOCK) * FRAME_BLOCK, 0.0);
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Softmax over the real frames; the padding's weights are zero.
    #[inline(always)]
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
    fn head_keys(&self, head: usize) -> (&[u8], &[f32]) {
        let frames = self.frames.div_ceil(KEY_BLOCK) * KEY_BLOCK;
        let bytes = frames * self.head_dim.div_ceil(DIM_GROUP) * DIM_GROUP;
        (
            &self.keys[head * bytes..(head + 1) * bytes],
            &self.key_scales[head * frames..(head + 1) * frames],
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

/// `[frame][channel]` keys → the layout of [`CrossCache::keys`] and its scales: each
/// frame's head scaled by its largest magnitude / 127, rounded to nearest (ties to
/// even). Frames past the last and dimensions past the head's are zero.
fn quantize_keys(keys: &[f32], frames: usize, head_dim: usize) -> (Vec<u8>, Vec<f32>) {
    let width = keys.len() / frames.max(1);
    let heads = width / head_dim.max(1);
    let groups = head_dim.div_ceil(DIM_GROUP);
    let padded = frames.div_ceil(KEY_BLOCK) * KEY_BLOCK;
    let mut quants = vec![KEY_OFFSET as u8; heads * padded * groups * DIM_GROUP];
    let mut scales = vec![0f32; heads * padded];
    for (frame, row) in keys.chunks_exact(width).enumerate() {
        let (block, slot) = (frame / KEY_BLOCK, frame % KEY_BLOCK);
        for (head, key) in row.chunks_exact(head_dim).enumerate() {
            let (scale, inverse) = int8_scale(key);
            scales[head * padded + frame] = scale;
            for (dim, &k) in key.iter().enumerate() {
                let (group, lane) = (dim / DIM_GROUP, dim % DIM_GROUP);
                let at = (((head * padded / KEY_BLOCK + block) * groups + group) * KEY_BLOCK
                    + slot)
                    * DIM_GROUP
                    + lane;
                quants[at] = ((k * inverse).round_ties_even() as i8 as u8) ^ 0x80;
            }
        }
    }
    (quants, scales)
}

/// The int8 scale of `values` (largest magnitude / 127) and its inverse (zero for
/// all-zero values).
fn int8_scale(values: &[f32]) -> (f32, f32) {
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    (scale, if max == 0.0 { 0.0 } else { 1.0 / scale })
}

impl QuantizedQuery {
    /// Room for a query of `head_dim` dimensions.
    fn empty(head_dim: usize) -> Self {
        QuantizedQuery {
            quants: vec![0; head_dim.div_ceil(DIM_GROUP) * DIM_GROUP],
            offset: 0,
            scale: 0.0,
        }
    }

    /// Quantizes one head's `query`, whose scores are scaled by `score_scale`.
    fn set(&mut self, query: &[f32], score_scale: f32) {
        let (scale, inverse) = int8_scale(query);
        for (q, &x) in self.quants.iter_mut().zip(query) {
            *q = (x * inverse).round_ties_even() as i8;
        }
        self.offset = KEY_OFFSET * self.quants.iter().map(|&q| i32::from(q)).sum::<i32>();
        self.scale = scale * score_scale;
    }
}

/// Every key block's scores for one head: `(Σ_d q[d] · k[f][d]) · query scale · key
/// scale[f]`, the sum exact in integers.
fn head_scores(query: &QuantizedQuery, keys: &[u8], key_scales: &[f32], scores: &mut [f32]) {
    let group_bytes = KEY_BLOCK * DIM_GROUP;
    let blocks = keys.chunks_exact(query.quants.len() * KEY_BLOCK);
    for (b, block) in blocks.enumerate() {
        for slot in 0..KEY_BLOCK {
            let mut dot = -query.offset;
            for (g, q) in query.quants.chunks_exact(DIM_GROUP).enumerate() {
                let key = &block[g * group_bytes + slot * DIM_GROUP..][..DIM_GROUP];
                for (&k, &q) in key.iter().zip(q) {
                    dot += i32::from(k) * i32::from(q);
                }
            }
            let f = b * KEY_BLOCK + slot;
            scores[f] = dot as f32 * query.scale * key_scales[f];
        }
    }
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
        let (scale, inverse) = int8_scale(run);
        quants.extend(run.iter().map(|v| (v * inverse).round_ties_even() as i8));
        scales.push(scale);
    }
    (quants, scales)
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
mod tests;
