//! The embedded LLM's memory across calls, on the real SmolLM2-135M-Instruct GGUF. In
//! a test binary of its own: resident memory is the process's, and the other model
//! tests running beside it in parallel would move it.

use std::ops::ControlFlow;
use std::path::PathBuf;

use hearken::llm::{ChatMessage, EmbeddedModel, GenerationParams};

fn load() -> EmbeddedModel {
    hearken::llm::embedded::pin_candle_threads(1);
    let path = std::env::var_os("HEARKEN_LLM_MODEL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    );
    EmbeddedModel::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn ask(model: &mut EmbeddedModel, question: &str) {
    let params = GenerationParams {
        max_tokens: 48,
        ..GenerationParams::default()
    };
    model
        .generate(&[ChatMessage::user(question)], &params, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `(VmRSS, VmHWM)` of this process in MB: resident now, and the peak so far.
fn memory_mb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn memory_does_not_grow_across_calls() {
    let mut model = load();
    let poem = "Write a short poem about the sea.";
    ask(&mut model, poem); // warm-up: allocator pools
    let (rss_before, peak_before) = memory_mb();
    // Prompts of different lengths: candle caches one attention mask per prompt length.
    for n in 1..=6 {
        let prompt = format!("{poem}{}", " Please.".repeat(n * 7));
        ask(&mut model, &prompt);
    }
    // A clone shares the weights instead of copying ~300 MB.
    let twin = model.clone();
    let (rss_after, peak_after) = memory_mb();
    drop(twin);
    eprintln!("RSS {rss_before} -> {rss_after} MB, peak {peak_before} -> {peak_after} MB");
    assert!(
        rss_after <= rss_before + 16,
        "RSS grew {rss_before} -> {rss_after} MB"
    );
    // Each call clones the weights handle: a deep copy would raise the peak.
    assert!(
        peak_after <= peak_before.max(rss_before) + 16,
        "peak grew to {peak_after} MB"
    );
}
