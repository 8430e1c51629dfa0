//! Moonshine base-en speech-to-text (MIT): 16 kHz mono samples in, English
//! text out. The encoder turns the raw waveform (no mel, no
//! normalisation) into hidden states; the merged decoder then runs greedily,
//! one token per step, with a key/value cache: step 0 takes
//! `use_cache_branch = false` and empty `[0, 8, 1, 52]` caches, its
//! `present.*.encoder.*` outputs are kept for the rest of the piece, and every
//! step's `present.*.decoder.*` replaces the decoder cache. Decoding stops at
//! `</s>` or after about 6 tokens per second of audio, which also ends the
//! repetition loops Moonshine falls into on silence.
//!
//! Feed it VAD-cut speech (padded by ~0.2 s): long silences make it return
//! nothing. Input over 30 s is split into equal pieces of at most 30 s and the
//! texts joined. A [`Moonshine`] owns two sessions and is meant for one
//! inference worker thread; [`Moonshine::transcribe_with`] checks a
//! cancellation flag between decoder steps so a hung-up conversation stops
//! costing CPU.
//!
//! Model files ([`MoonshineFiles`]): `moonshine-cpp` ships ORT-format files
//! whose int8 weights are dequantized (and the token embedding transposed) on
//! every call, which an ORT-format model cannot optimise away: about 75 ms
//! per decoder token here. `scripts/convert-moonshine.py` (run by
//! `scripts/fetch-models.sh`) folds those constants into float32 ONNX files,
//! bit-identical weights that ONNX Runtime optimises and pre-packs at load:
//! about 6x less decoder time, the same transcripts. The converted files are
//! used when present, the `.ort` originals otherwise.
//!
//! Guided decoding ([`Moonshine::transcribe_guided`]): a decoder call for
//! twenty tokens reads the weights once, like a call for one, and so costs
//! far less than twenty calls; a guess — the tokens of an earlier
//! transcription of the same speech — is fed whole into step 0 and checked
//! against the model's own greedy choice at every position. The longest agreeing prefix is kept, the
//! cache is cut back to it, and greedy decoding goes on from there; where the
//! model's next token turns up again a little further on in the guess, the
//! rest of the guess is proposed again from there (prompt-lookup decoding). The
//! result is exactly the greedy transcript; a good guess only makes it arrive
//! sooner.

mod attention;
mod batched;
mod cross_cache;
#[cfg(target_arch = "x86_64")]
mod cross_cache_x86;
mod encoder;
mod guided;

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorRef};

pub use batched::{BatchedDecoder, DecoderState, Decoding};
pub use encoder::{EncodedAudio, MoonshineEncoder};
pub use guided::GuidedGreedy;

use super::runtime::load_session;
use super::tokenizer::Tokenizer;
use super::ModelError;

/// Folder inside the models directory written by `scripts/fetch-models.sh`.
pub const MOONSHINE_DIR: &str = "moonshine-base-en";

/// The encoder, best first: the float32 ONNX file that
/// `scripts/convert-moonshine.py` writes, then the ORT-format original.
const ENCODER_FILES: [&str; 2] = ["encoder_model.onnx", "encoder_model.ort"];
/// The merged decoder, best first, as [`ENCODER_FILES`].
const DECODER_FILES: [&str; 2] = ["decoder_model_merged.onnx", "decoder_model_merged.ort"];
const TOKENIZER_FILE: &str = "tokenizer.bin";

/// Input sample rate in Hz.
pub const SAMPLE_RATE: usize = 16_000;

/// Longest piece given to the encoder at once: Moonshine was trained on
/// clips of up to 30 s and degrades past that.
pub const MAX_PIECE_SAMPLES: usize = 30 * SAMPLE_RATE;

/// Pieces shorter than this (0.1 s) are too short for the encoder's
/// convolutions to produce a frame; they transcribe as nothing.
pub const MIN_PIECE_SAMPLES: usize = SAMPLE_RATE / 10;

/// Token cap per second of audio. English speech runs at ~3-4 tokens/s, so
/// this leaves headroom while bounding the cost of a runaway decode.
const MAX_TOKENS_PER_SECOND: f64 = 6.0;

const START_TOKEN: i64 = 1;
const END_TOKEN: i64 = 2;

/// Attention heads and head width of the caches, used when the model does
/// not state them in its input shapes.
const DEFAULT_HEADS: i64 = 8;
const DEFAULT_HEAD_DIM: i64 = 52;

const DECODER: &str = "moonshine-decoder";

