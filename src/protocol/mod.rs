//! Wire formats spoken over `/v1/ws`. The native protocol is typed once here and parsed in
//! one place; actors only ever see the typed events.

pub mod native;

pub use native::{
    AudioCodec, ClientEvent, ErrorCode, ParseError, ServerEvent, SessionParams, SessionQuery,
    TurnLatency,
};
