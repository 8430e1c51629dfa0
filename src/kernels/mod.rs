//! Hand-written numeric kernels shared by the models hearken runs itself (the
//! embedded LLM, Moonshine's batched decoder). What they share is one promise: a
//! row's result never depends on the other rows in its call, so batching work of
//! several conversations changes no conversation's output.

pub mod exp;
pub mod halves;
pub mod int8;
#[cfg(target_arch = "x86_64")]
mod int8_x86;
pub mod maxima;

pub use int8::{Int8Linear, Int8Rows, Scaling};

/// Whether the CPU has AVX-512 with VNNI (`vpdpbusd`, 64 int8 products an
/// instruction), which the int8 kernels use where it is present.
#[cfg(target_arch = "x86_64")]
pub fn avx512_vnni_available() -> bool {
    int8_x86::avx512::available()
}
