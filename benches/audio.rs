//! Per-frame cost of the audio front end, the work a DSP worker does for every 20 ms a
//! client sends; divided into 20 ms it says how many live streams one core can carry.
//!
//! - `webrtc_vad/ingest_pcm16_16k`: one 20 ms PCM16 frame of speech (the loudest frame
//!   of `fox_16k.wav`) through [`Ingest::process`] with webrtc-vad: PCM decode, the
//!   voice decision and the segmenter, as a conversation runs it.
//!   `webrtc_vad/fvad_only` is libfvad alone on the same frame, to show what the
//!   surrounding plumbing costs.
//! - `opus/decode_16k`: `fox_16k.wav` is encoded to 20 ms packets with [`OpusEncoder`]
//!   first (not timed); each iteration decodes the next packet with one long-lived
//!   [`OpusDecoder`], so decoder state carries over as in a real stream.
//! - `resample/48k_to_16k`: `fox_16k.wav` upsampled to 48 kHz (not timed), then fed
//!   960 samples (20 ms) per iteration to one [`StreamResampler`]. The resampler works in
//!   64 ms chunks, so most frames only buffer and one in 3.2 runs an FFT; the mean per
//!   frame is the figure that matters for capacity.

use bytes::Bytes;
use criterion::{black_box, Criterion, Throughput};
use hearken::audio::ingest::{Ingest, IngestOutput, VadEngine, WebrtcVadConfig};
use hearken::audio::opus_codec::{OpusDecoder, OpusEncoder};
use hearken::audio::pcm::{encode_pcm16, i16_to_f32};
use hearken::audio::resample::StreamResampler;
use hearken::audio::segmenter::SegmenterConfig;
use hearken::protocol::{AudioCodec, AudioFormat};

/// Fixture rate (Hz) and the samples in one 20 ms frame at it.
const FOX_RATE: u32 = 16_000;
const FRAME_16K: usize = 320;

/// The client rate the resampler benchmark converts from (Hz), and its 20 ms frame.
const CLIENT_RATE: u32 = 48_000;
const FRAME_48K: usize = 960;

/// webrtc-vad aggressiveness, as in the shipped config (`vad.webrtc_mode`).
const WEBRTC_MODE: u8 = 2;

fn fox() -> Vec<i16> {
    let path = format!("{}/tests/fixtures/fox_16k.wav", env!("CARGO_MANIFEST_DIR"));
    let mut reader = hound::WavReader::open(&path).expect("fox_16k.wav exists");
    assert_eq!(reader.spec().sample_rate, FOX_RATE, "fox_16k.wav is 16 kHz");
    reader
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect()
}

/// The 20 ms frame with the most energy: certainly speech.
fn loudest_frame(samples: &[i16]) -> &[i16] {
    samples
        .chunks_exact(FRAME_16K)
        .max_by_key(|frame| frame.iter().map(|&s| i64::from(s).pow(2)).sum::<i64>())
        .expect("fixture longer than one frame")
}

/// The shipped segmenter settings (`config/default.toml`), without audio collection
/// since no recogniser listens here.
fn segmenter() -> SegmenterConfig {
    SegmenterConfig {
        start_threshold: 0.5,
        end_threshold: 0.35,
        min_speech_ms: 100,
        min_silence_ms: 400,
        pad_ms: 300,
        max_segment_ms: 30_000,
        draft_after_ms: 0,
        turn_check_after_ms: 0,
        turn_max_silence_ms: 0,
        partial_every_ms: 0,
        collect_audio: false,
        manual: false,
    }
}

fn clear(out: &mut IngestOutput) {
    out.native.clear();
    out.speech.events.clear();
    out.speech.segments.clear();
    out.errors.clear();
}

fn webrtc_vad(c: &mut Criterion, fox: &[i16]) {
    let speech = loudest_frame(fox);
    let frame = Bytes::from(encode_pcm16(speech));
    let mut group = c.benchmark_group("webrtc_vad");
    group.throughput(Throughput::Elements(1));

    let engine = VadEngine::Webrtc(WebrtcVadConfig { mode: WEBRTC_MODE });
    let mut ingest = Ingest::new(
        AudioFormat::new(AudioCodec::Pcm16, FOX_RATE),
        engine,
        segmenter(),
    )
    .expect("ingest");
    let mut out = IngestOutput::default();
    group.bench_function("ingest_pcm16_16k", |b| {
        b.iter(|| {
            ingest.process(std::slice::from_ref(&frame), &mut out);
            assert!(out.errors.is_empty(), "{:?}", out.errors);
            clear(&mut out);
        })
    });

    let mut fvad = webrtc_vad::Vad::new_with_rate_and_mode(
        webrtc_vad::SampleRate::Rate16kHz,
        webrtc_vad::VadMode::Aggressive,
    );
    assert_eq!(fvad.is_voice_segment(speech), Ok(true), "frame is speech");
    group.bench_function("fvad_only", |b| {
        b.iter(|| fvad.is_voice_segment(black_box(speech)))
    });
    group.finish();
}

fn opus_decode(c: &mut Criterion, fox: &[i16]) {
    let mut encoder = OpusEncoder::new(FOX_RATE).expect("encoder");
    let mut packets = encoder.push(fox).expect("encode");
    packets.extend(encoder.finish().expect("encode tail"));
    let mean_bytes = packets.iter().map(Vec::len).sum::<usize>() / packets.len();
    println!(
        "opus: fox_16k.wav is {} packets of 20 ms, {mean_bytes} bytes on average",
        packets.len()
    );

    let mut decoder = OpusDecoder::new(FOX_RATE).expect("decoder");
    let mut pcm = Vec::with_capacity(FRAME_16K);
    let mut next = packets.iter().cycle();
    let mut group = c.benchmark_group("opus");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_16k", |b| {
        b.iter(|| {
            pcm.clear();
            let packet = next.next().expect("cycle never ends");
            let n = decoder.decode_into(packet, &mut pcm).expect("decode");
            debug_assert_eq!(n, FRAME_16K);
        })
    });
    group.finish();
}

fn resample(c: &mut Criterion, fox: &[i16]) {
    let fox_f32: Vec<f32> = fox.iter().copied().map(i16_to_f32).collect();
    let fox_48k = StreamResampler::convert_clip(FOX_RATE, CLIENT_RATE, &fox_f32).expect("upsample");
    let frames: Vec<&[f32]> = fox_48k.chunks_exact(FRAME_48K).collect();

    let mut resampler = StreamResampler::new(CLIENT_RATE, FOX_RATE).expect("resampler");
    let mut out = Vec::with_capacity(4 * FRAME_16K);
    let mut next = frames.iter().cycle();
    let mut group = c.benchmark_group("resample");
    group.throughput(Throughput::Elements(1));
    group.bench_function("48k_to_16k", |b| {
        b.iter(|| {
            out.clear();
            let frame = next.next().expect("cycle never ends");
            resampler.push(frame, &mut out).expect("resample");
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let fox = fox();
    webrtc_vad(&mut c, &fox);
    opus_decode(&mut c, &fox);
    resample(&mut c, &fox);
    c.final_summary();
}
