//! The embedded LLM: a GGUF llama-architecture model (SmolLM2-135M-Instruct) run on
//! the CPU with candle's quantized llama. `EmbeddedModel::generate` turns a chat
//! history into a streamed reply, handing each text piece to a callback that may stop
//! the reply between tokens. It blocks for the whole reply, so it belongs on the
//! inference worker thread that owns the model, never on an actix arbiter.
//!
//! Each call works on a clone of a model state (the weights themselves are shared
//! `Arc`s): the pristine weights, or a state kept in the [`PrefixCache`] that has
//! already read the start of the prompt (the conversation so far, or the system
//! prompt), so a turn reads only its new tokens. Each reply leaves the state after
//! its prompt and, when it ends by itself, the state after it (end-of-turn marker
//! included) as its conversation's entries.
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

use super::chat::{encode_messages, encode_open, encode_prompt, ChatMessage, ChatMlIds, Role};
use super::error::LlmError;
use super::generation::{sampling, FinishReason, GenerationOutcome, GenerationParams};
use super::gguf;
use super::prefix_cache::{Continuation, Covered, Open, Owner, PrefixCache};
use super::tokenizer::{StreamDecoder, Tokenizer};
use uuid::Uuid;

/// Prompt tokens run per forward pass. Between passes the reply can be cancelled, so a
/// chunk bounds how long a barge-in or a teardown waits for a long prompt (about 0.3 s
/// for 32 tokens here); it also bounds the attention scores' memory.
const PROMPT_CHUNK_TOKENS: usize = 32;

/// Tokens per forward pass when reading ahead: smaller, so a reply waiting for the
/// thread waits at most one short chunk.
const READ_AHEAD_CHUNK_TOKENS: usize = 8;

/// A loaded GGUF chat model and its tokenizer. `Send`; `clone()` is cheap and shares
/// the weights, so a pool loads once and gives each inference thread its own handle.
/// One copy of SmolLM2 holds ~310 MB resident (Q8_0 weights, plus the embedding table
/// that candle keeps in f32), with a ~440 MB peak while loading. A clone starts with an
/// empty [`PrefixCache`] of the same size.
pub struct EmbeddedModel {
    /// Pristine weights with empty caches; only ever cloned, never run.
    weights: ModelWeights,
    tokenizer: Arc<Tokenizer>,
    chatml: ChatMlIds,
    stop_ids: Vec<u32>,
    /// Positions the model can hold: candle precomputes RoPE for `MAX_SEQ_LEN` only.
    context_limit: usize,
    /// Bytes of KV state per token read: layers × 2 × KV heads × head size × 4.
    kv_bytes_per_token: usize,
    /// This handle's kept states (empty in a fresh clone: each thread has its own).
    cache: PrefixCache<ModelWeights>,
    device: Device,
    path: PathBuf,
}

impl Clone for EmbeddedModel {
    fn clone(&self) -> Self {
        EmbeddedModel {
            weights: self.weights.clone(),
            tokenizer: Arc::clone(&self.tokenizer),
            chatml: self.chatml,
            stop_ids: self.stop_ids.clone(),
            context_limit: self.context_limit,
            kv_bytes_per_token: self.kv_bytes_per_token,
            cache: self.cache.empty_like(),
            device: self.device.clone(),
            path: self.path.clone(),
        }
    }
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
        let kv_bytes_per_token = kv_bytes_per_token(&content.metadata);
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
            kv_bytes_per_token,
            cache: PrefixCache::new(0, kv_bytes_per_token),
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

    /// Keep up to `bytes` of attention state between calls (0: none).
    pub fn with_kv_cache(mut self, bytes: usize) -> Self {
        self.cache = PrefixCache::new(bytes, self.kv_bytes_per_token);
        self
    }

    /// Bytes of attention state this handle keeps now.
    pub fn kv_cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Most tokens a prompt and its reply can hold together.
    pub fn context_limit(&self) -> usize {
        self.context_limit
    }

