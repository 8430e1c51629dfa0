//! Smart Turn v3.2 (pipecat-ai, BSD-2-Clause, `smart-turn-v3.2-cpu.onnx`, 8.7 MB,
//! int8): the probability that a speaker has finished their turn, judged from how
//! the speech sounds (intonation, rhythm, a trailing "um") rather than from how long
//! the silence after it lasts. A Whisper-tiny encoder with a classifier head; it
//! hears the last 8 s of the user's turn as Whisper log-mel features
//! ([`WhisperFeatures`]) and returns a sigmoid probability (the output is named
//! `logits`, but the graph ends in a `Sigmoid`). Above 0.5 the turn is complete.
//!
//! A [`SmartTurn`] owns one ort session (one intra-op thread) and its feature
//! buffers, and belongs to one inference worker thread; one call costs tens of
//! milliseconds whatever the length of the audio, since the input is always 8 s
//! (`benches/models.rs`, `smart_turn/predict`). The model itself is what pipecat
//! 1.14.0 ships; hearken never imports pipecat.
//!
//! What the tests found about the model (`tests/models_smart_turn.rs`), worth
//! knowing when wiring it into turn-taking:
//! - Its answer is not a smooth function of the audio. The int8 graph rounds each
//!   feature to a step of 0.0096 first, and one feature crossing a step can move
//!   the probability by 0.4 (0.30 or 0.69 for the same clip). Expect scores to jump
//!   between calls on audio that grew by a frame; do not read much into 0.45
//!   against 0.55.
//! - It hears a pause as a sign of a finished turn. Of the 13 Piper sentences cut
//!   right after a word inside the phrase, 4 score above 0.5 as cut, 8 with 200 ms
//!   of silence appended (pipecat feeds it the pause the VAD waited for). Real
//!   mid-phrase hesitations sound different from a synthetic voice stopping, so
//!   judge it on recorded speech before trusting it to hold a turn open.

use std::path::Path;

use ort::session::Session;
use ort::value::TensorRef;

use super::runtime::load_session;
use super::whisper_features::{WhisperFeatures, CLIP_SAMPLES, N_FRAMES, N_MELS};
use super::ModelError;

/// File name inside the models directory, as written by `scripts/fetch-models.sh`
/// (PyPI `pipecat-ai==1.14.0`).
pub const SMART_TURN_FILE: &str = "smart-turn-v3.2-cpu.onnx";

/// Probability above which the model's authors call a turn complete.
pub const COMPLETE_THRESHOLD: f32 = 0.5;

/// Name used in errors.
const MODEL: &str = "smart-turn";

/// The loaded model and the feature extractor that feeds it.
pub struct SmartTurn {
    session: Session,
    features: WhisperFeatures,
}

impl SmartTurn {
    /// Loads `smart-turn-v3.2-cpu.onnx` from `path` with one intra-op thread.
    /// [`init_runtime`](super::init_runtime) must have run.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Ok(Self {
            session: load_session(MODEL, path, 1)?,
            features: WhisperFeatures::new(),
        })
    }

    /// Probability in `[0, 1]` that the turn in `samples_16k` (the user's speech so
    /// far, 16 kHz mono in [-1, 1], ending now) is complete. Only the last 8 s are
    /// heard; shorter audio is zero-padded at the front. Empty audio is silence,
    /// not an error; a NaN or infinite sample is [`ModelError::InvalidInput`].
    pub fn predict(&mut self, samples_16k: &[f32]) -> Result<f32, ModelError> {
        let tail = &samples_16k[samples_16k.len().saturating_sub(CLIP_SAMPLES)..];
        if let Some(i) = tail.iter().position(|s| !s.is_finite()) {
            return Err(ModelError::InvalidInput {
                model: MODEL,
                cause: format!(
                    "sample {} is {}",
                    samples_16k.len() - tail.len() + i,
                    tail[i]
                ),
            });
        }
        let features = self.features.compute(tail);

        let err = ModelError::inference::<()>;
        let input =
            TensorRef::from_array_view(([1, N_MELS, N_FRAMES], features)).map_err(err(MODEL))?;
        let outputs = self
            .session
            .run(ort::inputs!["input_features" => input])
            .map_err(err(MODEL))?;
        let (_, probability) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(err(MODEL))?;
        match probability {
            [p] if (0.0..=1.0).contains(p) => Ok(*p),
            other => Err(ModelError::bad_output(
                MODEL,
                format!("expected one probability in [0, 1], got {other:?}"),
            )),
        }
    }
}
