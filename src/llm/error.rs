//! The one error type of the LLM module. Load errors carry the model path so a bad
//! deployment is diagnosed from the log line alone; `LlmError` is `Send + Sync + 'static`
//! so it crosses from the inference thread back to the LLM actor.

use std::path::PathBuf;

use super::tokenizer::TokenizerError;

/// Why the embedded LLM could not load or generate.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("cannot read LLM model file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load GGUF model {}", path.display())]
    Model {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("cannot build the tokenizer of {}", path.display())]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: TokenizerError,
    },
    #[error("{} has no ChatML markers (<|im_start|>, <|im_end|>)", path.display())]
    NotChatMl { path: PathBuf },
    #[error("prompt of {prompt_tokens} tokens leaves no room in the {limit}-token context")]
    PromptTooLong { prompt_tokens: usize, limit: usize },
    #[error("LLM inference failed")]
    Inference(#[from] candle_core::Error),
}
