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
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::build_causal_mask;

use super::int8::Int8Linear;

/// Positions RoPE tables are built for (as candle's `quantized_llama`).
pub const MAX_SEQ_LEN: usize = 4096;

/// One sequence's attention state: each layer's keys and values so far. Cloning shares
/// the tensors (they are never written in place), so a kept state costs nothing to
/// start from.
#[derive(Clone)]
pub struct KvState {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvState {
    /// Positions read so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

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
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
    device: Device,
}

impl Llama {
    /// Builds the model from a GGUF file's llama tensors (`general.architecture` llama:
    /// interleaved RoPE, as llama.cpp runs it).
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
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
                Int8Linear::from_qtensor(&content.tensor(
                    reader,
                    &format!("blk.{i}.{name}"),
                    device,
                )?)
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
        let (cos, sin) = rope_tables(rope_dim, freq_base, device)?;
        Ok(Llama {
            embeddings,
            layers,
            norm,
            output: Int8Linear::from_qtensor(&output)?,
            n_head,
            n_kv_head,
            head_dim: width / n_head,
            cos,
            sin,
            neg_inf: Tensor::new(f32::NEG_INFINITY, device)?,
            device: device.clone(),
        })
    }

    /// A state that has read nothing.
    pub fn empty_state(&self) -> KvState {
        KvState {
            layers: vec![None; self.layers.len()],
            len: 0,
        }
    }

    /// Reads each item's tokens after its state (extending it) in one pass and returns
    /// the logits after each item's last token, `[items, vocabulary]`. Every item needs
    /// at least one token.
    pub fn forward(&self, items: &mut [BatchItem]) -> candle_core::Result<Tensor> {
        if items.is_empty() || items.iter().any(|item| item.tokens.is_empty()) {
            candle_core::bail!("every sequence in a pass needs a token");
        }
        let tokens: Vec<u32> = items.iter().flat_map(|i| i.tokens).copied().collect();
        let mut x = self
            .embeddings
            .forward(&Tensor::new(tokens.as_slice(), &self.device)?)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let q = layer.wq.forward(&h)?;
            let k = layer.wk.forward(&h)?;
            let v = layer.wv.forward(&h)?;
            let mut rows = Vec::with_capacity(items.len());
            let mut offset = 0;
            for item in items.iter_mut() {
                let n = item.tokens.len();
                let (q, k, v) = (
                    q.narrow(0, offset, n)?,
                    k.narrow(0, offset, n)?,
                    v.narrow(0, offset, n)?,
                );
                rows.push(self.attend(index, item.state, (&q, &k, &v))?);
                offset += n;
            }
            let attended = Tensor::cat(&rows, 0)?;
            let x1 = layer.wo.forward(&attended)?.add(&x)?;
            let h = layer.ffn_norm.forward(&x1)?;
            let gated =
                (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = layer.down.forward(&gated)?.add(&x1)?;
        }
        let mut last = Vec::with_capacity(items.len());
        let mut end = 0u32;
        for item in items.iter_mut() {
            end += item.tokens.len() as u32;
            last.push(end - 1);
            item.state.len += item.tokens.len();
        }
        let x = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
        self.output.forward(&self.norm.forward(&x)?)
    }

    /// One sequence's attention in layer `index` for its new rows `(q, k, v)`
    /// (`[n, heads × head size]`): extends its state and returns `[n, width]`.
    ///
    /// Grouped-query attention without copying keys and values per query head: the
    /// query heads that share a key head are stacked as rows (`[kv heads, group × n,
    /// head size]`), so each key head meets all its queries in one matmul.
    fn attend(
        &self,
        index: usize,
        state: &mut KvState,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let (n, hd) = (q.dim(0)?, self.head_dim);
        let (kv_heads, group) = (self.n_kv_head, self.n_head / self.n_kv_head);
        let position = state.len;
        let heads =
            |t: &Tensor, count: usize| t.reshape((1, n, count, hd))?.transpose(1, 2)?.contiguous();
        let cos = self.cos.narrow(0, position, n)?;
        let sin = self.sin.narrow(0, position, n)?;
        let q = candle_nn::rotary_emb::rope_i(&heads(q, self.n_head)?, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope_i(&heads(k, kv_heads)?, &cos, &sin)?;
        let v = heads(v, kv_heads)?;
        let (k, v) = match &state.layers[index] {
            Some((k_kept, v_kept)) => (
                Tensor::cat(&[k_kept, &k], 2)?,
                Tensor::cat(&[v_kept, &v], 2)?,
            ),
            None => (k, v),
        };
        state.layers[index] = Some((k.clone(), v.clone()));
        let seen = k.dim(2)?;
        // Query head h uses key head h / group: heads are [kv heads, group] in order.
        let q = q.reshape((kv_heads, group * n, hd))?;
        let k = k.reshape((kv_heads, seen, hd))?;
        let v = v.reshape((kv_heads, seen, hd))?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let scores = if n > 1 {
            // Row (g, i) is query position i: the causal mask of n rows, per group.
            let mask = build_causal_mask(n, position, &self.device)?
                .unsqueeze(0)?
                .repeat((group, 1, 1))?
                .reshape((1, group * n, seen))?
                .broadcast_as(scores.shape())?;
            mask.where_cond(&self.neg_inf.broadcast_as(scores.shape())?, &scores)?
        } else {
            scores
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        weights
            .matmul(&v)?
            .reshape((1, self.n_head, n, hd))?
            .transpose(1, 2)?
            .reshape((n, self.n_head * hd))
    }

    /// Positions a sequence can reach (the RoPE tables' length).
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }
}

/// RoPE cos/sin tables `[MAX_SEQ_LEN, dim / 2]`.
fn rope_tables(dim: usize, base: f32, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let angles = Tensor::arange(0, MAX_SEQ_LEN as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((MAX_SEQ_LEN, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Row `row` of a `[items, vocabulary]` logits tensor.
pub fn logits_row(logits: &Tensor, row: usize) -> candle_core::Result<Tensor> {
    logits.i(row)
}
