//! Speech models run through ONNX Runtime (the `ort` crate): the process-wide
//! runtime environment ([`runtime`]), Silero VAD with batching across
//! conversations ([`silero`]), Moonshine speech-to-text ([`moonshine`],
//! with its [`tokenizer`]), and the Smart Turn end-of-turn model
//! ([`smart_turn`], fed by [`whisper_features`]). Model files come from
//! `scripts/fetch-models.sh`; sessions are owned by one worker thread each
//! (`Session::run` takes `&mut self` in ort rc.15), while per-conversation
//! state (e.g. [`SileroState`]) travels with each job.
//!
//! Every fallible call returns [`ModelError`], which is `Send + Sync +
//! 'static` and `Clone`, so it can cross actor mailboxes. ort's own errors are
//! turned into strings at this boundary: its builder errors are not `Send`.

pub mod moonshine;
pub mod onnx_proto;
pub mod runtime;
pub mod silero;
pub mod smart_turn;
pub mod tokenizer;
pub mod whisper_features;

use std::path::PathBuf;

pub use moonshine::{
    BatchedDecoder, Decoding, Moonshine, MoonshineFiles, Transcription, MOONSHINE_DIR,
};
pub use runtime::{init_runtime, runtime_ready, ORT_DYLIB_FILE};
pub use silero::{
    SileroJob, SileroState, SileroVad, CONTEXT_SAMPLES, SAMPLE_RATE, SILERO_FILE, WINDOW_SAMPLES,
};
pub use smart_turn::{SmartTurn, COMPLETE_THRESHOLD, SMART_TURN_FILE};
pub use tokenizer::Tokenizer;
pub use whisper_features::WhisperFeatures;

/// Everything that can go wrong while loading or running a speech model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// The ONNX Runtime shared library is not where we were told to look.
    #[error(
        "ONNX Runtime library not found at {}; run `scripts/fetch-models.sh <models dir>` first",
        path.display()
    )]
    RuntimeLibraryMissing { path: PathBuf },

    /// The library exists but could not be loaded, or the environment failed.
    #[error("failed to initialise ONNX Runtime from {}: {cause}", path.display())]
    RuntimeInit { path: PathBuf, cause: String },

    /// A session was requested before [`init_runtime`] succeeded.
    #[error("ONNX Runtime is not initialised; call models::init_runtime first")]
    RuntimeNotInitialized,

    /// A model file (or tokenizer) is missing.
    #[error(
        "{model}: file not found: {}; run `scripts/fetch-models.sh <models dir>` first",
        path.display()
    )]
    ModelFileMissing { model: &'static str, path: PathBuf },

    /// ONNX Runtime refused to build a session from the file.
    #[error("{model}: failed to load session from {}: {cause}", path.display())]
    SessionLoad {
        model: &'static str,
        path: PathBuf,
        cause: String,
    },

    /// A run failed, or its outputs were not what the model should produce.
    #[error("{model}: inference failed: {cause}")]
    Inference { model: &'static str, cause: String },

    /// The caller passed something the model cannot take.
    #[error("{model}: invalid input: {cause}")]
    InvalidInput { model: &'static str, cause: String },

    /// The tokenizer file could not be read or parsed.
    #[error("tokenizer {}: {cause}", path.display())]
    Tokenizer { path: PathBuf, cause: String },
}

impl ModelError {
    /// Maps any ort error (whatever its recovery payload) to
    /// [`ModelError::Inference`] for `model`, keeping only its message.
    pub(crate) fn inference<R>(model: &'static str) -> impl FnOnce(ort::Error<R>) -> ModelError {
        move |e| ModelError::Inference {
            model,
            cause: e.to_string(),
        }
    }

    /// An [`ModelError::Inference`] with a message of our own.
    pub(crate) fn bad_output(model: &'static str, cause: impl Into<String>) -> ModelError {
        ModelError::Inference {
            model,
            cause: cause.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ModelError;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn model_error_crosses_threads() {
        assert_send_sync_static::<ModelError>();
    }

    #[test]
    fn missing_file_error_names_path_and_fix() {
        let e = ModelError::ModelFileMissing {
            model: "silero-vad",
            path: "models/silero_vad.onnx".into(),
        };
        let text = e.to_string();
        assert!(text.contains("models/silero_vad.onnx"), "{text}");
        assert!(text.contains("fetch-models.sh"), "{text}");
    }
}
