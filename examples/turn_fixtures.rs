//! Regenerates the end-of-turn fixtures in `tests/fixtures/turns/`: short requests
//! to a voice assistant spoken by hearken's own Piper voice (16 kHz mono PCM16,
//! 100 ms of silence before, 200 ms after, like a speaker's pause), and for each a
//! cut point inside the phrase ("Can you tell me a funny joke about|"), where a
//! listener knows the speaker has not finished. `tests/models_smart_turn.rs` runs
//! Smart Turn on both.
//!
//! The cut is where Piper itself ends the word: each sentence is synthesised by a
//! copy of the voice that also outputs every phoneme id's duration
//! (`scripts/piper-durations-model.py`), through the same phonemizer, phoneme ids
//! and scales as [`PiperVoice`], so the end of the cut's last word is known to a
//! decoder frame (11.6 ms). Energy and speech recognisers cannot place it in
//! connected speech ("be|like" has no dip), and Smart Turn's answer moves with a
//! few tens of milliseconds. The cut has no silence after it: Smart Turn takes a
//! pause after a word as a sign of a finished turn, and a mid-phrase pause is a
//! different test. A rendering is kept only when Moonshine understands it (Piper's
//! noise now and then slurs a word); Moonshine's transcript of the audio before
//! the cut is printed as a check. Only the cut point is stored; tests cut
//! the whole sentence's audio there.
//!
//! ```text
//! python3 scripts/piper-durations-model.py        # once: models/en_US-joe-medium.durations.onnx
//! cargo run --release --example turn_fixtures -- [--models models] [--out tests/fixtures/turns]
//! python3 scripts/make-smart-turn-fixture.py      # then: the Python reference scores
//! ```
//!
//! The manifest's `reference` scores are left empty here; the Python script fills
//! them. Piper adds noise to prosody and durations, so every run gives new audio:
//! rerun both.

#[path = "support/speech.rs"]
mod speech;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use hearken::audio::resample::StreamResampler;
use hearken::models::runtime::load_session;
use hearken::models::{Moonshine, MOONSHINE_DIR};
use hearken::tts::{phonemize_clauses, PiperVoice};
use ort::session::Session;
use ort::value::TensorRef;
use serde::Serialize;
use unicode_normalization::UnicodeNormalization;

/// `(file stem, sentence, the words before the cut)`.
const TURNS: [(&str, &str, &str); 13] = [
    (
        "capital",
        "What is the capital city of France?",
        "What is the capital city of",
    ),
    (
        "joke",
        "Can you tell me a funny joke about cats?",
        "Can you tell me a funny joke about",
    ),
    (
        "moon",
        "How far away is the moon from the earth?",
        "How far away is the",
    ),
    (
        "timer",
        "Set a timer for ten minutes, please.",
        "Set a timer for",
    ),
    (
        "weather",
        "What will the weather be like tomorrow morning?",
        "What will the weather be",
    ),
    (
        "lights",
        "Please turn off all the lights in the kitchen.",
        "Please turn off all the lights in the",
    ),
    (
        "remind",
        "Remind me to call my sister tomorrow evening.",
        "Remind me to",
    ),
    (
        "ounces",
        "How many ounces are there in a pound?",
        "How many ounces are there in a",
    ),
    (
        "novel",
        "Who wrote the novel Pride and Prejudice?",
        "Who wrote the novel Pride and",
    ),
    (
        "shopping",
        "Add milk, eggs and bread to my shopping list.",
        "Add milk, eggs and bread to",
    ),
    (
        "pharmacy",
        "What time does the pharmacy on Main Street close?",
        "What time does the pharmacy on",
    ),
    (
        "spanish",
        "How do you say good morning in Spanish?",
        "How do you say good morning in",
    ),
    (
        "octopus",
        "Tell me some interesting facts about octopuses.",
        "Tell me some interesting facts about",
    ),
];

/// Silence before and after each sentence, in ms.
const LEADING_MS: u32 = 100;
const TRAILING_MS: u32 = 200;

/// The voice copy with a `durations` output, inside the models directory.
const DURATIONS_MODEL: &str = "en_US-joe-medium.durations.onnx";

/// Largest word error rate of Moonshine's transcript of a sentence for the
/// rendering to be kept (one word in five: Moonshine itself hears "Set" as "Said").
const MAX_WER: f64 = 0.2;

/// Renderings tried per sentence.
const MAX_ATTEMPTS: usize = 5;

