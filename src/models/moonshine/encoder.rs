//! Moonshine's encoder on ONNX Runtime: 16 kHz samples in, one 416-wide hidden state
//! per ~24 ms frame out. Not batched across conversations: a piece of audio already
//! gives the encoder's matrix products one row per frame, so its weights are reused
//! within the call, and pieces of different lengths could only share a call padded,
//! which would change what the encoder sees (it has no padding mask).

use std::path::Path;

use ort::session::Session;
use ort::value::TensorRef;

use super::super::runtime::load_session;
use super::super::ModelError;

const ENCODER: &str = "moonshine-encoder";

/// One piece's hidden states, `frames × width` values row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedAudio {
    /// Samples of audio encoded (they set the decoder's token cap).
    pub samples: usize,
    pub frames: usize,
    pub width: usize,
    pub states: Vec<f32>,
}

pub struct MoonshineEncoder {
    session: Session,
}

impl MoonshineEncoder {
    /// Loads the encoder file with `intra_threads` threads per operator.
    pub fn load(path: &Path, intra_threads: usize) -> Result<Self, ModelError> {
        Ok(MoonshineEncoder {
            session: load_session(ENCODER, path, intra_threads)?,
        })
    }

    /// Runs the encoder on one piece (at most 30 s).
    pub fn encode(&mut self, samples: &[f32]) -> Result<EncodedAudio, ModelError> {
        let err = ModelError::inference::<()>;
        let input =
            TensorRef::from_array_view(([1usize, samples.len()], samples)).map_err(err(ENCODER))?;
        let outputs = self
            .session
            .run(ort::inputs!["input_values" => input])
            .map_err(err(ENCODER))?;
        let hidden = outputs
            .get("last_hidden_state")
            .ok_or_else(|| ModelError::bad_output(ENCODER, "missing output last_hidden_state"))?;
        let (shape, states) = hidden.try_extract_tensor::<f32>().map_err(err(ENCODER))?;
        let &[1, frames, width] = &shape[..] else {
            return Err(ModelError::bad_output(
                ENCODER,
                format!("hidden state shape {shape:?}"),
            ));
        };
        Ok(EncodedAudio {
            samples: samples.len(),
            frames: frames.max(0) as usize,
            width: width.max(0) as usize,
            states: states.to_vec(),
        })
    }
}
