//! The demo page in real headless Chromium (Debian's `chromium`, driven by
//! `tests/browser/demo.mjs` through `playwright-core`), against a real server with every
//! model but the LLM, which is the local fake OpenAI server so the prompts can be read.
//! Chromium's fake microphone plays a WAV made here from the spoken fixtures.
//!
//! The test owns the server, the fake LLM, the gauges and its own `/v1/events` stream;
//! the script reports what the page showed through its `data-testid` hooks and
//! `window.hearkenStats`. Browser runs are serialised: two at once on the 2-core CI
//! machine would only slow each other down. `scripts/setup.sh` installs Chromium and
//! the script's npm package.

mod common;
#[path = "model_support/mod.rs"]
mod model_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::fake_llm::{fake_llm, Upstream};
use common::*;
use futures_util::StreamExt;
use hearken::config::LlmBackendKind;
use model_support::wer;
use serde_json::Value;

/// One browser at a time.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Longest a whole browser scenario may take; each wait inside it is bounded too.
const SCENARIO_LIMIT: Duration = Duration::from_secs(300);
const MAX_WER: f64 = 0.2;
/// The two utterances, in Piper's voice (tests/fixtures/turns/manifest.json).
const FIRST: (&str, &str) = ("turns/capital.wav", "What is the capital city of France?");
const SECOND: (&str, &str) = ("turns/moon.wav", "How far away is the moon from the earth?");
/// Silence before the first word, as a person pressing Start would leave.
const LEAD_S: f64 = 1.0;
/// A reply long enough (about 15 s spoken) to still be playing when the user speaks again.
const LONG_REPLY: &str = "Sure. Here is a longer answer, so that you can hear the reply for a \
    while and then talk over it. When you speak, hearken stops the reply at once and listens \
    to you again. The page drops the audio it had queued, so you never hear the old answer \
    after you have started to talk, and the next reply begins when you are done.";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Screenshots and microphone files: `target/browser/` (kept as CI artifacts).
fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("browser");
    std::fs::create_dir_all(&dir).expect("create target/browser");
    dir
}

/// A 16 kHz microphone recording: `LEAD_S` of silence, then each fixture followed by
/// `gap_s` of silence.
fn microphone(name: &str, parts: &[(&str, f64)]) -> PathBuf {
    let path = out_dir().join(name);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(&path, spec).expect("write microphone WAV");
    for _ in 0..(LEAD_S * 16_000.0) as usize {
        wav.write_sample(0i16).expect("sample");
    }
    for (fixture_name, gap_s) in parts {
        let (samples, rate) = fixture(fixture_name);
        assert_eq!(rate, 16_000, "{fixture_name}");
        let silence = (gap_s * 16_000.0) as usize;
        for sample in samples.into_iter().chain(std::iter::repeat_n(0, silence)) {
            wav.write_sample(sample).expect("sample");
        }
    }
    wav.finalize().expect("finish microphone WAV");
    path
}

fn browser_config(base_url: &str) -> hearken::Config {
    let mut config = test_config();
    config.llm.backend = LlmBackendKind::Openai;
    config.llm.base_url = base_url.to_string();
    config.llm.model = "fake".into();
    config
}

/// Run one scenario of demo.mjs against `server`, with `extra` arguments; returns its
/// RESULT object.
async fn run_page(server: &TestServer, scenario: &str, microphone: &Path, extra: &[&str]) -> Value {
    let script = root().join("tests/browser/demo.mjs");
    let playwright = root().join("tests/browser/node_modules/playwright-core");
    assert!(
        playwright.is_dir() && Path::new("/usr/bin/chromium").exists(),
        "Chromium or playwright-core is missing: run scripts/setup.sh"
    );
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .args(["--url", &server.http("/")])
        .arg("--audio")
        .arg(microphone)
        .args(["--scenario", scenario])
        .arg("--out")
        .arg(out_dir())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (scripts/setup.sh installs it)");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut output = String::new();
    let finished = tokio::time::timeout(SCENARIO_LIMIT, async {
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut output).await?;
        child.wait().await
    })
    .await
    .unwrap_or_else(|_| panic!("the {scenario} scenario ran past {SCENARIO_LIMIT:?}"))
    .expect("node ran");
    assert!(
        finished.success(),
        "the {scenario} scenario failed (see its log above)"
    );
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("the script printed its RESULT");
    let result: Value = serde_json::from_str(line).expect("RESULT is JSON");
    assert_eq!(
        result["foreign"],
        Value::Array(vec![]),
        "the page reached another host"
    );
    assert_eq!(
        result["problems"],
        Value::Array(vec![]),
        "errors in the page"
    );
    result
}

