//! Heavy model threads (speech recognition, the language model) run below the audio
//! path. Under overload the kernel then gives the VAD, the end-of-turn model, speech
//! synthesis and the sockets their share first, so every session's turn detection stays
//! real time, and the bounded queues in front of the heavy pools absorb the overload
//! (late transcripts and replies, `overloaded` errors) instead of every session's audio
//! falling behind. Measured: 50 streaming sessions beside 50 garbage-Opus clients, with
//! one recognition thread saturated, had a p95 VAD decision lag of 651 ms at equal
//! priority (docs/benchmarks.md).

/// Lower the calling thread's priority by `steps` nice levels (Linux: the nice value
/// is per thread). Threads it creates later inherit it. Failure only costs the
/// priority, so it is logged, not returned.
pub fn lower_current_thread(steps: i32) {
    if steps <= 0 {
        return;
    }
    // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
    let result = unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, now + steps)
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "could not lower a model thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: as above.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn a_thread_lowers_only_itself() {
        let outer = nice_of_this_thread();
        let inner = std::thread::spawn(|| {
            let before = nice_of_this_thread();
            lower_current_thread(3);
            (before, nice_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(inner.1, (inner.0 + 3).min(19));
        assert_eq!(
            nice_of_this_thread(),
            outer,
            "the spawning thread is unchanged"
        );
    }
}
