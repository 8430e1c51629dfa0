//! Typed configuration: `config/default.toml` maps onto `Config`, one table per part.
//!
//! Sources, later ones winning: built-in defaults, the TOML file, then environment
//! variables `HEARKEN__<TABLE>__<KEY>`. Unknown keys and bad values fail at start with
//! a message that names the key, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Sample rates a client may stream at (Hz).
pub const SUPPORTED_SAMPLE_RATES: [u32; 4] = [8000, 16000, 24000, 48000];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub session: SessionConfig,
    pub auth: AuthConfig,
    pub vad: VadConfig,
    pub stt: SttConfig,
    pub llm: LlmConfig,
    pub tts: TtsConfig,
    pub recorder: RecorderConfig,
    pub workers: WorkersConfig,
    pub models: ModelsConfig,
    pub realtime: RealtimeConfig,
    pub cluster: ClusterConfig,
    pub debug: DebugConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    /// 0 binds an ephemeral port (tests).
    pub port: u16,
    /// HTTP worker threads (actix arbiters); 0 means one per core.
    pub workers: usize,
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    /// How long shutdown waits for every conversation to tear down.
    pub shutdown_drain_ms: u64,
    /// Peers whose `X-Forwarded-For` header is believed (a reverse proxy such as nginx).
    pub trusted_proxies: Vec<String>,
    /// Interval of keep-alive comments on `/v1/events`; also how soon a vanished
    /// subscriber is noticed.
    pub events_keepalive_ms: u64,
    /// Open `/v1/events` streams at most; more are refused with 503.
    pub max_event_subscribers: usize,
    /// Longest wait for a complete HTTP request head after a connection opens.
    pub request_head_timeout_ms: u64,
    /// How long an idle keep-alive HTTP connection is kept between requests.
    pub keep_alive_ms: u64,
    /// How long a connection's shutdown may take before it is dropped.
    pub client_disconnect_timeout_ms: u64,
    /// Serve the demo page on `GET /` (the way a new user first hears hearken); a
    /// deployment that wants only the API turns it off.
    pub demo_page: bool,
    /// How often free pages inside malloc's arenas are handed back to the system
    /// (`crate::heap`); 0 never.
    pub heap_trim_interval_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            workers: 0,
            max_sessions: 2000,
            max_sessions_per_ip: 200,
            shutdown_drain_ms: 5000,
            trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
            events_keepalive_ms: 10_000,
            max_event_subscribers: 64,
            request_head_timeout_ms: 5_000,
            keep_alive_ms: 5_000,
            client_disconnect_timeout_ms: 1_000,
            demo_page: true,
            heap_trim_interval_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    pub idle_timeout_ms: u64,
    pub max_frame_bytes: usize,
    /// Audio frames a conversation queues before its session pauses reading the socket.
    pub audio_queue_frames: usize,
    /// Audio gathered per hand-off from the session to its conversation, in ms; 0 hands
    /// on every frame alone. Larger batches cost less CPU and add up to this much VAD
    /// latency.
    pub audio_batch_ms: u32,
    /// How long a conversation waits for its children to confirm they stopped.
    pub teardown_timeout_ms: u64,
    /// A client that leaves the session's output unread this long is disconnected
    /// (`timeout`): the socket accepted nothing the session had waiting.
    pub write_stall_ms: u64,
    /// Longest wait of a reconnect for its conversation's previous session to end;
    /// then `error` `conversation_busy` and close 1013.
    pub register_timeout_ms: u64,
    /// Flood control: client text frames, WebSocket Pings and error replies allowed
    /// per second on average ...
    pub client_events_per_s: u32,
    /// ... and in a burst; past that the session is closed with 1008.
    pub client_events_burst: u32,
    /// Audio may arrive at most this many times faster than real time on average ...
    pub max_audio_speed: f64,
    /// ... with this much audio (ms) ahead of the clock in a burst. Frames beyond that
    /// are refused with `error` `audio_too_fast`: a client that sends faster than it
    /// speaks would otherwise take other sessions' share of the models.
    pub audio_burst_ms: u32,
    /// Undecodable audio frames (bad Opus, odd-length PCM) allowed in a burst, one more
    /// earned per second; past that the session is closed with 1007. A working client
    /// never sends one (the stream is TCP), so a run of them is a corrupt or hostile
    /// stream, and its half-decodable noise would cost the models like speech.
    pub bad_audio_burst: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout_ms: 30_000,
            max_frame_bytes: 65_536,
            audio_queue_frames: 100,
            audio_batch_ms: 60,
            teardown_timeout_ms: 1000,
            write_stall_ms: 10_000,
            register_timeout_ms: 15_000,
            client_events_per_s: 20,
            client_events_burst: 60,
            max_audio_speed: 1.5,
            audio_burst_ms: 30_000,
            bad_audio_burst: 10,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted bearer tokens; empty disables auth.
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VadEngine {
    /// Silero VAD v6 through ONNX Runtime, batched across conversations.
    Silero,
    /// libfvad (webrtc-vad): no model file, cheaper, less accurate.
    Webrtc,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VadConfig {
    pub engine: VadEngine,
    /// webrtc-vad aggressiveness, 0 (quality) to 3 (very aggressive).
    pub webrtc_mode: u8,
    /// Speech probability above which speech starts.
    pub start_threshold: f32,
    /// Speech probability below which silence is counted towards the end.
    pub end_threshold: f32,
    /// Threads running Silero (each owns one model session).
    pub silero_threads: usize,
    /// Most conversations scored in one Silero call.
    pub max_batch: usize,
    /// Voiced audio needed before `vad.speech_started`.
    pub min_speech_ms: u32,
    /// Unvoiced audio needed before `vad.speech_stopped`.
    pub min_silence_ms: u32,
    /// Audio kept before the detected start and after the end of a segment.
    pub pad_ms: u32,
    /// How a turn ends: `smart` asks the Smart Turn model early in each pause whether
    /// the user has finished; `silence` waits for `min_silence_ms` of silence.
    pub turn: TurnMode,
    /// Pause (ms) after which Smart Turn is asked.
    pub turn_check_after_ms: u32,
    /// Smart Turn probability at or above which the turn is complete.
    pub turn_threshold: f32,
    /// Longest pause inside a turn Smart Turn called incomplete, and longest wait for
    /// its verdict; a pause no verdict can come for ends after `min_silence_ms`.
    pub turn_max_silence_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnMode {
    /// Smart Turn v3.2 decides at each pause (semantic end of turn).
    Smart,
    /// A fixed silence ends the turn.
    Silence,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            engine: VadEngine::Silero,
            webrtc_mode: 2,
            start_threshold: 0.5,
            end_threshold: 0.35,
            silero_threads: 2,
            max_batch: 64,
            min_speech_ms: 100,
            min_silence_ms: 400,
            // 300 rather than 200: Moonshine misheard 8 kHz speech cut with 200 ms.
            pad_ms: 300,
            turn: TurnMode::Smart,
            turn_check_after_ms: 150,
            turn_threshold: 0.5,
            turn_max_silence_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SttConfig {
    /// Transcribe speech segments (Moonshine base-en).
    pub enabled: bool,
    /// Threads running Moonshine's encoder (each owns an ONNX Runtime session); the
    /// decoder is one more thread, batching every conversation's segments.
    pub threads: usize,
    /// Segments the decoder advances together in one pass (continuous batching).
    pub max_batch: usize,
    /// ONNX Runtime threads inside one Moonshine encoder call: more gives one conversation
    /// its transcript sooner; `threads` spreads many conversations instead.
    pub intra_threads: usize,
    /// Pause (ms) after which a draft of the segment is transcribed speculatively, so the
    /// transcript is mostly done when `vad.min_silence_ms` confirms the end; 0: off.
    pub draft_after_ms: u32,
    /// While speech goes on, the segment so far is transcribed this often (when the
    /// recogniser has room) to guide the final decode; 0: off.
    pub partial_every_ms: u32,
}

impl Default for SttConfig {
    fn default() -> Self {
        SttConfig {
            enabled: true,
            threads: 1,
            max_batch: 8,
            intra_threads: 1,
            draft_after_ms: 100,
            partial_every_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmBackendKind {
    /// SmolLM2-135M-Instruct in-process (candle), offline.
    Embedded,
    /// Any OpenAI-compatible `/v1/chat/completions` server.
    Openai,
    /// No replies: transcripts only.
    None,
}

/// Where conversation histories live (`llm.history_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStoreKind {
    /// In this node's memory: a reconnect to another node starts afresh.
    #[default]
    Memory,
    /// In memory and in Redis (`cluster.redis_url`), so any node can resume it.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    pub backend: LlmBackendKind,
    /// OpenAI-compatible base URL (ending in `/v1`).
    pub base_url: String,
    pub model: String,
    /// Bearer key for the OpenAI backend; prefer `HEARKEN__LLM__API_KEY` to a file.
    pub api_key: String,
    pub system_prompt: String,
    /// Longest reply, in tokens.
    pub max_tokens: u32,
    /// Threads running the embedded model (each holds its own copy, ~100 MB).
    pub threads: usize,
    pub connect_timeout_ms: u64,
    /// Longest wait for the next streamed chunk.
    pub read_timeout_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe may pass.
    pub breaker_cooldown_ms: u64,
    /// Conversation history is kept this long after its last use.
    pub history_ttl_ms: u64,
    /// Messages kept per conversation (oldest dropped first).
    pub history_max_messages: usize,
    /// Fewest newest history messages in a prompt (the current one included).
    pub context_messages: usize,
    /// Most history messages in a prompt. Between the two bounds the prompt only grows
    /// (its start moves in jumps), so the embedded model, which keeps each
    /// conversation's attention state, reads only each turn's new tokens.
    pub context_max_messages: usize,
    /// Conversations kept (least recently used dropped first).
    pub history_max_conversations: usize,
    /// Attention state the embedded model keeps between turns, per LLM thread, in MiB
    /// (about 23 KiB per token for SmolLM2-135M, in half floats; superseded states and
    /// then the least recently used dropped first).
    pub kv_cache_mb: u32,
    /// Threads one forward pass of the embedded model is split over (candle's matrix
    /// pool, fixed at start). 2 answers a lone conversation ~80 ms sooner on a 2-core
    /// machine (first audio p50 579 instead of 662 ms); with four busy conversations 1
    /// is better (p50 2.5 s instead of 3.3 s), as the pool then waits for a core that
    /// recognition and synthesis hold.
    pub matmul_threads: usize,
    /// Most replies one LLM thread gives a token in one batched pass; it holds twice as
    /// many sequences (replies past this many wait a pass, fewest tokens first); more
    /// wait in the queue.
    pub max_batch: usize,
    /// Chunks of prompt (32 tokens each) one pass reads at most, one per reply waiting
    /// to start: a burst of turns is read in a few wider passes rather than one pass
    /// per turn, each of which pays for every generating reply's token again.
    pub prompt_chunks_per_pass: usize,
    /// Longest `llm.system_prompt` a client may set with `session.update`, in bytes.
    pub max_system_prompt_bytes: usize,
    /// Bytes of history (system prompt and messages) kept per conversation; the oldest
    /// messages go first.
    pub history_max_bytes: usize,
    /// Bytes of history kept for all conversations together; the least recently used
    /// conversations go first.
    pub history_total_bytes: usize,
    /// `redis` also keeps each conversation in Redis, so any node resumes it.
    pub history_store: HistoryStoreKind,
}

/// Spoken replies should be short: a listener waits for all of it.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful voice assistant. Reply in one or two short sentences.";

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            backend: LlmBackendKind::Embedded,
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: String::new(),
            api_key: String::new(),
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            max_tokens: 64,
            threads: 1,
            connect_timeout_ms: 2_000,
            read_timeout_ms: 15_000,
            breaker_failures: 3,
            breaker_cooldown_ms: 10_000,
            history_ttl_ms: 30 * 60 * 1000,
            history_max_messages: 40,
            context_messages: 3,
            context_max_messages: 21,
            history_max_conversations: 10_000,
            kv_cache_mb: 256,
            matmul_threads: 2,
            max_batch: 8,
            prompt_chunks_per_pass: 4,
            max_system_prompt_bytes: 4096,
            history_max_bytes: 32 * 1024,
            history_total_bytes: 64 * 1024 * 1024,
            history_store: HistoryStoreKind::Memory,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtsConfig {
    /// Speak replies (Piper en_US-joe-medium, phonemes from espeak-ng).
    pub enabled: bool,
    /// Threads running Piper (each owns a model session and shares the espeak-ng pool).
    pub threads: usize,
    /// More Piper threads that only take a reply's first piece (what a listener waits
    /// for), so it never queues behind other replies' later speech. Each holds its own
    /// voice (~100 MB); idle unless a first piece waits.
    pub urgent_threads: usize,
    /// Sentences of one conversation waiting for synthesis; more are dropped (counted).
    pub max_queued_sentences: usize,
    /// How far audio may run ahead of real time on the wire; also how much audio a
    /// barge-in can leave in the client's buffer.
    pub lead_ms: u64,
    /// A reply's first words are synthesised in pieces that end at any clause mark or
    /// after this many words, so the first audio does not wait for a whole sentence
    /// (0: whole sentences from the start).
    pub first_piece_words: usize,
    /// A reply's later pieces are synthesised just in time: the next one starts once
    /// the audio still to play falls under this. A reply cut off (barge-in) has not
    /// paid for speech nobody hears, and the CPU goes to replies whose listeners wait
    /// (0: synthesise every piece as soon as the one before is done).
    pub synthesis_ahead_ms: u64,
    /// When the audio still to play falls under this while the model is still writing
    /// the sentence, the whole words written so far (two at least) are synthesised as
    /// a piece of their own, so the audio does not run dry waiting for the sentence's
    /// end (0: wait for it).
    pub words_early_below_ms: u64,
}

impl Default for TtsConfig {
    fn default() -> Self {
        TtsConfig {
            enabled: true,
            threads: 1,
            urgent_threads: 0,
            max_queued_sentences: 64,
            lead_ms: 200,
            first_piece_words: 2,
            synthesis_ahead_ms: 2500,
            words_early_below_ms: 700,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderConfig {
    pub enabled: bool,
    pub dir: PathBuf,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            enabled: false,
            dir: PathBuf::from("recordings"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Threads decoding Opus, resampling and running webrtc-vad.
    pub dsp_threads: usize,
    /// Threads doing file I/O (recordings).
    pub io_threads: usize,
    /// Jobs a pool accepts before it reports `overloaded`.
    pub queue_depth: usize,
    /// Nice levels the speech-recognition and language-model threads run below the
    /// rest, so turn detection stays real time under overload (0: equal priority).
    pub model_nice: i32,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            dsp_threads: 2,
            io_threads: 1,
            queue_depth: 4096,
            model_nice: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    pub dir: PathBuf,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            dir: PathBuf::from("models"),
        }
    }
}

/// `GET /v1/realtime`, the OpenAI Realtime API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Largest WebSocket frame on `/v1/realtime`: events carry base64 audio, so it is
    /// larger than `session.max_frame_bytes`; bigger frames close the session (1009).
    pub max_event_bytes: usize,
    /// Most audio one `input_audio_buffer.append` (or one user message created with
    /// its audio) may carry, in ms; more is refused with an `error` event and the
    /// session goes on.
    pub max_append_ms: u64,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            max_event_bytes: 2 * 1024 * 1024,
            max_append_ms: 30_000,
        }
    }
}

/// Several nodes on one Redis (`cluster/`): lifecycle events on a channel and a stream,
/// one lease per conversation, heartbeats. Off while `redis_url` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT/DB`; empty keeps the node alone (no Redis at all).
    pub redis_url: String,
    /// This node's name; a random suffix per start makes the node id unique, so a
    /// restarted node is never mistaken for the one that died.
    pub node_name: String,
    /// Pub/sub channel, and capped stream of the same name, for lifecycle events.
    pub events_channel: String,
    /// Approximate cap of the events stream (`XADD MAXLEN ~`).
    pub stream_maxlen: u64,
    /// Prefix of every key and control channel hearken uses.
    pub key_prefix: String,
    /// Events held while Redis is unreachable; what overflows is counted as dropped.
    pub buffer_events: usize,
    /// Most events sent in one round trip.
    pub batch_events: usize,
    /// How often a node refreshes its heartbeat and looks for lost nodes.
    pub heartbeat_ms: u64,
    /// A node whose heartbeat is older than this is lost.
    pub node_ttl_ms: u64,
    /// Lifetime of a conversation lease in Redis; renewed every third of it.
    pub lease_ttl_ms: u64,
    /// Timeout of one Redis command or connection attempt.
    pub command_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            node_name: "hearken".into(),
            events_channel: "connection_events".into(),
            stream_maxlen: 100_000,
            key_prefix: "hearken".into(),
            buffer_events: 100_000,
            batch_events: 256,
            heartbeat_ms: 1000,
            node_ttl_ms: 3000,
            lease_ttl_ms: 15_000,
            command_timeout_ms: 1000,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        // Names end up inside keys and inside JSON built by Lua scripts: keep them plain.
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        };
        if !plain(&self.node_name) {
            return invalid("cluster.node_name", "1 to 64 of A-Z a-z 0-9 - _ . :");
        }
        if !plain(&self.key_prefix) {
            return invalid("cluster.key_prefix", "1 to 64 of A-Z a-z 0-9 - _ . :");
        }
        if !plain(&self.events_channel) {
            return invalid("cluster.events_channel", "1 to 64 of A-Z a-z 0-9 - _ . :");
        }
        if self.buffer_events == 0 || self.batch_events == 0 {
            return invalid(
                "cluster.buffer_events",
                "buffer_events and batch_events must be at least 1",
            );
        }
        if self.stream_maxlen == 0 {
            return invalid("cluster.stream_maxlen", "must be at least 1");
        }
        if self.heartbeat_ms < 10 || self.node_ttl_ms < 2 * self.heartbeat_ms {
            return invalid(
                "cluster.node_ttl_ms",
                "heartbeat_ms must be at least 10 and node_ttl_ms at least twice it",
            );
        }
        if self.lease_ttl_ms < 3 * self.command_timeout_ms || self.command_timeout_ms < 10 {
            return invalid(
                "cluster.lease_ttl_ms",
                "command_timeout_ms must be at least 10 and lease_ttl_ms at least 3 times it",
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Accept `debug.fail_child` events that make a child actor fail (tests only).
    pub fault_injection: bool,
}

impl Config {
    /// Defaults, then `file` (if given), then `HEARKEN__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(Env::prefixed("HEARKEN__").split("__"))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Parse a TOML string (tests and embedders), without the environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if self.server.max_sessions == 0 {
            return invalid("server.max_sessions", "must be at least 1");
        }
        if self.server.max_sessions_per_ip == 0 {
            return invalid("server.max_sessions_per_ip", "must be at least 1");
        }
        if self.server.events_keepalive_ms < 10 {
            return invalid("server.events_keepalive_ms", "must be at least 10");
        }
        if self.workers.queue_depth < self.server.max_sessions {
            return invalid(
                "workers.queue_depth",
                "must be at least server.max_sessions (one job per conversation per pool)",
            );
        }
        if self.session.idle_timeout_ms < 100 {
            return invalid("session.idle_timeout_ms", "must be at least 100");
        }
        if self.session.write_stall_ms < 100 {
            return invalid("session.write_stall_ms", "must be at least 100");
        }
        if self.session.register_timeout_ms < 100 {
            return invalid("session.register_timeout_ms", "must be at least 100");
        }
        let speed = self.session.max_audio_speed;
        if speed.is_nan() || speed < 1.0 {
            return invalid("session.max_audio_speed", "must be at least 1 (real time)");
        }
        if self.session.bad_audio_burst == 0 {
            return invalid("session.bad_audio_burst", "must be at least 1");
        }
        if self.session.audio_burst_ms < 1000 {
            return invalid("session.audio_burst_ms", "must be at least 1000");
        }
        if self.session.client_events_per_s == 0 || self.session.client_events_burst == 0 {
            return invalid(
                "session.client_events_per_s",
                "flood limits (client_events_per_s, client_events_burst) must be at least 1",
            );
        }
        if self.server.max_event_subscribers == 0 {
            return invalid("server.max_event_subscribers", "must be at least 1");
        }
        for (key, ms) in [
            (
                "server.request_head_timeout_ms",
                self.server.request_head_timeout_ms,
            ),
            ("server.keep_alive_ms", self.server.keep_alive_ms),
            (
                "server.client_disconnect_timeout_ms",
                self.server.client_disconnect_timeout_ms,
            ),
        ] {
            if ms == 0 {
                return invalid(key, "must be at least 1 (a zero would disable the timeout)");
            }
        }
        if self.llm.history_max_bytes < self.llm.max_system_prompt_bytes {
            return invalid(
                "llm.history_max_bytes",
                "must be at least llm.max_system_prompt_bytes",
            );
        }
        if self.llm.history_total_bytes < self.llm.history_max_bytes {
            return invalid(
                "llm.history_total_bytes",
                "must be at least llm.history_max_bytes",
            );
        }
        if self.session.max_frame_bytes < 320 {
            return invalid("session.max_frame_bytes", "must hold 10 ms of audio (320)");
        }
        self.cluster.validate()?;
        if self.llm.history_store == HistoryStoreKind::Redis && !self.cluster.enabled() {
            return invalid(
                "llm.history_store",
                "\"redis\" needs cluster.redis_url (the Redis the nodes share)",
            );
        }
        if self.realtime.max_append_ms < 20 {
            return invalid("realtime.max_append_ms", "must hold one 20 ms frame");
        }
        if self.realtime.max_event_bytes < 64 * 1024 {
            return invalid(
                "realtime.max_event_bytes",
                "must be at least 65536 (appends of ordinary size must fit)",
            );
        }
        if self.stt.intra_threads == 0 {
            return invalid("stt.intra_threads", "must be at least 1");
        }
        let smart = self.vad.turn == TurnMode::Smart;
        if smart
            && (self.vad.turn_check_after_ms == 0
                || self.vad.turn_check_after_ms >= self.vad.min_silence_ms)
        {
            return invalid(
                "vad.turn_check_after_ms",
                "must be above 0 and below vad.min_silence_ms",
            );
        }
        if !(0.0..=1.0).contains(&self.vad.turn_threshold) {
            return invalid("vad.turn_threshold", "must be between 0 and 1");
        }
        if self.vad.turn_max_silence_ms < self.vad.min_silence_ms {
            return invalid(
                "vad.turn_max_silence_ms",
                "must be at least vad.min_silence_ms",
            );
        }
        if self.stt.draft_after_ms >= self.vad.min_silence_ms {
            return invalid(
                "stt.draft_after_ms",
                "must be below vad.min_silence_ms (or 0 for no drafts)",
            );
        }
        if self.session.audio_batch_ms > 500 {
            return invalid(
                "session.audio_batch_ms",
                "must be at most 500 (it delays VAD)",
            );
        }
        if self.session.audio_queue_frames == 0 {
            return invalid("session.audio_queue_frames", "must be at least 1");
        }
        if self.vad.webrtc_mode > 3 {
            return invalid("vad.webrtc_mode", "must be 0, 1, 2 or 3");
        }
        if !(0.0..=1.0).contains(&self.vad.start_threshold)
            || !(0.0..=1.0).contains(&self.vad.end_threshold)
            || self.vad.end_threshold > self.vad.start_threshold
        {
            return invalid(
                "vad.end_threshold",
                "thresholds must lie in 0..=1 with end_threshold <= start_threshold",
            );
        }
        if self.vad.silero_threads == 0 || self.vad.max_batch == 0 {
            return invalid(
                "vad.silero_threads",
                "Silero needs a thread and a batch of at least 1",
            );
        }
        if self.llm.threads == 0
            || self.llm.max_tokens == 0
            || self.llm.max_batch == 0
            || self.llm.prompt_chunks_per_pass == 0
        {
            return invalid(
                "llm.threads",
                "threads, max_tokens, max_batch and prompt_chunks_per_pass must be at least 1",
            );
        }
        if self.llm.history_max_messages == 0 || self.llm.history_max_conversations == 0 {
            return invalid(
                "llm.history_max_messages",
                "history bounds must be at least 1",
            );
        }
        if self.llm.context_messages == 0 {
            return invalid(
                "llm.context_messages",
                "must be at least 1 (the user's message)",
            );
        }
        if self.llm.context_max_messages < self.llm.context_messages {
            return invalid(
                "llm.context_max_messages",
                "must be at least llm.context_messages",
            );
        }
        if self.llm.backend == LlmBackendKind::Openai && !self.llm.base_url.starts_with("http") {
            return invalid("llm.base_url", "must be an http(s) URL");
        }
        if self.tts.threads == 0 || self.tts.max_queued_sentences == 0 {
            return invalid(
                "tts.threads",
                "threads and max_queued_sentences must be at least 1",
            );
        }
        if self.stt.threads == 0 || self.stt.max_batch == 0 {
            return invalid("stt.threads", "threads and max_batch must be at least 1");
        }
        if self.workers.dsp_threads == 0 || self.workers.io_threads == 0 {
            return invalid("workers.dsp_threads", "pools need at least one thread");
        }
        if self.workers.queue_depth == 0 {
            return invalid("workers.queue_depth", "must be at least 1");
        }
        if self.auth.tokens.iter().any(|t| t.is_empty()) {
            return invalid("auth.tokens", "tokens must not be empty strings");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_file_parses() {
        let text = include_str!("../config/default.toml");
        let config = Config::from_toml(text).expect("config/default.toml must parse");
        assert_eq!(config.server.port, 8080);
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = Config::from_toml("[server]\nport = \"eighty\"").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
        let err = Config::from_toml("[vad]\nwebrtc_mode = 7").unwrap_err();
        assert!(err.to_string().contains("vad.webrtc_mode"), "{err}");
    }

    #[test]
    fn hardening_limits_are_validated_by_name() {
        let err = Config::from_toml("[session]\nwrite_stall_ms = 0").unwrap_err();
        assert!(err.to_string().contains("session.write_stall_ms"), "{err}");
        let err = Config::from_toml("[session]\nclient_events_burst = 0").unwrap_err();
        assert!(
            err.to_string().contains("session.client_events_per_s"),
            "{err}"
        );
        let err = Config::from_toml("[server]\nkeep_alive_ms = 0").unwrap_err();
        assert!(err.to_string().contains("server.keep_alive_ms"), "{err}");
        let err = Config::from_toml("[llm]\nhistory_store = \"redis\"").unwrap_err();
        assert!(err.to_string().contains("llm.history_store"), "{err}");
        assert!(err.to_string().contains("cluster.redis_url"), "{err}");
        let text =
            "[llm]\nhistory_store = \"redis\"\n[cluster]\nredis_url = \"redis://127.0.0.1/0\"";
        assert!(Config::from_toml(text).is_ok());
        let err = Config::from_toml("[llm]\nhistory_total_bytes = 1").unwrap_err();
        assert!(err.to_string().contains("llm.history_total_bytes"), "{err}");
    }

    #[test]
    fn cluster_keys_are_validated_by_name() {
        assert!(!Config::default().cluster.enabled(), "off by default");
        let err = Config::from_toml("[cluster]\nnode_name = \"a b\"").unwrap_err();
        assert!(err.to_string().contains("cluster.node_name"), "{err}");
        let err = Config::from_toml("[cluster]\nevents_channel = \"x\\\"y\"").unwrap_err();
        assert!(err.to_string().contains("cluster.events_channel"), "{err}");
        let err =
            Config::from_toml("[cluster]\nheartbeat_ms = 1000\nnode_ttl_ms = 1500").unwrap_err();
        assert!(err.to_string().contains("cluster.node_ttl_ms"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = Config::from_toml("[session]\nidle_timeout = 5").unwrap_err();
        assert!(err.to_string().contains("idle_timeout"), "{err}");
    }
}
