//! Dedicated worker threads for everything that must not run on an actix arbiter:
//! Opus decoding, resampling and VAD batches, file I/O, and model inference. Every
//! worker thread flushes subnormal floats to zero (see `denormals`).

pub mod cancel;
mod denormals;
pub mod llm_batcher;
pub mod niceness;
pub mod pool;
mod queue;
pub mod silero_batcher;
pub mod stt_batcher;

pub use cancel::CancelToken;
pub use pool::{JobError, WorkerPool};
pub use queue::Priority;
pub use stt_batcher::{SttAnswer, SttAudio, SttBatcher, SttModels, SttRequest, Transcribed};
