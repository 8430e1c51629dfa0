//! Replays every committed fuzz input through the same `hearken::fuzzing` functions the
//! fuzz targets call: the minimised corpora (`fuzz/corpus/<target>/`) and the inputs
//! that once crashed (`fuzz/regressions/<target>/`). It runs on stable Rust with no
//! fuzzer, so a fixed crash stays fixed in CI.
//!
//! The seed inputs the corpora grew from are written by the ignored test
//! `write_seed_corpus` (`cargo test --release --test fuzz_corpus -- --ignored`), from
//! the fixtures in `tests/fixtures/`.

use std::path::{Path, PathBuf};

use hearken::audio::opus_codec::OpusEncoder;
use hearken::fuzzing::{self, IngestSeed, IngestSetup, SegmenterSeed};
use hearken::protocol::AudioCodec;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("client_event", fuzzing::client_event),
    ("upgrade_query", fuzzing::upgrade_query),
    ("ingest", fuzzing::ingest),
    ("segmenter", fuzzing::segmenter),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none when the folder is missing.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Run one input, naming the file when it panics.
fn replay(target: Target, file: &Path) {
    let data = std::fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    if std::panic::catch_unwind(|| target(&data)).is_err() {
        panic!("{} fails its target", file.display());
    }
}

#[test]
fn every_corpus_file_replays_cleanly() {
    for (name, target) in TARGETS {
        let files = inputs("corpus", name);
        assert!(
            files.len() >= 5,
            "fuzz/corpus/{name} holds {} files: the committed corpus is missing",
            files.len()
        );
        for file in &files {
            replay(target, file);
        }
    }
}

#[test]
fn every_input_that_once_crashed_replays_cleanly() {
    for (name, target) in TARGETS {
        for file in inputs("regressions", name) {
            replay(target, &file);
        }
    }
}

#[test]
fn the_committed_corpus_stays_small() {
    let total: u64 = TARGETS
        .iter()
        .flat_map(|(name, _)| inputs("corpus", name))
        .map(|file| std::fs::metadata(file).map_or(0, |m| m.len()))
        .sum();
    assert!(
        total < 1024 * 1024,
        "corpus is {total} bytes, keep it under 1 MiB"
    );
}

/// 16-bit mono samples of a fixture.
fn fixture(name: &str) -> Vec<i16> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let reader = hound::WavReader::open(&path).expect("fixture WAV");
    reader
        .into_samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect()
}

fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// An ingest seed: a fixture's samples in 20 ms frames, two frames a batch, then a
/// flush; each batch's Silero windows scored by its loudness.
fn ingest_seed(setup: IngestSetup, samples: &[i16], frame_samples: usize) -> Vec<u8> {
    let frames: Vec<Vec<u8>> = match setup.codec {
        AudioCodec::Pcm16 => samples.chunks(frame_samples).map(pcm_bytes).collect(),
        AudioCodec::Opus => {
            let mut encoder = OpusEncoder::new(setup.sample_rate).expect("encoder");
            let mut packets = encoder.push(samples).expect("encode");
            packets.extend(encoder.finish().expect("encode"));
            packets
        }
        AudioCodec::Pcmu | AudioCodec::Pcma => {
            unreachable!("the ingest fuzzer's setup byte names PCM16 or Opus")
        }
    };
    let mut seed = IngestSeed::new(setup);
    for (pair, audio) in frames.chunks(2).zip(samples.chunks(2 * frame_samples)) {
        let refs: Vec<&[u8]> = pair.iter().map(Vec::as_slice).collect();
        let loud = audio.iter().any(|s| s.unsigned_abs() > 2_000);
        seed = seed.batch(&refs, if loud { 230 } else { 10 });
    }
    seed.flush().finish()
}

/// Writes the seed inputs; the fuzzer grows and `cargo fuzz cmin` minimises from them.
#[test]
#[ignore = "writes fuzz/corpus seeds; run by hand before a fuzzing campaign"]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed");
    };
    let events = [
        r#"{"type":"audio.end"}"#,
        r#"{"type":"response.cancel"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"session.update","llm":{"system_prompt":"Be brief."}}"#,
        r#"{"type":"session.update"}"#,
        r#"{"type":"debug.fail_child","role":"stt","mode":"panic"}"#,
        r#"{"type":"teleport"}"#,
        r#"{"type":7}"#,
        r#"["type","ping"]"#,
    ];
    for (i, event) in events.iter().enumerate() {
        write("client_event", &i.to_string(), event.as_bytes());
    }
    let queries = [
        "",
        "codec=opus&sample_rate=48000",
        "conversation_id=5f0c6a1e-7d4b-4c2f-9a57-0b9f0e1d2c3a&client_id=bench-1",
        "sample_rate=44100",
        "client_id=%00&token=secret",
        "codec=pcm16&sample_rate=8000&codec=opus",
    ];
    for (i, query) in queries.iter().enumerate() {
        write("upgrade_query", &i.to_string(), query.as_bytes());
    }
    let fox = fixture("fox_16k.wav");
    let weather = fixture("weather_8k.wav");
    let second = |s: &[i16], rate: usize| s[rate / 2..(rate * 3 / 2).min(s.len())].to_vec();
    let setups = [
        (
            "pcm16-16k-webrtc",
            AudioCodec::Pcm16,
            16_000,
            false,
            &fox,
            320,
        ),
        (
            "pcm16-16k-silero",
            AudioCodec::Pcm16,
            16_000,
            true,
            &fox,
            320,
        ),
        (
            "pcm16-8k-silero",
            AudioCodec::Pcm16,
            8_000,
            true,
            &weather,
            160,
        ),
        (
            "opus-16k-webrtc",
            AudioCodec::Opus,
            16_000,
            false,
            &fox,
            320,
        ),
        (
            "opus-8k-silero",
            AudioCodec::Opus,
            8_000,
            true,
            &weather,
            160,
        ),
    ];
    for (name, codec, rate, silero, samples, frame) in setups {
        let setup = IngestSetup {
            codec,
            sample_rate: rate,
            silero,
            keep_native: true,
        };
        let rate = rate as usize;
        write(
            "ingest",
            name,
            &ingest_seed(setup, &second(samples, rate), frame),
        );
    }
    let speech = |s: SegmenterSeed| s.frames(10, 320, 0.0).frames(30, 320, 0.9);
    let seeds = [
        (
            "utterance",
            speech(SegmenterSeed::default()).frames(30, 320, 0.0),
        ),
        (
            "pause-resume",
            speech(SegmenterSeed::default())
                .frames(10, 512, 0.1)
                .frames(10, 512, 1.0),
        ),
        ("flush", speech(SegmenterSeed::default()).flush()),
        ("long", SegmenterSeed::default().frames(200, 1_599, 0.8)),
        (
            "flicker",
            SegmenterSeed::default()
                .frames(3, 320, 1.0)
                .frames(3, 320, 0.0)
                .frames(5, 320, 0.6),
        ),
    ];
    for (name, seed) in seeds {
        write("segmenter", name, &seed.finish());
    }
}
