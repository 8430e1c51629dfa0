//! Silero VAD on real fixtures: speech is found in speech and not in noise,
//! and batching across streams changes nothing but the cost.

#[path = "model_support/mod.rs"]
mod common;

use hearken::models::{SileroJob, SileroState, WINDOW_SAMPLES};

#[test]
fn finds_speech_in_fox() {
    let mut vad = common::silero();
    let samples = common::read_wav_16k("fox_16k.wav");
    let probs = common::probabilities(&mut vad, &samples);
    let speech = probs.iter().filter(|&&p| p > 0.5).count();
    assert!(speech >= 10, "only {speech} speech windows: {probs:?}");
    // The first 1 s is padding silence.
    let lead = common::RATE / WINDOW_SAMPLES - 2;
    assert!(
        probs[..lead].iter().all(|&p| p < 0.5),
        "speech in leading silence: {probs:?}"
    );
    let segments = common::segments(&probs, samples.len());
    assert_eq!(segments.len(), 1, "{segments:?}");
}

#[test]
fn finds_no_speech_in_noise() {
    let mut vad = common::silero();
    let samples = common::read_wav_16k("noise_16k.wav");
    let probs = common::probabilities(&mut vad, &samples);
    let max = probs.iter().copied().fold(0.0f32, f32::max);
    assert!(max < 0.5, "noise scored {max} somewhere: {probs:?}");
}

#[test]
fn finds_two_utterances() {
    let mut vad = common::silero();
    let samples = common::read_wav_16k("two_utterances_16k.wav");
    let probs = common::probabilities(&mut vad, &samples);
    let segments = common::segments(&probs, samples.len());
    assert_eq!(segments.len(), 2, "{segments:?}");
}

/// Eight streams that start at different offsets of different fixtures, run
/// alone and then together in batches; same probabilities within 1e-4.
#[test]
fn batch_of_eight_matches_single_streams() {
    const STREAMS: usize = 8;
    const WINDOWS: usize = 60;
    let mut vad = common::silero();
    let sources = [
        common::read_wav_16k("fox_16k.wav"),
        common::read_wav_16k("two_utterances_16k.wav"),
        common::read_wav_16k("noise_16k.wav"),
        common::read_wav_16k("long_utterance_16k.wav"),
    ];
    let streams: Vec<Vec<[f32; WINDOW_SAMPLES]>> = (0..STREAMS)
        .map(|s| {
            let source = &sources[s % sources.len()];
            let offset = s * 1_000 % (source.len() - WINDOWS * WINDOW_SAMPLES);
            source[offset..offset + WINDOWS * WINDOW_SAMPLES]
                .chunks_exact(WINDOW_SAMPLES)
                .map(|w| w.try_into().expect("window"))
                .collect()
        })
        .collect();

    let alone: Vec<Vec<f32>> = streams
        .iter()
        .map(|windows| {
            let mut state = SileroState::default();
            windows
                .iter()
                .map(|w| vad.infer_one(&mut state, w).expect("infer_one"))
                .collect()
        })
        .collect();

    let mut states = vec![SileroState::default(); STREAMS];
    for t in 0..WINDOWS {
        let mut jobs: Vec<SileroJob<'_>> = states
            .iter_mut()
            .zip(&streams)
            .map(|(state, windows)| SileroJob::new(state, &windows[t]))
            .collect();
        vad.infer_batch(&mut jobs).expect("infer_batch");
        for (s, job) in jobs.iter().enumerate() {
            let diff = (job.probability - alone[s][t]).abs();
            assert!(
                diff < 1e-4,
                "stream {s} window {t}: {} vs {}",
                job.probability,
                alone[s][t]
            );
        }
    }
    assert!(
        alone.iter().flatten().any(|&p| p > 0.5),
        "no speech in any stream"
    );
}

/// A stream's result does not depend on which other streams share its batch
/// or on the batch size, and a reset state starts over.
#[test]
fn batch_size_and_neighbours_do_not_matter() {
    let mut vad = common::silero();
    let samples = common::read_wav_16k("fox_16k.wav");
    let windows: Vec<[f32; WINDOW_SAMPLES]> = samples
        .chunks_exact(WINDOW_SAMPLES)
        .map(|w| w.try_into().expect("window"))
        .collect();
    let reference = common::probabilities(&mut vad, &samples);

    // Stream 0 is the fox; 63 others get the same windows shifted in time.
    let mut states = vec![SileroState::default(); 64];
    for (t, window) in windows.iter().enumerate() {
        let batch = if t % 2 == 0 { 64 } else { 3 };
        let mut jobs: Vec<SileroJob<'_>> = states[..batch]
            .iter_mut()
            .enumerate()
            .map(|(s, state)| {
                SileroJob::new(
                    state,
                    if s == 0 {
                        window
                    } else {
                        &windows[(t + s) % windows.len()]
                    },
                )
            })
            .collect();
        vad.infer_batch(&mut jobs).expect("infer_batch");
        let p = jobs[0].probability;
        drop(jobs);
        if batch == 3 {
            // Streams left out of a batch would otherwise skip windows.
            for state in &mut states[3..] {
                state.reset();
            }
        }
        assert!(
            (p - reference[t]).abs() < 1e-4,
            "window {t}: {p} vs {}",
            reference[t]
        );
    }

    let mut state = states.swap_remove(0);
    state.reset();
    let first = vad.infer_one(&mut state, &windows[0]).expect("infer_one");
    assert!((first - reference[0]).abs() < 1e-6);
    assert!(vad.infer_batch(&mut []).is_ok());
}
