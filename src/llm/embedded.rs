//! The embedded LLM: a GGUF llama-architecture model (SmolLM2-135M-Instruct) run on
//! the CPU with candle's quantized llama. `EmbeddedModel::generate` turns a chat
//! history into a streamed reply, handing each text piece to a callback that may stop
//! the reply between tokens. It blocks for the whole reply, so it belongs on the
//! inference worker thread that owns the model, never on an actix arbiter.
//!
//! Nothing survives a call: each one works on a fresh clone of the weights handle
//! (the weights themselves are shared `Arc`s), so its KV cache and candle's
//! attention-mask cache are dropped when the call returns, whatever way it returns.
//!
//! Threads: candle splits each quantized matmul over one process-wide pool of
//! `CANDLE_NUM_THREADS` (else `RAYON_NUM_THREADS`, else the core count) minus one
//! spinning workers, behind one lock. With other models on the same two cores, run with
//! `RAYON_NUM_THREADS=1`: each inference thread then computes inline, nothing spins,
//! and a busy neighbour no longer stalls every matmul on a preempted worker.

use std::fs::File;
use std::io::BufReader;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::{self, ModelWeights};

use super::chat::{encode_prompt, ChatMessage, ChatMlIds};
use super::error::LlmError;
use super::generation::{sampling, FinishReason, GenerationOutcome, GenerationParams};
use super::gguf;
use super::tokenizer::{StreamDecoder, Tokenizer};

/// Prompt tokens run per forward pass. The attention scores of one chunk take
/// `heads × chunk × context × 4` bytes (9 × 512 × 4096 × 4 = 75 MB at the largest), so
/// a long history cannot spike memory, while a short prompt still runs in one pass.
const PROMPT_CHUNK_TOKENS: usize = 512;

/// A loaded GGUF chat model and its tokenizer. `Send`; `clone()` is cheap and shares
/// the weights, so a pool loads once and gives each inference thread its own handle.
/// One copy of SmolLM2 holds ~310 MB resident (Q8_0 weights, plus the embedding table
/// that candle keeps in f32), with a ~440 MB peak while loading.
#[derive(Clone)]
pub struct EmbeddedModel {
    /// Pristine weights with empty caches; only ever cloned, never run.
    weights: ModelWeights,
    tokenizer: Arc<Tokenizer>,
    chatml: ChatMlIds,
    stop_ids: Vec<u32>,
    /// Positions the model can hold: candle precomputes RoPE for `MAX_SEQ_LEN` only.
    context_limit: usize,
    device: Device,
    path: PathBuf,
}

