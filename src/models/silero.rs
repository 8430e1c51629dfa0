//! Silero VAD v6 (MIT, `silero_vad.onnx`) at 16 kHz: a speech probability for
//! every 512-sample (32 ms) window. [`SileroVad`] owns one ort session and is
//! meant to live on one inference worker thread; it is not shared. The
//! recurrent state of each conversation is a [`SileroState`] that the VAD
//! actor owns and sends along with each window, so one [`SileroVad`] serves
//! any number of conversations. [`SileroVad::infer_batch`] runs the windows of
//! many conversations in a single ort call (batch dimension `B`; `input`
//! `[B, 64 + 512]`, `state` `[2, B, 128]`), which costs far less per window
//! than one call each.

use std::path::Path;

use ort::session::Session;
use ort::value::TensorRef;

use super::runtime::load_session;
use super::ModelError;

/// Sample rate the constants below are for, in Hz.
pub const SAMPLE_RATE: u32 = 16_000;

/// Samples in one window: 32 ms at 16 kHz, the size the v6 model expects.
pub const WINDOW_SAMPLES: usize = 512;

/// Samples of the previous window prepended to each window (4 ms at 16 kHz);
/// the model was trained with this overlap.
pub const CONTEXT_SAMPLES: usize = 64;

/// File name inside the models directory.
pub const SILERO_FILE: &str = "silero_vad.onnx";

/// Width of one window as the model sees it: context followed by window.
const INPUT_SAMPLES: usize = CONTEXT_SAMPLES + WINDOW_SAMPLES;

/// Recurrent state: 2 rows of 128 per stream (`state` is `[2, B, 128]`).
const STATE_ROWS: usize = 2;
const STATE_WIDTH: usize = 128;

/// Name used in errors.
const MODEL: &str = "silero-vad";

/// One conversation's recurrent state and audio context. Start each stream
/// (and each stream after a discontinuity) from `Default` or [`reset`].
///
/// [`reset`]: SileroState::reset
#[derive(Debug, Clone, PartialEq)]
pub struct SileroState {
    /// `[2][128]`, row-major: row `r` is `state[r, b, :]` of the batch.
    recurrent: [f32; STATE_ROWS * STATE_WIDTH],
    /// The last [`CONTEXT_SAMPLES`] samples of the previous window.
    context: [f32; CONTEXT_SAMPLES],
}

impl Default for SileroState {
    fn default() -> Self {
        Self {
            recurrent: [0.0; STATE_ROWS * STATE_WIDTH],
            context: [0.0; CONTEXT_SAMPLES],
        }
    }
}

impl SileroState {
    /// Forgets everything heard so far, as at the start of a stream.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// One window of one conversation in a batch: the state it advances, the
/// window, and (after [`SileroVad::infer_batch`]) its speech probability.
#[derive(Debug)]
pub struct SileroJob<'a> {
    pub state: &'a mut SileroState,
    pub window: &'a [f32; WINDOW_SAMPLES],
    /// Speech probability in `[0, 1]`; written by `infer_batch`.
    pub probability: f32,
}

impl<'a> SileroJob<'a> {
    pub fn new(state: &'a mut SileroState, window: &'a [f32; WINDOW_SAMPLES]) -> Self {
        Self {
            state,
            window,
            probability: 0.0,
        }
    }
}

/// The Silero model: one session with one intra-op thread, plus the input
/// buffers it reuses from call to call (they grow to the largest batch seen
/// and stay there).
pub struct SileroVad {
    session: Session,
    input: Vec<f32>,
    state: Vec<f32>,
}

