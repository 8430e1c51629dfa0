//! Fuzz entry points: one function per fuzz target in `fuzz/`, each feeding arbitrary
//! bytes to the same parsers and audio code the server runs, and checking what must hold
//! whatever the input (no panic, no unbounded growth, events in order).
//!
//! The targets in `fuzz/fuzz_targets/` are one line each and call these functions, and
//! `tests/fuzz_corpus.rs` replays every committed corpus file through them on stable
//! Rust, so a crash the fuzzer once found stays fixed without a fuzzer in CI.
//!
//! - [`client_event`]: a WebSocket text frame through [`ClientEvent::parse`], and the
//!   `error` reply the session would send back.
//! - [`upgrade_query`]: the query string of `GET /v1/ws` through actix-web's `Query`
//!   extractor and [`SessionQuery::validate`], as `http/ws.rs` does.
//! - [`ingest`]: PCM16 or Opus frames at any session rate through [`Ingest`] (decode,
//!   resample, webrtc-vad or Silero windows with scores taken from the input).
//! - [`segmenter`]: frames with arbitrary scores, flushes and end-of-turn verdicts
//!   through [`Segmenter`] under any configuration `Config::load` accepts.
//!
//! The input formats are documented on each function; [`IngestSeed`] and
//! [`SegmenterSeed`] write them, for seed corpora built from real audio.

use bytes::Bytes;

use crate::audio::ingest::{Ingest, IngestOutput, VadEngine, WebrtcVadConfig};
use crate::audio::segmenter::{
    PauseKey, Segmenter, SegmenterConfig, SegmenterOutput, SpeechEvent, SpeechSegment,
};
use crate::audio::MODEL_RATE;
use crate::config::SUPPORTED_SAMPLE_RATES;
use crate::protocol::native::{ClientEvent, ErrorCode, ServerEvent, SessionQuery};
use crate::protocol::{AudioCodec, AudioFormat};

/// Samples per millisecond at the model rate.
const SAMPLES_PER_MS: u64 = MODEL_RATE as u64 / 1000;
/// Largest frame a segmenter input pushes (samples): 100 ms, beyond Silero's 32 ms
/// windows and webrtc's 20 ms frames, so odd lengths are covered too.
const MAX_SEGMENTER_FRAME: usize = 1_600;
/// Largest ingest frame (bytes): the server's default `session.max_frame_bytes` is far
/// larger, but 8 KiB is 256 ms of 16 kHz PCM16, plenty to reach every path.
const MAX_INGEST_FRAME: usize = 8 * 1024;
/// Operations per input, so one input cannot run for minutes.
const MAX_OPS: usize = 4_096;

/// Reads an input front to back; past the end every read gives zeros.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// A score in `0.0..=1.0`.
    fn unit(&mut self) -> f32 {
        f32::from(self.u8()) / 255.0
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// A client text frame. actix hands the session only valid UTF-8 text frames, so other
/// bytes are not a text frame and are skipped.
///
/// Checks: a refusal is classified as `malformed_json` or `unknown_event`, and the
/// `error` event sent back for it is valid JSON of type `error`, whatever the frame held.
pub fn client_event(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientEvent::parse(text) {
        Ok(_) => {}
        Err((code, message)) => {
            assert!(
                matches!(code, ErrorCode::MalformedJson | ErrorCode::UnknownEvent),
                "a parse refusal is classified as {code:?}"
            );
            let reply = ServerEvent::error(code, message).to_json();
            let value: serde_json::Value =
                serde_json::from_str(&reply).expect("the error reply is valid JSON");
            assert_eq!(value["type"], "error");
        }
    }
}

/// The query string of an upgrade request (an `http::Uri` query is always a `&str`).
///
/// Checks: whatever is accepted is a session the server supports: a supported codec and
/// rate, and a client id of 1–128 printable bytes.
pub fn upgrade_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(query) = actix_web::web::Query::<SessionQuery>::from_query(query) else {
        return;
    };
    let Ok(params) = query.into_inner().validate() else {
        return;
    };
    assert!(SUPPORTED_SAMPLE_RATES.contains(&params.input.sample_rate));
    assert!((1..=128).contains(&params.client_id.len()));
    assert!(!params.client_id.chars().any(char::is_control));
}

/// The configuration bytes of an [`ingest`] input.
#[derive(Debug, Clone, Copy)]
pub struct IngestSetup {
    pub codec: AudioCodec,
    pub sample_rate: u32,
    /// Silero windows (scores from the input) rather than webrtc-vad.
    pub silero: bool,
    pub keep_native: bool,
}

