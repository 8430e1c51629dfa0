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
//!
//! Blocks under the threshold still come from the arenas, and a burst of work (many
//! replies at once) leaves free pages inside them that `free` alone never returns: the
//! server hands them back with [`release_free_pages`] every `server.heap_trim_interval_ms`
//! once more than [`TRIM_WHEN_FREE_BYTES`] are free.

/// Blocks from this size up get their own mapping, returned to the system when freed.
pub const MMAP_THRESHOLD_BYTES: usize = 128 * 1024;

/// Free memory in the arenas worth a trim: below it, a trim's walk costs more than it
/// returns.
pub const TRIM_WHEN_FREE_BYTES: usize = 16 * 1024 * 1024;

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

/// Free bytes malloc keeps in its arenas (glibc's `mallinfo2().fordblks`); 0 elsewhere.
pub fn free_bytes() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's state, under its own locks.
        unsafe { libc::mallinfo2() }.fordblks
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

/// Give the whole free pages inside every arena back to the system (`malloc_trim`
/// releases them in the middle of an arena too, not only at its top). It walks every
/// arena under that arena's lock, so it runs on a worker thread, never an arbiter.
/// Returns whether any memory was released.
pub fn release_free_pages() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages; allocations stay valid.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn freed_small_blocks_are_free_memory_a_trim_can_return() {
        // Blocks under the mmap threshold, each followed by a small one that stays: the
        // freed blocks cannot merge into the arena's top, so `free` keeps them and only a
        // trim inside the arena returns their pages.
        let (blocks, pins): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (0..512)
            .map(|i| (vec![i as u8; 64 * 1024], vec![i as u8; 64]))
            .unzip();
        drop(blocks);
        assert!(free_bytes() >= 16 * 1024 * 1024, "{}", free_bytes());
        assert!(release_free_pages(), "the freed pages were returned");
        drop(pins);
    }
}