impl SileroVad {
    /// Loads `silero_vad.onnx` from `path`. [`init_runtime`] must have run.
    ///
    /// [`init_runtime`]: super::init_runtime
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Ok(Self {
            session: load_session(MODEL, path, 1)?,
            input: Vec::new(),
            state: Vec::new(),
        })
    }

    /// Runs one window of one stream; returns its speech probability.
    pub fn infer_one(
        &mut self,
        state: &mut SileroState,
        window: &[f32; WINDOW_SAMPLES],
    ) -> Result<f32, ModelError> {
        let mut jobs = [SileroJob::new(state, window)];
        self.infer_batch(&mut jobs)?;
        Ok(jobs[0].probability)
    }

    /// Runs every job in one ort call, writes each job's probability, and
    /// advances each job's state and context. On error no state is changed.
    /// The jobs must belong to different streams (each holds its own
    /// `&mut SileroState`, so the borrow checker already ensures this).
    pub fn infer_batch(&mut self, jobs: &mut [SileroJob<'_>]) -> Result<(), ModelError> {
        let batch = jobs.len();
        if batch == 0 {
            return Ok(());
        }
        self.fill_buffers(jobs);

        let sr = [i64::from(SAMPLE_RATE)];
        let err = ModelError::inference::<()>;
        let input = TensorRef::from_array_view(([batch, INPUT_SAMPLES], &self.input[..]))
            .map_err(err(MODEL))?;
        let state = TensorRef::from_array_view(([STATE_ROWS, batch, STATE_WIDTH], &self.state[..]))
            .map_err(err(MODEL))?;
        let sr = TensorRef::from_array_view(((), &sr[..])).map_err(err(MODEL))?;
        let outputs = self
            .session
            .run(ort::inputs!["input" => input, "state" => state, "sr" => sr])
            .map_err(err(MODEL))?;

        let (_, probabilities) = outputs["output"]
            .try_extract_tensor::<f32>()
            .map_err(err(MODEL))?;
        let (_, next_state) = outputs["stateN"]
            .try_extract_tensor::<f32>()
            .map_err(err(MODEL))?;
        if probabilities.len() != batch || next_state.len() != STATE_ROWS * batch * STATE_WIDTH {
            return Err(ModelError::bad_output(
                MODEL,
                format!(
                    "batch {batch}: got {} probabilities and {} state values",
                    probabilities.len(),
                    next_state.len()
                ),
            ));
        }

        for (b, job) in jobs.iter_mut().enumerate() {
            job.probability = probabilities[b];
            for row in 0..STATE_ROWS {
                let from = (row * batch + b) * STATE_WIDTH;
                let to = row * STATE_WIDTH;
                job.state.recurrent[to..to + STATE_WIDTH]
                    .copy_from_slice(&next_state[from..from + STATE_WIDTH]);
            }
            job.state
                .context
                .copy_from_slice(&job.window[WINDOW_SAMPLES - CONTEXT_SAMPLES..]);
        }
        Ok(())
    }

    /// Lays the jobs out as the model's `input` `[B, 576]` and `state`
    /// `[2, B, 128]`, reusing the buffers' capacity.
    fn fill_buffers(&mut self, jobs: &[SileroJob<'_>]) {
        let batch = jobs.len();
        self.input.clear();
        self.input.resize(batch * INPUT_SAMPLES, 0.0);
        self.state.clear();
        self.state.resize(STATE_ROWS * batch * STATE_WIDTH, 0.0);
        for (b, job) in jobs.iter().enumerate() {
            let row = &mut self.input[b * INPUT_SAMPLES..(b + 1) * INPUT_SAMPLES];
            row[..CONTEXT_SAMPLES].copy_from_slice(&job.state.context);
            row[CONTEXT_SAMPLES..].copy_from_slice(job.window);
            for r in 0..STATE_ROWS {
                let to = (r * batch + b) * STATE_WIDTH;
                let from = r * STATE_WIDTH;
                self.state[to..to + STATE_WIDTH]
                    .copy_from_slice(&job.state.recurrent[from..from + STATE_WIDTH]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_returns_to_default() {
        let mut state = SileroState::default();
        state.recurrent[5] = 1.0;
        state.context[3] = 0.5;
        state.reset();
        assert_eq!(state, SileroState::default());
    }
}
