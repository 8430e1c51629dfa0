//! Smart Turn v3.2 against pipecat's Python reference
//! (`scripts/make-smart-turn-fixture.py`): the Rust Whisper features match the
//! reference's within [`FEATURE_TOLERANCE`] and the probabilities within
//! [`PROBABILITY_TOLERANCE`]; and on Piper-spoken requests
//! (`tests/fixtures/turns/`) whole sentences score as complete and sentences cut
//! mid-phrase as incomplete, at least [`MIN_ACCURACY`] of the time.

#[path = "model_support/mod.rs"]
mod common;

use hearken::models::whisper_features::{N_FRAMES, N_MELS};
use hearken::models::{
    ModelError, SmartTurn, WhisperFeatures, COMPLETE_THRESHOLD, SMART_TURN_FILE,
};
use serde::Deserialize;

/// Largest difference allowed between a Rust feature and the reference's (an
/// `f32` in [-1.5, 1.5]). The normalisation is numpy's `f32` arithmetic to the
/// bit and the spectrogram `f64` like numpy's, so the features should be the
/// reference's to the bit but for rare `f64` rounding ties: 1e-6 is a few ulps.
/// (Frame means are compared at the same bound; numpy sums them in its own order.)
const FEATURE_TOLERANCE: f32 = 1e-6;

/// Largest difference allowed between the Rust and Python probabilities. The
/// model's last step rounds its logit to steps of 0.039 (a probability step of at
/// most 0.0098), so this allows one step and nothing else: any feature that
/// differed would show, since one ulp in one feature can move the answer by 0.4.
const PROBABILITY_TOLERANCE: f32 = 0.01;

/// Share of turns (whole and cut) that must land on the right side of
/// [`COMPLETE_THRESHOLD`].
const MIN_ACCURACY: f64 = 0.8;

#[derive(Deserialize)]
struct Reference {
    clips: Vec<Clip>,
}

