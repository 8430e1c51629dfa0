//! The embedded LLM: a GGUF llama-architecture model (SmolLM2-135M-Instruct) run on
//! the CPU with candle. Replies and read-aheads are [`Sequence`]s; [`step`] runs the
//! next piece of many of them in one batched forward pass ([`Llama`]): one token for
//! each reply that is generating, a chunk of prompt for those being read. The LLM
//! batcher (`workers::llm_batcher`) drives it continuously across conversations;
//! [`generate`] and [`read_ahead_for`] drive one sequence alone (tests, benches). It
//! blocks, so it belongs on an inference thread, never on an actix arbiter.
//!
//! Each sequence starts from a kept state in the [`PrefixCache`] when one covers the
//! start of its prompt (the conversation so far, or the shared system prompt), so a
//! turn reads only its new tokens; it leaves the state after its prompt and, when the
//! reply ends by itself, the state after the reply for the next turn.
//!
//! Threads: candle splits each quantized matmul over one process-wide pool of
//! `RAYON_NUM_THREADS` (set by [`pin_candle_threads`] from `llm.matmul_threads`).
//!
//! [`step`]: EmbeddedModel::step
//! [`generate`]: EmbeddedModel::generate
//! [`read_ahead_for`]: EmbeddedModel::read_ahead_for

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufReader;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;

use super::chat::{encode_messages, encode_open, encode_prompt, ChatMessage, ChatMlIds, Role};
use super::error::LlmError;
use super::generation::{sampling, FinishReason, GenerationOutcome, GenerationParams};
use super::gguf;
use super::llama::{logits_row, BatchItem, KvState, Llama, MAX_SEQ_LEN};
use super::prefix_cache::{Continuation, Covered, Open, Owner, PrefixCache};
use super::sequence::{Checkpoint, Phase, Progress, Reply, Sequence};
use super::tokenizer::{StreamDecoder, Tokenizer};
use uuid::Uuid;

/// Prompt tokens a reply reads per pass. Between passes the reply can be cancelled and
/// the other sequences take their next token, so a chunk bounds how long a barge-in,
/// a teardown or everyone else's next token waits for a long prompt; it also bounds
/// the attention scores' memory.
pub const PROMPT_CHUNK_TOKENS: usize = 32;

/// Tokens a read-ahead reads per pass: smaller, so it slows the passes it rides in
/// less.
const READ_AHEAD_CHUNK_TOKENS: usize = 8;

/// A loaded GGUF chat model and its tokenizer. `Send`; `clone()` is cheap and shares
/// the weights. One copy of SmolLM2 holds ~310 MB resident (Q8_0 weights, plus the
/// embedding table kept in f32), with a ~440 MB peak while loading. A clone starts with
/// an empty [`PrefixCache`] of the same size.
pub struct EmbeddedModel {
    weights: Arc<Llama>,
    tokenizer: Arc<Tokenizer>,
    chatml: ChatMlIds,
    stop_ids: Vec<u32>,
    /// Positions the model can hold: the RoPE tables and the trained context.
    context_limit: usize,
    /// Bytes of KV state per token read: layers × 2 × KV heads × head size × 4.
    kv_bytes_per_token: usize,
    /// This handle's kept states (empty in a fresh clone: each thread has its own).
    cache: PrefixCache<KvState>,
    path: PathBuf,
}