impl IngestSetup {
    fn to_byte(self) -> u8 {
        let rate = SUPPORTED_SAMPLE_RATES
            .iter()
            .position(|&r| r == self.sample_rate)
            .unwrap_or(1) as u8;
        u8::from(self.codec == AudioCodec::Opus)
            | (rate << 1)
            | (u8::from(self.silero) << 3)
            | (u8::from(self.keep_native) << 4)
    }

    fn from_byte(byte: u8) -> Self {
        IngestSetup {
            codec: if byte & 1 == 1 {
                AudioCodec::Opus
            } else {
                AudioCodec::Pcm16
            },
            sample_rate: SUPPORTED_SAMPLE_RATES
                [usize::from((byte >> 1) & 3) % SUPPORTED_SAMPLE_RATES.len()],
            silero: byte & 8 != 0,
            keep_native: byte & 16 != 0,
        }
    }
}

/// The segmenter settings of the server's defaults, with speech kept for a recogniser.
fn ingest_segmenter() -> SegmenterConfig {
    SegmenterConfig {
        start_threshold: 0.5,
        end_threshold: 0.35,
        min_speech_ms: 100,
        min_silence_ms: 400,
        pad_ms: 200,
        max_segment_ms: 30_000,
        draft_after_ms: 150,
        partial_every_ms: 1_000,
        turn_check_after_ms: 0,
        turn_max_silence_ms: 400,
        collect_audio: true,
        manual: false,
    }
}

/// Frames of a session through its audio front end, in batches as the VAD actor hands
/// them on.
///
/// Input: one setup byte ([`IngestSetup`]), then records until the input ends:
/// a tag byte; tag `0xff` is `audio.end` (flush), any other tag starts a batch of
/// `tag % 8 + 1` frames, each a little-endian `u16` length (modulo 8 KiB) and that many
/// bytes. With Silero, one byte after each batch scores every window it completed.
///
/// Checks: no panic; a frame is either decoded or reported (an error per bad frame, none
/// for a whole PCM16 frame); every Silero window gets scored; speech events alternate
/// start/stop in audio order and never name audio not yet heard; segments are ordered
/// and within their bounds.
pub fn ingest(data: &[u8]) {
    let mut input = Reader::new(data);
    let setup = IngestSetup::from_byte(input.u8());
    let engine = if setup.silero {
        VadEngine::Silero
    } else {
        VadEngine::Webrtc(WebrtcVadConfig { mode: 2 })
    };
    let config = ingest_segmenter();
    let mut ingest = Ingest::new(
        AudioFormat::new(setup.codec, setup.sample_rate),
        engine,
        config,
    )
    .expect("every supported codec and rate sets up")
    .keep_native(setup.keep_native);
    let mut events = EventOrder::default();
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        ops += 1;
        let mut out = IngestOutput::default();
        let tag = input.u8();
        if tag == 0xff {
            ingest.flush(&mut out);
        } else {
            let mut frames = Vec::new();
            for _ in 0..=tag % 8 {
                let len = usize::from(input.u16()) % MAX_INGEST_FRAME;
                let frame = input.bytes(len);
                // The session drops empty binary frames before they reach the tree.
                if !frame.is_empty() {
                    frames.push(Bytes::copy_from_slice(frame));
                }
            }
            ingest.process(&frames, &mut out);
            assert!(out.errors.len() <= frames.len(), "one error per bad frame");
            if setup.codec == AudioCodec::Pcm16 {
                let odd = frames.iter().filter(|f| f.len() % 2 == 1).count();
                assert_eq!(out.errors.len(), odd, "only odd PCM16 frames are refused");
                if setup.keep_native {
                    let samples: usize = frames
                        .iter()
                        .filter(|f| f.len() % 2 == 0)
                        .map(|f| f.len() / 2)
                        .sum();
                    assert_eq!(out.native.len(), samples, "native audio is all kept");
                }
            }
            let pending = ingest.pending_windows();
            if setup.silero {
                let scores = vec![input.unit(); pending];
                ingest.apply_silero(&scores, &mut out);
                assert_eq!(ingest.pending_windows(), 0, "every window scored");
            } else {
                assert_eq!(pending, 0, "webrtc-vad scores as it goes");
            }
        }
        events.check(&out.speech, ingest.clock_ms(), &config);
    }
}