#[derive(Deserialize)]
struct Clip {
    name: String,
    file: String,
    samples: usize,
    probability: f32,
    frame_means: Vec<f32>,
    frames: Vec<usize>,
    features: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Manifest {
    turns: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    file: String,
    text: String,
    cut_after: String,
    cut_ms: usize,
    reference: Scores,
}

#[derive(Deserialize)]
struct Scores {
    whole: f32,
    cut: f32,
}

fn smart_turn() -> SmartTurn {
    common::init();
    SmartTurn::load(&common::models_dir().join(SMART_TURN_FILE)).unwrap_or_else(|e| panic!("{e}"))
}

fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let text = std::fs::read_to_string(common::fixture_path(name)).expect(name);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The clip's audio: the first `samples` samples of its file.
fn clip_audio(clip: &Clip) -> Vec<f32> {
    let (mut samples, rate) = common::read_wav(&clip.file);
    assert_eq!(rate, common::RATE, "{}", clip.file);
    samples.truncate(clip.samples);
    assert_eq!(samples.len(), clip.samples, "{}", clip.file);
    samples
}

#[test]
fn features_match_the_python_reference() {
    let reference: Reference = read_json("smart_turn_reference.json");
    let mut extractor = WhisperFeatures::new();
    let mut worst = 0.0f32;
    for clip in &reference.clips {
        let features = extractor.compute(&clip_audio(clip));
        let at = |m: usize, t: usize| features[m * N_FRAMES + t];

        assert_eq!(clip.frame_means.len(), N_FRAMES);
        let mut worst_mean = 0.0f32;
        for (t, &want) in clip.frame_means.iter().enumerate() {
            let mean = (0..N_MELS).map(|m| at(m, t)).sum::<f32>() / N_MELS as f32;
            worst_mean = worst_mean.max((mean - want).abs());
        }
        let (mut worst_value, mut same_bits, mut values) = (0.0f32, 0, 0);
        for (&t, frame) in clip.frames.iter().zip(&clip.features) {
            assert_eq!(frame.len(), N_MELS);
            for (m, &want) in frame.iter().enumerate() {
                worst_value = worst_value.max((at(m, t) - want).abs());
                same_bits += usize::from(at(m, t).to_bits() == want.to_bits());
                values += 1;
            }
        }
        println!(
            "{}: {same_bits} of {values} features bit-identical, max abs error {worst_value:.1e}; \
             frame means max abs error {worst_mean:.1e}",
            clip.name
        );
        worst = worst.max(worst_value).max(worst_mean);
    }
    assert!(
        worst <= FEATURE_TOLERANCE,
        "features differ from the reference by up to {worst:.2e}"
    );
}

#[test]
fn probabilities_match_the_python_reference() {
    let reference: Reference = read_json("smart_turn_reference.json");
    let mut model = smart_turn();
    for clip in &reference.clips {
        let p = model.predict(&clip_audio(clip)).expect("predict");
        println!(
            "{}: rust {p:.6}, python {:.6}, difference {:.2e}",
            clip.name,
            clip.probability,
            (p - clip.probability).abs()
        );
        assert!(
            (p - clip.probability).abs() <= PROBABILITY_TOLERANCE,
            "{}: rust {p}, python {}",
            clip.name,
            clip.probability
        );
    }
}

/// Whole sentences should score complete and mid-phrase cuts incomplete; each
/// score should also be the Python reference's.
#[test]
fn whole_sentences_complete_and_cut_ones_not() {
    let manifest: Manifest = read_json("turns/manifest.json");
    assert!(manifest.turns.len() >= 12);
    let mut model = smart_turn();
    let (mut right, mut total) = (0, 0);
    let mut far_from_python = Vec::new();
    println!(
        "{:<14} {:>6} {:>6}   {:>6} {:>6}   cut after",
        "file", "whole", "(py)", "cut", "(py)"
    );
    for turn in &manifest.turns {
        let (audio, rate) = common::read_wav(&format!("turns/{}", turn.file));
        assert_eq!(rate, common::RATE, "{}", turn.file);
        let cut = turn.cut_ms * common::RATE / 1000;
        assert!(cut < audio.len(), "{}: cut past the end", turn.file);
        let whole = model.predict(&audio).expect("predict whole");
        let part = model.predict(&audio[..cut]).expect("predict cut");
        println!(
            "{:<14} {whole:>6.3} {:>6.3}   {part:>6.3} {:>6.3}   {:?} of {:?}",
            turn.file, turn.reference.whole, turn.reference.cut, turn.cut_after, turn.text
        );
        right += usize::from(whole > COMPLETE_THRESHOLD) + usize::from(part <= COMPLETE_THRESHOLD);
        total += 2;
        for (what, rust, python) in [
            ("whole", whole, turn.reference.whole),
            ("cut", part, turn.reference.cut),
        ] {
            if (rust - python).abs() > PROBABILITY_TOLERANCE {
                far_from_python.push(format!(
                    "{} {what}: rust {rust}, python {python}",
                    turn.file
                ));
            }
        }
    }
    let accuracy = right as f64 / total as f64;
    println!(
        "{right} of {total} on the right side of {COMPLETE_THRESHOLD} ({:.0} %)",
        accuracy * 100.0
    );
    assert!(far_from_python.is_empty(), "{far_from_python:#?}");
    assert!(accuracy >= MIN_ACCURACY, "accuracy {accuracy:.2}");
}

#[test]
fn odd_input_is_handled() {
    let mut model = smart_turn();
    for silence in [&[][..], &[0.0; 1600][..]] {
        let p = model.predict(silence).expect("silence is valid input");
        assert!((0.0..=1.0).contains(&p), "{p}");
    }
    let mut audio = common::read_wav_16k("fox_16k.wav");
    audio[1234] = f32::NAN;
    match model.predict(&audio) {
        Err(ModelError::InvalidInput { cause, .. }) => assert!(cause.contains("1234"), "{cause}"),
        other => panic!("NaN input gave {other:?}"),
    }
    // A NaN older than the last 8 s is never heard.
    let mut long = vec![0.0; 9 * common::RATE];
    long[0] = f32::NAN;
    assert!(model.predict(&long).is_ok());
}
