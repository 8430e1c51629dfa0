//! Replies: the language-model backends behind the LLM actor.
//!
//! - [`backend`]: the `LlmBackend` trait, the cancellable `Generation` handle, and the
//!   embedded backend (SmolLM2 on the `llm` worker pool).
//! - [`openai`]: any OpenAI-compatible streaming server, behind a [`breaker`].
//! - [`history`]: the conversation store that outlives sessions (resumption).
//! - The embedded model itself: [`embedded`] (candle quantized llama), weights from
//!   [`gguf`], its byte-level BPE [`tokenizer`] (word splitting in [`pretokenize`]), the
//!   ChatML format in [`chat`], parameters and outcome in [`generation`], errors in
//!   [`error`], attention state kept between turns in [`prefix_cache`]. `EmbeddedModel::generate` blocks: it runs on inference threads only.

mod attention;
pub mod backend;
pub mod breaker;
pub mod chat;
pub mod embedded;
pub mod error;
pub mod generation;
pub mod gguf;
pub mod history;
pub mod llama;
pub mod openai;
pub mod prefix_cache;
pub mod pretokenize;
pub mod sequence;
pub mod snapshot;
pub mod tokenizer;

pub use chat::{ChatMessage, Role};
pub use embedded::EmbeddedModel;
pub use error::LlmError;
pub use generation::{FinishReason, GenerationOutcome, GenerationParams};
pub use sequence::{Progress, Sequence};

/// File name of the embedded model in the models directory.
pub const SMOLLM_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