/// Samples per Piper decoder frame (the VITS hop) at the voice's 22,050 Hz.
const HOP: usize = 256;

#[derive(Parser)]
#[command(about = "Regenerate tests/fixtures/turns with Piper")]
struct Args {
    /// Models directory (`scripts/fetch-models.sh`, `scripts/piper-durations-model.py`).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Where the WAVs and manifest.json go.
    #[arg(long, default_value = "tests/fixtures/turns")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Manifest {
    about: &'static str,
    sample_rate: u32,
    leading_silence_ms: u32,
    trailing_silence_ms: u32,
    turns: Vec<Turn>,
}

#[derive(Serialize)]
struct Turn {
    file: String,
    text: String,
    cut_after: String,
    cut_ms: u32,
    /// Filled by scripts/make-smart-turn-fixture.py.
    reference: Option<()>,
}

const ABOUT: &str = "End-of-turn fixtures: Piper (en_US-joe-medium) speech made by \
examples/turn_fixtures.rs; cut_ms is where Piper ended the last word of `cut_after` \
(from its phoneme durations). `reference` holds pipecat's Python Smart Turn v3.2 \
probabilities for the whole file and for the audio before cut_ms, from \
scripts/make-smart-turn-fixture.py.";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let mut speaker = speech::Speaker::load(&args.models)?;
    let mut timed = load_session("piper-durations", &args.models.join(DURATIONS_MODEL), 1)?;
    let mut moonshine = Moonshine::load(&args.models.join(MOONSHINE_DIR))?;

    let mut turns = Vec::new();
    let mut bytes = 0;
    for (stem, text, cut_after) in TURNS {
        // Piper's noise now and then slurs a word: take the first rendering that
        // Moonshine understands (at most MAX_WER wrong, words only).
        let mut attempt = 0;
        let (audio, word_ends, heard) = loop {
            attempt += 1;
            let (audio, word_ends) = speak_timed(&mut speaker, &mut timed, text)
                .with_context(|| format!("{stem}: synthesis"))?;
            let heard = moonshine.transcribe(&audio)?;
            let wer = word_error_rate(text, &heard);
            if wer <= MAX_WER {
                break (audio, word_ends, heard);
            }
            println!("{stem}: attempt {attempt} heard as {heard:?} (WER {wer:.2}); again");
            anyhow::ensure!(attempt < MAX_ATTEMPTS, "{stem}: never understood");
        };
        let words_before = phoneme_words(&speaker, cut_after)?;
        let cut = *word_ends.get(words_before - 1).with_context(|| {
            format!("{stem}: {cut_after:?} has {words_before} phoneme words, the sentence fewer")
        })?;

        let file = format!("{stem}.wav");
        let path = args.out.join(&file);
        speech::write_wav(&path, &audio)?;
        bytes += std::fs::metadata(&path)?.len();
        let mut before = audio[..cut].to_vec();
        before.resize(cut + speech::ms_to_samples(TRAILING_MS), 0.0);
        let heard_before = moonshine.transcribe(&before)?;
        let cut_ms = (cut * 1000 / speech::OUT_RATE as usize) as u32;
        println!(
            "{file:<13} {:.2} s  heard {heard:?}\n{:<13} cut at {cut_ms} ms, before it {heard_before:?}",
            audio.len() as f64 / f64::from(speech::OUT_RATE),
            ""
        );
        turns.push(Turn {
            file,
            text: text.into(),
            cut_after: cut_after.into(),
            cut_ms,
            reference: None,
        });
    }
    let manifest = Manifest {
        about: ABOUT,
        sample_rate: speech::OUT_RATE,
        leading_silence_ms: LEADING_MS,
        trailing_silence_ms: TRAILING_MS,
        turns,
    };
    let path = args.out.join("manifest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)? + "\n")?;
    println!(
        "{} turns, {bytes} bytes of WAV; wrote {}",
        TURNS.len(),
        path.display()
    );
    Ok(())
}

