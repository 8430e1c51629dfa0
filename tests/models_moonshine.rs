//! Moonshine on the spoken fixtures: each transcript within 20 % word error
//! rate of the sentence that was spoken; cancellation between decoder steps;
//! the converted float32 models give the same tokens as the `.ort` originals.

#[path = "model_support/mod.rs"]
mod common;

use std::cell::Cell;

use hearken::models::{Moonshine, MoonshineFiles, MOONSHINE_DIR};

/// Most words that may be wrong, as a fraction of the reference.
const MAX_WER: f64 = 0.20;

fn moonshine() -> Moonshine {
    common::init();
    Moonshine::load(&common::models_dir().join(MOONSHINE_DIR)).unwrap_or_else(|e| panic!("{e}"))
}

fn check(name: &str, reference: &str, transcript: &str) {
    let wer = common::wer(reference, transcript);
    println!("{name}: WER {:.1} % | {transcript}", wer * 100.0);
    assert!(
        wer <= MAX_WER,
        "{name}: WER {wer:.2}\n  want: {reference}\n  got:  {transcript}"
    );
}

#[test]
fn transcribes_fox() {
    let mut stt = moonshine();
    let text = stt
        .transcribe(&common::read_wav_16k("fox_16k.wav"))
        .expect("transcribe");
    check("fox_16k", &common::fixture_text("fox_16k", "text"), &text);
}

#[test]
fn transcribes_weather_resampled_from_8k() {
    let mut stt = moonshine();
    let (raw, rate) = common::read_wav("weather_8k.wav");
    assert_eq!(rate, 8_000);
    let samples = common::read_wav_16k("weather_8k.wav");
    assert!((samples.len() as f64 / raw.len() as f64 - 2.0).abs() < 0.01);
    let text = stt.transcribe(&samples).expect("transcribe");
    check(
        "weather_8k",
        &common::fixture_text("weather_8k", "text"),
        &text,
    );
}

#[test]
fn transcribes_long_utterance() {
    let mut stt = moonshine();
    let samples = common::read_wav_16k("long_utterance_16k.wav");
    let text = stt.transcribe(&samples).expect("transcribe");
    check(
        "long_utterance_16k",
        &common::fixture_text("long_utterance_16k", "text"),
        &text,
    );
}

/// Cut at the silence with Silero, then transcribe each utterance.
#[test]
fn transcribes_two_utterances_cut_by_vad() {
    let mut vad = common::silero();
    let mut stt = moonshine();
    let samples = common::read_wav_16k("two_utterances_16k.wav");
    let probs = common::probabilities(&mut vad, &samples);
    let segments = common::segments(&probs, samples.len());
    assert_eq!(segments.len(), 2, "{segments:?}");
    for (segment, key) in segments.into_iter().zip(["first", "second"]) {
        let text = stt.transcribe(&samples[segment]).expect("transcribe");
        check(
            &format!("two_utterances_16k/{key}"),
            &common::fixture_text("two_utterances_16k", key),
            &text,
        );
    }
}

#[test]
fn noise_and_tiny_input_do_not_fail() {
    let mut stt = moonshine();
    let text = stt
        .transcribe(&common::read_wav_16k("noise_16k.wav"))
        .expect("noise");
    println!("noise_16k: {text:?}");
    assert!(
        text.split_whitespace().count() <= 18,
        "runaway decode on noise: {text}"
    );
    assert_eq!(stt.transcribe(&[]).expect("empty"), "");
    assert_eq!(stt.transcribe(&[0.0; 100]).expect("tiny"), "");
}

#[test]
fn cancellation_stops_between_steps() {
    let mut stt = moonshine();
    let samples = common::read_wav_16k("fox_16k.wav");
    assert_eq!(
        stt.transcribe_with(&samples, &|| true)
            .expect("stop at once"),
        None
    );

    // Let the encoder and two decoder steps run, then ask to stop.
    let checks = Cell::new(0);
    let stop_after_three = || {
        checks.set(checks.get() + 1);
        checks.get() > 3
    };
    assert_eq!(
        stt.transcribe_with(&samples, &stop_after_three)
            .expect("stop"),
        None
    );
    assert_eq!(checks.get(), 4);

    // The model is still usable afterwards.
    let text = stt.transcribe_with(&samples, &|| false).expect("again");
    check(
        "fox_16k (after cancel)",
        &common::fixture_text("fox_16k", "text"),
        &text.unwrap_or_default(),
    );
}

#[test]
fn wer_counts_edits_and_ignores_case_and_punctuation() {
    assert_eq!(
        common::wer("The quick brown fox.", "the quick, brown fox"),
        0.0
    );
    assert_eq!(common::wer("a b c d", "a x c d"), 0.25);
    assert_eq!(common::wer("a b c d", "a c d"), 0.25);
    assert_eq!(common::wer("a b", "a b c d"), 1.0);
    assert_eq!(common::wer("", ""), 0.0);
}

/// Guided decoding returns the greedy transcript whatever the guess: the
/// transcript's own tokens, a wrong guess, and the tokens of the first half.
#[test]
fn a_guess_never_changes_the_transcript() {
    let mut stt = moonshine();
    let samples = common::read_wav_16k("fox_16k.wav");
    let never = || false;
    let plain = stt
        .transcribe_guided(&samples, &[], &never)
        .expect("transcribe")
        .expect("not stopped");
    assert!(!plain.tokens.is_empty());
    let half = stt
        .transcribe_guided(&samples[..samples.len() / 2], &[], &never)
        .expect("transcribe")
        .expect("not stopped");
    let wrong: Vec<i64> = plain.tokens.iter().map(|t| t + 7).collect();
    for guess in [&plain.tokens, &wrong, &half.tokens] {
        let guided = stt
            .transcribe_guided(&samples, guess, &never)
            .expect("transcribe")
            .expect("not stopped");
        assert_eq!(guided.text, plain.text, "guess {guess:?}");
    }
}

/// `scripts/convert-moonshine.py` folds the int8 weights into float32 without
/// changing them: the converted models, which `Moonshine::load` prefers, must
/// decode exactly the tokens of the fetched `.ort` files.
#[test]
fn converted_models_decode_the_same_tokens_as_the_originals() {
    common::init();
    let dir = common::models_dir().join(MOONSHINE_DIR);
    let converted = MoonshineFiles::converted(&dir);
    for path in converted.paths() {
        assert!(
            path.is_file(),
            "{} is missing; run `scripts/fetch-models.sh models`",
            path.display()
        );
    }
    assert_eq!(
        MoonshineFiles::find(&dir),
        converted,
        "load must prefer them"
    );
    let load =
        |files: &MoonshineFiles| Moonshine::load_files(files, 1).unwrap_or_else(|e| panic!("{e}"));
    let (mut fast, mut original) = (load(&converted), load(&MoonshineFiles::original(&dir)));
    let never = || false;
    for name in ["fox_16k.wav", "long_utterance_16k.wav", "noise_16k.wav"] {
        let samples = common::read_wav_16k(name);
        let [a, b] = [&mut fast, &mut original].map(|stt| {
            stt.transcribe_guided(&samples, &[], &never)
                .expect("transcribe")
                .expect("not stopped")
        });
        println!("{name}: {:?}", a.text);
        assert_eq!(a, b, "{name}");
    }
}
