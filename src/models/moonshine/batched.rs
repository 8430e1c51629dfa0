//! Moonshine's decoder run by hearken itself, so that the decoder steps of many
//! conversations advance together in one pass.
//!
//! ONNX Runtime's merged decoder takes one sequence per call: its graph has no
//! padding mask and derives positions from the cache length, so sequences of
//! different lengths cannot share a call. Each call streams every weight (41 M of
//! them) to produce one token, the same cost whether one conversation waits or
//! eight. Here the weights are read once per pass for all the tokens of all the
//! sequences in it: the projections are [`Int8Linear`] (one weight block dotted with
//! every row while it sits in registers), and attention runs per sequence against
//! its own caches. It all runs on the decoder's own thread, never in the shared
//! matmul pool, where its passes would wait behind the LLM's (one conversation's
//! first reply audio, p50 of 10 turns: 636 ms in the pool, 603 ms on its own thread). A row's result never depends on the other rows in the pass, so a
//! transcript is the same alone or in any batch (tested in `tests/stt_batch.rs`).
//!
//! The weights are those of `decoder_model_merged.onnx` (the float32 file
//! `scripts/convert-moonshine.py` writes), found through the graph's node names
//! (`/model/decoder/layers.N/self_attn/q_proj/MatMul`, ...), then quantized to int8
//! blocks at load. The arithmetic follows the graph: pre-norm layers (LayerNorm
//! without bias), self-attention with interleaved rotary embeddings on the first 32
//! of each head's 52 dimensions, cross-attention over the encoder's frames, a gated
//! SiLU MLP, a final norm, and logits against the token embedding.

use std::collections::HashMap;
use std::path::Path;

use super::super::onnx_proto::{self, FloatTensor, Graph, Node};
use super::super::ModelError;
use super::attention::attend_rows;
use super::cross_cache::CrossCache;
use super::{EncodedAudio, GuidedGreedy};
use crate::kernels::exp::silu;
use crate::kernels::{Int8Linear, Scaling};

const DECODER: &str = "moonshine-decoder";
/// Attention heads of every layer.
const HEADS: usize = 8;
const LAYER_NORM_EPSILON: f32 = 1e-5;
const PREFIX: &str = "/model/decoder";

/// The decoder's weights: read-only, shared by every thread that decodes.
pub struct BatchedDecoder {
    width: usize,
    head_dim: usize,
    vocab: usize,
    embed: Vec<f32>,
    logits: Int8Linear,
    inv_freq: Vec<f32>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
}

struct Attention {
    q: Int8Linear,
    k: Int8Linear,
    v: Int8Linear,
    out: Int8Linear,
}

struct Layer {
    input_norm: Vec<f32>,
    post_attention_norm: Vec<f32>,
    final_norm: Vec<f32>,
    self_attention: Attention,
    cross_attention: Attention,
    up: Int8Linear,
    up_bias: Vec<f32>,
    down: Int8Linear,
    down_bias: Vec<f32>,
}

/// One sequence's caches: cross-attention keys and values of its audio (computed
/// once), and self-attention keys (rotated) and values of every token read.
pub struct DecoderState {
    width: usize,
    cross: Vec<CrossCache>,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl DecoderState {
    /// Tokens in the self-attention cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the caches.
    pub fn bytes(&self) -> usize {
        let cross: usize = self.cross.iter().map(CrossCache::bytes).sum();
        let own: usize = self.keys.iter().chain(&self.values).map(Vec::len).sum();
        cross + own * std::mem::size_of::<f32>()
    }

    /// Forgets the last `drop` tokens (guessed tokens the model disagreed with).
    pub fn truncate(&mut self, drop: usize) {
        self.len = self.len.saturating_sub(drop);
        for cache in self.keys.iter_mut().chain(self.values.iter_mut()) {
            cache.truncate(self.len * self.width);
        }
    }
}

/// A sequence being decoded: its caches and where its guided greedy search stands.
pub struct Decoding {
    pub state: DecoderState,
    pub search: GuidedGreedy,
}

impl Decoding {
    pub fn is_done(&self) -> bool {
        self.search.is_done()
    }
}

impl BatchedDecoder {
    /// Loads the weights of a float32 merged decoder file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::ModelFileMissing {
                model: DECODER,
                path: path.to_path_buf(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| load_error(path, e.to_string()))?;
        let graph = onnx_proto::read_model(&bytes).map_err(|e| load_error(path, e.to_string()))?;
        drop(bytes);
        Weights::new(&graph)
            .decoder()
            .map_err(|cause| load_error(path, cause))
    }