/// Server-sent lifecycle events, read from the server's own `/v1/events`.
struct EventStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>>>,
    buffer: String,
}

impl EventStream {
    async fn open(server: &TestServer) -> EventStream {
        let response = reqwest::get(server.http("/v1/events"))
            .await
            .expect("events");
        assert_eq!(response.status(), 200);
        EventStream {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// Every event up to and including the disconnect of a sentinel session opened now:
    /// the registry publishes in order, so nothing of an earlier conversation can follow.
    async fn until_sentinel(&mut self, server: &TestServer) -> Vec<Value> {
        let (mut ws, started) = start_session(&server.url("client_id=sentinel")).await;
        let sentinel = conversation_id(&started);
        send_close(&mut ws).await;
        let mut events = Vec::new();
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let chunk: String = self.buffer.drain(..end + 2).collect();
                if let Some(json) = chunk.trim().strip_prefix("data: ") {
                    let event: Value = serde_json::from_str(json).expect("event JSON");
                    let done = event["type"] == "connection_disconnected"
                        && event["conversation_id"] == sentinel.as_str();
                    events.push(event);
                    if done {
                        return events;
                    }
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("events in time")
                .expect("stream open")
                .expect("chunk");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }
}

fn of_conversation<'a>(events: &'a [Value], id: &str, kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["conversation_id"] == id && e["type"] == kind)
        .collect()
}

fn texts(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t.as_str().expect("text").to_string())
        .collect()
}

/// One browser scenario and what it left behind: the fake LLM's requests, the server
/// (still running) and the `/v1/events` stream opened before the page.
struct Run {
    result: Value,
    upstream: common::fake_llm::FakeLlm,
    server: TestServer,
    events: EventStream,
    baseline: Vec<(String, i64)>,
}

/// Start the fake LLM (answering `LONG_REPLY`) and a server, then run `scenario`.
async fn run(scenario: &str, microphone: &Path) -> Run {
    let upstream = fake_llm(Upstream::Scripted(LONG_REPLY)).await;
    let server = TestServer::start(browser_config(&upstream.base_url));
    let events = EventStream::open(&server).await;
    let baseline = server.gauges();
    let result = run_page(&server, scenario, microphone, &[]).await;
    Run {
        result,
        upstream,
        server,
        events,
        baseline,
    }
}

impl Run {
    /// Wait for every gauge to return to its start, then read the lifecycle events up
    /// to a sentinel session's end.
    async fn teardown_events(&mut self) -> Vec<Value> {
        let server = &self.server;
        let settled = eventually(|| server.gauges() == self.baseline).await;
        assert!(
            settled,
            "gauges {:?} did not return to {:?}",
            server.gauges(),
            self.baseline
        );
        self.events.until_sentinel(server).await
    }
}