/// The configuration bytes of a [`segmenter`] input, limited as `Config::load` limits the
/// `vad` and `stt` sections (end threshold at most the start threshold, drafts and turn
/// checks before `min_silence_ms`, `turn_max_silence_ms` at least `min_silence_ms`).
fn segmenter_config(input: &mut Reader) -> SegmenterConfig {
    let start_threshold = input.unit();
    let end_threshold = input.unit().min(start_threshold);
    let min_speech_ms = u32::from(input.u16() % 2_000);
    let min_silence_ms = u32::from(input.u16() % 3_000) + 1;
    let pad_ms = u32::from(input.u16() % 1_000);
    // The server cuts at 30 s; shorter cuts reach the cutting code in short inputs.
    let max_segment_ms = u32::from(input.u16() % 30_000) + 1;
    let draft_after_ms = u32::from(input.u16()) % min_silence_ms;
    let partial_every_ms = u32::from(input.u16() % 3_000);
    let turn_check_after_ms = u32::from(input.u16()) % min_silence_ms;
    let turn_max_silence_ms = min_silence_ms + u32::from(input.u16() % 3_000);
    let collect_audio = input.u8() & 1 == 1;
    SegmenterConfig {
        start_threshold,
        end_threshold,
        min_speech_ms,
        min_silence_ms,
        pad_ms,
        max_segment_ms,
        draft_after_ms,
        partial_every_ms,
        turn_check_after_ms,
        turn_max_silence_ms,
        collect_audio,
        manual: false,
    }
}

/// Speech scores and control calls through the segmenter.
///
/// Input: 19 configuration bytes (see `segmenter_config`), then operations until the
/// input ends, each an opcode byte: `0..=4` push a frame (`u16` length modulo 1,600
/// samples, one score byte, one byte filling the samples), `5` flush (`audio.end`),
/// `6` / `7` a complete / incomplete end-of-turn verdict on the newest turn check (on
/// a pause made of the next two bytes when there was none).
///
/// Checks: the audio clock counts every sample; events alternate start/stop in audio
/// order; a segment lies within the audio heard, holds no more samples than its span and
/// is never longer than `max_segment_ms` plus one frame; drafts and partials too.
pub fn segmenter(data: &[u8]) {
    let mut input = Reader::new(data);
    let config = segmenter_config(&mut input);
    let mut segmenter = Segmenter::new(config);
    let mut events = EventOrder::default();
    let mut samples_in: u64 = 0;
    let mut last_check: Option<PauseKey> = None;
    let mut frame = Vec::with_capacity(MAX_SEGMENTER_FRAME);
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        ops += 1;
        let mut out = SegmenterOutput::default();
        match input.u8() % 8 {
            0..=4 => {
                let len = usize::from(input.u16()) % MAX_SEGMENTER_FRAME + 1;
                let score = input.unit();
                let fill = i16::from(input.u8() as i8) * 256;
                frame.clear();
                frame.resize(len, fill);
                segmenter.push(&frame, score, &mut out);
                samples_in += len as u64;
            }
            5 => {
                segmenter.flush(&mut out);
            }
            op => {
                let key = last_check.unwrap_or_else(|| PauseKey {
                    start_ms: u64::from(input.u8()),
                    voiced_end_ms: u64::from(input.u8()),
                });
                if op == 6 {
                    if segmenter.end_turn(key, &mut out) {
                        assert!(
                            matches!(out.events[..], [SpeechEvent::Stopped { .. }]),
                            "a complete verdict ends the segment: {:?}",
                            out.events
                        );
                    }
                } else {
                    segmenter.turn_incomplete(key);
                }
            }
        }
        if let Some(check) = out.turn_checks.last() {
            last_check = Some(check.key);
        }
        assert_eq!(segmenter.clock_ms(), samples_in / SAMPLES_PER_MS);
        events.check(&out, segmenter.clock_ms(), &config);
    }
}

/// What must hold across every output of one stream.
#[derive(Default)]
struct EventOrder {
    in_speech: bool,
    last_event_ms: u64,
    last_segment_end_ms: u64,
}

impl EventOrder {
    fn check(&mut self, out: &SegmenterOutput, clock_ms: u64, config: &SegmenterConfig) {
        for event in &out.events {
            let (started, audio_ms) = match *event {
                SpeechEvent::Started { audio_ms } => (true, audio_ms),
                SpeechEvent::Stopped { audio_ms } => (false, audio_ms),
            };
            assert_ne!(
                started, self.in_speech,
                "events alternate: {:?}",
                out.events
            );
            assert!(audio_ms >= self.last_event_ms, "events in audio order");
            assert!(audio_ms <= clock_ms, "an event names audio not yet heard");
            self.in_speech = started;
            self.last_event_ms = audio_ms;
        }
        // A segment is cut once it reaches `max_segment_ms`, one frame late at most; the
        // first one also holds the lead-in kept before its start (pad, voiced run and the
        // pre-roll's slack of 1,024 samples).
        let frame_ms = MAX_INGEST_FRAME.max(MAX_SEGMENTER_FRAME) as u64 / SAMPLES_PER_MS;
        let lead_in_ms = u64::from(config.pad_ms + config.min_speech_ms) + 64;
        let longest_ms = u64::from(config.max_segment_ms).max(lead_in_ms) + frame_ms + 1;
        for segment in &out.segments {
            check_segment(segment, clock_ms, longest_ms, config);
            assert!(
                segment.start_ms + 1 >= self.last_segment_end_ms,
                "segments do not overlap: {} after {}",
                segment.start_ms,
                self.last_segment_end_ms
            );
            self.last_segment_end_ms = segment.end_ms;
        }
        for draft in out.drafts.iter().chain(&out.partials) {
            // A draft's trailing pad is not heard yet: it may reach past the clock.
            let pad = u64::from(config.pad_ms);
            check_segment(draft, clock_ms + pad, longest_ms + pad, config);
        }
    }
}

