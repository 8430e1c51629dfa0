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
//! milliseconds whatever the length of the audio, since the input is always 8 s.
//! The model itself is what pipecat 1.14.0 ships; hearken never imports pipecat.

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
