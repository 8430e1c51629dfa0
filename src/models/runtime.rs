//! The one ONNX Runtime environment of the process, and the session builder
//! every model uses. `ort` allows a single environment per process (a second
//! `build()` fails), so [`init_runtime`] creates it once, keeps it alive in a
//! `OnceLock` for the life of the process, and is safe to call again, from any
//! thread or test: later calls return `Ok(())` without reloading. Model
//! modules get sessions through [`load_session`], which checks the model file
//! first so a missing download reads as such rather than as an ort error.

use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};

use ort::environment::Environment;
use ort::session::{RunOptions, Session};

use super::ModelError;

/// File name of the ONNX Runtime library inside the models directory, as
/// written by `scripts/fetch-models.sh` (PyPI `onnxruntime==1.31.1`; the
/// `api-31` feature of ort needs 1.31 or newer).
pub const ORT_DYLIB_FILE: &str = "libonnxruntime.so.1.31.1";

/// Name the environment reports in ONNX Runtime's logs.
const ENVIRONMENT_NAME: &str = "hearken";

/// The environment. Sessions keep their own handle to it too, but ort only
/// holds a weak reference globally, so this is what keeps it alive.
static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// Serialises the slow path of [`init_runtime`], so two threads racing to
/// initialise do not both call `build()` (the second would fail). A failed
/// attempt leaves [`ENVIRONMENT`] empty and a later call may retry.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime from `dylib_path` and creates the process environment.
///
/// Idempotent: once it has succeeded, further calls (with any path) return
/// `Ok(())` and the first library stays loaded.
pub fn init_runtime(dylib_path: &Path) -> Result<(), ModelError> {
    if !dylib_path.is_file() {
        return Err(ModelError::RuntimeLibraryMissing {
            path: dylib_path.to_path_buf(),
        });
    }
    if ENVIRONMENT.get().is_some() {
        return Ok(());
    }
    // Poisoning carries no meaning here: the lock guards no data.
    let _guard = INIT_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    if ENVIRONMENT.get().is_some() {
        return Ok(());
    }
    let init_error = |cause: String| ModelError::RuntimeInit {
        path: dylib_path.to_path_buf(),
        cause,
    };
    let environment = ort::init_from(dylib_path)
        .map_err(|e| init_error(e.to_string()))?
        .with_name(ENVIRONMENT_NAME)
        .with_telemetry(false)
        .build()
        .map_err(|e| init_error(e.to_string()))?;
    // Cannot fail: we hold the lock and checked that the cell was empty.
    let _ = ENVIRONMENT.set(environment);
    Ok(())
}

/// Whether [`init_runtime`] has succeeded in this process.
pub fn runtime_ready() -> bool {
    ENVIRONMENT.get().is_some()
}

/// How a session takes memory for its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// ONNX Runtime's CPU arena and memory pattern: tensors come from blocks the session
    /// keeps, the fastest for a model whose inputs stay small or of one shape (Silero's
    /// windows, Smart Turn's 8 s, Moonshine's segments and decoder steps).
    Arena,
    /// Each tensor from malloc, freed after the run: for a model whose inputs vary
    /// widely in length and whose activations are large, where an arena grows to the
    /// largest input it has seen and keeps it.
    Malloc,
    /// The arena within a run, given back after it: runs must pass
    /// [`shrink_arena_after_run`]'s options. Piper's operators hand tens of MB of
    /// activations from one to the next; from malloc, with the mmap threshold fixed
    /// (`heap::tune_allocator`), each came from a fresh mapping whose every page faulted,
    /// and synthesis took 1.8 times as long (docs/benchmarks.md, "Speech out").
    ArenaPerRun,
}

/// Run options that give a session's CPU arena back to the system at the end of each
/// run ([`Memory::ArenaPerRun`]).
pub fn shrink_arena_after_run(model: &'static str) -> Result<RunOptions, ModelError> {
    let mut options = RunOptions::new().map_err(ModelError::inference::<()>(model))?;
    options
        .set("memory.enable_memory_arena_shrinkage", "cpu:0")
        .map_err(ModelError::inference::<()>(model))?;
    Ok(options)
}

/// Builds a CPU session for `model` from `path` with `intra_threads` threads
/// for one operator and one thread across operators, with ORT's arena
/// ([`Memory::Arena`]). Public for tools that run a model of their own through the
/// one environment (`examples/turn_fixtures.rs` reads Piper's phoneme durations this
/// way).
pub fn load_session(
    model: &'static str,
    path: &Path,
    intra_threads: usize,
) -> Result<Session, ModelError> {
    load_session_with(model, path, intra_threads, Memory::Arena)
}

/// [`load_session`] with the tensors' memory chosen.
pub fn load_session_with(
    model: &'static str,
    path: &Path,
    intra_threads: usize,
    memory: Memory,
) -> Result<Session, ModelError> {
    if !path.is_file() {
        return Err(ModelError::ModelFileMissing {
            model,
            path: path.to_path_buf(),
        });
    }
    let environment = ENVIRONMENT.get().ok_or(ModelError::RuntimeNotInitialized)?;
    build_session(environment, path, intra_threads, memory).map_err(|e| ModelError::SessionLoad {
        model,
        path: path.to_path_buf(),
        cause: e.to_string(),
    })
}

/// The builder chain, in a function of its own so that `?` turns
/// `ort::Error<SessionBuilder>` (not `Send`) into the plain `ort::Error`.
///
/// With more than one intra-op thread, ORT's pool threads would spin between
/// operators; on a small machine that burns the cores the other models need, so they
/// sleep instead, and flush subnormals to zero like the workers (`workers::denormals`).
///
/// [`Memory::Malloc`] turns off the CPU memory arena and the memory pattern. With them,
/// every session's arena grew to the largest shapes it had seen and kept all of it: in a
/// 12-minute soak the bytes held from malloc went from 0.68 GB to 1.37 GB in the first
/// minute, and rose again in a step (+63 MB) at minute 10 when a larger input came; the
/// RSS followed as those pages were first touched. Piper's activations are by far the
/// largest and vary the most (one per sentence length), so Piper runs without them; the
/// other models keep theirs (turning them all off cost transcripts ~0.4 s at p50 on the
/// loaded 2-core machine). See docs/benchmarks.md, "Soak".
fn build_session(
    environment: &Environment,
    path: &Path,
    intra: usize,
    memory: Memory,
) -> ort::Result<Session> {
    let arena = memory != Memory::Malloc;
    // A pattern is planned per input shape and kept: only for inputs of few shapes.
    let pattern = memory == Memory::Arena;
    Session::builder(environment)?
        .with_intra_threads(intra)?
        .with_inter_threads(1)?
        .with_intra_op_spinning(false)?
        .with_flush_to_zero()?
        .with_memory_pattern(pattern)?
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(arena).build()])?
        .commit_from_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_clear_error() {
        let path = Path::new("/nonexistent/libonnxruntime.so");
        let Err(e) = init_runtime(path) else {
            panic!("a missing library must not initialise the runtime");
        };
        let text = e.to_string();
        assert!(text.contains("/nonexistent/libonnxruntime.so"), "{text}");
        assert!(text.contains("scripts/fetch-models.sh"), "{text}");
    }
}
