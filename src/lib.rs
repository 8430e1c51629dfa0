//! # hearken
//!
//! A single-process, actor-based real-time voice server. A client streams microphone
//! audio over a WebSocket; each session gets one supervised conversation tree (VAD, STT,
//! LLM, TTS and an optional recorder); every way a session can end runs one teardown
//! that leaves nothing behind and publishes one `connection_disconnected` event.
//!
//! # Layout
//! - [`server`]: binds, runs and drains a server; [`http`]: its routes.
//! - [`registry`]: the live-conversation map and lifecycle event broadcast.
//! - [`cluster`]: several nodes on one Redis: lifecycle events on a channel and a
//!   stream, one lease per conversation, heartbeats and lost-node reports.
//! - [`history_store`]: conversation histories in memory, or also in Redis.
//! - [`actors`]: the session transport, the conversation supervisor and its children.
//! - [`audio`]: PCM, Opus, resampling, speech segmentation, WAV.
//! - [`kernels`]: hand-written matrix kernels whose rows never depend on their batch.
//! - [`workers`]: the thread pools that keep blocking work off actix arbiters.
//! - [`metrics`]: Prometheus metrics and the `Drop` guards behind every leak gauge.
//! - [`admission`]: session caps before upgrade; [`config`]: typed configuration;
//!   [`lifecycle`]: exit reasons and close codes; [`protocol`]: the wire formats.
//! - [`fuzzing`]: the fuzz targets' entry points (`fuzz/`, `tests/fuzz_corpus.rs`).
//! - [`heap`]: malloc's settings, made at start.

pub mod actors;
pub mod admission;
pub mod audio;
#[cfg(feature = "bench-client")]
pub mod bench;
pub mod cluster;
pub mod config;
pub mod fuzzing;
pub mod heap;
pub mod history_store;
pub mod http;
pub mod kernels;
pub mod lifecycle;
pub mod llm;
pub mod metrics;
pub mod models;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod services;
pub mod tts;
pub mod workers;

pub use config::Config;
pub use lifecycle::ExitReason;
pub use server::{DrainOutcome, Server};