    /// Tokens the decoder knows.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// A sequence over one piece of encoded audio: its cross-attention caches.
    pub fn begin(&self, audio: &EncodedAudio) -> Result<DecoderState, ModelError> {
        if audio.width != self.width || audio.states.len() != audio.frames * audio.width {
            return Err(ModelError::InvalidInput {
                model: DECODER,
                cause: format!(
                    "{} values of width {} for {} frames; the decoder takes width {}",
                    audio.states.len(),
                    audio.width,
                    audio.frames,
                    self.width
                ),
            });
        }
        let cross = self
            .layers
            .iter()
            .map(|layer| {
                let attention = &layer.cross_attention;
                CrossCache::new(
                    &attention.k.forward_rows_here(&audio.states, audio.frames),
                    &attention.v.forward_rows_here(&audio.states, audio.frames),
                    audio.frames,
                    self.head_dim,
                )
            })
            .collect();
        Ok(DecoderState {
            width: self.width,
            cross,
            keys: vec![Vec::new(); self.layers.len()],
            values: vec![Vec::new(); self.layers.len()],
            len: 0,
        })
    }

    /// One pass: reads `feed` tokens into each sequence, and returns, per sequence,
    /// the model's greedy choice after each token it read.
    pub fn step(
        &self,
        batch: &mut [(&mut DecoderState, &[i64])],
    ) -> Result<Vec<Vec<i64>>, ModelError> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { self.step_avx2(batch) };
        }
        self.step_here(batch)
    }

    /// [`step`](Self::step) compiled for AVX2: the norms, rotations, self-attention
    /// and gating between the projections run eight floats wide instead of the
    /// baseline's four (7–9 % of a batch-8 step). No fused multiply-add and the same
    /// order of every sum, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn step_avx2(
        &self,
        batch: &mut [(&mut DecoderState, &[i64])],
    ) -> Result<Vec<Vec<i64>>, ModelError> {
        self.step_here(batch)
    }

    #[inline(always)]
    fn step_here(
        &self,
        batch: &mut [(&mut DecoderState, &[i64])],
    ) -> Result<Vec<Vec<i64>>, ModelError> {
        // Each row: its sequence and its position in that sequence.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        let mut x = Vec::new();
        for (s, (state, feed)) in batch.iter().enumerate() {
            for (j, &token) in feed.iter().enumerate() {
                let id = usize::try_from(token)
                    .ok()
                    .filter(|&id| id < self.vocab)
                    .ok_or_else(|| ModelError::InvalidInput {
                        model: DECODER,
                        cause: format!("token {token} is outside the vocabulary"),
                    })?;
                x.extend_from_slice(&self.embed[id * self.width..(id + 1) * self.width]);
                rows.push((s, state.len + j));
            }
        }
        let count = rows.len();
        let rotations: Vec<Vec<(f32, f32)>> = rows
            .iter()
            .map(|&(_, position)| self.rotation(position))
            .collect();
        let mut scores = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer_norm(&x, &layer.input_norm);
            let attention = &layer.self_attention;
            // Query, key and value read the same rows: quantized once for the three.
            let h = attention.q.quantize_rows(&h, count);
            let mut q = attention.q.forward_quantized_here(&h);
            let mut k = attention.k.forward_quantized_here(&h);
            let v = attention.v.forward_quantized_here(&h);
            for (r, rotation) in rotations.iter().enumerate() {
                let span = r * self.width..(r + 1) * self.width;
                self.rotate(&mut q[span.clone()], rotation);
                self.rotate(&mut k[span], rotation);
            }
            for (r, &(s, _)) in rows.iter().enumerate() {
                let span = r * self.width..(r + 1) * self.width;
                batch[s].0.keys[l].extend_from_slice(&k[span.clone()]);
                batch[s].0.values[l].extend_from_slice(&v[span]);
            }
            let mut mixed = vec![0f32; count * self.width];
            for (r, &(s, position)) in rows.iter().enumerate() {
                let state = &*batch[s].0;
                let span = r * self.width..(r + 1) * self.width;
                attend_rows(
                    &q[span.clone()],
                    &state.keys[l],
                    &state.values[l],
                    position + 1,
                    self.head_dim,
                    &mut scores,
                    &mut mixed[span],
                );
            }
            add(&mut x, &attention.out.forward_rows_here(&mixed, count));

            let h = layer_norm(&x, &layer.post_attention_norm);
            let attention = &layer.cross_attention;
            let q = attention.q.forward_rows_here(&h, count);
            for (r, &(s, _)) in rows.iter().enumerate() {
                let span = r * self.width..(r + 1) * self.width;
                batch[s].0.cross[l].attend(&q[span.clone()], &mut scores, &mut mixed[span]);
            }
            add(&mut x, &attention.out.forward_rows_here(&mixed, count));

            let h = layer_norm(&x, &layer.final_norm);
            let mut up = layer.up.forward_rows_here(&h, count);
            add_bias(&mut up, &layer.up_bias);
            let gated = gate(&up, layer.up_bias.len() / 2);
            let mut down = layer.down.forward_rows_here(&gated, count);
            add_bias(&mut down, &layer.down_bias);
            add(&mut x, &down);
        }
        let h = layer_norm(&x, &self.norm);
        let choices = self
            .logits
            .largest_columns_here(&h, count)
            .into_iter()
            .flatten()
            .map(|id| id as i64);
        let mut per_sequence = vec![Vec::new(); batch.len()];
        for (&(s, _), choice) in rows.iter().zip(choices) {
            per_sequence[s].push(choice);
        }
        for (state, feed) in batch.iter_mut() {
            state.len += feed.len();
        }
        Ok(per_sequence)
    }

    /// One pass over the unfinished `decodings`: each reads what its search feeds
    /// it, then takes the model's choices (dropping cached guesses that failed).
    pub fn advance(&self, decodings: &mut [&mut Decoding]) -> Result<(), ModelError> {
        let mut active: Vec<&mut Decoding> = decodings
            .iter_mut()
            .map(|d| &mut **d)
            .filter(|d| !d.is_done())
            .collect();
        let feeds: Vec<Vec<i64>> = active.iter().map(|d| d.search.feed().to_vec()).collect();
        let choices = {
            let mut batch: Vec<(&mut DecoderState, &[i64])> = active
                .iter_mut()
                .zip(&feeds)
                .map(|(d, feed)| (&mut d.state, feed.as_slice()))
                .collect();
            self.step(&mut batch)?
        };
        for (decoding, choices) in active.iter_mut().zip(choices) {
            let rejected = decoding
                .search
                .advance(&choices)
                .map_err(|_| ModelError::bad_output(DECODER, "no choice for a sequence"))?;
            decoding.state.truncate(rejected);
        }
        Ok(())
    }

    /// The `(cos, sin)` of each rotary frequency at `position`.
    #[inline(always)]
    fn rotation(&self, position: usize) -> Vec<(f32, f32)> {
        let position = position as f32;
        self.inv_freq
            .iter()
            .map(|&frequency| {
                let angle = frequency * position;
                (angle.cos(), angle.sin())
            })
            .collect()
    }

    /// Interleaved rotary embedding of one row (all heads).
    #[inline(always)]
    fn rotate(&self, row: &mut [f32], rotation: &[(f32, f32)]) {
        for head in row.chunks_exact_mut(self.head_dim) {
            for (i, &(cos, sin)) in rotation.iter().enumerate() {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos - b * sin;
                head[2 * i + 1] = b * cos + a * sin;
            }
        }
    }
}