#[tokio::test]
async fn speak_hear_interrupt_and_stop_in_chromium() {
    let _one = BROWSER.lock().await;
    let mic = microphone(
        "mic-conversation.wav",
        // The reply to FIRST starts within a few seconds and lasts about 15: SECOND,
        // 6 s after FIRST, talks over it.
        &[(FIRST.0, 6.0), (SECOND.0, 20.0)],
    );
    let mut run = run("conversation", &mic).await;
    let result = &run.result;
    let first = &result["firstReply"];
    let transcript = &texts(&first["transcripts"])[0];
    let error = wer(FIRST.1, transcript);
    assert!(error <= MAX_WER, "WER {error:.2}: {transcript:?}");
    let reply = &texts(&first["replies"])[0];
    assert!(reply.starts_with("Sure."), "reply text shown: {reply:?}");
    assert!(first["stats"]["samplesPlayed"].as_u64().unwrap() >= 8_000);

    // The second utterance cut the reply: the queued audio was dropped at once.
    let cut = &result["afterBargeIn"];
    assert!(cut["stats"]["bargeIns"].as_u64().unwrap() >= 1);
    let flush = cut["stats"]["flushes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["reason"] == "barge-in")
        .expect("a barge-in flush");
    assert!(flush["droppedSamples"].as_u64().unwrap() > 0, "{flush}");
    assert_eq!(cut["interrupted"][0], true, "the cut reply is marked");

    let before_stop = &result["beforeStop"];
    let second = &texts(&before_stop["transcripts"])[1];
    let error = wer(SECOND.1, second);
    assert!(error <= MAX_WER, "WER {error:.2}: {second:?}");
    let latencies = before_stop["latencies"].as_array().unwrap();
    assert!(!latencies.is_empty(), "a latency per heard reply");
    for state in ["listening", "user speaking", "thinking", "speaking"] {
        let seen = before_stop["states"].as_array().unwrap();
        assert!(seen.iter().any(|s| s == state), "state {state} in {seen:?}");
    }

    // Stop flushed the reply that was playing and closed the session.
    let last = &result["final"];
    assert_eq!(last["state"], "off");
    assert_eq!(last["stats"]["queuedSamples"], 0);
    assert!(last["stats"]["flushes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["reason"] == "stop"));
    let id = last["stats"]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    let panel = last["events"].as_array().unwrap();
    assert!(panel
        .iter()
        .any(|e| e["type"] == "connection_started" && e["conversation"] == id.as_str()));
    assert!(panel.iter().any(|e| e["type"] == "connection_disconnected"
        && e["conversation"] == id.as_str()
        && e["reason"] == "client_disconnect"));

    let seen = run.teardown_events().await;
    let disconnects = of_conversation(&seen, &id, "connection_disconnected");
    assert_eq!(disconnects.len(), 1, "exactly one disconnect: {seen:?}");
    assert_eq!(disconnects[0]["reason"], "client_disconnect");
    assert!(out_dir().join("demo-conversation.png").exists());
}

#[tokio::test]
async fn reload_resumes_the_conversation_in_chromium() {
    let _one = BROWSER.lock().await;
    let mic = microphone("mic-resume.wav", &[(FIRST.0, 12.0)]);
    let mut run = run("resume", &mic).await;
    let result = &run.result;
    let before = &result["before"];
    let earlier = texts(&before["transcripts"])[0].clone();
    let id = before["stats"]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    // The reloaded page shows the conversation so far, then resumes it on Start.
    assert_eq!(texts(&result["reloaded"]["transcripts"])[0], earlier);
    let after = &result["after"];
    assert_eq!(after["stats"]["conversationId"], id.as_str());
    assert_eq!(after["stats"]["resumed"], true);
    assert_eq!(after["resumedBadge"], true);

    // The model saw the earlier turn in the prompt of the turn after the reload.
    let requests = run.upstream.requests.lock().unwrap().clone();
    let carried = requests.iter().any(|request| {
        let users: Vec<&Value> = request["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .collect();
        users.len() >= 2 && users[0]["content"] == earlier.as_str()
    });
    assert!(carried, "no prompt carried {earlier:?}: {requests:?}");

    let seen = run.teardown_events().await;
    let starts = of_conversation(&seen, &id, "connection_started");
    assert_eq!(starts.len(), 2, "{seen:?}");
    let disconnects = of_conversation(&seen, &id, "connection_disconnected");
    assert_eq!(disconnects.len(), 2, "one per session: {seen:?}");
}

#[tokio::test]
async fn refusals_in_plain_words_in_chromium() {
    let _one = BROWSER.lock().await;
    let mic = microphone("mic-refusals.wav", &[(FIRST.0, 1.0)]);
    let mut config = light_config();
    config.auth.tokens = vec!["right".into()];
    config.server.max_sessions = 1;
    let server = TestServer::start(config);
    // The only session slot is taken.
    let (_held, _) = start_session(&server.url("token=right")).await;

    let result = run_page(&server, "refusals", &mic, &["--token", "right"]).await;
    let wrong = result["wrongToken"].as_str().unwrap();
    assert!(wrong.contains("token was not accepted"), "{wrong}");
    let full = result["serverFull"]["error"].as_str().unwrap();
    assert!(full.contains("server is full (HTTP 503)"), "{full}");
    assert_eq!(result["serverFull"]["state"], "off");
    let refused = result["networkErrors"].as_array().unwrap();
    assert!(refused.iter().any(|e| e.as_str().unwrap().contains("401")));
}
