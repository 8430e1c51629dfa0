//! The conversation store: each conversation's messages, kept beyond its session so a
//! client that reconnects with the same `conversation_id` resumes where it left off.
//!
//! Bounded in count, time and bytes: a conversation untouched for `ttl` is removed by the
//! periodic sweep (and treated as absent before that); each keeps at most `max_messages`
//! turns and `max_bytes` of system prompt and messages (the oldest messages go first);
//! the store holds at most `max_conversations` and `total_bytes` (the least recently
//! used conversations go first). A client chooses what it says and its system prompt,
//! so without the byte bounds a client could make the server keep ~64 KiB per
//! conversation for the whole TTL.
//!
//! Each message is an item with an id (`protocol::pipeline::ItemId`): the Realtime API
//! retrieves, deletes, truncates and inserts items by id, and a client of either
//! protocol that resumes a conversation reads the same items.
//!
//! Conversations sit in a recency list (an index-linked list in a slab, oldest first),
//! so finding the least recently used one and the expired ones costs O(1) per entry
//! removed, never a scan of the store. One `std` mutex guards it: every operation is a
//! short update, never held across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use uuid::Uuid;

use super::chat::{ChatMessage, Role};
use super::snapshot::{next_written_ms, Snapshot, SnapshotItem};
use crate::protocol::pipeline::{new_item_id, Item, ItemRole};

/// Why an item operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("no item with id `{item_id}` in this conversation")]
    NotFound { item_id: String },
    #[error("an item with id `{item_id}` already exists")]
    Duplicate { item_id: String },
    #[error("item `{item_id}` is not an assistant message")]
    NotAssistant { item_id: String },
}

/// `previous` value that inserts an item at the start of the conversation.
pub const ROOT: &str = "root";

/// One stored message and its item id.
#[derive(Debug, Clone)]
struct Stored {
    id: String,
    message: ChatMessage,
    /// Spoken (user audio, or a spoken reply).
    audio: bool,
}

impl Stored {
    fn item(&self) -> Item {
        let role = match self.message.role {
            Role::System => ItemRole::System,
            Role::User => ItemRole::User,
            Role::Assistant => ItemRole::Assistant,
        };
        Item {
            id: self.id.clone(),
            role,
            text: self.message.content.clone(),
            audio: self.audio,
        }
    }
}

fn chat_message(item: &Item) -> ChatMessage {
    match item.role {
        ItemRole::System => ChatMessage::system(item.text.clone()),
        ItemRole::User => ChatMessage::user(item.text.clone()),
        ItemRole::Assistant => ChatMessage::assistant(item.text.clone()),
    }
}

struct Entry {
    id: Uuid,
    system_prompt: Option<String>,
    messages: VecDeque<Stored>,
    /// Bytes of the system prompt and message contents.
    bytes: usize,
    touched: Instant,
    /// When it last changed ([`Snapshot::written_ms`]): which of two copies is newer.
    written_ms: u64,
    /// Neighbours in the recency list (towards the oldest, towards the newest).
    older: Option<usize>,
    newer: Option<usize>,
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

/// The map, the recency list over a slab of entries, and the byte total.
#[derive(Default)]
struct Entries {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    index: HashMap<Uuid, usize>,
    oldest: Option<usize>,
    newest: Option<usize>,
    bytes: usize,
}

impl Entries {
    fn entry(&self, slot: usize) -> &Entry {
        self.slots[slot]
            .as_ref()
            .expect("linked slots are occupied")
    }

    fn entry_mut(&mut self, slot: usize) -> &mut Entry {
        self.slots[slot]
            .as_mut()
            .expect("linked slots are occupied")
    }

    fn get(&self, id: &Uuid) -> Option<&Entry> {
        self.index.get(id).map(|slot| self.entry(*slot))
    }

    fn unlink(&mut self, slot: usize) {
        let (older, newer) = {
            let entry = self.entry(slot);
            (entry.older, entry.newer)
        };
        match older {
            Some(o) => self.entry_mut(o).newer = newer,
            None => self.oldest = newer,
        }
        match newer {
            Some(n) => self.entry_mut(n).older = older,
            None => self.newest = older,
        }
    }

    fn link_newest(&mut self, slot: usize) {
        let previous = self.newest;
        {
            let entry = self.entry_mut(slot);
            entry.older = previous;
            entry.newer = None;
        }
        match previous {
            Some(p) => self.entry_mut(p).newer = Some(slot),
            None => self.oldest = Some(slot),
        }
        self.newest = Some(slot);
    }