fn load_error(path: &Path, cause: String) -> ModelError {
    ModelError::SessionLoad {
        model: DECODER,
        path: path.to_path_buf(),
        cause,
    }
}

/// Finds weights by the names of the nodes that use them.
struct Weights<'a> {
    graph: &'a Graph,
    nodes: HashMap<&'a str, &'a Node>,
}

impl<'a> Weights<'a> {
    fn new(graph: &'a Graph) -> Self {
        let mut nodes = HashMap::new();
        for node in graph.all_nodes() {
            nodes.entry(node.name.as_str()).or_insert(node);
        }
        Weights { graph, nodes }
    }

    /// The initializer that node `name` takes as input `index`.
    fn input(&self, name: &str, index: usize) -> Result<&'a FloatTensor, String> {
        let node = self
            .nodes
            .get(name)
            .ok_or_else(|| format!("no node {name}"))?;
        let input = node
            .inputs
            .get(index)
            .ok_or_else(|| format!("{name} has no input {index}"))?;
        self.graph
            .initializers
            .get(input)
            .ok_or_else(|| format!("{name}: input {input} is not a float initializer"))
    }

    fn vector(&self, name: &str, index: usize, len: usize) -> Result<Vec<f32>, String> {
        let tensor = self.input(name, index)?;
        if tensor.data.len() != len {
            return Err(format!(
                "{name}: {} values, expected {len}",
                tensor.data.len()
            ));
        }
        Ok(tensor.data.clone())
    }

    /// A `MatMul` weight (`[in, out]` in the graph) as int8 rows of `[out, in]`.
    fn linear(&self, name: &str) -> Result<Int8Linear, String> {
        let tensor = self.input(name, 1)?;
        let &[width, out] = &tensor.dims[..] else {
            return Err(format!("{name}: weight dims {:?}", tensor.dims));
        };
        let mut rows = vec![0f32; out * width];
        for (i, row) in tensor.data.chunks_exact(out).enumerate() {
            for (o, &value) in row.iter().enumerate() {
                rows[o * width + i] = value;
            }
        }
        Ok(Int8Linear::from_rows(&rows, out, width, Scaling::PerBlock))
    }

    fn attention(&self, layer: usize, kind: &str) -> Result<Attention, String> {
        let at = |projection: &str| format!("{PREFIX}/layers.{layer}/{kind}/{projection}/MatMul");
        Ok(Attention {
            q: self.linear(&at("q_proj"))?,
            k: self.linear(&at("k_proj"))?,
            v: self.linear(&at("v_proj"))?,
            out: self.linear(&at("dense"))?,
        })
    }

    fn decoder(&self) -> Result<BatchedDecoder, String> {
        let embed = self.input(&format!("{PREFIX}/embed_tokens/Gather"), 0)?;
        let &[vocab, width] = &embed.dims[..] else {
            return Err(format!("embedding dims {:?}", embed.dims));
        };
        if width % HEADS != 0 {
            return Err(format!("width {width} does not split into {HEADS} heads"));
        }
        let inv_freq = self
            .input(&format!("{PREFIX}/rotary_emb/MatMul"), 0)?
            .data
            .clone();
        let head_dim = width / HEADS;
        if inv_freq.is_empty() || inv_freq.len() * 2 > head_dim {
            return Err(format!("{} rotary frequencies", inv_freq.len()));
        }
        let mut layers = Vec::new();
        while self
            .nodes
            .contains_key(format!("{PREFIX}/layers.{}/input_layernorm/Mul", layers.len()).as_str())
        {
            let l = layers.len();
            let at = |part: &str| format!("{PREFIX}/layers.{l}/{part}");
            let up = self.linear(&at("mlp/up_proj/MatMul"))?;
            let down = self.linear(&at("mlp/down_proj/MatMul"))?;
            if up.out_features() != 2 * down.in_features() {
                return Err(format!("layer {l}: MLP widths do not gate"));
            }
            layers.push(Layer {
                input_norm: self.vector(&at("input_layernorm/Mul"), 1, width)?,
                post_attention_norm: self.vector(&at("post_attention_layernorm/Mul"), 1, width)?,
                final_norm: self.vector(&at("final_layernorm/Mul"), 1, width)?,
                self_attention: self.attention(l, "self_attn")?,
                cross_attention: self.attention(l, "encoder_attn")?,
                up_bias: self.vector(&at("mlp/up_proj/Add"), 0, up.out_features())?,
                down_bias: self.vector(&at("mlp/down_proj/Add"), 0, width)?,
                up,
                down,
            });
        }
        if layers.is_empty() {
            return Err("no decoder layers found".into());
        }
        Ok(BatchedDecoder {
            width,
            head_dim,
            vocab,
            logits: Int8Linear::from_rows(&embed.data, vocab, width, Scaling::PerBlock),
            embed: embed.data.clone(),
            inv_freq,
            layers,
            norm: self.vector(&format!("{PREFIX}/norm/Mul"), 1, width)?,
        })
    }
}