/// One `past_key_values.*` input of the decoder and the output that feeds it.
struct CacheSlot {
    input: String,
    output: String,
    /// Cross-attention cache: computed at step 0, then kept.
    encoder: bool,
}

/// The three files a [`Moonshine`] loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoonshineFiles {
    pub encoder: PathBuf,
    pub decoder: PathBuf,
    pub tokenizer: PathBuf,
}

impl MoonshineFiles {
    /// The files in `dir`, each model the converted `.onnx` file where it
    /// exists and the fetched `.ort` file otherwise (so a directory with
    /// neither names the `.ort` file as missing).
    pub fn find(dir: &Path) -> Self {
        let pick = |choices: [&str; 2]| {
            choices
                .iter()
                .map(|name| dir.join(name))
                .find(|path| path.is_file())
                .unwrap_or_else(|| dir.join(choices[1]))
        };
        Self {
            encoder: pick(ENCODER_FILES),
            decoder: pick(DECODER_FILES),
            tokenizer: dir.join(TOKENIZER_FILE),
        }
    }

    /// The ORT-format files as fetched from `moonshine-cpp`, converted or not.
    pub fn original(dir: &Path) -> Self {
        Self {
            encoder: dir.join(ENCODER_FILES[1]),
            decoder: dir.join(DECODER_FILES[1]),
            tokenizer: dir.join(TOKENIZER_FILE),
        }
    }

    /// The converted float32 ONNX files, whether or not they exist.
    pub fn converted(dir: &Path) -> Self {
        Self {
            encoder: dir.join(ENCODER_FILES[0]),
            decoder: dir.join(DECODER_FILES[0]),
            tokenizer: dir.join(TOKENIZER_FILE),
        }
    }

    /// Encoder, decoder, tokenizer.
    pub fn paths(&self) -> [&Path; 3] {
        [&self.encoder, &self.decoder, &self.tokenizer]
    }
}

/// The loaded model: encoder, merged decoder, tokenizer.
pub struct Moonshine {
    encoder: MoonshineEncoder,
    decoder: Session,
    tokenizer: Tokenizer,
    slots: Vec<CacheSlot>,
    /// The empty `[0, heads, 1, head_dim]` tensor fed to every cache at step 0.
    empty_cache: Tensor<f32>,
}

