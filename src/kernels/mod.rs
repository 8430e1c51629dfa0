//! Hand-written numeric kernels shared by the models hearken runs itself (the
//! embedded LLM, Moonshine's batched decoder). What they share is one promise: a
//! row's result never depends on the other rows in its call, so batching work of
//! several conversations changes no conversation's output.

pub mod halves;
pub mod int8;
#[cfg(target_arch = "x86_64")]
mod int8_x86;
pub mod maxima;

pub use int8::{Int8Linear, Int8Rows, Scaling};