impl Clone for EmbeddedModel {
    fn clone(&self) -> Self {
        EmbeddedModel {
            weights: Arc::clone(&self.weights),
            tokenizer: Arc::clone(&self.tokenizer),
            chatml: self.chatml,
            stop_ids: self.stop_ids.clone(),
            context_limit: self.context_limit,
            kv_bytes_per_token: self.kv_bytes_per_token,
            cache: self.cache.empty_like(),
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
            .map_or(MAX_SEQ_LEN, |n| n as usize);
        let kv_bytes_per_token = kv_bytes_per_token(&content.metadata);
        let mut fast = gguf::requantize_for_cpu(&content, &mut reader).map_err(model_err)?;
        let weights =
            Llama::from_gguf(&fast.content, &mut fast.reader, &Device::Cpu).map_err(model_err)?;
        let mut stop_ids = vec![chatml.im_end, tokenizer.eos_id()];
        stop_ids.extend(tokenizer.special_id("<|endoftext|>"));
        Ok(Self {
            context_limit: trained.min(weights.max_positions()),
            weights: Arc::new(weights),
            tokenizer: Arc::new(tokenizer),
            chatml,
            stop_ids,
            kv_bytes_per_token,
            cache: PrefixCache::new(0, kv_bytes_per_token),
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

    /// [`generate`](Self::generate) for a conversation, as a batch of one: the prompt
    /// starts from the kept state that covers the most of it, and the reply leaves its
    /// states for the next turn. `cancelled` is asked between passes.
    pub fn generate_for(
        &mut self,
        conversation: Option<Uuid>,
        messages: &[ChatMessage],
        params: &GenerationParams,
        cancelled: &dyn Fn() -> bool,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationOutcome, LlmError> {
        let mut sequence = self.begin_reply(conversation, messages, params)?;
        loop {
            if cancelled() {
                return Ok(sequence.outcome(FinishReason::Cancelled));
            }
            match self.step_one(&mut sequence)? {
                Progress::Reading | Progress::Done => {}
                Progress::Piece(piece) => {
                    if on_token(&piece).is_break() {
                        return Ok(sequence.outcome(FinishReason::Cancelled));
                    }
                }
                Progress::Finished { tail, outcome } => {
                    if !tail.is_empty() {
                        // The reply is over either way: nothing left to cancel.
                        let _ = on_token(&tail);
                    }
                    while !sequence.is_done() {
                        self.step_one(&mut sequence)?;
                    }
                    return Ok(outcome);
                }
            }
        }
    }

    /// Reads the start of what the user is still saying (`words`, from a partial
    /// transcript, after `history`) into the conversation's kept state, alone; returns
    /// how many tokens it read (0 when there was no kept state to start from, nothing
    /// new, or it was cancelled).
    pub fn read_ahead_for(
        &mut self,
        conversation: Uuid,
        history: &[ChatMessage],
        words: &str,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<usize, LlmError> {
        let Some(mut sequence) = self.begin_read_ahead(conversation, history, words) else {
            return Ok(0);
        };
        while !sequence.is_done() {
            if cancelled() {
                return Ok(0);
            }
            self.step_one(&mut sequence)?;
        }
        Ok(sequence.reading.len())
    }

    /// A reply to `messages`, ready to step: its prompt starts from the kept state
    /// that covers the most of it (the conversation's own, or the shared system
    /// prompt's), or from nothing.
    pub fn begin_reply(
        &mut self,
        conversation: Option<Uuid>,
        messages: &[ChatMessage],
        params: &GenerationParams,
    ) -> Result<Sequence, LlmError> {
        let started = Instant::now();
        let mut checkpoints = VecDeque::new();
        let (state, rest) = match self.cache.lookup(conversation, messages) {
            Some(hit) => {
                let rest = self.encode_rest(messages, hit.from);
                (hit.state, rest)
            }
            None => {
                let prompt = encode_prompt(&self.tokenizer, self.chatml, messages);
                if let Some(checkpoint) = self.system_checkpoint(messages, prompt.len()) {
                    checkpoints.push_back(checkpoint);
                }
                (self.weights.empty_state(), prompt)
            }
        };
        let cached = state.len();
        let prompt_tokens = cached + rest.len();
        let limit = self.context_limit;
        if prompt_tokens >= limit {
            return Err(LlmError::PromptTooLong {
                prompt_tokens,
                limit,
            });
        }
        if let Some(id) = conversation {
            // The prompt read, the reply not begun: still the right start after a
            // barge-in, whatever of the reply was said.
            checkpoints.push_back(Checkpoint {
                at: rest.len(),
                owner: Owner::Conversation(id),
                covers: Covered {
                    messages: messages.to_vec(),
                    open: Some(Open::Reply(String::new())),
                },
            });
        }
        let reply = Reply {
            sampler: LogitsProcessor::from_sampling(params.seed, sampling(params)),
            params: params.clone(),
            tokens: Vec::with_capacity(params.max_tokens.min(limit - prompt_tokens)),
            text: String::new(),
            decoder: StreamDecoder::default(),
            max_new: params.max_tokens.min(limit - prompt_tokens),
            prompt_tokens,
            cached_tokens: cached,
            first_token_ms: None,
        };
        Ok(Sequence {
            conversation,
            state,
            reading: rest,
            read: 0,
            checkpoints,
            phase: Phase::Prompt,
            reply: Some(reply),
            messages: messages.to_vec(),
            started,
            chunk: PROMPT_CHUNK_TOKENS,
        })
    }

    /// A read-ahead of `words` after `history`, ready to step; `None` when no kept
    /// state covers the history (reading a whole history on a guess is not worth the
    /// work), there is nothing new, or no room would be left for the reply.
    pub fn begin_read_ahead(
        &mut self,
        conversation: Uuid,
        history: &[ChatMessage],
        words: &str,
    ) -> Option<Sequence> {
        let mut prompt = history.to_vec();
        prompt.push(ChatMessage::user(words));
        let hit = self.cache.lookup(Some(conversation), &prompt)?;
        let rest = self.encode_open_rest(&prompt, hit.from);
        let read = hit.tokens + rest.len();
        if rest.is_empty() || read + 2 * PROMPT_CHUNK_TOKENS >= self.context_limit {
            return None;
        }
        let checkpoint = Checkpoint {
            at: rest.len(),
            owner: Owner::Conversation(conversation),
            covers: Covered {
                messages: history.to_vec(),
                open: Some(Open::User(words.to_string())),
            },
        };
        Some(Sequence {
            conversation: Some(conversation),
            state: hit.state,
            reading: rest,
            read: 0,
            checkpoints: VecDeque::from([checkpoint]),
            phase: Phase::ReadAhead,
            reply: None,
            messages: Vec::new(),
            started: Instant::now(),
            chunk: READ_AHEAD_CHUNK_TOKENS,
        })
    }

    /// One batched pass: the next piece of each sequence (a decode step's one token,
    /// or up to its chunk of reading while `read_budget` tokens of reading are left in
    /// this pass). Returns what the pass did for each, in order; a sequence that got
    /// no share of the pass is `Reading`, unchanged. Sequences that are done must not
    /// be passed.
    pub fn step(
        &mut self,
        batch: &mut [&mut Sequence],
        read_budget: usize,
    ) -> Result<Vec<Progress>, LlmError> {
        let mut budget = read_budget;
        let mut tokens: Vec<Option<Vec<u32>>> = Vec::with_capacity(batch.len());
        for sequence in batch.iter() {
            let next = sequence.next_tokens(budget);
            if let (Some(next), false) = (&next, sequence.is_decoding()) {
                budget -= next.len();
            }
            tokens.push(next);
        }
        let mut items: Vec<BatchItem> = batch
            .iter_mut()
            .zip(&tokens)
            .filter_map(|(sequence, tokens)| {
                tokens.as_deref().map(|tokens| BatchItem {
                    tokens,
                    state: &mut sequence.state,
                })
            })
            .collect();
        if items.is_empty() {
            return Ok(vec![Progress::Reading; batch.len()]);
        }
        let logits = self.weights.forward(&mut items)?;
        drop(items);
        let mut row = 0;
        let mut progress = Vec::with_capacity(batch.len());
        for (sequence, tokens) in batch.iter_mut().zip(&tokens) {
            let Some(tokens) = tokens else {
                progress.push(Progress::Reading);
                continue;
            };
            let logits = logits_row(&logits, row)?;
            row += 1;
            progress.push(self.advance(sequence, tokens.len(), &logits)?);
        }
        Ok(progress)
    }

    /// Bytes of attention state per token a sequence has read.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.kv_bytes_per_token
    }

    fn step_one(&mut self, sequence: &mut Sequence) -> Result<Progress, LlmError> {
        let mut progress = self.step(&mut [sequence], usize::MAX)?;
        Ok(progress.remove(0))
    }

    /// After a pass that read `read` tokens of `sequence`, with the logits after them.
    fn advance(
        &mut self,
        sequence: &mut Sequence,
        read: usize,
        logits: &Tensor,
    ) -> Result<Progress, LlmError> {
        if sequence.is_decoding() {
            return self.sample(sequence, logits);
        }
        sequence.read += read;
        if sequence
            .checkpoints
            .front()
            .is_some_and(|c| c.at == sequence.read)
        {
            if let Some(checkpoint) = sequence.checkpoints.pop_front() {
                // Kept at what its tokens cost: the cache's bound is in those bytes.
                sequence.state.compact();
                let state = sequence.state.clone();
                self.cache
                    .insert(checkpoint.owner, checkpoint.covers, state.len(), state);
            }
        }
        if sequence.read < sequence.reading.len() {
            return Ok(Progress::Reading);
        }
        match sequence.phase {
            Phase::Prompt => self.sample(sequence, logits),
            _ => Ok(Progress::Done),
        }
    }

    /// Picks the reply's next token from `logits`.
    fn sample(&mut self, sequence: &mut Sequence, logits: &Tensor) -> Result<Progress, LlmError> {
        let Some(reply) = sequence.reply.as_mut() else {
            return Ok(Progress::Done);
        };
        if reply.tokens.len() >= reply.max_new {
            return Ok(self.finish(sequence, FinishReason::Length, String::new()));
        }
        let next = pick(&mut reply.sampler, logits, &reply.tokens, &reply.params)?;
        if self.stop_ids.contains(&next) {
            return Ok(self.finish(sequence, FinishReason::Stop, String::new()));
        }
        reply.tokens.push(next);
        let piece = reply.decoder.push(&self.tokenizer, next);
        if !piece.is_empty() {
            let started = sequence.started;
            reply
                .first_token_ms
                .get_or_insert_with(|| elapsed_ms(started));
            reply.text.push_str(&piece);
        }
        if reply.tokens.len() >= reply.max_new {
            return Ok(self.finish(sequence, FinishReason::Length, piece));
        }
        sequence.phase = Phase::Decode { next };
        Ok(if piece.is_empty() {
            Progress::Reading
        } else {
            Progress::Piece(piece)
        })
    }

    /// Ends the reply: its last text (`piece`, and whatever the stream decoder still
    /// held), its outcome, and, for a conversation, the tail to read so the next turn
    /// starts exactly where its new message begins.
    fn finish(&mut self, sequence: &mut Sequence, reason: FinishReason, piece: String) -> Progress {
        let mut tail = piece;
        if let Some(reply) = sequence.reply.as_mut() {
            let rest = std::mem::take(&mut reply.decoder).finish();
            if !rest.is_empty() {
                let started = sequence.started;
                reply
                    .first_token_ms
                    .get_or_insert_with(|| elapsed_ms(started));
                reply.text.push_str(&rest);
                tail.push_str(&rest);
            }
        }
        let outcome = sequence.outcome(reason);
        sequence.phase = Phase::Epilogue;
        sequence.reading.clear();
        sequence.read = 0;
        sequence.checkpoints.clear();
        if let (Some(id), Some(reply)) = (sequence.conversation, sequence.reply.as_ref()) {
            // Reply tokens not read yet (the last one when the length limit cut it),
            // then the end of the turn.
            let read_reply = sequence.state.len() - reply.prompt_tokens;
            let mut rest: Vec<u32> = reply.tokens[read_reply..].to_vec();
            rest.push(self.chatml.im_end);
            rest.extend(self.tokenizer.encode("\n"));
            if sequence.state.len() + rest.len() < self.context_limit {
                let mut covered = sequence.messages.clone();
                covered.push(ChatMessage::assistant(reply.text.clone()));
                sequence.checkpoints.push_back(Checkpoint {
                    at: rest.len(),
                    owner: Owner::Conversation(id),
                    covers: Covered::closed(covered),
                });
                sequence.chunk = rest.len();
                sequence.reading = rest;
            }
        }
        Progress::Finished { tail, outcome }
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

    /// Where a fresh prompt's system message ends, kept for every conversation that
    /// starts with it; `None` without one (or when it is the whole prompt).
    fn system_checkpoint(&self, messages: &[ChatMessage], prompt_len: usize) -> Option<Checkpoint> {
        let system = messages.first().filter(|m| m.role == Role::System)?;
        let at = encode_prompt(&self.tokenizer, self.chatml, &messages[..1]).len()
            - encode_prompt(&self.tokenizer, self.chatml, &[]).len();
        (at < prompt_len && at < self.context_limit).then(|| Checkpoint {
            at,
            owner: Owner::Shared,
            covers: Covered::closed(vec![system.clone()]),
        })
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
}

/// Applies the repeat penalty over the recent reply, then samples.
fn pick(
    sampler: &mut LogitsProcessor,
    logits: &Tensor,
    reply: &[u32],
    params: &GenerationParams,
) -> Result<u32, LlmError> {
    let recent = &reply[reply.len().saturating_sub(params.repeat_last_n)..];
    if params.repeat_penalty == 1.0 || recent.is_empty() {
        return Ok(sampler.sample(logits)?);
    }
    let penalised =
        candle_transformers::utils::apply_repeat_penalty(logits, params.repeat_penalty, recent)?;
    Ok(sampler.sample(&penalised)?)
}

/// Bytes of KV state per token: layers × (key + value) × KV heads × head size × 2
/// (half floats, `llm::attention`).
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
    layers * 2 * kv_heads * (width / heads) * std::mem::size_of::<crate::kernels::halves::Half>()
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