impl Moonshine {
    /// Loads the encoder, merged decoder and `tokenizer.bin` from `dir`
    /// (converted `.onnx` models where present, see [`MoonshineFiles::find`]),
    /// each session with one intra-op thread.
    /// [`init_runtime`](super::init_runtime) must have run.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::load_with_threads(dir, 1)
    }

    /// Like [`load`](Self::load), with `intra_threads` threads per operator: fewer
    /// seconds per transcript for one conversation, at the cost of cores for others.
    pub fn load_with_threads(dir: &Path, intra_threads: usize) -> Result<Self, ModelError> {
        Self::load_files(&MoonshineFiles::find(dir), intra_threads)
    }

    /// Loads exactly `files`, with `intra_threads` threads per operator.
    pub fn load_files(files: &MoonshineFiles, intra_threads: usize) -> Result<Self, ModelError> {
        let encoder = MoonshineEncoder::load(&files.encoder, intra_threads)?;
        let decoder = load_session(DECODER, &files.decoder, intra_threads)?;
        let tokenizer = Tokenizer::load(&files.tokenizer)?;
        tracing::debug!(
            encoder = %files.encoder.display(),
            decoder = %files.decoder.display(),
            "moonshine loaded"
        );

        let mut slots = Vec::new();
        let (mut heads, mut head_dim) = (DEFAULT_HEADS, DEFAULT_HEAD_DIM);
        for input in decoder.inputs() {
            let Some(rest) = input.name().strip_prefix("past_key_values.") else {
                continue;
            };
            if let Some(shape) = input.dtype().tensor_shape() {
                if shape.len() == 4 && shape[1] > 0 && shape[3] > 0 {
                    (heads, head_dim) = (shape[1], shape[3]);
                }
            }
            slots.push(CacheSlot {
                input: input.name().to_string(),
                output: format!("present.{rest}"),
                encoder: rest.contains(".encoder."),
            });
        }
        if slots.is_empty() {
            return Err(ModelError::bad_output(
                DECODER,
                "decoder has no past_key_values.* inputs; not a merged decoder",
            ));
        }
        let empty_cache = Tensor::from_array(([0, heads, 1, head_dim], Vec::<f32>::new()))
            .map_err(ModelError::inference(DECODER))?;
        Ok(Self {
            encoder,
            decoder,
            tokenizer,
            slots,
            empty_cache,
        })
    }

    /// Transcribes 16 kHz mono samples in `[-1, 1]`.
    pub fn transcribe(&mut self, samples_16k: &[f32]) -> Result<String, ModelError> {
        Ok(self
            .transcribe_with(samples_16k, &|| false)?
            .unwrap_or_default())
    }

    /// Like [`transcribe`](Self::transcribe), but calls `should_stop` before
    /// the encoder and between decoder steps, and returns `Ok(None)` as soon
    /// as it says true.
    pub fn transcribe_with(
        &mut self,
        samples_16k: &[f32],
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Option<String>, ModelError> {
        Ok(self
            .transcribe_guided(samples_16k, &[], should_stop)?
            .map(|t| t.text))
    }

    /// Like [`transcribe_with`](Self::transcribe_with), checking `guess` (the
    /// tokens of an earlier transcription of the start of this audio) in one
    /// decoder call; see the module doc. The guess is used for single-piece
    /// audio (up to 30 s) only.
    pub fn transcribe_guided(
        &mut self,
        samples_16k: &[f32],
        guess: &[i64],
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Option<Transcription>, ModelError> {
        let ranges = piece_ranges(samples_16k.len(), MAX_PIECE_SAMPLES);
        let guess = if ranges.len() == 1 { guess } else { &[] };
        let mut texts = Vec::new();
        let mut all_tokens = Vec::new();
        for range in ranges {
            let Some(tokens) = self.decode_piece(&samples_16k[range], guess, should_stop)? else {
                return Ok(None);
            };
            let text = self.tokenizer.decode(&tokens);
            if !text.is_empty() {
                texts.push(text);
            }
            all_tokens.extend(tokens);
        }
        Ok(Some(Transcription {
            text: texts.join(" "),
            tokens: all_tokens,
        }))
    }

    /// Encoder, then greedy decoding of one piece of at most 30 s, its first
    /// step checking `guess`.
    fn decode_piece(
        &mut self,
        samples: &[f32],
        guess: &[i64],
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<i64>>, ModelError> {
        if should_stop() {
            return Ok(None);
        }
        if samples.len() < MIN_PIECE_SAMPLES {
            return Ok(Some(Vec::new()));
        }
        let started = std::time::Instant::now();
        let encoded = self.encoder.encode(samples)?;
        let encoder_ms = started.elapsed().as_millis() as u64;
        let err = ModelError::inference::<()>;
        let hidden = Tensor::from_array((
            [1, encoded.frames, encoded.width],
            encoded.states.into_boxed_slice(),
        ))
        .map_err(err(DECODER))?;

        let Self {
            decoder,
            slots,
            empty_cache,
            ..
        } = self;
        let mut caches: Vec<DynValue> = Vec::with_capacity(slots.len());
        let mut decoding = GuidedGreedy::new(guess, max_tokens(samples.len()));
        let mut step = 0;
        while !decoding.is_done() {
            if should_stop() {
                return Ok(None);
            }
            let ids = decoding.feed();
            let use_cache = [step > 0];
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                Vec::with_capacity(3 + slots.len());
            inputs.push((
                "input_ids".into(),
                TensorRef::from_array_view(([1usize, ids.len()], ids))
                    .map_err(err(DECODER))?
                    .into(),
            ));
            inputs.push(("encoder_hidden_states".into(), (&hidden).into()));
            inputs.push((
                "use_cache_branch".into(),
                TensorRef::from_array_view(([1usize], &use_cache[..]))
                    .map_err(err(DECODER))?
                    .into(),
            ));
            for (i, slot) in slots.iter().enumerate() {
                let value: SessionInputValue<'_> = match caches.get(i) {
                    Some(cache) => cache.into(),
                    None => (&*empty_cache).into(),
                };
                inputs.push((slot.input.as_str().into(), value));
            }
            let mut outputs = decoder.run(inputs).map_err(err(DECODER))?;

            let (shape, logits) = outputs["logits"]
                .try_extract_tensor::<f32>()
                .map_err(err(DECODER))?;
            let vocab = shape.last().map_or(0, |&v| usize::try_from(v).unwrap_or(0));
            let choices = argmax_rows(logits, vocab);
            let rejected = decoding
                .advance(&choices)
                .map_err(|_| ModelError::bad_output(DECODER, "empty logits"))?;

            for (i, slot) in slots.iter().enumerate() {
                if slot.encoder && step > 0 {
                    continue;
                }
                let mut value = outputs.remove(&slot.output).ok_or_else(|| {
                    ModelError::bad_output(DECODER, format!("missing output {}", slot.output))
                })?;
                if !slot.encoder && rejected > 0 {
                    value = drop_last_positions(&value, rejected)?;
                }
                if i < caches.len() {
                    caches[i] = value;
                } else {
                    caches.push(value);
                }
            }
            step += 1;
        }
        let tokens = decoding.into_tokens();
        tracing::debug!(
            audio_ms = (samples.len() * 1000 / SAMPLE_RATE) as u64,
            encoder_ms,
            decoder_ms = started.elapsed().as_millis() as u64 - encoder_ms,
            tokens = tokens.len(),
            "moonshine piece decoded"
        );
        Ok(Some(tokens))
    }
}

/// The token cap for `samples` of audio (see [`MAX_TOKENS_PER_SECOND`]).
pub fn max_tokens(samples: usize) -> usize {
    let seconds = samples as f64 / SAMPLE_RATE as f64;
    (seconds * MAX_TOKENS_PER_SECOND).ceil() as usize
}

/// The tokens of a transcription, kept to guide the next one of the same speech.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcription {
    pub text: String,
    pub tokens: Vec<i64>,
}

