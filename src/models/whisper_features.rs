//! Whisper-style log-mel features of the last 8 s of 16 kHz audio, as Smart Turn v3
//! ([`super::smart_turn`]) takes them: `[80 mel bins][800 frames]`, row-major. It
//! mirrors pipecat's `_whisper_features.py` (itself Hugging Face's
//! `WhisperFeatureExtractor` with `chunk_length = 8`) step for step: keep the last
//! 8 s, zero-pad at the *front* to 8 s, normalise the whole 8 s to zero mean and unit
//! variance (padding included), reflect-pad by half a window each side, periodic Hann
//! window of 400 samples every 160 samples, real FFT, power, 80 Slaney-scale,
//! Slaney-normalised triangular mel filters over 0–8 kHz, floor at 1e-10, `log10`,
//! drop the 801st frame, clamp to `max - 8`, then `(x + 4) / 4`.
//!
//! The arithmetic follows the reference too, because the int8 model needs it: its
//! first step rounds every feature to a step of 0.0096, and a one-ulp change in a
//! single feature can move its answer by 0.4 (measured with the Python reference on
//! `long_utterance_16k.wav`: 0.30 or 0.69). So the normalisation is done in `f32`
//! exactly as numpy does it (pairwise sums in `f32`, the divisions by the count in
//! `f64`), and the spectrogram in `f64` like numpy's, rounded to `f32` at the end;
//! the features then come out the same as the reference's, to the last bit but for
//! rare `f64` rounding ties.
//!
//! It lives beside the model rather than in `audio/` because the layers run
//! `audio → models`, never back. The FFT is planned and the window and filterbank
//! computed once, in [`WhisperFeatures::new`]; every buffer, the output included, is
//! allocated there too (about 3 MB), so [`WhisperFeatures::compute`] allocates
//! nothing.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Input sample rate in Hz.
pub const SAMPLE_RATE: usize = 16_000;

/// Audio the features cover: the last 8 s (Smart Turn v3 was trained on 8 s clips).
pub const CLIP_SAMPLES: usize = 8 * SAMPLE_RATE;

/// FFT length and window: 25 ms at 16 kHz, Whisper's analysis window.
pub const N_FFT: usize = 400;

/// Hop between frames: 10 ms at 16 kHz.
pub const HOP: usize = 160;

/// Mel bins per frame (Whisper's 80-bin front end).
pub const N_MELS: usize = 80;

/// Frames per clip: `CLIP_SAMPLES / HOP`. The centred STFT gives one more; Whisper
/// drops it.
pub const N_FRAMES: usize = CLIP_SAMPLES / HOP;

/// Values in one feature matrix, `N_MELS * N_FRAMES`.
pub const FEATURES_LEN: usize = N_MELS * N_FRAMES;

/// Frequency bins of one real FFT of `N_FFT` samples (0 Hz to Nyquist).
const N_BINS: usize = N_FFT / 2 + 1;

/// Floor on mel power before the logarithm (`log10` gives -10).
const MEL_FLOOR: f64 = 1e-10;

/// Dynamic range kept below the loudest bin of the clip, in decades of power.
const DYNAMIC_RANGE: f64 = 8.0;

/// Added to the waveform variance before the square root, so silence stays finite
/// (in `f32`, as numpy adds a Python float to an `f32` scalar).
const VARIANCE_EPS: f32 = 1e-7;

/// One triangular mel filter, stored by its non-zero span of FFT bins.
#[derive(Debug, Clone)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f64>,
}

/// The planned FFT, window, filterbank and working buffers; see the module doc.
/// Not `Clone` on purpose: each inference thread builds its own.
pub struct WhisperFeatures {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    filters: Vec<MelFilter>,
    /// The 8 s clip, zero-padded at the front, then normalised in place.
    clip: Vec<f32>,
    /// Squared deviations from the mean, for the variance.
    squares: Vec<f32>,
    /// `clip` with `N_FFT / 2` reflected samples each side.
    padded: Vec<f64>,
    /// One windowed frame; the FFT also uses it as scratch.
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
    /// `log10` of the mel power, `[N_MELS][N_FRAMES]`, before the clamp.
    log_mel: Vec<f64>,
    /// The result, `[N_MELS][N_FRAMES]` row-major.
    features: Vec<f32>,
}

impl Default for WhisperFeatures {
    fn default() -> Self {
        Self::new()
    }
}

