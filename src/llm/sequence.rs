//! One sequence in the embedded model's batches: a reply (its prompt, then its tokens,
//! then the few tokens that leave its state ready for the next turn) or a read-ahead
//! (prompt only). A sequence owns its attention state and knows what it will read
//! next; `EmbeddedModel::step` runs the next piece of many sequences in one pass and
//! hands each its logits.
//!
//! States worth keeping are marked in advance as checkpoints (after the shared system
//! prompt, after the whole prompt, after the reply): a pass never reads past the next
//! one, so the state at a checkpoint is exactly what it covers.

use std::collections::VecDeque;
use std::time::Instant;

use candle_transformers::generation::LogitsProcessor;
use uuid::Uuid;

use super::generation::{FinishReason, GenerationOutcome, GenerationParams};
use super::llama::KvState;
use super::prefix_cache::{Covered, Owner};
use super::tokenizer::StreamDecoder;

/// A state to keep once `at` tokens of the current reading are read.
pub(super) struct Checkpoint {
    pub at: usize,
    pub owner: Owner,
    pub covers: Covered,
}

/// Where a sequence is.
pub(super) enum Phase {
    /// Reading the prompt; a reply follows.
    Prompt,
    /// Generating: the last sampled token is read next.
    Decode { next: u32 },
    /// The reply is over; reading its tail for the next turn (nothing is sent).
    Epilogue,
    /// Reading a turn's first words ahead of it (nothing is sent).
    ReadAhead,
}

/// A reply under way.
pub(super) struct Reply {
    pub params: GenerationParams,
    pub sampler: LogitsProcessor,
    pub tokens: Vec<u32>,
    pub text: String,
    pub decoder: StreamDecoder,
    pub max_new: usize,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub first_token_ms: Option<f64>,
}

pub struct Sequence {
    pub(super) conversation: Option<Uuid>,
    pub(super) state: KvState,
    /// Tokens to read in this phase, and how many are read.
    pub(super) reading: Vec<u32>,
    pub(super) read: usize,
    pub(super) checkpoints: VecDeque<Checkpoint>,
    pub(super) phase: Phase,
    pub(super) reply: Option<Reply>,
    /// The prompt, kept to describe the state after the reply.
    pub(super) messages: Vec<super::chat::ChatMessage>,
    pub(super) started: Instant,
    /// Tokens read per pass while reading.
    pub(super) chunk: usize,
}

/// What one pass did for a sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Read some of its prompt (or tail); nothing to tell.
    Reading,
    /// The next piece of the reply's text.
    Piece(String),
    /// The reply is over: its last text (possibly empty) and how it went. The
    /// sequence may go on reading its tail, unseen, until it is done.
    Finished {
        tail: String,
        outcome: GenerationOutcome,
    },
    /// A read-ahead or a reply's tail is read: the sequence is done.
    Done,
}

impl Sequence {
    /// The tokens this sequence reads in the next pass: a decode step's one token, or
    /// its next whole chunk of reading if that fits in `budget` (else nothing this
    /// pass). Chunks never bend to the budget: where a sequence's chunks fall changes
    /// its arithmetic, so they depend on the sequence alone, and a reply comes out the
    /// same whatever it was batched with.
    pub(super) fn next_tokens(&self, budget: usize) -> Option<Vec<u32>> {
        match self.phase {
            Phase::Decode { next } => Some(vec![next]),
            _ => {
                let stop = self
                    .checkpoints
                    .front()
                    .map_or(self.reading.len(), |c| c.at)
                    .min(self.reading.len());
                let take = (stop - self.read).min(self.chunk);
                (take > 0 && take <= budget)
                    .then(|| self.reading[self.read..self.read + take].to_vec())
            }
        }
    }

    /// Tokens still to read before the reply can start (0 once it decodes).
    pub fn prompt_left(&self) -> usize {
        match self.phase {
            Phase::Prompt => self.reading.len() - self.read,
            _ => 0,
        }
    }

    /// Whether this is a reply still producing text (not a tail or a read-ahead).
    pub fn is_reply(&self) -> bool {
        matches!(self.phase, Phase::Prompt | Phase::Decode { .. })
    }

    /// Whether it is generating tokens (one per pass).
    pub fn is_decoding(&self) -> bool {
        matches!(self.phase, Phase::Decode { .. })
    }

    /// Nothing left to do: a read-ahead read, or a reply's tail read (or not kept).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Epilogue | Phase::ReadAhead) && self.read >= self.reading.len()
    }

    /// Tokens of its reply generated so far (0 for a read-ahead).
    pub fn tokens_generated(&self) -> usize {
        self.reply.as_ref().map_or(0, |r| r.tokens.len())
    }

    /// Positions in its attention state: what each of its tokens attends over.
    pub fn positions(&self) -> usize {
        self.state.len()
    }

    /// Tokens of the current reading read so far: a pass that moves it has read.
    pub fn tokens_read(&self) -> usize {
        self.read
    }

    /// Tokens of the current reading (a read-ahead's words, once done).
    pub fn read_len(&self) -> usize {
        self.reading.len()
    }

    pub fn conversation(&self) -> Option<Uuid> {
        self.conversation
    }

    /// How the reply went so far, for a reply that ends now (`finish_reason`).
    pub(super) fn outcome(&self, finish_reason: FinishReason) -> GenerationOutcome {
        let reply = self.reply.as_ref();
        GenerationOutcome {
            tokens: reply.map_or(0, |r| r.tokens.len()),
            cancelled: finish_reason == FinishReason::Cancelled,
            finish_reason,
            prompt_tokens: reply.map_or(0, |r| r.prompt_tokens),
            cached_tokens: reply.map_or(0, |r| r.cached_tokens),
            first_token_ms: reply.and_then(|r| r.first_token_ms),
            total_ms: self.started.elapsed().as_secs_f64() * 1e3,
        }
    }
}