    fn insert(&mut self, id: Uuid, now: Instant) -> usize {
        let entry = Entry {
            id,
            system_prompt: None,
            messages: VecDeque::new(),
            bytes: 0,
            touched: now,
            written_ms: 0,
            older: None,
            newer: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        self.index.insert(id, slot);
        self.link_newest(slot);
        slot
    }

    fn remove(&mut self, slot: usize) {
        self.unlink(slot);
        if let Some(entry) = self.slots[slot].take() {
            self.index.remove(&entry.id);
            self.bytes -= entry.bytes;
        }
        self.free.push(slot);
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// Bytes a message holds in the store.
fn message_bytes(stored: &Stored) -> usize {
    stored.message.content.len()
}

pub struct ConversationStore {
    entries: Mutex<Entries>,
    ttl: Duration,
    max_messages: usize,
    max_conversations: usize,
    max_bytes: usize,
    total_bytes: usize,
    evictions: Option<IntCounter>,
}

impl ConversationStore {
    /// A store bounded in time and count; without byte bounds until
    /// [`ConversationStore::with_byte_limits`].
    pub fn new(ttl: Duration, max_messages: usize, max_conversations: usize) -> Self {
        ConversationStore {
            entries: Mutex::new(Entries::default()),
            ttl,
            max_messages,
            max_conversations,
            max_bytes: usize::MAX,
            total_bytes: usize::MAX,
            evictions: None,
        }
    }

    /// Keep at most `max_bytes` per conversation and `total_bytes` in all.
    pub fn with_byte_limits(mut self, max_bytes: usize, total_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self.total_bytes = total_bytes.max(max_bytes);
        self
    }

    /// Count conversations evicted to stay within the bounds (not expired ones).
    pub fn with_eviction_counter(mut self, evictions: IntCounter) -> Self {
        self.evictions = Some(evictions);
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut Entries) -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut entries)
    }

    fn live(&self, entry: &Entry, now: Instant) -> bool {
        now.duration_since(entry.touched) < self.ttl
    }

    fn evicted(&self) {
        if let Some(counter) = &self.evictions {
            counter.inc();
        }
    }

    /// Whether the store holds an unexpired conversation with this id.
    pub fn contains(&self, id: Uuid) -> bool {
        let now = Instant::now();
        self.with(|entries| entries.get(&id).is_some_and(|e| self.live(e, now)))
    }

    /// Append one message under a fresh item id, creating the conversation if needed.
    pub fn push(&self, id: Uuid, message: ChatMessage) {
        let stored = Stored {
            id: new_item_id(),
            message,
            audio: false,
        };
        self.update(id, |entry| {
            entry.bytes += message_bytes(&stored);
            entry.messages.push_back(stored);
            Ok(())
        })
        .unwrap_or_default();
    }

    /// Add `item` after the item `previous` ([`ROOT`]: first; `None`: last).
    pub fn insert(
        &self,
        id: Uuid,
        item: &Item,
        previous: Option<&str>,
    ) -> Result<(), HistoryError> {
        let stored = Stored {
            id: item.id.clone(),
            message: chat_message(item),
            audio: item.audio,
        };
        self.update(id, |entry| {
            if entry.messages.iter().any(|m| m.id == stored.id) {
                return Err(HistoryError::Duplicate {
                    item_id: stored.id.clone(),
                });
            }
            let at = match previous {
                None => entry.messages.len(),
                Some(ROOT) => 0,
                Some(previous) => {
                    let found = entry.messages.iter().position(|m| m.id == previous);
                    found.ok_or_else(|| HistoryError::NotFound {
                        item_id: previous.to_string(),
                    })? + 1
                }
            };
            entry.bytes += message_bytes(&stored);
            entry.messages.insert(at, stored);
            Ok(())
        })
    }

    /// The item `item_id` of a live conversation.
    pub fn item(&self, id: Uuid, item_id: &str) -> Result<Item, HistoryError> {
        let now = Instant::now();
        self.with(|entries| {
            let entry = entries.get(&id).filter(|e| self.live(e, now));
            entry
                .and_then(|e| e.messages.iter().find(|m| m.id == item_id))
                .map(Stored::item)
                .ok_or_else(|| HistoryError::NotFound {
                    item_id: item_id.to_string(),
                })
        })
    }

    pub fn delete(&self, id: Uuid, item_id: &str) -> Result<(), HistoryError> {
        self.update(id, |entry| {
            let at = entry.messages.iter().position(|m| m.id == item_id);
            let at = at.ok_or_else(|| HistoryError::NotFound {
                item_id: item_id.to_string(),
            })?;
            if let Some(gone) = entry.messages.remove(at) {
                entry.bytes -= message_bytes(&gone);
            }
            Ok(())
        })
    }

    /// Replace the text of the assistant item `item_id` (a reply cut where the
    /// listener stopped hearing it).
    pub fn rewrite_reply(&self, id: Uuid, item_id: &str, text: String) -> Result<(), HistoryError> {
        self.update(id, |entry| {
            let stored = entry.messages.iter_mut().find(|m| m.id == item_id);
            let stored = stored.ok_or_else(|| HistoryError::NotFound {
                item_id: item_id.to_string(),
            })?;
            if stored.message.role != Role::Assistant {
                return Err(HistoryError::NotAssistant {
                    item_id: item_id.to_string(),
                });
            }
            let before = stored.message.content.len();
            entry.bytes = entry.bytes - before + text.len();
            stored.message.content = text;
            Ok(())
        })
    }

    /// Replace the conversation's system prompt (from `session.update`). A prompt over
    /// the per-conversation byte bound is refused (false); callers check the tighter
    /// `llm.max_system_prompt_bytes` first.
    pub fn set_system_prompt(&self, id: Uuid, prompt: String) -> bool {
        if prompt.len() > self.max_bytes {
            return false;
        }
        self.update(id, |entry| {
            let old = entry.system_prompt.as_ref().map_or(0, String::len);
            entry.bytes = entry.bytes - old + prompt.len();
            entry.system_prompt = Some(prompt);
            Ok(())
        })
        .is_ok()
    }

    /// Apply `change` to the conversation (created if needed), then enforce the bounds.
    /// A change that fails leaves the conversation as it was.
    fn update(
        &self,
        id: Uuid,
        change: impl FnOnce(&mut Entry) -> Result<(), HistoryError>,
    ) -> Result<(), HistoryError> {
        self.with(|entries| self.apply(entries, id, None, change))
    }

    /// [`ConversationStore::update`] under the lock. `written_ms`: the change's time
    /// (a restored copy keeps its own), else now.
    fn apply(
        &self,
        entries: &mut Entries,
        id: Uuid,
        written_ms: Option<u64>,
        change: impl FnOnce(&mut Entry) -> Result<(), HistoryError>,
    ) -> Result<(), HistoryError> {
        let now = Instant::now();
        let existing = entries.index.get(&id).copied();
        if let Some(slot) = existing {
            if !self.live(entries.entry(slot), now) {
                entries.remove(slot);
            }
        }
        let slot = match entries.index.get(&id).copied() {
            Some(slot) => slot,
            None => {
                while entries.len() >= self.max_conversations {
                    let Some(oldest) = entries.oldest else { break };
                    entries.remove(oldest);
                    self.evicted();
                }
                entries.insert(id, now)
            }
        };
        let before = entries.entry(slot).bytes;
        let entry = entries.entry_mut(slot);
        change(entry)?;
        while entry.messages.len() > self.max_messages
            || (entry.bytes > self.max_bytes && !entry.messages.is_empty())
        {
            if let Some(dropped) = entry.messages.pop_front() {
                entry.bytes -= message_bytes(&dropped);
            }
        }
        entry.touched = now;
        entry.written_ms = written_ms.unwrap_or_else(|| next_written_ms(entry.written_ms));
        let after = entry.bytes;
        entries.bytes = entries.bytes - before + after;
        entries.unlink(slot);
        entries.link_newest(slot);
        // Make room in all: the least recently used others go first.
        while entries.bytes > self.total_bytes {
            match entries.oldest {
                Some(oldest) if oldest != slot => {
                    entries.remove(oldest);
                    self.evicted();
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// The live conversation as a value (for a copy in Redis).
    pub fn snapshot(&self, id: Uuid) -> Option<Snapshot> {
        let now = Instant::now();
        self.with(|entries| {
            let entry = entries.get(&id).filter(|e| self.live(e, now))?;
            let items = entry.messages.iter().map(|stored| SnapshotItem {
                id: stored.id.clone(),
                role: stored.message.role,
                text: stored.message.content.clone(),
                audio: stored.audio,
            });
            Some(Snapshot {
                written_ms: entry.written_ms,
                system_prompt: entry.system_prompt.clone(),
                items: items.collect(),
            })
        })
    }

    /// Replace the conversation with `snapshot` if that is newer than what this store
    /// holds (or it holds nothing live); the store's bounds apply to it as to any
    /// change. True when it was taken.
    pub fn restore(&self, id: Uuid, snapshot: Snapshot) -> bool {
        let now = Instant::now();
        self.with(|entries| {
            let held = entries.get(&id).filter(|e| self.live(e, now));
            if held.is_some_and(|e| e.written_ms >= snapshot.written_ms) {
                return false;
            }
            let written_ms = snapshot.written_ms;
            let restored = self.apply(entries, id, Some(written_ms), |entry| {
                let prompt = snapshot.system_prompt.filter(|p| p.len() <= self.max_bytes);
                let messages: VecDeque<Stored> = snapshot
                    .items
                    .into_iter()
                    .map(|item| Stored {
                        id: item.id,
                        message: ChatMessage {
                            role: item.role,
                            content: item.text,
                        },
                        audio: item.audio,
                    })
                    .collect();
                let prompt_bytes = prompt.as_ref().map_or(0, String::len);
                entry.bytes = prompt_bytes + messages.iter().map(message_bytes).sum::<usize>();
                entry.system_prompt = prompt;
                entry.messages = messages;
                Ok(())
            });
            restored.is_ok()
        })
    }

    /// Messages stored for a live conversation.
    pub fn items(&self, id: Uuid) -> usize {
        let now = Instant::now();
        self.with(|entries| {
            let entry = entries.get(&id).filter(|e| self.live(e, now));
            entry.map_or(0, |e| e.messages.len())
        })
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
                let kept = entry.messages.iter().skip(skip);
                messages.extend(kept.map(|stored| stored.message.clone()));
            }
            messages
        })
    }

    /// Remove every expired conversation; returns how many went. The recency list is
    /// in order of last use, so this stops at the first live one.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.with(|entries| {
            let mut removed = 0;
            while let Some(oldest) = entries.oldest {
                if self.live(entries.entry(oldest), now) {
                    break;
                }
                entries.remove(oldest);
                removed += 1;
            }
            removed
        })
    }