    /// Generates the assistant's reply to `messages`, calling `on_token` with each
    /// piece of text as soon as it is whole UTF-8. Returning `Break` from `on_token`
    /// stops the reply before the next token is computed. Nothing is kept for later
    /// calls but the shared system-prompt state.
    pub fn generate(
        &mut self,
        messages: &[ChatMessage],
        params: &GenerationParams,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationOutcome, LlmError> {
        self.generate_for(None, messages, params, &|| false, on_token)
    }

    /// [`generate`](Self::generate) for a conversation: the prompt starts from the
    /// kept state (its own, or the shared system prompt's) that covers the most of it,
    /// and the reply leaves its states for the next turn. `cancelled` is also asked
    /// between prompt chunks, so a long prompt stops within one chunk.
    pub fn generate_for(
        &mut self,
        conversation: Option<Uuid>,
        messages: &[ChatMessage],
        params: &GenerationParams,
        cancelled: &dyn Fn() -> bool,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationOutcome, LlmError> {
        let start = Instant::now();
        let (mut model, position, cached, rest) = self.start_state(conversation, messages)?;
        let prompt_tokens = position + rest.len();
        let limit = self.context_limit;
        if prompt_tokens >= limit {
            return Err(LlmError::PromptTooLong {
                prompt_tokens,
                limit,
            });
        }
        let max_new = params.max_tokens.min(limit - prompt_tokens);
        let outcome = |tokens, finish_reason, first_token_ms| GenerationOutcome {
            tokens,
            cancelled: finish_reason == FinishReason::Cancelled,
            finish_reason,
            prompt_tokens,
            cached_tokens: cached,
            first_token_ms,
            total_ms: elapsed_ms(start),
        };
        let Some(mut logits) = self.run_prompt(&mut model, &rest, position, cancelled)? else {
            return Ok(outcome(0, FinishReason::Cancelled, None));
        };
        if let Some(id) = conversation {
            // The prompt read, the reply not begun: still the right start after a
            // barge-in, whatever of the reply was said.
            let covers = Covered {
                messages: messages.to_vec(),
                open: Some(Open::Reply(String::new())),
            };
            let owner = Owner::Conversation(id);
            self.cache
                .insert(owner, covers, prompt_tokens, model.clone());
        }
        let mut sampler = LogitsProcessor::from_sampling(params.seed, sampling(params));
        let mut reply: Vec<u32> = Vec::with_capacity(max_new);
        let mut text = String::new();
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
                text.push_str(&piece);
            }
            if reply.len() < max_new {
                let position = prompt_tokens + reply.len() - 1;
                logits = self.forward(&mut model, &[next], position)?;
            }
        };
        if finish_reason != FinishReason::Cancelled {
            let tail = decoder.finish();
            if !tail.is_empty() {
                first_token_ms.get_or_insert_with(|| elapsed_ms(start));
                // The reply is over either way: nothing left to cancel.
                let _ = on_token(&tail);
                text.push_str(&tail);
            }
            if let Some(id) = conversation {
                let read = (prompt_tokens, finish_reason == FinishReason::Stop);
                self.keep_reply(id, model, messages, read, &reply, text)?;
            }
        }
        Ok(outcome(reply.len(), finish_reason, first_token_ms))
    }

