//! Attention state (the KV cache) kept between turns, so a turn reads only its new
//! tokens. The embedded model reads its whole prompt before the first token at about
//! 10 ms a token on this machine; a prompt holding the last exchange and the new
//! question took most of a second before any reply text existed. With the state of
//! the conversation so far kept, a turn reads only the new question.
//!
//! Each entry is a model state (`S`: candle's `ModelWeights`, whose layers hold the KV
//! tensors; cloning it shares them) with what it has read: whole messages, and
//! possibly the start of an open assistant reply ([`Covered`]). Entries match a new
//! prompt by its *messages*, not by re-encoding them: a reply's tokens as the model
//! produced them are often not the tokens its text encodes to (accented words, odd
//! spacing), and the state holds the former. A prompt continues from the entry that
//! covers the most of it: its owner's (a conversation keeps its two newest) or a
//! shared one (a system prompt, read once for every conversation that uses it).
//! Entries are bounded in bytes; an entry is only a cache, so losing it costs time,
//! never correctness. The cache belongs to one inference thread (no lock).
//!
//! Eviction takes a conversation's *superseded* entries first (those older than its
//! newest), then the least recently used. Turns of many conversations come round in
//! a cycle, which is plain LRU's worst case: with sixteen conversations of ~200
//! tokens, two entries each came to more than the default bound, and LRU evicted the
//! entry whose turn came next, again and again (a third of all prompts were read
//! from the start, ~130 tokens each; docs/benchmarks.md, twelfth session). A
//! conversation's older entry is rarely what its next turn continues: the newest
//! covers the same turns and more.
//!
//! A conversation may also hold one entry that has read the start of what the user is
//! still saying ([`Open::User`], from a partial transcript): the reply to the finished
//! turn then reads only its last words. It is continued only by a message that starts
//! with the same text and where the tokenizer cuts the whole message there too, so the
//! state holds exactly the tokens the whole message encodes to.

use uuid::Uuid;

use super::chat::{splits_cleanly, ChatMessage, Role};

/// Whose an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// One conversation's state: its prompt and reply so far.
    Conversation(Uuid),
    /// A prefix any conversation may start from (a system prompt).
    Shared,
}

/// Shared entries kept at most (distinct system prompts in use).
const MAX_SHARED: usize = 4;

/// Entries kept per conversation: the state after its last prompt (the reply's
/// header read, nothing of the reply yet) and the state after its last reply. The
/// first still fits after a barge-in (the history then holds the reply's text and a
/// cut marker) and is what a discarded speculative reply must not displace.
const PER_CONVERSATION: usize = 2;

/// What a state has read: whole `messages`, then, if `open` is set, the header of one
/// more message and the start of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covered {
    pub messages: Vec<ChatMessage>,
    pub open: Option<Open>,
}

/// The message a state has begun reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// An assistant reply and that much of its text, as the model produced it.
    Reply(String),
    /// A user message and that much of its text, read from a partial transcript.
    User(String),
}

impl Covered {
    /// Whole `messages`, nothing more.
    pub fn closed(messages: Vec<ChatMessage>) -> Self {
        Covered {
            messages,
            open: None,
        }
    }

    fn is_open_user(&self) -> bool {
        matches!(self.open, Some(Open::User(_)))
    }
}

/// How a prompt goes on from a state that covers its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    /// Whole messages of the prompt the state has read.
    pub messages: usize,
    /// Bytes of the next (assistant) message's text it has read, after its header.
    pub open_bytes: Option<usize>,
}

impl Covered {
    /// Where `prompt` goes on from this state, if the state covers its start.
    fn continuation(&self, prompt: &[ChatMessage]) -> Option<Continuation> {
        let n = self.messages.len();
        if prompt.len() < n || prompt[..n] != self.messages[..] {
            return None;
        }
        let Some(open) = &self.open else {
            return Some(Continuation {
                messages: n,
                open_bytes: None,
            });
        };
        let next = prompt.get(n)?;
        let continued = match open {
            // An open reply is only continued by the same reply, as stored afterwards.
            Open::Reply(text) => next.role == Role::Assistant && next.content.starts_with(text),
            // The user's words so far, continued where the tokenizer cuts too.
            Open::User(text) => {
                next.role == Role::User
                    && next.content.starts_with(text)
                    && splits_cleanly(next, text.len())
            }
        };
        let read = match open {
            Open::Reply(text) | Open::User(text) => text.len(),
        };
        continued.then_some(Continuation {
            messages: n,
            open_bytes: Some(read),
        })
    }
}

