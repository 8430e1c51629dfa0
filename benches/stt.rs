//! Moonshine's batched decoder (`models::moonshine::batched`), release build.
//!
//! - `decoder_step/N`: one pass that advances N segments by a token each, every
//!   segment 12 tokens into its transcript (its throughput line is tokens/s across
//!   them; the per-token cost at batch N is its time / N).
//! - `fox_16k/{onnx_runtime,batched}`: the whole 5.4 s fox clip, encoder included,
//!   by ONNX Runtime's merged decoder and by the batched decoder alone in its batch.
//!
//! Needs the converted Moonshine files (`scripts/fetch-models.sh models`). Run:
//! `RAYON_NUM_THREADS=1 cargo bench --bench stt`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hearken::models::moonshine::{max_tokens, GuidedGreedy, MoonshineEncoder};
use hearken::models::{
    init_runtime, BatchedDecoder, Decoding, Moonshine, MoonshineFiles, MOONSHINE_DIR,
    ORT_DYLIB_FILE,
};

/// Tokens already in each segment's cache when a step is measured.
const CONTEXT_TOKENS: usize = 12;

fn models_dir() -> PathBuf {
    std::env::var_os("HEARKEN_MODELS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        PathBuf::from,
    )
}

fn fox() -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fox_16k.wav");
    let mut reader = hound::WavReader::open(path).expect("fox fixture");
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect()
}

fn bench_stt(c: &mut Criterion) {
    let dir = models_dir();
    let files = MoonshineFiles::converted(&dir.join(MOONSHINE_DIR));
    if let Err(e) = init_runtime(&dir.join(ORT_DYLIB_FILE)) {
        eprintln!("skipping STT bench: {e}");
        return;
    }
    let decoder = match BatchedDecoder::load(&files.decoder) {
        Ok(decoder) => decoder,
        Err(e) => {
            eprintln!("skipping STT bench: {e}");
            return;
        }
    };
    let mut encoder = MoonshineEncoder::load(&files.encoder, 1).expect("encoder");
    let fox = fox();
    let audio = encoder.encode(&fox).expect("encode");

    let mut group = c.benchmark_group("decoder_step");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    for batch in [1usize, 2, 4, 8] {
        let mut states: Vec<_> = (0..batch)
            .map(|_| {
                let mut state = decoder.begin(&audio).expect("begin");
                let context: Vec<i64> = (0..CONTEXT_TOKENS as i64).map(|t| 1 + t * 7).collect();
                decoder
                    .step(&mut [(&mut state, &context[..])])
                    .expect("context");
                state
            })
            .collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(batch.to_string(), |b| {
            b.iter(|| {
                let token = [400i64];
                let mut step: Vec<_> = states.iter_mut().map(|s| (s, &token[..])).collect();
                let choices = decoder.step(&mut step).expect("step");
                for (state, _) in step.iter_mut() {
                    state.truncate(1);
                }
                choices
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("fox_16k");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    let mut reference = Moonshine::load_files(&files, 1).expect("reference");
    group.bench_function("onnx_runtime", |b| {
        b.iter(|| reference.transcribe(&fox).expect("transcribe"))
    });
    group.bench_function("batched", |b| {
        b.iter(|| {
            let audio = encoder.encode(&fox).expect("encode");
            let mut decoding = Decoding {
                state: decoder.begin(&audio).expect("begin"),
                search: GuidedGreedy::new(&[], max_tokens(fox.len())),
            };
            while !decoding.is_done() {
                decoder.advance(&mut [&mut decoding]).expect("pass");
            }
            decoding.search.into_tokens()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_stt);
criterion_main!(benches);