impl EmbeddedModel {
    /// Loads the model and its tokenizer from a GGUF file (about 1 s in release: the
    /// weights are re-encoded for speed, see `gguf.rs`).
    pub fn load(gguf_path: impl AsRef<Path>) -> Result<Self, LlmError> {
        let path = gguf_path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| LlmError::Open {
            path: path.clone(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let model_err = |source| LlmError::Model {
            path: path.clone(),
            source,
        };
        let content = gguf_file::Content::read(&mut reader).map_err(model_err)?;
        let tokenizer = gguf::tokenizer(&content).map_err(|source| LlmError::Tokenizer {
            path: path.clone(),
            source,
        })?;
        let chatml = ChatMlIds::find(&tokenizer)
            .ok_or_else(|| LlmError::NotChatMl { path: path.clone() })?;
        let trained = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(quantized_llama::MAX_SEQ_LEN, |n| n as usize);
        let mut fast = gguf::requantize_for_cpu(&content, &mut reader).map_err(model_err)?;
        let device = Device::Cpu;
        let weights =
            ModelWeights::from_gguf(fast.content, &mut fast.reader, &device).map_err(model_err)?;
        let mut stop_ids = vec![chatml.im_end, tokenizer.eos_id()];
        stop_ids.extend(tokenizer.special_id("<|endoftext|>"));
        Ok(Self {
            weights,
            tokenizer: Arc::new(tokenizer),
            chatml,
            stop_ids,
            context_limit: trained.min(quantized_llama::MAX_SEQ_LEN),
            device,
            path,
        })
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Most tokens a prompt and its reply can hold together.
    pub fn context_limit(&self) -> usize {
        self.context_limit
    }

    /// Generates the assistant's reply to `messages`, calling `on_token` with each
    /// piece of text as soon as it is whole UTF-8. Returning `Break` from `on_token`
    /// stops the reply before the next token is computed.
    pub fn generate(
        &mut self,
        messages: &[ChatMessage],
        params: &GenerationParams,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationOutcome, LlmError> {
        let start = Instant::now();
        let prompt = encode_prompt(&self.tokenizer, self.chatml, messages);
        let limit = self.context_limit;
        if prompt.len() >= limit {
            return Err(LlmError::PromptTooLong {
                prompt_tokens: prompt.len(),
                limit,
            });
        }
        let max_new = params.max_tokens.min(limit - prompt.len());
        // A fresh handle: empty KV cache, empty mask cache, both dropped on return.
        let mut model = self.weights.clone();
        let mut logits = self.run_prompt(&mut model, &prompt)?;
        let mut sampler = LogitsProcessor::from_sampling(params.seed, sampling(params));
        let mut reply: Vec<u32> = Vec::with_capacity(max_new);
        let mut decoder = StreamDecoder::default();
        let mut first_token_ms = None;
        let finish_reason = loop {
            if reply.len() >= max_new {
                break FinishReason::Length;
            }
            let next = self.pick(&mut sampler, &logits, &reply, params)?;
            if self.stop_ids.contains(&next) {
                break FinishReason::Stop;
            }
            reply.push(next);
            let piece = decoder.push(&self.tokenizer, next);
            if !piece.is_empty() {
                first_token_ms.get_or_insert_with(|| elapsed_ms(start));
                if on_token(&piece).is_break() {
                    break FinishReason::Cancelled;
                }
            }
            if reply.len() < max_new {
                let position = prompt.len() + reply.len() - 1;
                logits = self.forward(&mut model, &[next], position)?;
            }
        };
        if finish_reason != FinishReason::Cancelled {
            let tail = decoder.finish();
            if !tail.is_empty() {
                first_token_ms.get_or_insert_with(|| elapsed_ms(start));
                // The reply is over either way: nothing left to cancel.
                let _ = on_token(&tail);
            }
        }
        Ok(GenerationOutcome {
            tokens: reply.len(),
            cancelled: finish_reason == FinishReason::Cancelled,
            finish_reason,
            prompt_tokens: prompt.len(),
            first_token_ms,
            total_ms: elapsed_ms(start),
        })
    }

    /// Runs the prompt from position 0 in chunks; returns the last position's logits.
    fn run_prompt(&self, model: &mut ModelWeights, prompt: &[u32]) -> Result<Tensor, LlmError> {
        let mut logits = None;
        for (i, chunk) in prompt.chunks(PROMPT_CHUNK_TOKENS).enumerate() {
            logits = Some(self.forward(model, chunk, i * PROMPT_CHUNK_TOKENS)?);
        }
        // `encode_prompt` always yields at least `<|im_start|>assistant\n`.
        logits.ok_or_else(|| LlmError::Inference(candle_core::Error::Msg("empty prompt".into())))
    }

    /// One forward pass of `tokens` starting at `position`, on the calling thread.
    /// Not `Device::with_context`: that hops onto candle's one process-wide rayon pool,
    /// which would funnel every inference thread's passes through the same workers.
    fn forward(
        &self,
        model: &mut ModelWeights,
        tokens: &[u32],
        position: usize,
    ) -> Result<Tensor, LlmError> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        Ok(model.forward(&input, position)?.squeeze(0)?)
    }

    /// Applies the repeat penalty over the recent reply, then samples.
    fn pick(
        &self,
        sampler: &mut LogitsProcessor,
        logits: &Tensor,
        reply: &[u32],
        params: &GenerationParams,
    ) -> Result<u32, LlmError> {
        let recent = &reply[reply.len().saturating_sub(params.repeat_last_n)..];
        if params.repeat_penalty == 1.0 || recent.is_empty() {
            return Ok(sampler.sample(logits)?);
        }
        let penalised = candle_transformers::utils::apply_repeat_penalty(
            logits,
            params.repeat_penalty,
            recent,
        )?;
        Ok(sampler.sample(&penalised)?)
    }
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// candle runs its matrix work on one process-wide rayon pool of busy-waiting threads
/// behind one lock; with several inference threads (or a busy second core) decode time
/// swings from 11 to 150 ms per token. One rayon thread makes each inference thread
/// compute on its own. candle reads the setting once, so call this at process start,
/// before any other thread exists; an explicit `RAYON_NUM_THREADS` is left alone.
pub fn pin_candle_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}

    #[test]
    fn model_is_send_and_error_is_send_sync() {
        assert_send::<EmbeddedModel>();
        assert_error::<LlmError>();
    }

    #[test]
    fn load_error_names_the_file() {
        let Err(err) = EmbeddedModel::load("/nonexistent/model.gguf") else {
            panic!("loading a missing file succeeded");
        };
        assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
    }
}
