//! A llama-architecture decoder (SmolLM2) that runs many sequences in one forward pass.
//!
//! candle's `quantized_llama` keeps one sequence's attention state inside the weights,
//! so two conversations cannot share a pass. Here the weights are read-only and each
//! sequence brings its own [`KvState`]. A pass takes any mix of sequences — one new
//! token for those decoding, a chunk of prompt for one being read — stacks all their
//! rows, and runs every linear layer once over the stack ([`Int8Linear`]: each weight
//! block is loaded once and dotted with every row). Only attention, which depends on
//! each sequence's own history, runs sequence by sequence.
//!
//! Every row goes through exactly the arithmetic it would alone (rows are quantized
//! and dotted independently), so a sequence's logits do not depend on what it was
//! batched with: a test checks this bit for bit.

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{Device, IndexOp, Module, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;

use super::attention::Attention;
pub use super::attention::KvState;
use crate::kernels::exp::silu;
use crate::kernels::{Int8Linear, Scaling};

/// Positions RoPE tables are built for (as candle's `quantized_llama`).
pub const MAX_SEQ_LEN: usize = 4096;

/// One sequence's part of a pass: `tokens` to read after `state`, which the pass
/// extends.
pub struct BatchItem<'a> {
    pub tokens: &'a [u32],
    pub state: &'a mut KvState,
}

struct Layer {
    attn_norm: RmsNorm,
    wq: Int8Linear,
    wk: Int8Linear,
    wv: Int8Linear,
    wo: Int8Linear,
    ffn_norm: RmsNorm,
    gate: Int8Linear,
    up: Int8Linear,
    down: Int8Linear,
}

/// The weights, shared read-only by every sequence.
pub struct Llama {
    embeddings: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Int8Linear,
    attention: Attention,
    device: Device,
}