/// LayerNorm without bias over each row of `x`, as the graph computes it.
#[inline(always)]
fn layer_norm(x: &[f32], weight: &[f32]) -> Vec<f32> {
    let width = weight.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(width) {
        let mean = row.iter().sum::<f32>() / width as f32;
        let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let deviation = (variance + LAYER_NORM_EPSILON).sqrt();
        out.extend(
            row.iter()
                .zip(weight)
                .map(|(v, w)| (v - mean) / deviation * w),
        );
    }
    out
}

/// `silu(gate) · value` per row, where each row of `up` is `[value | gate]`.
#[inline(always)]
fn gate(up: &[f32], half: usize) -> Vec<f32> {
    let mut out = vec![0f32; up.len() / 2];
    for (row, out) in up.chunks_exact(2 * half).zip(out.chunks_exact_mut(half)) {
        let (value, gate) = row.split_at(half);
        for ((out, v), g) in out.iter_mut().zip(value).zip(gate) {
            *out = silu(*g) * v;
        }
    }
    out
}

#[inline(always)]
fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

#[inline(always)]
fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add(row, bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_centres_and_scales_each_row() {
        let out = layer_norm(&[1.0, 3.0, 10.0, 10.0], &[1.0, 2.0]);
        assert!(
            (out[0] + 1.0).abs() < 1e-3 && (out[1] - 2.0).abs() < 1e-3,
            "{out:?}"
        );
        assert_eq!(&out[2..], &[0.0, 0.0]);
    }

    #[test]
    fn gate_multiplies_value_by_silu_of_gate() {
        let out = gate(&[2.0, 0.0, 3.0, 100.0], 1);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 300.0).abs() < 1e-3);
    }
}
