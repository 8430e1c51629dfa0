//! Reading a GGUF model file for `EmbeddedModel`: the tokenizer from the
//! `tokenizer.ggml.*` metadata, and the weights, with block formats that candle only
//! runs through scalar code re-encoded as Q8_0 on the way in.
//!
//! Why: candle 0.11 has AVX2 dot products for Q4_0, Q8_0 and the k-quants, but not for
//! Q4_1, Q5_0 or Q5_1. The SmolLM2 file is Q4_1: on one thread of the 2-core target it
//! decoded at ~13 tokens/s and ran a 100-token prompt in ~6.8 s; as Q8_0, ~55 tokens/s
//! and ~0.9 s. Q8_0 keeps one byte per weight, so the Q4_1 values survive almost
//! exactly; greedy replies match on short answers and drift after a near-tie on long
//! ones, as far as Q4_1 itself drifts from an f32 run of the same weights. Costs ~50 MB
//! more memory and ~0.8 s more loading.

use std::io::{Cursor, Read, Seek};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use super::tokenizer::{Tokenizer, TokenizerError};

/// Block formats without a SIMD kernel in candle's CPU backend (all 32-wide, like Q8_0).
const SCALAR_ONLY: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// Builds the tokenizer from `tokenizer.ggml.{tokens,token_type,merges,bos_token_id,
/// eos_token_id}`.
pub fn tokenizer(content: &Content) -> Result<Tokenizer, TokenizerError> {
    let md = &content.metadata;
    let get = |key: &'static str| md.get(key).ok_or(TokenizerError::Metadata { key });
    let strings = |key: &'static str| -> Result<Vec<String>, TokenizerError> {
        let values = get(key)?
            .to_vec()
            .map_err(|_| TokenizerError::Metadata { key })?;
        values
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|_| TokenizerError::Metadata { key })
            })
            .collect()
    };
    let id = |key: &'static str| {
        get(key)?
            .to_u32()
            .map_err(|_| TokenizerError::Metadata { key })
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Option<Vec<i32>> = md
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|vs| vs.iter().map(|v| v.to_i32().unwrap_or(1)).collect());
    Tokenizer::new(
        &tokens,
        types.as_deref(),
        &merges,
        id("tokenizer.ggml.bos_token_id")?,
        id("tokenizer.ggml.eos_token_id")?,
    )
}

/// A GGUF file held in memory, ready for `ModelWeights::from_gguf`.
pub struct InMemoryGguf {
    pub content: Content,
    pub reader: Cursor<Vec<u8>>,
    /// How many tensors were re-encoded as Q8_0.
    pub requantized: usize,
}

/// Reads every tensor of `content` from `reader`, re-encodes those in a format without
/// SIMD kernels as Q8_0, and writes the result to an in-memory GGUF, same metadata.
pub fn requantize_for_cpu<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
) -> candle_core::Result<InMemoryGguf> {
    let device = Device::Cpu;
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(content.tensor_infos.len());
    let mut requantized = 0;
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(reader, name, &device)?;
        let tensor = if SCALAR_ONLY.contains(&tensor.dtype()) {
            requantized += 1;
            QTensor::quantize(&tensor.dequantize(&device)?, GgmlDType::Q8_0)?
        } else {
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }
    let metadata: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut reader = Cursor::new(Vec::new());
    gguf_file::write(&mut reader, &metadata, &refs)?;
    drop(tensors);
    reader.set_position(0);
    let content = Content::read(&mut reader)?;
    Ok(InMemoryGguf {
        content,
        reader,
        requantized,
    })
}