/// `text` spoken as [`PiperVoice::speak`] does (same phonemes, ids and scales),
/// trimmed and padded like [`speech::with_silence`], at 16 kHz; and the sample at
/// which each phoneme word ends: where its last phoneme gives way to a space or a
/// punctuation mark.
fn speak_timed(
    speaker: &mut speech::Speaker,
    timed: &mut Session,
    text: &str,
) -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
    let voice = &speaker.voice;
    let phonemes = phonemize_clauses(&speaker.phonemizer, text)?.join(" ");
    let (ids, word_end_ids) = ids_and_word_ends(voice, &phonemes);
    anyhow::ensure!(
        ids == voice.phoneme_ids(&phonemes),
        "ids differ from PiperVoice's"
    );

    let scales = voice.scales();
    let lengths = [ids.len() as i64];
    let scales = [scales.noise, scales.length, scales.noise_w];
    let outputs = timed.run(ort::inputs![
        "input" => TensorRef::from_array_view(([1, ids.len()], &ids[..]))?,
        "input_lengths" => TensorRef::from_array_view(([1], &lengths[..]))?,
        "scales" => TensorRef::from_array_view(([3], &scales[..]))?,
    ])?;
    let (_, audio) = outputs["output"].try_extract_tensor::<f32>()?;
    let (_, frames) = outputs["durations"].try_extract_tensor::<f32>()?;
    anyhow::ensure!(
        frames.len() == ids.len(),
        "{} durations for {} ids",
        frames.len(),
        ids.len()
    );
    let total: f32 = frames.iter().sum();
    anyhow::ensure!(
        total as usize * HOP == audio.len(),
        "{total} frames of {HOP} samples, but {} samples",
        audio.len()
    );
    // Sample (at the voice's rate) where each id starts.
    let mut starts = Vec::with_capacity(ids.len());
    let mut at = 0.0f32;
    for f in frames {
        starts.push(at as usize * HOP);
        at += f;
    }

    let rate = voice.sample_rate();
    let audio: Vec<f32> = audio.iter().map(|s| s.clamp(-1.0, 1.0)).collect();
    let audio = StreamResampler::convert_clip(rate, speech::OUT_RATE, &audio)?;
    let (start, end) = speech::speech_bounds(&audio);
    let leading = speech::ms_to_samples(LEADING_MS);
    let word_ends = word_end_ids
        .iter()
        .map(|&i| {
            let at_16k = starts[i] * speech::OUT_RATE as usize / rate as usize;
            at_16k.clamp(start, end) - start + leading
        })
        .collect();
    Ok((
        speech::with_silence(&audio, LEADING_MS, TRAILING_MS),
        word_ends,
    ))
}

/// The voice's ids for `phonemes`, built as [`PiperVoice::phoneme_ids`] does
/// (`^ _ (p _)* $`), and for each phoneme word the index of the id that ends it
/// (the space or punctuation mark after it, or the final `$`).
fn ids_and_word_ends(voice: &PiperVoice, phonemes: &str) -> (Vec<i64>, Vec<usize>) {
    let framing = voice.phoneme_ids("");
    let (bos, eos) = (&framing[..framing.len() - 1], framing[framing.len() - 1]);
    let mut ids = bos.to_vec();
    let mut word_ends = Vec::new();
    let mut in_word = false;
    for c in phonemes.nfd() {
        let mapped = voice.phoneme_ids(&c.to_string());
        // Strip the framing: what is left is `(id _)*` for this character.
        let own = &mapped[bos.len()..mapped.len() - 1];
        if own.is_empty() {
            continue;
        }
        let separator = c == ' ' || c.is_ascii_punctuation();
        if separator && in_word {
            word_ends.push(ids.len());
        }
        in_word = !separator;
        ids.extend_from_slice(own);
    }
    if in_word {
        word_ends.push(ids.len());
    }
    ids.push(eos);
    (ids, word_ends)
}

/// How many phoneme words espeak makes of `text` (it joins some: "in the" is
/// `ɪnðə`), so the cut can be found among the sentence's phoneme words.
fn phoneme_words(speaker: &speech::Speaker, text: &str) -> anyhow::Result<usize> {
    let phonemes = phonemize_clauses(&speaker.phonemizer, text)?.join(" ");
    Ok(ids_and_word_ends(&speaker.voice, &phonemes).1.len())
}

/// Lower case words, punctuation dropped (apostrophes kept, hyphens joined:
/// Moonshine writes "to-morrow").
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace('-', "")
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Word-level edit distance over the reference's length.
fn word_error_rate(reference: &str, heard: &str) -> f64 {
    let (r, h) = (words(reference), words(heard));
    let mut previous: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut row = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            row[j + 1] = (previous[j] + usize::from(rw != hw))
                .min(previous[j + 1] + 1)
                .min(row[j] + 1);
        }
        previous = row;
    }
    previous[h.len()] as f64 / r.len().max(1) as f64
}