impl Llama {
    /// Builds the model from a GGUF file's llama tensors (`general.architecture` llama:
    /// interleaved RoPE, as llama.cpp runs it), with one int8 scale per span of up to
    /// 256 values ([`Scaling::Wide`]): prompts read ~1.45x faster than with one per
    /// block, for a mean NLL within the spread of other int8 paths (docs/benchmarks.md;
    /// `cargo run --release --example llm_perplexity` compares them).
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Self::from_gguf_scaled(content, reader, device, Scaling::Wide)
    }

    /// [`from_gguf`](Self::from_gguf) with the int8 weights and inputs scaled as
    /// `scaling` says.
    pub fn from_gguf_scaled<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        scaling: Scaling,
    ) -> candle_core::Result<Self> {
        let md = |key: &str| match content.metadata.get(key) {
            Some(value) => Ok(value),
            None => candle_core::bail!("cannot find {key} in the GGUF metadata"),
        };
        let n_head = md("llama.attention.head_count")?.to_u32()? as usize;
        let n_kv_head = md("llama.attention.head_count_kv")?.to_u32()? as usize;
        let blocks = md("llama.block_count")?.to_u32()? as usize;
        let width = md("llama.embedding_length")?.to_u32()? as usize;
        let rope_dim = md("llama.rope.dimension_count")?.to_u32()? as usize;
        let eps = f64::from(md("llama.attention.layer_norm_rms_epsilon")?.to_f32()?);
        let freq_base = md("llama.rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.0);
        let mut tensor = |name: &str| content.tensor(reader, name, device);
        let embeddings_q = tensor("token_embd.weight")?;
        let embeddings = Embedding::new(embeddings_q.dequantize(device)?, width);
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        let output = match tensor("output.weight") {
            Ok(output) => output,
            Err(_) => embeddings_q, // tied to the embeddings, as in SmolLM2
        };
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut matmul = |name: &str| {
                Int8Linear::from_qtensor(
                    &content.tensor(reader, &format!("blk.{i}.{name}"), device)?,
                    scaling,
                )
            };
            layers.push(Layer {
                wq: matmul("attn_q.weight")?,
                wk: matmul("attn_k.weight")?,
                wv: matmul("attn_v.weight")?,
                wo: matmul("attn_output.weight")?,
                gate: matmul("ffn_gate.weight")?,
                up: matmul("ffn_up.weight")?,
                down: matmul("ffn_down.weight")?,
                attn_norm: RmsNorm::from_qtensor(
                    content.tensor(reader, &format!("blk.{i}.attn_norm.weight"), device)?,
                    eps,
                )?,
                ffn_norm: RmsNorm::from_qtensor(
                    content.tensor(reader, &format!("blk.{i}.ffn_norm.weight"), device)?,
                    eps,
                )?,
            });
        }
        if rope_dim != width / n_head {
            candle_core::bail!(
                "RoPE over part of a head ({rope_dim} of {}) is not supported",
                width / n_head
            );
        }
        Ok(Llama {
            embeddings,
            layers,
            norm,
            output: Int8Linear::from_qtensor(&output, scaling)?,
            attention: Attention::new(n_head, n_kv_head, width / n_head, MAX_SEQ_LEN, freq_base),
            device: device.clone(),
        })
    }

    /// A state that has read nothing.
    pub fn empty_state(&self) -> KvState {
        KvState::new(self.layers.len())
    }

    /// Reads each item's tokens after its state (extending it) in one pass and returns
    /// the logits after each item's last token, `[items, vocabulary]`. Every item needs
    /// at least one token.
    pub fn forward(&self, items: &mut [BatchItem]) -> candle_core::Result<Tensor> {
        if items.is_empty() || items.iter().any(|item| item.tokens.is_empty()) {
            candle_core::bail!("every sequence in a pass needs a token");
        }
        let tokens: Vec<u32> = items.iter().flat_map(|i| i.tokens).copied().collect();
        let total = tokens.len();
        let mut x = self
            .embeddings
            .forward(&Tensor::new(tokens.as_slice(), &self.device)?)?;
        for (index, layer) in self.layers.iter().enumerate() {
            // Each normalised stack is quantized once for the products that read it.
            let h: Vec<f32> = layer.attn_norm.forward(&x)?.flatten_all()?.to_vec1()?;
            let h = layer.wq.quantize_rows(&h, total);
            let q = layer.wq.forward_quantized(&h);
            let k = layer.wk.forward_quantized(&h);
            let v = layer.wv.forward_quantized(&h);
            let (q_width, kv_width) = (q.len() / total, k.len() / total);
            let mut attended = Vec::with_capacity(q.len());
            let mut offset = 0;
            for item in items.iter_mut() {
                let n = item.tokens.len();
                attended.extend(self.attention.attend(
                    item.state,
                    index,
                    &q[offset * q_width..(offset + n) * q_width],
                    &k[offset * kv_width..(offset + n) * kv_width],
                    &v[offset * kv_width..(offset + n) * kv_width],
                ));
                offset += n;
            }
            let attended = Tensor::from_vec(attended, (total, q_width), &self.device)?;
            let x1 = layer.wo.forward(&attended)?.add(&x)?;
            let h: Vec<f32> = layer.ffn_norm.forward(&x1)?.flatten_all()?.to_vec1()?;
            let h = layer.gate.quantize_rows(&h, total);
            let mut gated = layer.gate.forward_quantized(&h);
            let up = layer.up.forward_quantized(&h);
            for (g, u) in gated.iter_mut().zip(&up) {
                *g = silu(*g) * u;
            }
            let down = layer.down.forward_rows(&gated, total);
            let down = Tensor::from_vec(down, (total, layer.down.out_features()), &self.device)?;
            x = down.add(&x1)?;
        }
        let mut last = Vec::with_capacity(items.len());
        let mut end = 0u32;
        for item in items.iter_mut() {
            end += item.tokens.len() as u32;
            last.push(end - 1);
            item.state.advance(item.tokens.len());
        }
        let x = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
        self.output.forward(&self.norm.forward(&x)?)
    }

    /// Positions a sequence can reach (the RoPE tables' length).
    pub fn max_positions(&self) -> usize {
        self.attention.max_positions
    }
}

/// Row `row` of a `[items, vocabulary]` logits tensor.
pub fn logits_row(logits: &Tensor, row: usize) -> candle_core::Result<Tensor> {
    logits.i(row)
}
