//! Dedicated worker threads for everything that must not run on an actix arbiter:
//! Opus decoding, resampling and VAD batches, file I/O, and (later) model inference.

pub mod cancel;
pub mod pool;
pub mod silero_batcher;

pub use cancel::CancelToken;
pub use pool::{JobError, WorkerPool};
