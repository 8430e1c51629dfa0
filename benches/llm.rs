//! Latency of the embedded LLM on a short voice-assistant prompt, release build:
//! `first_token` is the time from `generate` to the first text piece (prompt pass plus
//! one sampled token), `decode_token` the steady cost of each later token (its
//! throughput line is tokens/s). Needs the SmolLM2 GGUF (`HEARKEN_LLM_MODEL` or
//! `models/`). Run: `RAYON_NUM_THREADS=1 cargo bench --bench llm`.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hearken::llm::{ChatMessage, EmbeddedModel, GenerationParams};

/// Tokens per decode sample: long enough to reach a steady rate, short enough that the
/// model does not end its turn first.
const DECODE_TOKENS: usize = 32;

fn model_path() -> PathBuf {
    std::env::var_os("HEARKEN_LLM_MODEL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    )
}

fn bench_llm(c: &mut Criterion) {
    let mut model = match EmbeddedModel::load(model_path()) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("skipping LLM bench: {e}");
            return;
        }
    };
    let question = [
        ChatMessage::system("You are a helpful voice assistant. Answer in one sentence."),
        ChatMessage::user("What is the capital of France?"),
    ];
    let story = [ChatMessage::user("Tell me a long story about a dragon.")];
    let mut group = c.benchmark_group("llm");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));

    group.bench_function("first_token", |b| {
        let params = GenerationParams {
            max_tokens: 1,
            ..GenerationParams::default()
        };
        b.iter(|| model.generate(&question, &params, &mut |_| ControlFlow::Continue(())))
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_token", |b| {
        let params = GenerationParams {
            max_tokens: DECODE_TOKENS,
            ..GenerationParams::default()
        };
        b.iter_custom(|iters| {
            let mut per_token = Duration::ZERO;
            for _ in 0..iters {
                match model.generate(&story, &params, &mut |_| ControlFlow::Continue(())) {
                    Ok(o) if o.tokens > 1 => {
                        let decode_ms = o.total_ms - o.first_token_ms.unwrap_or(o.total_ms);
                        per_token +=
                            Duration::from_secs_f64(decode_ms / 1e3 / (o.tokens - 1) as f64);
                    }
                    other => panic!("generation failed or too short: {other:?}"),
                }
            }
            per_token
        })
    });
    group.finish();
}

criterion_group!(benches, bench_llm);
criterion_main!(benches);
