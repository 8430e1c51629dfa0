//! Moonshine's batched decoder (`models::moonshine::batched`): transcripts as good
//! as ONNX Runtime's on the spoken fixtures, and exactly the same tokens whether a
//! clip is decoded alone or in a batch with others, joining and leaving at any step.

#[path = "model_support/mod.rs"]
mod common;

use std::sync::OnceLock;

use hearken::models::moonshine::{max_tokens, EncodedAudio, GuidedGreedy, MoonshineEncoder};
use hearken::models::{
    BatchedDecoder, Decoding, Moonshine, MoonshineFiles, Tokenizer, MOONSHINE_DIR,
};

/// Most words that may be wrong, as a fraction of the reference (as for ONNX Runtime).
const MAX_WER: f64 = 0.20;

fn files() -> MoonshineFiles {
    MoonshineFiles::converted(&common::models_dir().join(MOONSHINE_DIR))
}

fn decoder() -> &'static BatchedDecoder {
    static DECODER: OnceLock<BatchedDecoder> = OnceLock::new();
    DECODER.get_or_init(|| BatchedDecoder::load(&files().decoder).unwrap_or_else(|e| panic!("{e}")))
}

fn encode(clips: &[Vec<f32>]) -> Vec<EncodedAudio> {
    common::init();
    let mut encoder = MoonshineEncoder::load(&files().encoder, 1).unwrap_or_else(|e| panic!("{e}"));
    clips
        .iter()
        .map(|c| encoder.encode(c).expect("encode"))
        .collect()
}

fn start(audio: &EncodedAudio, samples: usize, guess: &[i64]) -> Decoding {
    Decoding {
        state: decoder().begin(audio).expect("begin"),
        search: GuidedGreedy::new(guess, max_tokens(samples)),
    }
}

/// Decodes every clip to the end, all in the same passes.
fn together(mut decodings: Vec<Decoding>) -> Vec<Vec<i64>> {
    while decodings.iter().any(|d| !d.is_done()) {
        let mut batch: Vec<&mut Decoding> = decodings.iter_mut().collect();
        decoder().advance(&mut batch).expect("pass");
    }
    decodings
        .into_iter()
        .map(|d| d.search.into_tokens())
        .collect()
}

/// Every clip decoded in a batch of its own.
fn each_alone(encoded: &[EncodedAudio], samples: &[Vec<f32>]) -> Vec<Vec<i64>> {
    encoded
        .iter()
        .zip(samples)
        .map(|(audio, clip)| together(vec![start(audio, clip.len(), &[])]).remove(0))
        .collect()
}

fn clips() -> Vec<(String, Vec<f32>)> {
    let mut clips = vec![
        ("fox_16k".to_string(), common::read_wav_16k("fox_16k.wav")),
        (
            "weather_8k".to_string(),
            common::read_wav_16k("weather_8k.wav"),
        ),
    ];
    for name in ["capital", "moon", "weather", "timer", "spanish", "joke"] {
        clips.push((
            name.to_string(),
            common::read_wav_16k(&format!("turns/{name}.wav")),
        ));
    }
    clips
}

fn tokenizer() -> Tokenizer {
    Tokenizer::load(&files().tokenizer).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn transcripts_match_onnx_runtime_on_the_fixtures() {
    let clips = clips();
    let samples: Vec<Vec<f32>> = clips.iter().map(|(_, c)| c.clone()).collect();
    let encoded = encode(&samples);
    let decodings = encoded
        .iter()
        .zip(&samples)
        .map(|(audio, clip)| start(audio, clip.len(), &[]))
        .collect();
    let tokens = together(decodings);
    let mut reference = Moonshine::load_files(&files(), 1).unwrap_or_else(|e| panic!("{e}"));
    let tokenizer = tokenizer();
    let mut same = 0;
    for ((name, clip), tokens) in clips.iter().zip(&tokens) {
        let ours = tokenizer.decode(tokens);
        let theirs = reference.transcribe(clip).expect("reference");
        println!("{name}\n  batched: {ours}\n  ort:     {theirs}");
        let wer = common::wer(&theirs, &ours);
        assert!(
            wer <= MAX_WER,
            "{name}: {wer:.2} from ONNX Runtime's\n  {ours}\n  {theirs}"
        );
        same += usize::from(ours == theirs);
    }
    println!(
        "{same} of {} transcripts identical to ONNX Runtime's",
        clips.len()
    );
}

#[test]
fn a_clip_decodes_the_same_alone_or_in_any_batch() {
    let clips = clips();
    let samples: Vec<Vec<f32>> = clips.iter().map(|(_, c)| c.clone()).collect();
    let encoded = encode(&samples);
    let alone = each_alone(&encoded, &samples);

    // All at once.
    let all = together(
        encoded
            .iter()
            .zip(&samples)
            .map(|(audio, clip)| start(audio, clip.len(), &[]))
            .collect(),
    );
    assert_eq!(all, alone);

    // Guided by a wrong guess (another clip's tokens) or by their own, in one batch:
    // the guess changes how many steps it takes, never the tokens.
    let guided = together(
        encoded
            .iter()
            .zip(&samples)
            .enumerate()
            .map(|(i, (audio, clip))| {
                let guess = if i % 2 == 0 {
                    &alone[i]
                } else {
                    &alone[(i + 1) % alone.len()]
                };
                start(audio, clip.len(), guess)
            })
            .collect(),
    );
    assert_eq!(guided, alone);
}

#[test]
fn joining_and_leaving_mid_batch_changes_no_other_transcript() {
    let clips = clips();
    let samples: Vec<Vec<f32>> = clips.iter().map(|(_, c)| c.clone()).collect();
    let encoded = encode(&samples);
    let alone = each_alone(&encoded, &samples);

    // Clip i joins at pass i; every third clip is withdrawn two passes after joining
    // (its conversation ended).
    let mut live: Vec<(usize, usize, Decoding)> = Vec::new();
    let mut finished: Vec<(usize, Vec<i64>)> = Vec::new();
    let mut pass = 0;
    while pass < samples.len() || !live.is_empty() {
        if pass < samples.len() {
            live.push((pass, pass, start(&encoded[pass], samples[pass].len(), &[])));
        }
        live.retain(|(clip, joined, _)| !(clip % 3 == 2 && pass >= joined + 2));
        let mut batch: Vec<&mut Decoding> = live.iter_mut().map(|(_, _, d)| d).collect();
        decoder().advance(&mut batch).expect("pass");
        let (done, running): (Vec<_>, Vec<_>) = live.into_iter().partition(|(_, _, d)| d.is_done());
        finished.extend(
            done.into_iter()
                .map(|(clip, _, d)| (clip, d.search.into_tokens())),
        );
        live = running;
        pass += 1;
        assert!(pass < 10_000, "decoding never ended");
    }
    for kept in (0..samples.len()).filter(|c| c % 3 != 2) {
        assert!(
            finished.iter().any(|(c, _)| *c == kept),
            "clip {kept} never finished"
        );
    }
    for (clip, tokens) in finished {
        assert_eq!(tokens, alone[clip], "clip {clip} changed by its batch");
    }
}
