//! The official `openai` Python SDK (pinned in scripts/realtime-sdk.requirements.txt,
//! installed by scripts/setup.sh into `models/.venv-openai`) against `/v1/realtime`.
//!
//! `tests/realtime_sdk/client.py` runs one scenario per process on 127.0.0.1 and checks
//! every event it receives against the SDK's own types; this test starts the server
//! (replies from a local OpenAI-compatible fake, speech from Piper), runs the
//! scenarios, and makes the assertions: the user's words, a spoken reply whose audio
//! says its transcript (heard back by Moonshine), manual turns, text replies, a user
//! message created with its audio (heard and answered), a cancel
//! that stops the audio, a truncation, and a dropped connection, each session ending
//! in exactly one `client_disconnect` with every gauge back where it started.

mod common;
#[path = "model_support/mod.rs"]
mod model_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::fake_llm::{fake_llm, Upstream};
use common::*;
use hearken::config::LlmBackendKind;
use serde_json::Value;

const REPLY: &str = "The weather today will be sunny with a light breeze from the west.";
/// Bound on one scenario (the script bounds each of its own waits too).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

/// The venv's python, or the one `HEARKEN_OPENAI_PYTHON` names.
fn sdk_python() -> PathBuf {
    let python = std::env::var_os("HEARKEN_OPENAI_PYTHON").map_or_else(
        || model_support::models_dir().join(".venv-openai/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (it installs the pinned openai SDK)",
        python.display()
    );
    python
}

/// The fox fixture as the Realtime API's default input: 24 kHz PCM16.
fn fox_24k(dir: &Path) -> PathBuf {
    let (samples, rate) = fixture("fox_16k.wav");
    let floats: Vec<f32> = samples.iter().map(|s| f32::from(*s) / 32768.0).collect();
    let resampled = model_support::resample(&floats, rate as usize, 24_000);
    let pcm: Vec<i16> = resampled
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16)
        .collect();
    let path = dir.join("fox_24k.pcm");
    std::fs::write(&path, pcm_bytes(&pcm)).expect("write the fixture");
    path
}