impl WhisperFeatures {
    /// Plans the FFT and computes the window and filterbank.
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let scratch = fft.make_scratch_vec();
        Self {
            window: periodic_hann(N_FFT),
            filters: mel_filters(),
            clip: vec![0.0; CLIP_SAMPLES],
            squares: vec![0.0; CLIP_SAMPLES],
            padded: vec![0.0; CLIP_SAMPLES + N_FFT],
            frame: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch,
            power: vec![0.0; N_BINS],
            log_mel: vec![0.0; FEATURES_LEN],
            features: vec![0.0; FEATURES_LEN],
            fft,
        }
    }

    /// Features of the last [`CLIP_SAMPLES`] of `samples_16k` (16 kHz, in [-1, 1]),
    /// zero-padded at the front when shorter: `[N_MELS][N_FRAMES]`, row-major,
    /// frame `N_FRAMES - 1` ending with the last sample. Valid until the next call.
    pub fn compute(&mut self, samples_16k: &[f32]) -> &[f32] {
        let tail = &samples_16k[samples_16k.len().saturating_sub(CLIP_SAMPLES)..];
        self.normalise(tail);
        self.reflect_pad();

        let mut loudest = f64::NEG_INFINITY;
        for t in 0..N_FRAMES {
            self.power_spectrum(t);
            for (m, filter) in self.filters.iter().enumerate() {
                let bins = &self.power[filter.first_bin..filter.first_bin + filter.weights.len()];
                let mel: f64 = bins.iter().zip(&filter.weights).map(|(p, w)| p * w).sum();
                let log = mel.max(MEL_FLOOR).log10();
                loudest = loudest.max(log);
                self.log_mel[m * N_FRAMES + t] = log;
            }
        }
        let floor = loudest - DYNAMIC_RANGE;
        for (out, &log) in self.features.iter_mut().zip(&self.log_mel) {
            *out = ((log.max(floor) + 4.0) / 4.0) as f32;
        }
        &self.features
    }

    /// Lays `tail` into `clip` after zeros up to 8 s, then normalises it as
    /// `(x - x.mean()) / np.sqrt(x.var() + 1e-7)` does on an `f32` array.
    fn normalise(&mut self, tail: &[f32]) {
        let zeros = CLIP_SAMPLES - tail.len();
        self.clip[..zeros].fill(0.0);
        self.clip[zeros..].copy_from_slice(tail);

        // numpy divides an f32 sum by its (integer) count in f64.
        let n = CLIP_SAMPLES as f64;
        let mean = (f64::from(numpy_sum(&self.clip)) / n) as f32;
        for (square, &x) in self.squares.iter_mut().zip(&self.clip) {
            let deviation = x - mean;
            *square = deviation * deviation;
        }
        let variance = (f64::from(numpy_sum(&self.squares)) / n) as f32;
        let std = (variance + VARIANCE_EPS).sqrt();
        for x in &mut self.clip {
            *x = (*x - mean) / std;
        }
    }

    /// `np.pad(clip.astype(np.float64), N_FFT / 2, mode="reflect")`: the edge
    /// sample is not repeated.
    fn reflect_pad(&mut self) {
        let edge = N_FFT / 2;
        for (p, &x) in self.padded[edge..edge + CLIP_SAMPLES]
            .iter_mut()
            .zip(&self.clip)
        {
            *p = f64::from(x);
        }
        let last = edge + CLIP_SAMPLES - 1;
        for i in 1..=edge {
            self.padded[edge - i] = self.padded[edge + i];
            self.padded[last + i] = self.padded[last - i];
        }
    }

    /// Windows frame `t` of `padded` and leaves its power spectrum in `power`.
    fn power_spectrum(&mut self, t: usize) {
        let start = t * HOP;
        let samples = &self.padded[start..start + N_FFT];
        for ((f, &s), &w) in self.frame.iter_mut().zip(samples).zip(&self.window) {
            *f = s * w;
        }
        self.fft
            .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch)
            .expect("FFT buffers are made by the plan itself, so their lengths match");
        for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
            *p = c.norm_sqr();
        }
    }
}

/// Sum of `f32` values in `f32`, in numpy's order (`np.add.reduce`: numpy's
/// `pairwise_sum` in `loops_utils.h.src`, eight accumulators over blocks of up to
/// 128 values), so that it rounds exactly as the reference does.
fn numpy_sum(values: &[f32]) -> f32 {
    /// numpy's `PW_BLOCKSIZE`.
    const BLOCK: usize = 128;
    let n = values.len();
    if n < 8 {
        values.iter().fold(0.0, |sum, &v| sum + v)
    } else if n <= BLOCK {
        let mut r = [0.0f32; 8];
        r.copy_from_slice(&values[..8]);
        let whole = n - n % 8;
        for chunk in values[8..whole].chunks_exact(8) {
            for (r, &v) in r.iter_mut().zip(chunk) {
                *r += v;
            }
        }
        let sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        values[whole..].iter().fold(sum, |sum, &v| sum + v)
    } else {
        let half = n / 2;
        let half = half - half % 8;
        numpy_sum(&values[..half]) + numpy_sum(&values[half..])
    }
}