    pub fn len(&self) -> usize {
        self.with(|entries| entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held for all conversations.
    pub fn bytes(&self) -> usize {
        self.with(|entries| entries.bytes)
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

    #[test]
    fn each_conversation_is_bounded_in_bytes() {
        let store =
            ConversationStore::new(Duration::from_secs(60), 100, 10).with_byte_limits(100, 1000);
        let id = Uuid::new_v4();
        assert!(store.set_system_prompt(id, "p".repeat(40)));
        for i in 0..10 {
            store.push(id, ChatMessage::user(format!("{i}").repeat(20)));
        }
        // 40 bytes of prompt leave room for three 20-byte messages: the newest.
        let kept = store.transcript(id, "default", 100, 100, 0);
        assert_eq!(kept.len(), 1 + 3);
        assert_eq!(kept[3].content, "9".repeat(20));
        assert_eq!(store.bytes(), 40 + 60);
        assert!(
            !store.set_system_prompt(id, "x".repeat(101)),
            "over the bound"
        );
        assert_eq!(store.bytes(), 100);
    }

    #[test]
    fn the_store_is_bounded_in_bytes_overall_least_recent_first() {
        let store =
            ConversationStore::new(Duration::from_secs(60), 100, 100).with_byte_limits(100, 250);
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        for id in &ids[..2] {
            store.push(*id, ChatMessage::user("a".repeat(100)));
        }
        store.push(ids[0], ChatMessage::user("")); // ids[0] is now the most recent
        store.push(ids[2], ChatMessage::user("c".repeat(100)));
        assert!(!store.contains(ids[1]), "the least recently used went");
        assert!(store.contains(ids[0]) && store.contains(ids[2]));
        assert_eq!(store.bytes(), 200);
        store.push(ids[3], ChatMessage::user("d".repeat(60)));
        assert!(!store.contains(ids[0]) && store.contains(ids[2]) && store.contains(ids[3]));
        assert_eq!(store.bytes(), 160);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn items_are_found_inserted_rewritten_and_deleted_by_id() {
        let store =
            ConversationStore::new(Duration::from_secs(60), 10, 10).with_byte_limits(1000, 10_000);
        let id = Uuid::new_v4();
        let item = |item_id: &str, role, text: &str| Item {
            id: item_id.into(),
            role,
            text: text.into(),
            audio: false,
        };
        store
            .insert(id, &item("a", ItemRole::User, "hello"), None)
            .unwrap();
        store
            .insert(id, &item("b", ItemRole::Assistant, "hi there"), None)
            .unwrap();
        store
            .insert(id, &item("c", ItemRole::System, "be kind"), Some(ROOT))
            .unwrap();
        store
            .insert(id, &item("d", ItemRole::User, "and?"), Some("a"))
            .unwrap();
        let order: Vec<String> = store.transcript(id, "s", 10, 10, 0)[1..]
            .iter()
            .map(|m| m.content.clone())
            .collect();
        assert_eq!(order, ["be kind", "hello", "and?", "hi there"]);
        assert_eq!(
            store.insert(id, &item("a", ItemRole::User, "again"), None),
            Err(HistoryError::Duplicate {
                item_id: "a".into()
            })
        );
        assert!(matches!(
            store.insert(id, &item("e", ItemRole::User, "x"), Some("zz")),
            Err(HistoryError::NotFound { .. })
        ));
        assert!(matches!(
            store.rewrite_reply(id, "a", "no".into()),
            Err(HistoryError::NotAssistant { .. })
        ));
        store.rewrite_reply(id, "b", "hi".into()).unwrap();
        assert_eq!(store.item(id, "b").unwrap().text, "hi");
        let bytes = store.bytes();
        store.delete(id, "d").unwrap();
        assert_eq!(store.bytes(), bytes - "and?".len());
        assert!(matches!(
            store.item(id, "d"),
            Err(HistoryError::NotFound { .. })
        ));
        assert!(matches!(
            store.delete(id, "d"),
            Err(HistoryError::NotFound { .. })
        ));
    }

    #[test]
    fn a_newer_snapshot_replaces_an_older_copy_within_the_bounds() {
        let store =
            ConversationStore::new(Duration::from_secs(60), 10, 10).with_byte_limits(100, 1000);
        let id = Uuid::new_v4();
        assert!(store.snapshot(id).is_none());
        store.set_system_prompt(id, "be a pirate".into());
        store.push(id, ChatMessage::user("ahoy"));
        let taken = store.snapshot(id).expect("live");
        assert_eq!(taken.items.len(), 1);
        assert_eq!(taken.system_prompt.as_deref(), Some("be a pirate"));

        // Another node's copy: restored as it was, within this store's bounds.
        let other =
            ConversationStore::new(Duration::from_secs(60), 10, 10).with_byte_limits(100, 1000);
        assert!(other.restore(id, taken.clone()));
        assert_eq!(other.snapshot(id), Some(taken.clone()));
        assert_eq!(other.bytes(), "be a pirate".len() + "ahoy".len());
        assert!(!other.restore(id, taken.clone()), "not newer: kept");
        other.push(id, ChatMessage::assistant("arr"));
        assert!(
            !other.restore(id, taken.clone()),
            "older than the copy here"
        );
        let newer = other.snapshot(id).expect("live");
        assert!(newer.written_ms > taken.written_ms);
        assert!(store.restore(id, newer));
        assert_eq!(store.items(id), 2);

        let mut big = store.snapshot(id).expect("live");
        big.written_ms += 1;
        big.items.extend((0..10).map(|i| SnapshotItem {
            id: format!("x{i}"),
            role: Role::User,
            text: "y".repeat(20),
            audio: false,
        }));
        assert!(store.restore(id, big));
        assert!(store.bytes() <= 100, "{} bytes", store.bytes());
        assert_eq!(
            store.transcript(id, "s", 100, 100, 0)[0].content,
            "be a pirate"
        );
    }

    #[test]
    fn slots_are_reused_and_the_list_stays_consistent() {
        let store = ConversationStore::new(Duration::from_secs(60), 10, 3);
        let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            store.push(*id, ChatMessage::user("x"));
            if i % 2 == 0 {
                store.push(ids[i / 2], ChatMessage::user("y"));
            }
        }
        assert_eq!(store.len(), 3);
        let slots = store.with(|e| e.slots.len());
        assert!(slots <= 4, "{slots} slots for 3 conversations");
        assert!(store.contains(ids[49]));
    }
}
