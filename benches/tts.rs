//! TTS costs on this machine, one intra-op thread: Piper's real-time factor
//! (synthesis time / audio duration) for a 10-word sentence, time to first
//! audio (text in, samples out: phonemes for each clause, then Piper), and
//! the espeak-ng pool's latency per sentence. Besides criterion's times it
//! prints the RTF directly. Models as in the tests (`HEARKEN_MODELS_DIR`,
//! `ORT_DYLIB_PATH`).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hearken::models::{init_runtime, ORT_DYLIB_FILE};
use hearken::tts::{
    phonemize_clauses, piper_model_path, PhonemizerPool, PiperVoice, PIPER_CONFIG_FILE,
};
use prometheus::IntGauge;

/// Ten words, two clauses: what the sentence splitter typically hands over.
const SENTENCE: &str = "Well, the train to Boston leaves at half past nine.";

fn models_dir() -> PathBuf {
    std::env::var_os("HEARKEN_MODELS_DIR").map_or_else(|| PathBuf::from("models"), PathBuf::from)
}

fn setup() -> (PiperVoice, PhonemizerPool) {
    let dir = models_dir();
    let dylib =
        std::env::var_os("ORT_DYLIB_PATH").map_or_else(|| dir.join(ORT_DYLIB_FILE), PathBuf::from);
    init_runtime(&dylib).unwrap_or_else(|e| panic!("{e}"));
    let voice = PiperVoice::load(&piper_model_path(&dir), &dir.join(PIPER_CONFIG_FILE))
        .unwrap_or_else(|e| panic!("{e}"));
    let gauge = IntGauge::new("bench_espeak", "espeak-ng processes").expect("gauge");
    let pool = PhonemizerPool::new(1, gauge).unwrap_or_else(|e| panic!("{e}"));
    (voice, pool)
}

fn bench(c: &mut Criterion) {
    let (mut voice, pool) = setup();
    let clauses = phonemize_clauses(&pool, SENTENCE).expect("phonemes");
    let audio = voice.synthesize(&clauses).expect("warm-up");
    let seconds = audio.len() as f64 / f64::from(voice.sample_rate());

    // Direct RTF: median of 15 runs after the warm-up above.
    let mut runs: Vec<Duration> = (0..15)
        .map(|_| {
            let start = Instant::now();
            black_box(voice.synthesize(&clauses).expect("synthesize"));
            start.elapsed()
        })
        .collect();
    runs.sort();
    let median = runs[runs.len() / 2].as_secs_f64();
    println!(
        "piper: {seconds:.2} s of audio for {:?}; median synthesis {:.1} ms, RTF {:.3}",
        SENTENCE,
        median * 1e3,
        median / seconds
    );

    let mut group = c.benchmark_group("tts");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("piper_synthesize_10_words", |b| {
        b.iter(|| black_box(voice.synthesize(&clauses).expect("synthesize")))
    });
    group.bench_function("time_to_first_audio_10_words", |b| {
        b.iter(|| black_box(voice.speak(&pool, SENTENCE).expect("speak")))
    });
    group.finish();

    let mut group = c.benchmark_group("phonemizer");
    group.bench_function("phonemize_sentence", |b| {
        b.iter(|| black_box(pool.phonemize(SENTENCE).expect("phonemize")))
    });
    group.bench_function("phonemize_clauses_10_words", |b| {
        b.iter(|| black_box(phonemize_clauses(&pool, SENTENCE).expect("phonemize")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
