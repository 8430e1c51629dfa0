//! Flush-to-zero for model threads.
//!
//! Recurrent models fed near-silence drive their state toward subnormal floats, which
//! the CPU handles in microcode at a hundred times the cost of a normal multiply: a
//! quiet stream would then cost far more to score than speech. Audio and model code do
//! not need subnormals, so model threads treat them as zero.

/// Sets the calling thread's FTZ and DAZ flags (x86-64; no effect elsewhere).
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    {
        const FLUSH_TO_ZERO: u32 = 1 << 15;
        const DENORMALS_ARE_ZERO: u32 = 1 << 6;
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr only read and write this thread's SSE control
        // register; FTZ and DAZ change rounding of subnormals and nothing else.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= FLUSH_TO_ZERO | DENORMALS_ARE_ZERO;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
        }
    }
}
