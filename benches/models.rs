//! Inference cost of the speech models, each on one ONNX Runtime thread as the
//! server runs them (one session per worker thread, one intra-op thread each).
//!
//! - `silero/batch_N`: one [`SileroVad::infer_batch`] call over N conversations' 32 ms
//!   windows (N = 1, 8, 32, 64; 64 is the default `vad.max_batch`), each conversation
//!   with its own advancing [`SileroState`]. Throughput is per window, so criterion's
//!   elements/s shows directly how much batching across conversations buys; a stream
//!   needs 31.25 windows/s.
//! - `moonshine/fox_16k_guided_*`: the same, guided by earlier tokens (see
//!   [`Moonshine::transcribe_guided`]).
//! - `moonshine/fox_16k`: [`Moonshine::transcribe`] of the whole `fox_16k.wav`
//!   (5.44 s, one sentence with 1 s of silence either side), with the files
//!   [`Moonshine::load`] picks (the converted float32 `.onnx` models when present).
//!   Besides criterion's figures the bench prints the real-time factor, median time
//!   / clip length, from its own per-run samples.
//! - `moonshine/fox_16k_original`: the same with the `.ort` files as fetched, whose
//!   weights are dequantized on every call (skipped when they are what `load` picks).
//!
//! - `smart_turn/features`: [`WhisperFeatures::compute`] alone, the 8 s of log-mel
//!   features Smart Turn hears; `smart_turn/predict`: [`SmartTurn::predict`], features
//!   and model. Each call takes the next of the Piper requests in
//!   `tests/fixtures/turns/` (2-3 s each, front-padded to 8 s like any turn, so the
//!   cost does not depend on the clip). Besides criterion's figures the bench prints
//!   the median of its own per-call samples.
//!
//! Models come from `models/` (`scripts/fetch-models.sh models`), the ONNX Runtime
//! library from `models/libonnxruntime.so.1.31.1`, as in the model tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{black_box, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use hearken::models::{
    init_runtime, Moonshine, MoonshineFiles, SileroJob, SileroState, SileroVad, SmartTurn,
    WhisperFeatures, MOONSHINE_DIR, ORT_DYLIB_FILE, SAMPLE_RATE, SILERO_FILE, SMART_TURN_FILE,
    WINDOW_SAMPLES,
};

/// Batch sizes for Silero: one conversation alone, then up to `vad.max_batch`.
const SILERO_BATCHES: [usize; 4] = [1, 8, 32, 64];

/// Criterion's minimum; a Moonshine run takes a large part of a second.
const MOONSHINE_SAMPLES: usize = 10;

/// Samples per Smart Turn group: a call takes tens of milliseconds.
const SMART_TURN_SAMPLES: usize = 30;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A 16 kHz fixture under `tests/fixtures/` as samples in [-1, 1].
fn fixture(name: &str) -> Vec<f32> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut reader = hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(reader.spec().sample_rate, SAMPLE_RATE, "{name} is 16 kHz");
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect()
}

/// `fox_16k.wav` as samples in [-1, 1].
fn fox() -> Vec<f32> {
    fixture("fox_16k.wav")
}

/// Every WAV in `tests/fixtures/turns/`, in name order.
fn turns() -> Vec<Vec<f32>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/turns");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/turns")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".wav"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|name| fixture(&format!("turns/{name}")))
        .collect()
}

/// The median of `runs`, in ms.
fn median_ms(runs: &mut [Duration]) -> f64 {
    runs.sort_unstable();
    runs[runs.len() / 2].as_secs_f64() * 1e3
}

fn silero(c: &mut Criterion, fox: &[f32]) {
    let mut vad =
        SileroVad::load(&models_dir().join(SILERO_FILE)).unwrap_or_else(|e| panic!("{e}"));
    let windows: Vec<[f32; WINDOW_SAMPLES]> = fox
        .chunks_exact(WINDOW_SAMPLES)
        .map(|w| w.try_into().expect("whole window"))
        .collect();

    let mut group = c.benchmark_group("silero");
    for batch in SILERO_BATCHES {
        // Conversation b starts at window b of the clip, so a batch mixes silence and
        // speech the way concurrent conversations do.
        let batch_windows: Vec<&[f32; WINDOW_SAMPLES]> =
            (0..batch).map(|b| &windows[b % windows.len()]).collect();
        let mut states = vec![SileroState::default(); batch];
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new("batch", batch), |b| {
            b.iter(|| {
                let mut jobs: Vec<SileroJob<'_>> = states
                    .iter_mut()
                    .zip(&batch_windows)
                    .map(|(state, window)| SileroJob::new(state, window))
                    .collect();
                vad.infer_batch(&mut jobs).expect("silero inference");
                black_box(jobs[0].probability)
            })
        });
    }
    group.finish();
}