/// The index of the largest value of each `width`-wide row of `logits`.
pub fn argmax_rows(logits: &[f32], width: usize) -> Vec<i64> {
    if width == 0 {
        return Vec::new();
    }
    logits
        .chunks_exact(width)
        .filter_map(|row| argmax_last_row(row, width))
        .collect()
}

/// A `[1, heads, len, head_dim]` cache without its last `drop` positions.
fn drop_last_positions(cache: &DynValue, drop: usize) -> Result<DynValue, ModelError> {
    let err = ModelError::inference::<()>;
    let (shape, data) = cache.try_extract_tensor::<f32>().map_err(err(DECODER))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let [batch, heads, len, width] = dims[..] else {
        return Err(ModelError::bad_output(
            DECODER,
            format!("cache shape {dims:?}"),
        ));
    };
    let keep = len.saturating_sub(drop);
    let mut kept = Vec::with_capacity(batch * heads * keep * width);
    for row in data.chunks_exact(len * width) {
        kept.extend_from_slice(&row[..keep * width]);
    }
    let tensor = Tensor::from_array(([batch, heads, keep, width], kept)).map_err(err(DECODER))?;
    Ok(tensor.into_dyn())
}

/// Index of the largest value in the last `width` values of `logits`
/// (the last position's scores; the decoder returns one position per step).
fn argmax_last_row(logits: &[f32], width: usize) -> Option<i64> {
    if width == 0 {
        return None;
    }
    let row = logits.get(logits.len().checked_sub(width)?..)?;
    let max = crate::kernels::maxima::largest_by(row, f32::NEG_INFINITY, |v| v);
    // The first of equal largest values, as ONNX Runtime's own argmax picks.
    let index = row.iter().position(|&v| v == max)?;
    i64::try_from(index).ok()
}

/// Splits `len` samples into the fewest equal pieces of at most `max`.
pub fn piece_ranges(len: usize, max: usize) -> Vec<Range<usize>> {
    let pieces = len.div_ceil(max.max(1)).max(1);
    let size = len.div_ceil(pieces);
    (0..pieces)
        .map(|p| (p * size).min(len)..((p + 1) * size).min(len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_input_and_respect_max() {
        assert_eq!(piece_ranges(0, 10), vec![0..0]);
        assert_eq!(piece_ranges(10, 10), vec![0..10]);
        assert_eq!(piece_ranges(11, 10), vec![0..6, 6..11]);
        let ranges = piece_ranges(61 * SAMPLE_RATE, MAX_PIECE_SAMPLES);
        assert_eq!(ranges.len(), 3);
        assert!(ranges.iter().all(|r| r.len() <= MAX_PIECE_SAMPLES));
        assert_eq!(ranges.last().map(|r| r.end), Some(61 * SAMPLE_RATE));
    }

    #[test]
    fn argmax_uses_the_last_row() {
        assert_eq!(argmax_last_row(&[9.0, 0.0, 1.0, 3.0, 2.0], 3), Some(1));
        let mut wide: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin()).collect();
        wide[20] = 5.0;
        wide[33] = 5.0;
        assert_eq!(
            argmax_last_row(&wide, 37),
            Some(20),
            "the first of equal maxima"
        );
        assert_eq!(argmax_last_row(&[], 3), None);
        assert_eq!(argmax_last_row(&[1.0], 3), None);
    }
}
