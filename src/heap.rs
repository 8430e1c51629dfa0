//! How the process's malloc (glibc's) is set up, once, before any thread exists.
//!
//! glibc serves a block of 128 KiB or more with its own `mmap`, returned to the system
//! when freed, but only until the first such block is freed: from then on the threshold
//! follows the largest block freed (up to 32 MiB), and blocks under it are carved out of
//! the arenas. The model threads allocate and free large buffers of ever-changing sizes
//! (ONNX Runtime's tensors for each utterance and sentence, the LLM's logits, attention
//! states of every length), so with the moving threshold those ended up in the arenas,
//! which only give memory back from their top: the holes they left stayed resident. In a
//! 12-minute soak the free memory held in the arenas stayed at 300–430 MB of a 1.1 GB RSS
//! (and 220 MB of it were the model loaders' temporaries, from the start); with the
//! threshold fixed it stayed at 15–60 MB (docs/benchmarks.md, "Soak").
//!
//! An explicit `MALLOC_MMAP_THRESHOLD_` in the environment is left alone.

/// Blocks from this size up get their own mapping, returned to the system when freed.
pub const MMAP_THRESHOLD_BYTES: usize = 128 * 1024;

/// Fix malloc's mmap threshold at [`MMAP_THRESHOLD_BYTES`] (which also fixes its trim
/// threshold). Call at process start, before any other thread exists; returns whether the
/// setting was applied (false off glibc, or when the environment sets it).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            return false;
        }
        // SAFETY: mallopt only changes malloc's parameters; called before other threads.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