fn moonshine(c: &mut Criterion, fox: &[f32]) {
    let mut model =
        Moonshine::load(&models_dir().join(MOONSHINE_DIR)).unwrap_or_else(|e| panic!("{e}"));
    let clip = Duration::from_secs_f64(fox.len() as f64 / f64::from(SAMPLE_RATE));
    let text = model.transcribe(fox).expect("transcription");
    println!(
        "moonshine: fox_16k.wav ({:.2} s) -> {text:?}",
        clip.as_secs_f64()
    );

    let mut group = c.benchmark_group("moonshine");
    group.sample_size(MOONSHINE_SAMPLES);
    let runs = bench_transcribe(&mut group, "fox_16k", &mut model, fox);
    // Guided decoding (`Moonshine::transcribe_guided`): by the clip's own tokens (a
    // draft that was right), and by the tokens of its first two thirds padded with
    // 300 ms of silence (a partial taken while the speaker was still talking).
    let never = || false;
    let tokens_of = |model: &mut Moonshine, samples: &[f32]| {
        model
            .transcribe_guided(samples, &[], &never)
            .expect("transcription")
            .map(|t| t.tokens)
            .unwrap_or_default()
    };
    let own = tokens_of(&mut model, fox);
    let mut partial = fox[..fox.len() * 2 / 3].to_vec();
    partial.resize(partial.len() + SAMPLE_RATE as usize * 3 / 10, 0.0);
    let early = tokens_of(&mut model, &partial);
    for (name, guess) in [
        ("fox_16k_guided_by_itself", &own),
        ("fox_16k_guided_by_two_thirds", &early),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    model
                        .transcribe_guided(black_box(fox), guess, &never)
                        .expect("transcription"),
                )
            })
        });
    }
    let dir = models_dir().join(MOONSHINE_DIR);
    let original = MoonshineFiles::original(&dir);
    let original_runs = (MoonshineFiles::find(&dir) != original).then(|| {
        let mut model = Moonshine::load_files(&original, 1).unwrap_or_else(|e| panic!("{e}"));
        bench_transcribe(&mut group, "fox_16k_original", &mut model, fox)
    });
    group.finish();

    print_rtf("moonshine/fox_16k", runs, clip);
    if let Some(runs) = original_runs {
        print_rtf("moonshine/fox_16k_original", runs, clip);
    }
}

/// Benches [`Moonshine::transcribe`] of `clip` as `name`; returns the time of
/// every routine call (warm-up included: each run is the same whole-clip
/// transcription, so they are all representative).
fn bench_transcribe(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    model: &mut Moonshine,
    clip: &[f32],
) -> Vec<Duration> {
    let mut runs = Vec::new();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                black_box(model.transcribe(black_box(clip)).expect("transcription"));
                let run = start.elapsed();
                runs.push(run);
                total += run;
            }
            total
        })
    });
    runs
}

/// Prints the median of `runs` and the real-time factor, median / `clip`.
fn print_rtf(name: &str, mut runs: Vec<Duration>, clip: Duration) {
    if runs.len() > 1 {
        runs.sort_unstable();
        let median = runs[runs.len() / 2];
        println!(
            "{name}: {} runs, median {:.1} ms, RTF {:.3} (median / {:.2} s)",
            runs.len(),
            median.as_secs_f64() * 1e3,
            median.as_secs_f64() / clip.as_secs_f64(),
            clip.as_secs_f64(),
        );
    }
}

fn smart_turn(c: &mut Criterion) {
    let turns = turns();
    assert!(!turns.is_empty(), "no WAVs in tests/fixtures/turns");
    let mut model =
        SmartTurn::load(&models_dir().join(SMART_TURN_FILE)).unwrap_or_else(|e| panic!("{e}"));
    let mut features = WhisperFeatures::new();

    // Per-call times from every routine call, warm-up included (every call does
    // the same work: 8 s of features and one model run).
    let (mut feature_runs, mut predict_runs) = (Vec::new(), Vec::new());
    let mut group = c.benchmark_group("smart_turn");
    // Flat: the same few calls per sample, so ~5 s per benchmark, not ~30 s.
    group
        .sample_size(SMART_TURN_SAMPLES)
        .sampling_mode(SamplingMode::Flat);
    for (name, runs) in [
        ("features", &mut feature_runs),
        ("predict", &mut predict_runs),
    ] {
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let clip = &turns[next % turns.len()];
                    next += 1;
                    let start = Instant::now();
                    if name == "features" {
                        black_box(features.compute(black_box(clip)));
                    } else {
                        black_box(model.predict(black_box(clip)).expect("smart turn"));
                    }
                    let run = start.elapsed();
                    runs.push(run);
                    total += run;
                }
                total
            })
        });
    }
    group.finish();

    for (name, runs) in [
        ("features", &mut feature_runs),
        ("predict", &mut predict_runs),
    ] {
        if !runs.is_empty() {
            println!(
                "smart_turn/{name}: {} calls, median {:.2} ms",
                runs.len(),
                median_ms(runs)
            );
        }
    }
}

fn main() {
    init_runtime(&models_dir().join(ORT_DYLIB_FILE)).unwrap_or_else(|e| panic!("{e}"));
    let mut c = Criterion::default().configure_from_args();
    let fox = fox();
    silero(&mut c, &fox);
    moonshine(&mut c, &fox);
    smart_turn(&mut c);
    c.final_summary();
}
