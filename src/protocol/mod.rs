//! Wire formats. Each protocol is a translator ([`wire::Wire`]) between its frames and
//! the pipeline's own vocabulary ([`pipeline`]): the native protocol (`/v1/ws`) and the
//! OpenAI Realtime API (`/v1/realtime`). Each is typed once and parsed in one place;
//! actors only ever see the pipeline's commands and events.

pub mod native;
pub mod native_wire;
pub mod pipeline;
pub mod realtime;
pub mod standing;
pub mod wire;

pub use native::{
    AudioCodec, AudioFormat, ClientEvent, ErrorCode, ParseError, ServerEvent, SessionParams,
    SessionQuery, TurnLatency,
};
pub use pipeline::{Command, PipelineEvent};
pub use standing::Standing;
pub use wire::{Action, Fault, Outbox, SessionStart, Wire};
