//! Helpers shared by the integration tests: where the models are, fixture
//! loading (WAV + the texts in `tests/fixtures/fixtures.toml`), resampling to
//! 16 kHz with rubato, a Silero-driven segmenter, and word error rate.
//!
//! Models come from `HEARKEN_MODELS_DIR` (default `models`, filled by
//! `scripts/fetch-models.sh models`); the ONNX Runtime library from
//! `ORT_DYLIB_PATH` if set, else from the models directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use hearken::models::{
    init_runtime, Moonshine, SileroState, SileroVad, MOONSHINE_DIR, ORT_DYLIB_FILE, SILERO_FILE,
    WINDOW_SAMPLES,
};

pub const RATE: usize = 16_000;

pub fn models_dir() -> PathBuf {
    std::env::var_os("HEARKEN_MODELS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        PathBuf::from,
    )
}

/// Initialises ONNX Runtime once per test process (idempotent).
pub fn init() {
    let dylib = std::env::var_os("ORT_DYLIB_PATH")
        .map_or_else(|| models_dir().join(ORT_DYLIB_FILE), PathBuf::from);
    if let Err(e) = init_runtime(&dylib) {
        panic!("{e}");
    }
}

pub fn silero() -> SileroVad {
    init();
    SileroVad::load(&models_dir().join(SILERO_FILE)).unwrap_or_else(|e| panic!("{e}"))
}

/// What a listener hears in synthesised audio (16 kHz): Moonshine over the clip with
/// half a second of silence on each side, as a recording of it would have. On audio
/// that starts abruptly Moonshine may hallucinate a number ("10", "2021") or quotes,
/// and its token cap (6 a second) then cuts the sentence's end.
pub fn hear(samples_16k: &[f32]) -> String {
    init();
    let mut moonshine =
        Moonshine::load(&models_dir().join(MOONSHINE_DIR)).unwrap_or_else(|e| panic!("{e}"));
    let pad = [0.0f32; RATE / 2];
    let padded: Vec<f32> = pad.iter().chain(samples_16k).chain(&pad).copied().collect();
    moonshine.transcribe(&padded).expect("transcribes")
}

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Reads a mono 16-bit WAV; returns samples in [-1, 1] and the sample rate.
pub fn read_wav(name: &str) -> (Vec<f32>, usize) {
    let mut reader = hound::WavReader::open(fixture_path(name)).expect("open fixture");
    let spec = reader.spec();
    assert_eq!(spec.channels, 1, "{name} must be mono");
    assert_eq!(spec.bits_per_sample, 16, "{name} must be 16-bit");
    let samples = reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect();
    (samples, spec.sample_rate as usize)
}

/// Reads a fixture and brings it to 16 kHz.
pub fn read_wav_16k(name: &str) -> Vec<f32> {
    let (samples, rate) = read_wav(name);
    if rate == RATE {
        samples
    } else {
        resample(&samples, rate, RATE)
    }
}

/// Whole-buffer resampling with rubato 5's FFT resampler.
pub fn resample(samples: &[f32], from: usize, to: usize) -> Vec<f32> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler};
    let mut resampler = Fft::<f32>::new(from, to, 1024, 1, FixedSync::Input).expect("resampler");
    let input = InterleavedSlice::new(samples, 1, samples.len()).expect("input adapter");
    resampler
        .process_all(&input, samples.len(), None)
        .expect("resample")
        .take_data()
}

/// `key` of `[section]` in fixtures.toml (only `key = "string"` lines).
pub fn fixture_text(section: &str, key: &str) -> String {
    let toml = std::fs::read_to_string(fixture_path("fixtures.toml")).expect("fixtures.toml");
    let mut current = "";
    for line in toml.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name;
        } else if current == section {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return v.trim().trim_matches('"').to_string();
                }
            }
        }
    }
    panic!("no {key} in [{section}] of fixtures.toml");
}

/// Silero probability of every whole 512-sample window, from a fresh state.
pub fn probabilities(vad: &mut SileroVad, samples: &[f32]) -> Vec<f32> {
    let mut state = SileroState::default();
    samples
        .chunks_exact(WINDOW_SAMPLES)
        .map(|w| {
            let window: &[f32; WINDOW_SAMPLES] = w.try_into().expect("window");
            vad.infer_one(&mut state, window).expect("silero")
        })
        .collect()
}

/// Speech segments (sample ranges) by the hysteresis in MODELS.md: start
/// above 0.5, end after 0.5 s below 0.35, pad 0.2 s each side.
pub fn segments(probs: &[f32], total: usize) -> Vec<std::ops::Range<usize>> {
    const START: f32 = 0.5;
    const END: f32 = 0.35;
    let hang = RATE / 2 / WINDOW_SAMPLES;
    let pad = RATE / 5;
    let mut out = Vec::new();
    let (mut start, mut quiet) = (None, 0);
    for (i, &p) in probs.iter().enumerate() {
        match start {
            None if p > START => (start, quiet) = (Some(i), 0),
            Some(s) if p < END => {
                quiet += 1;
                if quiet >= hang {
                    out.push((s, i + 1 - quiet));
                    start = None;
                }
            }
            Some(_) => quiet = 0,
            None => {}
        }
    }
    if let Some(s) = start {
        out.push((s, probs.len()));
    }
    out.into_iter()
        .map(|(s, e)| {
            (s * WINDOW_SAMPLES).saturating_sub(pad)..(e * WINDOW_SAMPLES + pad).min(total)
        })
        .collect()
}

/// Lower case, punctuation removed (apostrophes kept), split on whitespace.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Word error rate: word-level edit distance / reference length.
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (words(reference), words(hypothesis));
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut row = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            row[j + 1] = sub.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        prev = row;
    }
    prev[h.len()] as f64 / r.len() as f64
}
