//! The conversation tree. One file per actor, named by its role; messages that cross
//! actors live in `messages.rs`, supervision plumbing in `child.rs`.
//!
//! ```text
//! SessionActor (transport) ──owns──► ConversationActor (supervisor)
//!                                     ├── VadActor      decode, resample, VAD, segments
//!                                     ├── SttActor      segments → transcripts
//!                                     ├── LlmActor      transcripts → replies
//!                                     ├── TtsActor      replies → audio
//!                                     └── RecorderActor input audio → WAV (optional)
//! ```

pub mod child;
pub mod conversation;
pub mod llm;
pub mod messages;
pub mod recorder;
pub mod session;
pub mod stt;
pub mod throttle;
pub mod tts;
pub mod vad;
pub mod write_stall;

pub use conversation::ConversationActor;
pub use session::SessionActor;
