//! Latency of the embedded LLM on a short voice-assistant prompt, release build:
//! `first_token` is the time from `generate` to the first text piece (prompt pass plus
//! one sampled token), `decode_token` the steady cost of each later token (its
//! throughput line is tokens/s). `decode_step/N` is one batched pass that advances N
//! replies by a token each (its throughput line is tokens/s across them; per-token
//! cost at batch N is its time / N). Needs the SmolLM2 GGUF (`HEARKEN_LLM_MODEL` or
//! `models/`). Run: `RAYON_NUM_THREADS=1 cargo bench --bench llm`.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hearken::llm::{ChatMessage, EmbeddedModel, GenerationParams, Sequence};

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
    bench_batched_decode(c, &mut model);
}

/// Stories to tell, one per sequence: long replies that keep decoding.
const STORIES: [&str; 8] = [
    "a dragon",
    "a lighthouse",
    "a robot",
    "a river",
    "a baker",
    "a comet",
    "a fox",
    "a ship",
];

/// `n` replies read up to their first generated token, all decoding.
fn decoding_batch(model: &mut EmbeddedModel, n: usize) -> Vec<Sequence> {
    let params = GenerationParams {
        max_tokens: 400,
        ..GenerationParams::default()
    };
    let mut sequences: Vec<Sequence> = STORIES[..n]
        .iter()
        .map(|topic| {
            let story = [ChatMessage::user(format!(
                "Tell me a long story about {topic}."
            ))];
            model.begin_reply(None, &story, &params).expect("prompt")
        })
        .collect();
    while sequences.iter().any(|s| !s.is_decoding()) {
        let mut reading: Vec<&mut Sequence> =
            sequences.iter_mut().filter(|s| !s.is_decoding()).collect();
        model.step(&mut reading, usize::MAX).expect("prompt pass");
    }
    sequences
}

fn bench_batched_decode(c: &mut Criterion, model: &mut EmbeddedModel) {
    let mut group = c.benchmark_group("llm/decode_step");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    for n in [1usize, 2, 4, 8] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(n.to_string(), |b| {
            let mut sequences = decoding_batch(model, n);
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if sequences.iter().any(|s| !s.is_decoding()) {
                        sequences = decoding_batch(model, n); // one ended: start over
                    }
                    let mut batch: Vec<&mut Sequence> = sequences.iter_mut().collect();
                    let started = std::time::Instant::now();
                    model.step(&mut batch, 0).expect("decode pass");
                    spent += started.elapsed();
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_llm);
criterion_main!(benches);
