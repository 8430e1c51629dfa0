//! Realtime `error` events: what was wrong with a client event, typed once.
//!
//! Every error names its `type` (the client's fault, or the server's), a `code`, a
//! message, the offending field (`param`, a dotted path) where there is one, and the
//! `event_id` of the client event it answers.

use serde::Serialize;

use crate::protocol::wire::Fault;
use crate::protocol::ErrorCode;

/// Who is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    ServerError,
}

/// One rejected client event (or a problem the pipeline reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RealtimeError {
    #[serde(rename = "type")]
    pub kind: ErrorType,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub event_id: Option<String>,
    /// How the session counts it (not sent).
    #[serde(skip)]
    pub fault: Fault,
}

impl RealtimeError {
    /// The client's fault: `code`, `message`, counted as `fault`.
    pub fn invalid(fault: Fault, code: &'static str, message: impl Into<String>) -> Self {
        RealtimeError {
            kind: ErrorType::InvalidRequestError,
            code,
            message: message.into(),
            param: None,
            event_id: None,
            fault,
        }
    }

    /// A field with a value the session cannot use.
    pub fn value(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(Fault::InvalidEvent, "invalid_value", message).param(param)
    }

    /// An event or field hearken does not support (yet).
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(Fault::InvalidEvent, "unsupported", message).param(param)
    }

    /// An event that the session's state does not allow.
    pub fn state(code: &'static str, message: impl Into<String>) -> Self {
        Self::invalid(Fault::InvalidEvent, code, message)
    }

    /// A problem the pipeline reports (its own code; a server error unless it is the
    /// client's fault).
    pub fn pipeline(code: ErrorCode, message: String, event_id: Option<String>) -> Self {
        let kind = if code.is_client_fault() {
            ErrorType::InvalidRequestError
        } else {
            ErrorType::ServerError
        };
        RealtimeError {
            kind,
            code: code.as_str(),
            message,
            param: None,
            event_id,
            fault: Fault::InvalidEvent,
        }
    }

    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn answering(mut self, event_id: Option<String>) -> Self {
        self.event_id = event_id;
        self
    }
}