struct Entry<S> {
    owner: Owner,
    covers: Covered,
    /// Tokens the state has read (its position), which is also its cost.
    tokens: usize,
    state: S,
    last_used: u64,
    /// When it was kept: an owner's older entries are superseded by its newest.
    inserted: u64,
}

/// What a lookup found: the state, how many tokens it has read, and where the prompt
/// goes on from it.
pub struct Hit<S> {
    pub state: S,
    pub tokens: usize,
    pub from: Continuation,
}

pub struct PrefixCache<S> {
    entries: Vec<Entry<S>>,
    capacity_bytes: usize,
    bytes_per_token: usize,
    clock: u64,
}

impl<S: Clone> PrefixCache<S> {
    /// A cache of at most `capacity_bytes` of state, each read token costing
    /// `bytes_per_token` (layers × 2 × KV heads × head size × 4 bytes).
    pub fn new(capacity_bytes: usize, bytes_per_token: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            capacity_bytes,
            bytes_per_token: bytes_per_token.max(1),
            clock: 0,
        }
    }

    /// An empty cache of the same size, for another thread's model handle.
    pub fn empty_like(&self) -> Self {
        PrefixCache::new(self.capacity_bytes, self.bytes_per_token)
    }

    /// Bytes of state held now.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| self.cost(e.tokens)).sum()
    }

    fn cost(&self, tokens: usize) -> usize {
        tokens * self.bytes_per_token
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The entry of `conversation` (if any) or a shared one that covers the most of
    /// `prompt`.
    pub fn lookup(&mut self, conversation: Option<Uuid>, prompt: &[ChatMessage]) -> Option<Hit<S>> {
        let now = self.tick();
        let own = conversation.map(Owner::Conversation);
        let (best, from) = self
            .entries
            .iter_mut()
            .filter(|e| e.owner == Owner::Shared || Some(e.owner) == own)
            .filter_map(|e| e.covers.continuation(prompt).map(|from| (e, from)))
            .max_by_key(|(e, _)| e.tokens)?;
        best.last_used = now;
        Some(Hit {
            state: best.state.clone(),
            tokens: best.tokens,
            from,
        })
    }

    /// Keep `state` (having read `tokens` tokens, covering `covers`) for `owner`: it
    /// replaces the least recently used of that owner's entries once the owner has its
    /// most. Entries too big for the whole cache are not kept. An owner keeps one entry
    /// of the user's unfinished words, and none once a turn has been read past it.
    pub fn insert(&mut self, owner: Owner, covers: Covered, tokens: usize, state: S) {
        if self.cost(tokens) > self.capacity_bytes || tokens == 0 {
            return;
        }
        let now = self.tick();
        if let Some(same) = self
            .entries
            .iter_mut()
            .find(|e| e.owner == owner && e.covers == covers)
        {
            same.last_used = now;
            return;
        }
        self.entries
            .retain(|e| !(e.owner == owner && e.covers.is_open_user()));
        let open_user = covers.is_open_user();
        let most = match owner {
            _ if open_user => 1,
            Owner::Conversation(_) => PER_CONVERSATION,
            Owner::Shared => MAX_SHARED,
        };
        let same_kind = |e: &Entry<S>| e.owner == owner && e.covers.is_open_user() == open_user;
        if self.entries.iter().filter(|e| same_kind(e)).count() >= most {
            self.evict(|_, e| same_kind(e));
        }
        self.entries.push(Entry {
            owner,
            covers,
            tokens,
            state,
            last_used: now,
            inserted: now,
        });
        while self.bytes() > self.capacity_bytes {
            let superseded = self.superseded();
            let evicted = if superseded.contains(&true) {
                self.evict(|i, _| superseded[i])
            } else {
                self.evict(|_, e| e.inserted != now)
            };
            if !evicted {
                break;
            }
        }
    }

    /// For each entry, whether its owner (a conversation) has kept a newer one.
    fn superseded(&self) -> Vec<bool> {
        self.entries
            .iter()
            .map(|e| {
                matches!(e.owner, Owner::Conversation(_))
                    && self
                        .entries
                        .iter()
                        .any(|n| n.owner == e.owner && n.inserted > e.inserted)
            })
            .collect()
    }

    /// Drop the least recently used entry among those `which` selects (by index and
    /// entry); false if it selects none.
    fn evict(&mut self, which: impl Fn(usize, &Entry<S>) -> bool) -> bool {
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| which(*i, e))
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, _)| i);
        oldest.map(|i| self.entries.swap_remove(i)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn covers(messages: &[ChatMessage], open_reply: Option<&str>) -> Covered {
        Covered {
            messages: messages.to_vec(),
            open: open_reply.map(|text| Open::Reply(text.to_string())),
        }
    }

    fn open_user(messages: &[ChatMessage], words: &str) -> Covered {
        Covered {
            messages: messages.to_vec(),
            open: Some(Open::User(words.to_string())),
        }
    }

    fn chat() -> Vec<ChatMessage> {
        vec![
            ChatMessage::system("be brief"),
            ChatMessage::user("capital of France?"),
            ChatMessage::assistant("Paris. [interrupted]"),
            ChatMessage::user("and Spain?"),
        ]
    }

    #[test]
    fn the_entry_covering_most_of_the_prompt_wins() {
        let chat = chat();
        let mut cache = PrefixCache::new(1000, 1);
        cache.insert(Owner::Shared, covers(&chat[..1], None), 5, "system");
        let me = Owner::Conversation(id(1));
        cache.insert(me, covers(&chat[..2], Some("")), 12, "asked");
        let hit = cache.lookup(Some(id(1)), &chat).map(|h| (h.state, h.from));
        let from = Continuation {
            messages: 2,
            open_bytes: Some(0),
        };
        assert_eq!(
            hit,
            Some(("asked", from)),
            "an open reply continues its cut text"
        );
        let other = cache.lookup(Some(id(2)), &chat).map(|h| h.state);
        assert_eq!(other, Some("system"), "never another conversation's entry");
        let stranger = [ChatMessage::system("be long")];
        assert!(cache.lookup(Some(id(1)), &stranger).is_none());
    }

    #[test]
    fn an_open_reply_is_continued_only_by_its_own_text() {
        let chat = chat();
        let state = covers(&chat[..2], Some("Paris"));
        assert_eq!(
            state.continuation(&chat).map(|c| c.open_bytes),
            Some(Some(5))
        );
        let mut other = chat.clone();
        other[2] = ChatMessage::assistant("Lyon");
        assert!(state.continuation(&other).is_none());
        other[2] = ChatMessage::user("Paris");
        assert!(
            state.continuation(&other).is_none(),
            "a user turn is no reply"
        );
    }

    #[test]
    fn unfinished_words_are_continued_only_at_a_word_boundary() {
        let chat = chat();
        let asked = open_user(&chat[..3], "and");
        let from = asked.continuation(&chat);
        assert_eq!(from.map(|c| (c.messages, c.open_bytes)), Some((3, Some(3))));
        let mut longer = chat.clone();
        longer[3] = ChatMessage::user("andorra?");
        assert!(
            asked.continuation(&longer).is_none(),
            "the word went on: its tokens differ"
        );
        longer[3] = ChatMessage::assistant("and Spain?");
        assert!(
            asked.continuation(&longer).is_none(),
            "a reply is no user turn"
        );
    }

    #[test]
    fn one_entry_of_unfinished_words_until_the_turn_is_read() {
        let chat = chat();
        let mut cache = PrefixCache::new(1000, 1);
        let me = Owner::Conversation(id(1));
        cache.insert(me, covers(&chat[..3], None), 10, "replied");
        cache.insert(me, open_user(&chat[..3], "and"), 11, "and");
        cache.insert(me, open_user(&chat[..3], "and Spain"), 13, "and Spain");
        let hit = cache
            .lookup(Some(id(1)), &chat)
            .map(|h| (h.state, h.from.open_bytes));
        assert_eq!(hit, Some(("and Spain", Some(9))));
        assert_eq!(cache.bytes(), 10 + 13, "the newer words replaced the older");
        cache.insert(me, covers(&chat, Some("")), 15, "asked");
        assert_eq!(
            cache.bytes(),
            10 + 15,
            "the read turn dropped the unfinished one"
        );
    }

    #[test]
    fn a_conversation_keeps_its_two_latest_entries() {
        let chat = chat();
        let mut cache = PrefixCache::new(1000, 1);
        let me = Owner::Conversation(id(1));
        cache.insert(me, covers(&chat[..1], None), 4, "turn 1");
        assert!(cache.lookup(Some(id(1)), &chat).is_some());
        cache.insert(me, covers(&chat[..2], Some("")), 6, "asked");
        let mut speculated = chat[..1].to_vec();
        speculated.push(ChatMessage::user("capital of Fr"));
        cache.insert(me, covers(&speculated, Some("")), 7, "discarded");
        let hit = cache.lookup(Some(id(1)), &chat).map(|h| h.state);
        assert_eq!(
            hit,
            Some("asked"),
            "the discarded reply displaced the older entry"
        );
        assert_eq!(cache.bytes(), 6 + 7);
    }

    #[test]
    fn bytes_are_bounded_least_recently_used_first() {
        let chat = chat();
        let mut cache = PrefixCache::new(10, 1);
        cache.insert(
            Owner::Conversation(id(1)),
            covers(&chat[..1], None),
            4,
            "one",
        );
        cache.insert(
            Owner::Conversation(id(2)),
            covers(&chat[..1], None),
            4,
            "two",
        );
        assert!(cache.lookup(Some(id(1)), &chat).is_some()); // one is now the newer
        cache.insert(
            Owner::Conversation(id(3)),
            covers(&chat[..1], None),
            4,
            "three",
        );
        assert!(cache.bytes() <= 10);
        assert!(
            cache.lookup(Some(id(2)), &chat).is_none(),
            "two was least recently used"
        );
        assert!(cache.lookup(Some(id(1)), &chat).is_some());
        cache.insert(
            Owner::Conversation(id(4)),
            covers(&chat[..1], None),
            11,
            "too big",
        );
        assert!(cache.lookup(Some(id(4)), &chat).is_none());
    }

    #[test]
    fn a_conversations_superseded_entry_goes_before_anothers_only_one() {
        let chat = chat();
        let mut cache = PrefixCache::new(10, 1);
        let (one, two) = (Owner::Conversation(id(1)), Owner::Conversation(id(2)));
        cache.insert(two, covers(&chat[..2], Some("")), 3, "two asked");
        cache.insert(one, covers(&chat[..2], Some("")), 3, "one asked");
        cache.insert(one, covers(&chat[..3], None), 3, "one replied");
        // Over the bound: plain LRU would take "two asked", two's only entry.
        cache.insert(
            Owner::Conversation(id(3)),
            covers(&chat[..1], None),
            3,
            "three",
        );
        assert_eq!(cache.bytes(), 9);
        let two_hit = cache.lookup(Some(id(2)), &chat).map(|h| h.state);
        assert_eq!(two_hit, Some("two asked"), "two keeps its only entry");
        let one_hit = cache.lookup(Some(id(1)), &chat).map(|h| h.state);
        assert_eq!(
            one_hit,
            Some("one replied"),
            "one lost its superseded entry"
        );
        let mut cut = chat[..2].to_vec();
        cut.push(ChatMessage::assistant("Par [interrupted]"));
        assert!(
            cache.lookup(Some(id(1)), &cut).is_none(),
            "the superseded entry is gone"
        );
    }

    #[test]
    fn shared_entries_are_deduplicated_and_capped() {
        let mut cache = PrefixCache::new(1000, 1);
        let system = [ChatMessage::system("be brief")];
        for _ in 0..3 {
            cache.insert(Owner::Shared, covers(&system, None), 2, "system");
        }
        assert_eq!(cache.bytes(), 2);
        for n in 0..10 {
            let other = [ChatMessage::system(format!("prompt {n}"))];
            cache.insert(Owner::Shared, covers(&other, None), 1, "other");
        }
        assert_eq!(cache.bytes(), MAX_SHARED);
    }
}
