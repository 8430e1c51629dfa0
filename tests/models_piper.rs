//! The Piper voice through ONNX Runtime, without the server: with its noise turned
//! off, synthesis is a pure function of the text. A run must not see what an earlier
//! run left in memory (its arena is reused within a run, and kept after it while
//! pieces queue). The voice with its decoder as 2-D convolutions, which the server
//! loads, speaks as the original does.

#[path = "model_support/mod.rs"]
mod model_support;

use hearken::tts::{
    phonemize_clauses, PhonemizerPool, PiperVoice, Scales, PIPER_CONFIG_FILE,
    PIPER_CONVERTED_MODEL_FILE, PIPER_MODEL_FILE,
};
use prometheus::IntGauge;

fn quiet_voice() -> (PiperVoice, PhonemizerPool) {
    let voice = quiet_voice_from(PIPER_MODEL_FILE);
    let gauge = IntGauge::new("test_espeak", "espeak-ng processes").expect("gauge");
    let pool = PhonemizerPool::new(1, gauge).unwrap_or_else(|e| panic!("{e}"));
    (voice, pool)
}

/// The voice in `file` of the models directory, its noise turned off.
fn quiet_voice_from(file: &str) -> PiperVoice {
    model_support::init();
    let dir = model_support::models_dir();
    let model = dir.join(file);
    assert!(
        model.is_file(),
        "{}: missing; run scripts/fetch-models.sh",
        model.display()
    );
    let mut voice =
        PiperVoice::load(&model, &dir.join(PIPER_CONFIG_FILE)).unwrap_or_else(|e| panic!("{e}"));
    voice.set_scales(Scales {
        noise: 0.0,
        noise_w: 0.0,
        ..voice.scales()
    });
    voice
}

#[test]
fn noiseless_synthesis_is_the_same_whatever_ran_before() {
    let (mut voice, pool) = quiet_voice();
    let long = phonemize_clauses(
        &pool,
        "The weather today will be sunny with a light breeze from the west, and warm.",
    )
    .expect("phonemes");
    let short = phonemize_clauses(&pool, "Hello there.").expect("phonemes");
    let first = voice.synthesize(&short).expect("synthesize");
    assert!(first.len() > 4_000, "{} samples", first.len());
    // Even rounds give the arena back after each run; odd ones keep it, as the TTS
    // thread does while pieces queue.
    for round in 0..4 {
        let keep = round % 2 == 1;
        let between = voice.synthesize_then(&long, &|| keep).expect("synthesize");
        assert!(between.len() > first.len());
        let again = voice.synthesize_then(&short, &|| keep).expect("synthesize");
        assert_eq!(again.len(), first.len(), "round {round}");
        let differing = first.iter().zip(&again).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "round {round}: {differing} samples differ");
    }
}

/// Same phonemes, same durations: the converted decoder gives as many samples, each
/// within rounding of the original's (a convolution summed in another order).
#[test]
fn the_converted_voice_speaks_as_the_original() {
    let (mut original, pool) = quiet_voice();
    let mut converted = quiet_voice_from(PIPER_CONVERTED_MODEL_FILE);
    let clauses = phonemize_clauses(&pool, "Well, the train to Boston leaves at half past nine.")
        .expect("phonemes");
    let expect = original.synthesize(&clauses).expect("synthesize");
    let got = converted.synthesize(&clauses).expect("synthesize");
    assert!(expect.len() > 20_000, "{} samples", expect.len());
    assert_eq!(got.len(), expect.len());
    let worst = expect
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let loudest = expect.iter().map(|s| s.abs()).fold(0f32, f32::max);
    assert!(loudest > 0.1, "loudest sample {loudest}");
    assert!(worst < 1e-4, "samples differ by up to {worst}");
}
