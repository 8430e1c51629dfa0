//! The ONNX Runtime environment: concurrent and repeated initialisation is
//! fine, and missing files give errors that say what to run.

#[path = "model_support/mod.rs"]
mod common;

use std::path::Path;

use hearken::models::{init_runtime, runtime_ready, ModelError, Moonshine, SileroVad};

#[test]
fn init_is_idempotent_across_threads() {
    let dylib = std::env::var_os("ORT_DYLIB_PATH").map_or_else(
        || common::models_dir().join(hearken::models::ORT_DYLIB_FILE),
        Into::into,
    );
    let results: Vec<Result<(), ModelError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| init_runtime(&dylib)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for result in results {
        result.unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(runtime_ready());
    init_runtime(&dylib).unwrap_or_else(|e| panic!("{e}"));
    // Sessions can then be built on any thread.
    std::thread::spawn(common::silero)
        .join()
        .expect("silero on another thread");
}

#[test]
fn missing_model_files_name_the_path() {
    common::init();
    let missing = Path::new("/nonexistent/models");
    let err = SileroVad::load(&missing.join("silero_vad.onnx"))
        .err()
        .expect("missing silero");
    assert!(matches!(err, ModelError::ModelFileMissing { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/models/silero_vad.onnx"),
        "{err}"
    );
    assert!(err.to_string().contains("fetch-models.sh"), "{err}");

    let err = Moonshine::load(missing).err().expect("missing moonshine");
    assert!(
        err.to_string()
            .contains("/nonexistent/models/encoder_model.ort"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_model_is_a_load_error() {
    common::init();
    let err = SileroVad::load(&common::fixture_path("fixtures.toml"))
        .err()
        .expect("not a model");
    assert!(matches!(err, ModelError::SessionLoad { .. }), "{err}");
    assert!(err.to_string().contains("fixtures.toml"), "{err}");
}