    /// Reads the start of what the user is still saying (`words`, from a partial
    /// transcript, after `history`) into the conversation's kept state, so the reply to
    /// the finished turn reads only what came after. Starts only from a kept state (the
    /// conversation's or the shared system prompt's): reading a whole history on a
    /// guess is not worth a busy thread. Returns how many tokens it read.
    pub fn read_ahead_for(
        &mut self,
        conversation: Uuid,
        history: &[ChatMessage],
        words: &str,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<usize, LlmError> {
        let mut prompt = history.to_vec();
        prompt.push(ChatMessage::user(words));
        let Some(hit) = self.cache.lookup(Some(conversation), &prompt) else {
            return Ok(0);
        };
        let rest = self.encode_open_rest(&prompt, hit.from);
        let read = hit.tokens + rest.len();
        // Room for the turn's last words and a reply, or it is not worth reading.
        if rest.is_empty() || read + 2 * PROMPT_CHUNK_TOKENS >= self.context_limit {
            return Ok(0);
        }
        let mut model = hit.state;
        let chunk = READ_AHEAD_CHUNK_TOKENS;
        if self
            .run_chunked(&mut model, &rest, chunk, hit.tokens, cancelled)?
            .is_none()
        {
            return Ok(0);
        }
        let covers = Covered {
            messages: history.to_vec(),
            open: Some(Open::User(words.to_string())),
        };
        self.cache
            .insert(Owner::Conversation(conversation), covers, read, model);
        Ok(rest.len())
    }

    /// The tokens of `prompt`, whose last message is still open, after what a kept
    /// state has read (`from`).
    fn encode_open_rest(&self, prompt: &[ChatMessage], from: Continuation) -> Vec<u32> {
        let last = prompt.len() - 1;
        let open = &prompt[last];
        if from.messages == last {
            if let Some(read) = from.open_bytes {
                return self.tokenizer.encode(&open.content[read..]);
            }
        }
        let mut rest = self.encode_rest_closed(&prompt[..last], from);
        rest.extend(encode_open(
            &self.tokenizer,
            self.chatml,
            open.role,
            &open.content,
        ));
        rest
    }

    /// The state to start from, the position it has read to, how many of those tokens
    /// came from a kept state (the rest were read just now), and the prompt tokens
    /// still to read: a kept state, or the pristine weights after reading (and
    /// sharing) the system prompt.
    fn start_state(
        &mut self,
        conversation: Option<Uuid>,
        messages: &[ChatMessage],
    ) -> Result<(ModelWeights, usize, usize, Vec<u32>), LlmError> {
        if let Some(hit) = self.cache.lookup(conversation, messages) {
            let rest = self.encode_rest(messages, hit.from);
            return Ok((hit.state, hit.tokens, hit.tokens, rest));
        }
        let prompt = encode_prompt(&self.tokenizer, self.chatml, messages);
        let mut model = self.weights.clone();
        let Some(system) = messages.first().filter(|m| m.role == Role::System) else {
            return Ok((model, 0, 0, prompt));
        };
        let system_len = encode_prompt(&self.tokenizer, self.chatml, &messages[..1]).len()
            - encode_prompt(&self.tokenizer, self.chatml, &[]).len();
        if system_len >= prompt.len() || system_len >= self.context_limit {
            return Ok((model, 0, 0, prompt));
        }
        self.run_prompt(&mut model, &prompt[..system_len], 0, &|| false)?;
        let covers = Covered::closed(vec![system.clone()]);
        self.cache
            .insert(Owner::Shared, covers, system_len, model.clone());
        Ok((model, system_len, 0, prompt[system_len..].to_vec()))
    }

    /// The tokens of `messages` after what a kept state has read (`from`): the rest of
    /// an open message and its closing, then the remaining messages and the reply
    /// header.
    fn encode_rest(&self, messages: &[ChatMessage], from: Continuation) -> Vec<u32> {
        let mut rest = self.encode_rest_closed(messages, from);
        rest.push(self.chatml.im_start);
        rest.extend(self.tokenizer.encode("assistant\n"));
        rest
    }

    /// [`encode_rest`](Self::encode_rest) without the reply header.
    fn encode_rest_closed(&self, messages: &[ChatMessage], from: Continuation) -> Vec<u32> {
        let mut rest = Vec::new();
        let mut next = from.messages;
        if let Some(read) = from.open_bytes {
            rest.extend(self.tokenizer.encode(&messages[next].content[read..]));
            rest.push(self.chatml.im_end);
            rest.extend(self.tokenizer.encode("\n"));
            next += 1;
        }
        rest.extend(encode_messages(
            &self.tokenizer,
            self.chatml,
            &messages[next..],
        ));
        rest
    }

    /// Keep the state after a finished reply for the conversation's next turn: read
    /// what the next prompt holds after it (its last token, when `max_tokens` cut it
    /// before it was read, then `<|im_end|>\n`), so the next turn starts exactly where
    /// its new message begins. `read` is the prompt's length and whether every reply
    /// token has been read (the reply stopped by itself).
    fn keep_reply(
        &mut self,
        conversation: Uuid,
        mut model: ModelWeights,
        messages: &[ChatMessage],
        (prompt_tokens, all_read): (usize, bool),
        reply: &[u32],
        text: String,
    ) -> Result<(), LlmError> {
        let read_reply = reply.len() - usize::from(!all_read && !reply.is_empty());
        let mut tail: Vec<u32> = reply[read_reply..].to_vec();
        tail.push(self.chatml.im_end);
        tail.extend(self.tokenizer.encode("\n"));
        let position = prompt_tokens + read_reply;
        if position + tail.len() >= self.context_limit {
            return Ok(());
        }
        self.run_prompt(&mut model, &tail, position, &|| false)?;
        let mut covered = messages.to_vec();
        covered.push(ChatMessage::assistant(text));
        let covers = Covered::closed(covered);
        let owner = Owner::Conversation(conversation);
        self.cache
            .insert(owner, covers, position + tail.len(), model);
        Ok(())
    }

    /// Runs `tokens` from `position` in chunks; returns the last position's logits, or
    /// `None` if `cancelled` said so between chunks.
    fn run_prompt(
        &self,
        model: &mut ModelWeights,
        tokens: &[u32],
        position: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Tensor>, LlmError> {
        self.run_chunked(model, tokens, PROMPT_CHUNK_TOKENS, position, cancelled)
    }

    /// [`run_prompt`](Self::run_prompt) with `chunk` tokens per forward pass.
    fn run_chunked(
        &self,
        model: &mut ModelWeights,
        tokens: &[u32],
        chunk: usize,
        position: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Tensor>, LlmError> {
        let mut logits = None;
        let mut at = position;
        for chunk in tokens.chunks(chunk) {
            if cancelled() {
                return Ok(None);
            }
            logits = Some(self.forward(model, chunk, at)?);
            at += chunk.len();
        }
        // A lookup never covers a whole prompt, and `encode_prompt` always yields at
        // least `<|im_start|>assistant\n`: there is always a token to read.
        logits
            .map(Some)
            .ok_or_else(|| LlmError::Inference(candle_core::Error::Msg("empty prompt".into())))
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

/// Bytes of f32 KV state per token: layers × (key + value) × KV heads × head size × 4.
fn kv_bytes_per_token(metadata: &std::collections::HashMap<String, gguf_file::Value>) -> usize {
    let get = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
    };
    let layers = get("llama.block_count").unwrap_or(30);
    let heads = get("llama.attention.head_count").unwrap_or(9).max(1);
    let kv_heads = get("llama.attention.head_count_kv").unwrap_or(heads);
    let width = get("llama.embedding_length").unwrap_or(576);
    layers * 2 * kv_heads * (width / heads) * 4
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// candle runs its matrix work on one process-wide pool of threads that spin between
/// work items, behind one lock; with several inference threads (or a busy second core)
/// decode time swings from 11 to 150 ms per token. One thread makes each inference
/// thread compute on its own (`llm.matmul_threads`). candle reads the setting once, so
/// call this at process start, before any other thread exists; an explicit
/// `RAYON_NUM_THREADS` is left alone.
pub fn pin_candle_threads(threads: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
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