async fn scenario(python: &Path, port: u16, name: &str, audio: &Path, out: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/realtime_sdk/client.py");
    let child = tokio::process::Command::new(python)
        .arg(script)
        .args(["--port", &port.to_string(), "--scenario", name])
        .arg("--audio")
        .arg(audio)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the SDK's python starts");
    let output = tokio::time::timeout(SCENARIO_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("scenario {name} did not finish in time"))
        .expect("scenario output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scenario {name} failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("scenario {name} printed no result ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(result["first_event"], "session.created", "{name}");
    assert_eq!(result["model"], "gpt-realtime", "{name}");
    result
}

/// What Moonshine hears in 24 kHz PCM16.
fn hear(pcm_24k: &[u8]) -> String {
    let samples: Vec<f32> = pcm_24k
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    model_support::hear(&model_support::resample(&samples, 24_000, 16_000))
}

fn words(text: &str) -> Vec<String> {
    model_support::words(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_speaks_with_hearken() {
    let python = sdk_python();
    let upstream = fake_llm(Upstream::Scripted(REPLY)).await;
    let mut config = test_config();
    config.llm.backend = LlmBackendKind::Openai;
    config.llm.base_url = upstream.base_url.clone();
    let server = TestServer::start(config);
    let before = server.gauges();
    let mut events = server.events();
    let port = server.addr.port();
    let out = std::env::temp_dir().join(format!("hearken-realtime-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("scratch directory");
    let audio = fox_24k(&out);
    let fox = model_support::fixture_text("fox_16k", "text");
    let mut conversations = Vec::new();

    // Server VAD: the user's words, and a reply whose audio says its transcript.
    let vad = scenario(&python, port, "vad", &audio, &out).await;
    let heard_user = vad["user_transcript"].as_str().unwrap();
    assert!(
        model_support::wer(&fox, heard_user) <= 0.2,
        "{heard_user:?}"
    );
    let speech: Vec<&str> = vad["speech_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for kind in [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ] {
        assert!(speech.contains(&kind), "{kind} missing from {speech:?}");
    }
    assert_eq!(vad["status"], "completed", "{vad}");
    let transcript = vad["transcript_done"].as_str().unwrap();
    assert_eq!(vad["transcript_deltas"], transcript);
    assert_eq!(vad["output_transcript"], transcript);
    assert!(
        model_support::wer(REPLY, transcript) <= 0.1,
        "{transcript:?}"
    );
    assert_eq!(vad["audio_after_done"], 0);
    let reply_audio = std::fs::read(out.join("vad_reply.pcm")).expect("reply audio");
    assert_eq!(
        reply_audio.len() as u64,
        vad["audio_bytes"].as_u64().unwrap()
    );
    let spoken = hear(&reply_audio);
    let rate = model_support::wer(transcript, &spoken);
    assert!(
        rate <= 0.25,
        "WER {rate:.2}: the audio says {spoken:?}, the transcript {transcript:?}"
    );
    // Truncated halfway: the stored reply is what was heard by then, a shorter prefix.
    assert_eq!(vad["truncated"]["audio_end_ms"], vad["half_ms"]);
    let kept = words(vad["retrieved_transcript"].as_str().unwrap());
    let all = words(transcript);
    assert!(
        !kept.is_empty() && kept.len() < all.len(),
        "{kept:?} of {all:?}"
    );
    assert_eq!(kept[..], all[..kept.len()]);
    conversations.push(vad["conversation_id"].as_str().unwrap().to_string());

    // Manual turns: the client commits and asks; no speech events.
    let manual = scenario(&python, port, "manual", &audio, &out).await;
    assert_eq!(manual["turn_detection"], Value::Null);
    assert_eq!(manual["speech_events"], 0);
    let heard_user = manual["user_transcript"].as_str().unwrap();
    assert!(
        model_support::wer(&fox, heard_user) <= 0.2,
        "{heard_user:?}"
    );
    assert_eq!(manual["user_item_before_response"], true);
    assert_eq!(manual["status"], "completed", "{manual}");
    assert!(manual["audio_bytes"].as_u64().unwrap() > 24_000, "{manual}");
    assert!(model_support::wer(REPLY, manual["transcript"].as_str().unwrap()) <= 0.1);
    conversations.push(manual["conversation_id"].as_str().unwrap().to_string());

    // Text modality: written words, no audio.
    let text = scenario(&python, port, "text", &audio, &out).await;
    assert_eq!(text["added_role"], "user");
    assert_eq!(text["status"], "completed", "{text}");
    assert_eq!(text["modalities"], serde_json::json!(["text"]));
    assert_eq!(text["text"], REPLY);
    assert_eq!(text["text_done"], REPLY);
    assert_eq!(text["audio_bytes"], 0);
    conversations.push(text["conversation_id"].as_str().unwrap().to_string());

    // A user message created with its audio: heard by the server's recogniser, and the
    // reply asked for right after it answers its words.
    let item = scenario(&python, port, "item_audio", &audio, &out).await;
    assert_eq!(item["added_content"]["type"], "input_audio", "{item}");
    assert_eq!(item["added_content"]["transcript"], Value::Null);
    assert_eq!(item["same_item"], true);
    let heard_item = item["transcript"].as_str().unwrap();
    assert!(
        model_support::wer(&fox, heard_item) <= 0.2,
        "{heard_item:?}"
    );
    assert_eq!(item["done_transcript"], heard_item);
    assert_eq!(item["status"], "completed", "{item}");
    assert_eq!(item["text"], REPLY);
    let request = upstream.requests.lock().unwrap().last().cloned().unwrap();
    let asked = request["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        asked["content"], heard_item,
        "the model read the item's words"
    );
    conversations.push(item["conversation_id"].as_str().unwrap().to_string());

    // A reply that goes on until cancelled: cancelled, and no audio after it.
    *upstream.mode.lock().unwrap() = Upstream::Endless;
    let cancel = scenario(&python, port, "cancel", &audio, &out).await;
    assert_eq!(cancel["status"], "cancelled", "{cancel}");
    assert_eq!(cancel["reason"], "client_cancelled");
    assert!(cancel["audio_bytes"].as_u64().unwrap() > 0);
    assert_eq!(cancel["audio_after_done"], 0);
    conversations.push(cancel["conversation_id"].as_str().unwrap().to_string());

    // A dropped connection mid-speech.
    let dropped = scenario(&python, port, "drop", &audio, &out).await;
    conversations.push(dropped["conversation_id"].as_str().unwrap().to_string());

    // Exactly one client_disconnect per session (`disconnects` fails on a second one),
    // and when the last is out, every gauge is back.
    let ended = disconnects(&mut events, conversations.len()).await;
    for id in &conversations {
        assert_eq!(
            ended.get(id).map(String::as_str),
            Some("client_disconnect"),
            "{id}"
        );
    }
    assert_eq!(server.gauges(), before);
    assert_eq!(
        server
            .metrics
            .disconnects(hearken::ExitReason::ClientDisconnect),
        conversations.len() as u64
    );
    let _ = std::fs::remove_dir_all(&out);
}
