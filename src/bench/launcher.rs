//! Starting streaming sessions for `streams` and `ramp`: the options they share, the
//! launcher that spreads session starts over time and over the audio loop, and the live
//! status line.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use tokio_tungstenite::tungstenite::Message;

use super::audio_src::{AudioLoop, Codec, FRAME_MS};
use super::protocol::{Protocol, RealtimeTurn, REALTIME_RATE};
use super::session::{self, Hysteresis, Shared, StreamPlan};

/// Options every streaming command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamOpts {
    /// WebSocket endpoint of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    pub url: String,
    /// WAV files each session loops, back to back.
    #[arg(long, num_args = 1.., required = true)]
    pub audio: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = Codec::Pcm16)]
    pub codec: Codec,
    /// Session sample rate (Hz) of native sessions; the files are resampled to it.
    /// Realtime sessions always send 24 kHz (`audio/pcm`).
    #[arg(long, default_value_t = 16_000)]
    pub sample_rate: u32,
    /// Protocol: `native` (`--url .../v1/ws`) or `realtime` (the OpenAI Realtime API,
    /// `--url .../v1/realtime`: base64 PCM16 at 24 kHz in `input_audio_buffer.append`).
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    pub protocol: Protocol,
    /// Realtime turn detection: the server's default (as native sessions get it),
    /// `server-vad` or `semantic-vad`.
    #[arg(long, value_enum, default_value_t = RealtimeTurn::Default)]
    pub realtime_turn: RealtimeTurn,
    /// Audio seconds sent per wall-clock second.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Seconds of silence after each WAV file in the loop: room for a spoken reply before
    /// the next utterance barges in and cuts it.
    #[arg(long, default_value_t = 0.0)]
    pub gap: f64,
    /// The server's `vad.min_speech_ms` (to compute the decision lag).
    #[arg(long, default_value_t = 100)]
    pub vad_min_speech_ms: u64,
    /// The server's `vad.min_silence_ms`.
    #[arg(long, default_value_t = 400)]
    pub vad_min_silence_ms: u64,
    /// Seconds a session waits for its last transcript (and the first audio of its
    /// reply) after `audio.end`.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// The server's Prometheus endpoint: when given, the report adds the server's own
    /// count of refused upgrades (`hearken_rejected_connections_total`) over the run.
    #[arg(long)]
    pub metrics_url: Option<String>,
}

impl StreamOpts {
    /// The sample rate the sessions send.
    pub fn rate(&self) -> u32 {
        match self.protocol {
            Protocol::Native => self.sample_rate,
            Protocol::Realtime => REALTIME_RATE,
        }
    }
}

/// Starts sessions, each with a fresh conversation and its own place in the audio loop.
pub struct Launcher {
    opts: StreamOpts,
    /// The loop as messages of the protocol, built once for every session.
    audio: Arc<Vec<Message>>,
    pub shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    pub started: usize,
}

impl Launcher {
    pub fn new(
        opts: &StreamOpts,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Launcher> {
        anyhow::ensure!(opts.speed > 0.0, "--speed must be positive");
        anyhow::ensure!(opts.gap >= 0.0, "--gap must not be negative");
        anyhow::ensure!(
            opts.protocol == Protocol::Native || opts.codec == Codec::Pcm16,
            "Realtime sessions send PCM16 (`--codec pcm16`)"
        );
        let audio = AudioLoop::load(&opts.audio, opts.codec, opts.rate(), opts.gap)?;
        let messages = audio
            .frames
            .iter()
            .map(|frame| opts.protocol.audio_message(frame))
            .collect();
        Ok(Launcher {
            opts: opts.clone(),
            audio: Arc::new(messages),
            shared,
            stop,
            started: 0,
        })
    }

    /// Start `count` more sessions, spread evenly over `spread`.
    pub async fn launch(
        &mut self,
        set: &mut JoinSet<()>,
        count: usize,
        spread: Duration,
    ) -> anyhow::Result<()> {
        let begin = Instant::now();
        for i in 0..count {
            sleep_until(begin + spread.mul_f64(i as f64 / count.max(1) as f64)).await;
            let index = self.started;
            self.started += 1;
            let mut params = vec![
                ("conversation_id", uuid::Uuid::new_v4().to_string()),
                ("client_id", format!("bench-{index}")),
            ];
            if self.opts.protocol == Protocol::Native {
                params.push(("codec", self.opts.codec.as_str().to_string()));
                params.push(("sample_rate", self.opts.sample_rate.to_string()));
            }
            let url = super::session_url(&self.opts.url, &params)?;
            // Golden-ratio offsets: sessions are spread over the loop, not in lockstep.
            let frames = self.audio.len();
            let offset = ((index as f64 * 0.618_034).fract() * frames as f64) as usize;
            set.spawn(session::run(StreamPlan {
                url,
                protocol: self.opts.protocol,
                turn: self.opts.realtime_turn,
                audio: Arc::clone(&self.audio),
                offset,
                period: Duration::from_millis(FRAME_MS).div_f64(self.opts.speed),
                hysteresis: Hysteresis {
                    min_speech_ms: self.opts.vad_min_speech_ms,
                    min_silence_ms: self.opts.vad_min_silence_ms,
                },
                drain: Duration::from_secs_f64(self.opts.drain),
                shared: Arc::clone(&self.shared),
                stop: self.stop.clone(),
            }));
        }
        Ok(())
    }

    pub fn loop_ms(&self) -> u64 {
        self.audio.len() as u64 * FRAME_MS
    }
}

/// One line of live status for a streaming run (counts are those of the current window:
/// the whole run for `streams`, the current step for `ramp`).
pub fn status_line(shared: &Shared) -> String {
    let live = shared.live.load(Ordering::Relaxed);
    shared.with_window(|w| {
        format!(
            "live {live} | window: started {}, failed {}, rejected {}, VAD events {}, p95 decision lag {:.0} ms, p95 send slip {:.0} ms",
            w.sessions_started,
            w.sessions_failed,
            w.rejected_total(),
            w.vad_events(),
            w.lag_decision.summary().p95_ms,
            w.send_slip.summary().p95_ms
        )
    })
}

/// Wait (bounded) for every session task to finish its drain and close.
pub async fn join_all(set: &mut JoinSet<()>, bound: Duration) {
    let _ = tokio::time::timeout(bound, async { while set.join_next().await.is_some() {} }).await;
    set.abort_all();
}
