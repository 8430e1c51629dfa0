//! Why a session ended, and how that cause shows on the wire.
//!
//! One `ExitReason` is decided per conversation (the first cause wins), logged once and
//! published once in its `connection_disconnected` event. The close code a client sees is
//! derived from the same value, so the event and the socket never disagree.

use serde::{Deserialize, Serialize};

/// WebSocket close codes used by hearken (RFC 6455 plus the private 4000 range).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    /// Server going away: shutdown.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket framing rules.
    pub const PROTOCOL: u16 = 1002;
    /// The client's audio cannot be decoded, again and again: the stream is corrupt.
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const SERVER_ERROR: u16 = 1011;
    /// The previous session of the conversation has not ended yet: reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// No activity (audio or a client event) within `session.idle_timeout_ms`.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// A newer connection took over this conversation.
    pub const SUPERSEDED: u16 = 4001;
}

/// The cause a conversation ended with, as published on the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Close frame from the client, dropped TCP, or an abandoned handshake.
    ClientDisconnect,
    /// A child failed, a panic was caught, or the client broke the protocol beyond repair.
    ServerError,
    /// No activity from the client within the idle timeout, or the client stopped
    /// reading: its output waited longer than `session.write_stall_ms`.
    Timeout,
    /// The server is shutting down (extension).
    ServerShutdown,
    /// The same conversation id connected again (extension).
    Superseded,
}

impl ExitReason {
    pub const ALL: [ExitReason; 5] = [
        ExitReason::ClientDisconnect,
        ExitReason::ServerError,
        ExitReason::Timeout,
        ExitReason::ServerShutdown,
        ExitReason::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::ClientDisconnect => "client_disconnect",
            ExitReason::ServerError => "server_error",
            ExitReason::Timeout => "timeout",
            ExitReason::ServerShutdown => "server_shutdown",
            ExitReason::Superseded => "superseded",
        }
    }

    /// The close code the server sends when it, not the client, ends the session.
    pub fn close_code(self) -> u16 {
        match self {
            ExitReason::ClientDisconnect => close_code::NORMAL,
            ExitReason::ServerError => close_code::SERVER_ERROR,
            ExitReason::Timeout => close_code::IDLE_TIMEOUT,
            ExitReason::ServerShutdown => close_code::GOING_AWAY,
            ExitReason::Superseded => close_code::SUPERSEDED,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch, for event timestamps.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_serialise_as_the_wire_names() {
        for reason in ExitReason::ALL {
            let json = serde_json::to_string(&reason).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }
}
