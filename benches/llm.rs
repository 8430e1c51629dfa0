//! Latency of the embedded LLM on a short voice-assistant prompt, release build:
//! `first_token` is the time from `generate` to the first text piece (prompt pass plus
//! one sampled token), `decode_token` the steady cost of each later token (its
//! throughput line is tokens/s); `first_token_after_history` reads a whole ~200-token
//! conversation first (a turn whose kept state was dropped). `decode_step/N` is one batched pass that advances N
//! replies by a token each (its throughput line is tokens/s across them; per-token
//! cost at batch N is its time / N). `decode_step_after_history/N` is the same after a
//! conversation's history of ~200 tokens, the positions a reply attends over at p50
//! with sixteen conversations. Needs the SmolLM2 GGUF (`HEARKEN_LLM_MODEL` or
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

    let mut asked_again = history();
    asked_again.push(ChatMessage::user("And what is the capital of Spain?"));
    group.bench_function("first_token_after_history", |b| {
        let params = GenerationParams {
            max_tokens: 1,
            ..GenerationParams::default()
        };
        b.iter(|| model.generate(&asked_again, &params, &mut |_| ControlFlow::Continue(())))
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

/// A voice conversation before its newest question: a system prompt and six short
/// exchanges, about 200 tokens.
fn history() -> Vec<ChatMessage> {
    let mut messages = vec![ChatMessage::system(
        "You are a helpful voice assistant. Answer in one or two short sentences.",
    )];
    for (question, answer) in [
        (
            "What is the capital of France?",
            "The capital of France is Paris.",
        ),
        (
            "How far away is the moon?",
            "About three hundred and eighty thousand kilometres.",
        ),
        (
            "Will it rain tomorrow?",
            "I cannot see a forecast, but take an umbrella to be safe.",
        ),
        (
            "Set a timer for ten minutes.",
            "I cannot set timers, but ten minutes is not long.",
        ),
        ("How do you say thank you in Spanish?", "You say gracias."),
        (
            "What is the tallest mountain?",
            "Mount Everest, at almost nine kilometres high.",
        ),
    ] {
        messages.push(ChatMessage::user(question));
        messages.push(ChatMessage::assistant(answer));
    }
    messages
}

/// `n` replies read up to their first generated token, all decoding, each after
/// `history`.
fn decoding_batch(model: &mut EmbeddedModel, n: usize, history: &[ChatMessage]) -> Vec<Sequence> {
    let params = GenerationParams {
        max_tokens: 400,
        ..GenerationParams::default()
    };
    let mut sequences: Vec<Sequence> = STORIES[..n]
        .iter()
        .map(|topic| {
            let mut prompt = history.to_vec();
            prompt.push(ChatMessage::user(format!(
                "Tell me a long story about {topic}."
            )));
            model.begin_reply(None, &prompt, &params).expect("prompt")
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
    decode_steps(c, model, "llm/decode_step", &[]);
    decode_steps(c, model, "llm/decode_step_after_history", &history());
}

fn decode_steps(c: &mut Criterion, model: &mut EmbeddedModel, name: &str, history: &[ChatMessage]) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    for n in [1usize, 2, 4, 8] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(n.to_string(), |b| {
            let mut sequences = decoding_batch(model, n, history);
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if sequences.iter().any(|s| !s.is_decoding()) {
                        // One ended: start over.
                        sequences = decoding_batch(model, n, history);
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
