//! Text-to-speech: streamed LLM text in, 22,050 Hz mono samples out.
//! [`SentenceSplitter`] cuts the token stream into sentences (and long
//! clauses) as soon as they end, so the first audio can leave early;
//! [`PhonemizerPool`] turns each clause into IPA with long-lived `espeak-ng`
//! processes (GPL-3.0: run as a program, never linked), each owned by a guard
//! in `espeak.rs`; [`PiperVoice`] maps the phonemes to ids and runs the Piper
//! model through the shared ONNX Runtime environment of [`crate::models`].
//! Both the pool and the voice block: call them from an inference worker
//! thread, never from an arbiter.
//!
//! Every fallible call returns [`TtsError`], which is `Send + Sync + 'static`
//! and `Clone`, so it can cross actor mailboxes.

mod espeak;
pub mod phonemizer;
pub mod piper;
pub mod sentences;

use std::path::PathBuf;
use std::time::Duration;

pub use phonemizer::{PhonemizerOptions, PhonemizerPool};
pub use piper::{
    phonemize_clauses, piper_model_path, PiperVoice, Scales, PIPER_CONFIG_FILE,
    PIPER_CONVERTED_MODEL_FILE, PIPER_MODEL_FILE,
};
pub use sentences::{clauses, Clause, SentenceSplitter};

use crate::models::ModelError;

/// Everything that can go wrong between text and samples.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TtsError {
    /// `espeak-ng` could not be started, or did not answer its first line.
    #[error(
        "cannot start phonemizer `{program}`: {cause} (is the Debian package espeak-ng installed?)"
    )]
    PhonemizerSpawn { program: String, cause: String },

    /// Writing to or reading from a running `espeak-ng` failed, or it exited.
    #[error("phonemizer process failed: {cause}")]
    PhonemizerIo { cause: String },

    /// `espeak-ng` did not finish a line in time; the process was replaced.
    #[error("phonemizer did not answer within {timeout:?}")]
    PhonemizerTimeout { timeout: Duration },

    /// Every process of the pool stayed busy for the whole checkout timeout.
    #[error("all {size} phonemizer processes busy for {waited:?}")]
    PoolExhausted { size: usize, waited: Duration },

    /// The voice's `.onnx.json` is missing or malformed.
    #[error("Piper voice config {}: {cause}", path.display())]
    VoiceConfig { path: PathBuf, cause: String },

    /// Loading or running the ONNX model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[cfg(test)]
mod tests {
    use super::TtsError;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn tts_error_crosses_threads() {
        assert_send_sync_static::<TtsError>();
    }
}