fn check_segment(segment: &SpeechSegment, clock_ms: u64, longest_ms: u64, c: &SegmenterConfig) {
    assert!(
        segment.start_ms <= segment.voiced_end_ms && segment.voiced_end_ms <= segment.end_ms,
        "segment bounds out of order: {segment:?}"
    );
    assert!(segment.end_ms <= clock_ms, "a segment past the audio heard");
    assert!(
        segment.end_ms - segment.start_ms <= longest_ms,
        "a segment of {} ms (max_segment_ms {})",
        segment.end_ms - segment.start_ms,
        c.max_segment_ms
    );
    let span = (segment.end_ms - segment.start_ms + 1) * SAMPLES_PER_MS;
    assert!(
        segment.samples.len() as u64 <= span,
        "{} samples in a {} ms segment",
        segment.samples.len(),
        segment.end_ms - segment.start_ms
    );
}

/// Writes an [`ingest`] input, for seed corpora.
pub struct IngestSeed {
    bytes: Vec<u8>,
}

impl IngestSeed {
    pub fn new(setup: IngestSetup) -> Self {
        IngestSeed {
            bytes: vec![setup.to_byte()],
        }
    }

    /// One batch of frames (at most 8, each under 8 KiB), then the score of its Silero
    /// windows (`0..=255` for `0.0..=1.0`).
    pub fn batch(mut self, frames: &[&[u8]], score: u8) -> Self {
        assert!((1..=8).contains(&frames.len()));
        self.bytes.push(frames.len() as u8 - 1);
        for frame in frames {
            assert!(frame.len() < MAX_INGEST_FRAME);
            self.bytes
                .extend_from_slice(&(frame.len() as u16).to_le_bytes());
            self.bytes.extend_from_slice(frame);
        }
        self.bytes.push(score);
        self
    }

    pub fn flush(mut self) -> Self {
        self.bytes.push(0xff);
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Writes a [`segmenter`] input with the server's default settings, for seed corpora.
pub struct SegmenterSeed {
    bytes: Vec<u8>,
}

impl Default for SegmenterSeed {
    fn default() -> Self {
        let mut bytes = vec![128, 90]; // thresholds 0.5, 0.35
        for ms in [100u16, 399, 200, 29_999, 150, 1_000, 0, 0] {
            bytes.extend_from_slice(&ms.to_le_bytes());
        }
        bytes.push(1); // collect audio
        SegmenterSeed { bytes }
    }
}

impl SegmenterSeed {
    /// Push `frames` frames of `len` samples with `score`.
    pub fn frames(mut self, frames: usize, len: u16, score: f32) -> Self {
        for _ in 0..frames {
            self.bytes.push(0);
            self.bytes.extend_from_slice(&len.to_le_bytes());
            self.bytes.push((score.clamp(0.0, 1.0) * 255.0) as u8);
            self.bytes.push(20);
        }
        self
    }

    pub fn flush(mut self) -> Self {
        self.bytes.push(5);
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_short_inputs_run() {
        for data in [&[][..], &[0], &[0xff; 3], &[1, 2, 3, 4, 5]] {
            client_event(data);
            upgrade_query(data);
            ingest(data);
            segmenter(data);
        }
    }

    #[test]
    fn seeds_reach_speech() {
        // A loud 200 Hz square wave is speech to webrtc-vad at mode 2 often enough; with
        // Silero the scores are ours, so speech is certain.
        let frame: Vec<u8> = (0..320i16)
            .flat_map(|i| (if i % 80 < 40 { 12_000i16 } else { -12_000 }).to_le_bytes())
            .collect();
        let setup = IngestSetup {
            codec: AudioCodec::Pcm16,
            sample_rate: 16_000,
            silero: true,
            keep_native: true,
        };
        let mut seed = IngestSeed::new(setup);
        for _ in 0..20 {
            seed = seed.batch(&[&frame[..], &frame[..]], 255);
        }
        let data = seed.flush().finish();
        ingest(&data);
        let seed = SegmenterSeed::default()
            .frames(20, 320, 0.0)
            .frames(40, 320, 1.0)
            .frames(40, 320, 0.0)
            .finish();
        segmenter(&seed);
    }
}
