//! What the tests on the real SmolLM2 GGUF share: where the model is, and the questions
//! whose replies they compare.

use std::path::PathBuf;

/// `models/SmolLM2-135M-Instruct.Q4_1.gguf` (fetched by scripts/setup.sh), or
/// `HEARKEN_LLM_MODEL`.
pub fn smollm_path() -> PathBuf {
    std::env::var_os("HEARKEN_LLM_MODEL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    )
}

/// Short questions with short, different replies.
pub const QUESTIONS: [&str; 5] = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "How many legs does a spider have?",
    "Say hello in Spanish.",
    "What do bees make?",
];
