//! One conversation of the store as a value: its system prompt and items, and when it
//! was last written. `llm.history_store = "redis"` keeps this in Redis (one JSON string
//! per conversation), so a node that did not hold the conversation can resume it.
//!
//! `written_ms` orders copies of one conversation: the store raises it on every change
//! (wall-clock milliseconds, and always above the previous value), and a node takes a
//! copy from Redis only if it is newer than its own. Wall clock rather than a counter,
//! so a conversation that another node started afresh (it could not read Redis) and
//! wrote later still wins over an old copy; nodes' clocks need only be closer than the
//! time between two turns.

use serde::{Deserialize, Serialize};

use super::chat::Role;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotItem {
    pub id: String,
    pub role: Role,
    pub text: String,
    /// Spoken (user audio, or a spoken reply).
    #[serde(default)]
    pub audio: bool,
}

/// A conversation's history and settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the conversation was last changed (Unix ms, strictly increasing per change).
    pub written_ms: u64,
    /// Set with `session.update`; `None` uses `llm.system_prompt`.
    pub system_prompt: Option<String>,
    pub items: Vec<SnapshotItem>,
}

#[derive(Debug, thiserror::Error)]
#[error("stored conversation is not valid JSON: {0}")]
pub struct SnapshotError(#[from] serde_json::Error);

impl Snapshot {
    pub fn to_json(&self) -> String {
        // Strings, bools and numbers only: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(json: &str) -> Result<Snapshot, SnapshotError> {
        Ok(serde_json::from_str(json)?)
    }
}

/// The next `written_ms` after `previous`: now, or one more than `previous` if the
/// clock has not moved on (or went back).
pub fn next_written_ms(previous: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.max(previous + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_survives_json() {
        let snapshot = Snapshot {
            written_ms: 42,
            system_prompt: Some("be \"brief\"".into()),
            items: vec![SnapshotItem {
                id: "item_1".into(),
                role: Role::Assistant,
                text: "héllo\n".into(),
                audio: true,
            }],
        };
        let back = Snapshot::from_json(&snapshot.to_json()).expect("parses");
        assert_eq!(back, snapshot);
        assert!(Snapshot::from_json("{\"items\":3}").is_err());
    }

    #[test]
    fn written_ms_always_moves_forward() {
        let far = u64::MAX / 2;
        assert_eq!(next_written_ms(far), far + 1);
        let now = next_written_ms(0);
        assert!(now > 1_600_000_000_000, "wall-clock ms: {now}");
    }
}
