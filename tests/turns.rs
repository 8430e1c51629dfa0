//! Semantic end of turn over real WebSockets: Piper-spoken questions
//! (`tests/fixtures/turns/`), streamed in real time, with the Smart Turn model deciding
//! (`vad.turn = "smart"`) or silence alone (`"silence"`, 400 ms).

mod common;

use std::time::Duration;

use common::*;
use hearken::config::TurnMode;
use serde_json::{json, Value};

fn config(turn: TurnMode) -> hearken::Config {
    let mut config = test_config();
    config.tts.enabled = false;
    config.vad.turn = turn;
    config
}

/// A turn fixture and where, in samples, its mid-phrase cut lies.
fn turn_fixture(name: &str) -> (Vec<i16>, usize) {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/turns/manifest.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("manifest"),
    )
    .expect("manifest JSON");
    let turn = manifest["turns"]
        .as_array()
        .and_then(|turns| turns.iter().find(|t| t["file"] == name))
        .expect("fixture in the manifest");
    let cut_ms = turn["cut_ms"].as_u64().expect("cut_ms") as usize;
    let (samples, rate) = fixture(&format!("turns/{name}"));
    assert_eq!(rate, 16_000);
    (samples, cut_ms * 16)
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0; ms * 16]
}

/// Stream `audio` in real time, then read until every `vad.speech_stopped` has its
/// `transcript.final` and nothing more comes for a while; returns the transcripts.
async fn turns_heard(turn: TurnMode, audio: &[i16]) -> Vec<String> {
    let server = TestServer::start(config(turn));
    let (mut ws, _) = start_session(&server.url("")).await;
    stream_pcm(&mut ws, audio, 16_000, true).await;
    send_json(&mut ws, json!({"type": "audio.end"})).await;
    let (mut stops, mut transcripts) = (0, Vec::new());
    let kinds = ["vad.speech_stopped", "transcript.final"];
    loop {
        let settled = stops > 0 && transcripts.len() >= stops;
        let wait = if settled {
            Duration::from_secs(2)
        } else {
            WAIT
        };
        let Ok(event) = tokio::time::timeout(wait, next_event_of_any(&mut ws, &kinds)).await else {
            break;
        };
        if event["type"] == "vad.speech_stopped" {
            stops += 1;
        } else {
            transcripts.push(event["text"].as_str().unwrap_or_default().to_lowercase());
        }
    }
    send_close(&mut ws).await;
    transcripts
}

#[tokio::test]
async fn a_pause_inside_a_sentence_ends_the_turn_only_under_silence() {
    let (speech, cut) = turn_fixture("weather.wav");
    let audio = [
        &speech[..cut],
        &silence(700),
        &speech[cut..],
        &silence(1500),
    ]
    .concat();

    let smart = turns_heard(TurnMode::Smart, &audio).await;
    assert_eq!(smart.len(), 1, "one turn under smart: {smart:?}");
    assert!(
        smart[0].contains("weather") && smart[0].contains("tomorrow"),
        "the whole sentence: {smart:?}"
    );
    let silence_only = turns_heard(TurnMode::Silence, &audio).await;
    assert_eq!(
        silence_only.len(),
        2,
        "400 ms of silence cut the sentence in two: {silence_only:?}"
    );
}

#[tokio::test]
async fn a_finished_sentence_ends_the_turn_before_silence_would() {
    // The fixture ends with 200 ms of silence; 100 ms more stays under the 400 ms
    // that silence alone needs, and then no audio comes at all.
    let (speech, _) = turn_fixture("octopus.wav");
    let audio = [&speech[..], &silence(100)].concat();
    for turn in [TurnMode::Smart, TurnMode::Silence] {
        let server = TestServer::start(config(turn));
        let (mut ws, _) = start_session(&server.url("")).await;
        stream_pcm(&mut ws, &audio, 16_000, true).await;
        let stopped = tokio::time::timeout(
            Duration::from_secs(3),
            next_event_of(&mut ws, "vad.speech_stopped"),
        )
        .await;
        let latency = &server.metrics.latency;
        match turn {
            TurnMode::Smart => {
                assert!(stopped.is_ok(), "Smart Turn ended the finished sentence");
                assert_eq!(latency.turn_decisions("complete"), 1);
                let transcript = next_event_of(&mut ws, "transcript.final").await;
                let text = transcript["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase();
                assert!(text.contains("octopus"), "{text:?}");
            }
            TurnMode::Silence => {
                assert!(
                    stopped.is_err(),
                    "300 ms of silence does not end a turn alone"
                );
                assert_eq!(latency.turn_decisions("complete"), 0);
            }
        }
        send_close(&mut ws).await;
    }
}
