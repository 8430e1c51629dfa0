//! The conversation store: each conversation's messages, kept beyond its session so a
//! client that reconnects with the same `conversation_id` resumes where it left off.
//!
//! Bounded three ways: a conversation untouched for `ttl` is removed by the periodic
//! sweep (and treated as absent before that), each keeps at most `max_messages` turns
//! (the oldest go first), and the store holds at most `max_conversations` (the least
//! recently used goes first). One `std` mutex guards the map: every operation is a short
//! map update, never held across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::chat::ChatMessage;

struct Entry {
    system_prompt: Option<String>,
    messages: VecDeque<ChatMessage>,
    touched: Instant,
}

/// How many of a conversation's `total` messages to leave out of its prompt, so the
/// prompt holds at least `min` and at most `max` of the newest, and its start only
/// moves in jumps of `max - min`: between jumps each prompt extends the last one, so
/// the model's kept attention state covers all but the new messages.
pub fn context_skip(total: usize, min: usize, max: usize) -> usize {
    let max = max.max(min);
    if total <= max {
        return 0;
    }
    let step = (max - min).max(1);
    (total - max).div_ceil(step) * step
}

pub struct ConversationStore {
    entries: Mutex<HashMap<Uuid, Entry>>,
    ttl: Duration,
    max_messages: usize,
    max_conversations: usize,
}

impl ConversationStore {
    pub fn new(ttl: Duration, max_messages: usize, max_conversations: usize) -> Self {
        ConversationStore {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max_messages,
            max_conversations,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Uuid, Entry>) -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut entries)
    }

    fn live(&self, entry: &Entry, now: Instant) -> bool {
        now.duration_since(entry.touched) < self.ttl
    }

    /// Whether the store holds an unexpired conversation with this id.
    pub fn contains(&self, id: Uuid) -> bool {
        let now = Instant::now();
        self.with(|entries| entries.get(&id).is_some_and(|e| self.live(e, now)))
    }

    /// Append one message, creating the conversation if needed.
    pub fn push(&self, id: Uuid, message: ChatMessage) {
        self.update(id, |entry| {
            entry.messages.push_back(message);
        });
    }

    /// Replace the conversation's system prompt (from `session.update`).
    pub fn set_system_prompt(&self, id: Uuid, prompt: String) {
        self.update(id, |entry| entry.system_prompt = Some(prompt));
    }

    fn update(&self, id: Uuid, change: impl FnOnce(&mut Entry)) {
        let now = Instant::now();
        let (max_messages, max_conversations) = (self.max_messages, self.max_conversations);
        self.with(|entries| {
            if let Some(entry) = entries.get(&id) {
                if !self.live(entry, now) {
                    entries.remove(&id);
                }
            }
            if !entries.contains_key(&id) && entries.len() >= max_conversations {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.touched)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
            let entry = entries.entry(id).or_insert_with(|| Entry {
                system_prompt: None,
                messages: VecDeque::new(),
                touched: now,
            });
            change(entry);
            while entry.messages.len() > max_messages {
                entry.messages.pop_front();
            }
            entry.touched = now;
        });
    }

    /// The messages to send to the model: the system prompt, then the newest stored
    /// messages as [`context_skip`] picks them. `pending` messages not stored yet (a
    /// speculative turn's words) will follow and count toward the window.
    pub fn transcript(
        &self,
        id: Uuid,
        default_system: &str,
        min_recent: usize,
        max_recent: usize,
        pending: usize,
    ) -> Vec<ChatMessage> {
        let now = Instant::now();
        self.with(|entries| {
            let entry = entries.get(&id).filter(|e| self.live(e, now));
            let system = entry
                .and_then(|e| e.system_prompt.clone())
                .unwrap_or_else(|| default_system.to_string());
            let mut messages = vec![ChatMessage::system(system)];
            if let Some(entry) = entry {
                let total = entry.messages.len() + pending;
                let skip = context_skip(total, min_recent, max_recent).min(entry.messages.len());
                messages.extend(entry.messages.iter().skip(skip).cloned());
            }
            messages
        })
    }

    /// Remove every expired conversation; returns how many went.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.with(|entries| {
            let before = entries.len();
            entries.retain(|_, e| now.duration_since(e.touched) < self.ttl);
            before - entries.len()
        })
    }

    pub fn len(&self) -> usize {
        self.with(|entries| entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_kept_in_order_and_bounded() {
        let store = ConversationStore::new(Duration::from_secs(60), 3, 10);
        let id = Uuid::new_v4();
        assert!(!store.contains(id));
        for i in 0..5 {
            store.push(id, ChatMessage::user(format!("turn {i}")));
        }
        let messages = store.transcript(id, "be brief", 40, 40, 0);
        assert_eq!(messages[0], ChatMessage::system("be brief"));
        let turns: Vec<&str> = messages[1..].iter().map(|m| m.content.as_str()).collect();
        assert_eq!(turns, ["turn 2", "turn 3", "turn 4"]);
        let recent = store.transcript(id, "be brief", 2, 2, 0);
        let turns: Vec<&str> = recent[1..].iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            turns,
            ["turn 3", "turn 4"],
            "the prompt takes the newest turns"
        );
        store.set_system_prompt(id, "be a pirate".into());
        assert_eq!(
            store.transcript(id, "be brief", 40, 40, 0)[0].content,
            "be a pirate"
        );
    }

    #[test]
    fn the_context_window_grows_then_jumps() {
        let kept: Vec<usize> = (1..=16).map(|n| n - context_skip(n, 3, 9)).collect();
        assert_eq!(kept, [1, 2, 3, 4, 5, 6, 7, 8, 9, 4, 5, 6, 7, 8, 9, 4]);
        let skips: Vec<usize> = (1..=16).map(|n| context_skip(n, 3, 9)).collect();
        assert!(
            skips.windows(2).all(|w| w[0] <= w[1]),
            "the start never moves back"
        );
        assert_eq!(context_skip(5, 3, 3), 2, "min == max keeps exactly min");
    }

    #[test]
    fn a_pending_message_counts_toward_the_window() {
        let store = ConversationStore::new(Duration::from_secs(60), 40, 10);
        let id = Uuid::new_v4();
        for i in 0..9 {
            store.push(id, ChatMessage::user(format!("turn {i}")));
        }
        assert_eq!(store.transcript(id, "s", 3, 9, 0).len(), 1 + 9);
        // With one more message to come, the window jumps: 10 - 6 = 4 kept, 3 stored.
        assert_eq!(store.transcript(id, "s", 3, 9, 1).len(), 1 + 3);
    }

    #[test]
    fn the_sweep_removes_only_expired_conversations() {
        let store = ConversationStore::new(Duration::from_millis(50), 10, 10);
        let old = Uuid::new_v4();
        store.push(old, ChatMessage::user("hello"));
        std::thread::sleep(Duration::from_millis(80));
        let fresh = Uuid::new_v4();
        store.push(fresh, ChatMessage::user("hi"));
        assert!(!store.contains(old), "expired conversations read as absent");
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.len(), 1);
        assert!(store.contains(fresh));
    }

    #[test]
    fn the_least_recently_used_conversation_makes_room() {
        let store = ConversationStore::new(Duration::from_secs(60), 10, 2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        store.push(a, ChatMessage::user("a"));
        store.push(b, ChatMessage::user("b"));
        store.push(a, ChatMessage::user("a again"));
        store.push(c, ChatMessage::user("c"));
        assert!(store.contains(a) && store.contains(c) && !store.contains(b));
    }
}