/// `n`-point periodic Hann window, computed as `np.hanning(n + 1)[:-1]` does:
/// `0.5 + 0.5 cos(pi k / n)` for `k = -n, -n + 2, ...`.
fn periodic_hann(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let k = 2.0 * i as f64 - n as f64;
            0.5 + 0.5 * (std::f64::consts::PI * k / n as f64).cos()
        })
        .collect()
}

/// Hertz to mels on the Slaney scale: linear below 1 kHz (3 mels per 200 Hz),
/// logarithmic above (27 mels per factor 6.4).
fn hz_to_mel(hz: f64) -> f64 {
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = 15.0;
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() * 27.0 / 6.4f64.ln()
    } else {
        3.0 * hz / 200.0
    }
}

/// The inverse of [`hz_to_mel`].
fn mel_to_hz(mel: f64) -> f64 {
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = 15.0;
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * ((mel - MIN_LOG_MEL) * 6.4f64.ln() / 27.0).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// The Slaney mel filterbank of `transformers.audio_utils.mel_filter_bank` for
/// 80 filters over 0–8 kHz and `N_BINS` FFT bins: triangles whose corners are
/// equally spaced in mels, each scaled by `2 / width in Hz` so its area is one.
/// Computed as the reference does; only the non-zero span is kept.
fn mel_filters() -> Vec<MelFilter> {
    let (low, high) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE as f64 / 2.0));
    let corners: Vec<f64> = (0..N_MELS + 2)
        .map(|i| mel_to_hz(low + (high - low) * i as f64 / (N_MELS + 1) as f64))
        .collect();
    let bin_hz = |k: usize| (SAMPLE_RATE / 2) as f64 * k as f64 / (N_BINS - 1) as f64;

    (0..N_MELS)
        .map(|m| {
            let (left, centre, right) = (corners[m], corners[m + 1], corners[m + 2]);
            let norm = 2.0 / (right - left);
            let weights: Vec<(usize, f64)> = (0..N_BINS)
                .filter_map(|k| {
                    let f = bin_hz(k);
                    let rising = (f - left) / (centre - left);
                    let falling = (right - f) / (right - centre);
                    let w = rising.min(falling).max(0.0) * norm;
                    (w > 0.0).then_some((k, w))
                })
                .collect();
            let first_bin = weights.first().map_or(0, |&(k, _)| k);
            MelFilter {
                first_bin,
                weights: weights.into_iter().map(|(_, w)| w).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Centre frequency of mel filter `m`, in Hz.
    fn centre_hz(m: usize) -> f64 {
        let (low, high) = (hz_to_mel(0.0), hz_to_mel(8_000.0));
        mel_to_hz(low + (high - low) * (m + 1) as f64 / (N_MELS + 1) as f64)
    }

    /// The mel bin whose centre is nearest `hz`.
    fn nearest_bin(hz: f64) -> usize {
        (0..N_MELS)
            .min_by(|&a, &b| {
                (centre_hz(a) - hz)
                    .abs()
                    .total_cmp(&(centre_hz(b) - hz).abs())
            })
            .unwrap_or(0)
    }

    fn tone(hz: f64, seconds: f64, amplitude: f64) -> Vec<f32> {
        let n = (seconds * SAMPLE_RATE as f64) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / SAMPLE_RATE as f64;
                (amplitude * (2.0 * std::f64::consts::PI * hz * t).sin()) as f32
            })
            .collect()
    }

    /// Feature of mel bin `m` in frame `t`.
    fn at(features: &[f32], m: usize, t: usize) -> f32 {
        features[m * N_FRAMES + t]
    }

    /// Values numpy sums differently from a running sum (100,003 of them).
    fn awkward_values() -> Vec<f32> {
        (0..100_003u64)
            .map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5)
            .collect()
    }

    #[test]
    fn sums_round_as_numpy_does() {
        // Sums by numpy 2.4 of `np.arange(1000, dtype=np.float32) * np.float32(0.1)`
        // and of the awkward values, built the same way in f32 (a running sum
        // gives 100.56282, an f64 sum 100.56322, numpy 100.5632).
        let tenths: Vec<f32> = (0..1000).map(|i| i as f32 * 0.1).collect();
        assert_eq!(numpy_sum(&tenths), 49950.0);
        assert_eq!(numpy_sum(&awkward_values()).to_bits(), 1_120_477_276);
        assert_eq!(numpy_sum(&[]), 0.0);
        assert_eq!(numpy_sum(&[1.0, 2.0, 3.0]), 6.0);
    }

    #[test]
    fn shapes_follow_whisper() {
        assert_eq!(N_FRAMES, 800);
        assert_eq!(FEATURES_LEN, 64_000);
        let mut features = WhisperFeatures::new();
        assert_eq!(features.compute(&[0.1; 1000]).len(), FEATURES_LEN);
    }

    #[test]
    fn slaney_scale_round_trips_and_bends_at_1_khz() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(200.0) - 3.0).abs() < 1e-12);
        for hz in [0.0, 40.0, 999.0, 1000.0, 3500.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
    }

    #[test]
    fn filterbank_has_80_triangles_of_unit_area() {
        let filters = mel_filters();
        assert_eq!(filters.len(), N_MELS);
        let bin_hz = 8_000.0 / (N_BINS - 1) as f64;
        let mut previous_peak = 0;
        for (m, filter) in filters.iter().enumerate() {
            assert!(!filter.weights.is_empty(), "filter {m} is empty");
            assert!(filter.first_bin + filter.weights.len() <= N_BINS);
            let peak = filter.first_bin
                + filter
                    .weights
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i);
            assert!(
                peak >= previous_peak,
                "filter {m} peaks below filter {}",
                m - 1
            );
            previous_peak = peak;
            // Slaney normalisation: area one in Hz. Sampled at 40 Hz, the narrow
            // low triangles come within 10 % of that, the wide ones above 2 kHz
            // (five bins and more) within 2 %.
            let area: f64 = filter.weights.iter().map(|&w| w * bin_hz).sum();
            let tolerance = if centre_hz(m) > 2_000.0 { 0.02 } else { 0.1 };
            assert!((area - 1.0).abs() < tolerance, "filter {m}: area {area}");
        }
        // The first filter starts at 0 Hz, so it weighs 0 Hz itself zero; the
        // last ends at Nyquist, which it weighs (all but) zero.
        assert_eq!(filters[0].first_bin, 1);
        let last = &filters[N_MELS - 1];
        if last.first_bin + last.weights.len() == N_BINS {
            assert!(last.weights[last.weights.len() - 1] < 1e-9);
        }
    }

    #[test]
    fn a_pure_tone_lands_in_the_nearest_mel_bin() {
        let mut features = WhisperFeatures::new();
        for hz in [300.0, 1_000.0, 2_500.0, 6_000.0] {
            let out = features.compute(&tone(hz, 8.0, 0.5));
            let t = N_FRAMES / 2;
            let loudest = (0..N_MELS)
                .max_by(|&a, &b| at(out, a, t).total_cmp(&at(out, b, t)))
                .unwrap_or(0);
            let nearest = nearest_bin(hz);
            assert!(
                loudest.abs_diff(nearest) <= 1,
                "{hz} Hz: loudest bin {loudest}, nearest centre {nearest}"
            );
        }
    }

    #[test]
    fn short_audio_is_padded_at_the_front() {
        let mut features = WhisperFeatures::new();
        let clip = tone(1_000.0, 2.0, 0.5);
        let out = features.compute(&clip).to_vec();
        let bin = nearest_bin(1_000.0);
        // The tone fills the last 2 s (200 frames); the 6 s before are padding,
        // all alike and far below the tone.
        let (padding, toned) = (at(&out, bin, 100), at(&out, bin, N_FRAMES - 100));
        assert!(toned > padding + 1.0, "tone {toned}, padding {padding}");
        for t in 1..N_FRAMES - 210 {
            assert_eq!(at(&out, bin, t), padding, "padding frame {t}");
        }
        // Zeros before the audio are exactly what the padding is.
        let mut prefixed = vec![0.0; 3 * SAMPLE_RATE];
        prefixed.extend_from_slice(&clip);
        assert_eq!(features.compute(&prefixed), &out[..]);
    }

    #[test]
    fn only_the_last_8_s_count() {
        let mut features = WhisperFeatures::new();
        let mut long = tone(440.0, 3.0, 0.9);
        long.extend(tone(2_000.0, 8.0, 0.3));
        let last = long[long.len() - CLIP_SAMPLES..].to_vec();
        let from_long = features.compute(&long).to_vec();
        assert_eq!(features.compute(&last), &from_long[..]);
    }

    #[test]
    fn silence_is_the_floor_everywhere() {
        let mut features = WhisperFeatures::new();
        // log10(1e-10) everywhere, so the clamp changes nothing: (-10 + 4) / 4.
        assert!(features.compute(&[]).iter().all(|&x| x == -1.5));
        assert!(features.compute(&[0.0; 5]).iter().all(|&x| x == -1.5));
    }

    #[test]
    fn normalisation_removes_the_level() {
        let mut features = WhisperFeatures::new();
        let quiet = features.compute(&tone(700.0, 8.0, 0.01)).to_vec();
        let loud = features.compute(&tone(700.0, 8.0, 0.9));
        let worst = quiet
            .iter()
            .zip(loud)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-3, "features depend on the level: {worst}");
    }
}
