//! Attention state (the KV cache) kept between turns, so a turn reads only its new
//! tokens. The embedded model reads its whole prompt before the first token at about
//! 10 ms a token on this machine; a prompt holding the last exchange and the new
//! question took most of a second before any reply text existed. With the state of
//! the conversation so far kept, a turn reads only the new question.
//!
//! Each entry is a model state (`S`: candle's `ModelWeights`, whose layers hold the KV
//! tensors; cloning it shares them) with the tokens it has read. A prompt can start
//! from any entry whose tokens are a prefix of it: its owner's (one per conversation,
//! replaced by every finished reply) or a shared one (the system prompt, read once for
//! every conversation that uses it). Entries are bounded in bytes and evicted least
//! recently used first; an entry is only a cache, so losing it costs time, never
//! correctness. The cache belongs to one inference thread (no lock).

use uuid::Uuid;

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

/// Entries kept per conversation: its last reply's state, and the one before, which
/// is still the right start when the last was a speculative reply that was discarded.
const PER_CONVERSATION: usize = 2;

struct Entry<S> {
    owner: Owner,
    tokens: Vec<u32>,
    state: S,
    last_used: u64,
}

/// What a lookup found: the state and how many prompt tokens it has already read.
pub struct Hit<S> {
    pub state: S,
    pub tokens: usize,
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
        self.entries.iter().map(|e| self.cost(e.tokens.len())).sum()
    }

    fn cost(&self, tokens: usize) -> usize {
        tokens * self.bytes_per_token
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The longest entry of `conversation` (if any) or a shared one whose tokens are a prefix of
    /// `prompt` and shorter than it (at least one prompt token must still be read, to
    /// give the next token's logits).
    pub fn lookup(&mut self, conversation: Option<Uuid>, prompt: &[u32]) -> Option<Hit<S>> {
        let now = self.tick();
        let own = conversation.map(Owner::Conversation);
        let best = self
            .entries
            .iter_mut()
            .filter(|e| e.owner == Owner::Shared || Some(e.owner) == own)
            .filter(|e| e.tokens.len() < prompt.len() && prompt.starts_with(&e.tokens))
            .max_by_key(|e| e.tokens.len())?;
        best.last_used = now;
        Some(Hit {
            state: best.state.clone(),
            tokens: best.tokens.len(),
        })
    }

    /// Keep `state` (having read `tokens`) for `owner`: it replaces the least recently
    /// used of that conversation's entries once it has [`PER_CONVERSATION`], or joins
    /// the shared ones. Entries too big for the whole cache are not kept.
    pub fn insert(&mut self, owner: Owner, tokens: Vec<u32>, state: S) {
        if self.cost(tokens.len()) > self.capacity_bytes || tokens.is_empty() {
            return;
        }
        let now = self.tick();
        if let Some(same) = self
            .entries
            .iter_mut()
            .find(|e| e.owner == owner && e.tokens == tokens)
        {
            same.last_used = now;
            return;
        }
        let most = match owner {
            Owner::Conversation(_) => PER_CONVERSATION,
            Owner::Shared => MAX_SHARED,
        };
        if self.entries.iter().filter(|e| e.owner == owner).count() >= most {
            self.evict(|e| e.owner == owner);
        }
        let needed = self.cost(tokens.len());
        while self.bytes() + needed > self.capacity_bytes && !self.entries.is_empty() {
            self.evict(|_| true);
        }
        self.entries.push(Entry {
            owner,
            tokens,
            state,
            last_used: now,
        });
    }

    /// Drop the least recently used entry among those `which` selects.
    fn evict(&mut self, which: impl Fn(&Entry<S>) -> bool) {
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| which(e))
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, _)| i);
        if let Some(i) = oldest {
            self.entries.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn the_longest_own_or_shared_prefix_wins() {
        let mut cache = PrefixCache::new(1000, 1);
        cache.insert(Owner::Shared, vec![1, 2], "system");
        cache.insert(Owner::Conversation(id(1)), vec![1, 2, 3, 4], "one");
        cache.insert(Owner::Conversation(id(2)), vec![1, 2, 3, 4, 5], "two");
        let hit = cache
            .lookup(Some(id(1)), &[1, 2, 3, 4, 5, 6])
            .map(|h| (h.state, h.tokens));
        assert_eq!(hit, Some(("one", 4)), "never another conversation's entry");
        let hit = cache
            .lookup(Some(id(1)), &[1, 2, 9])
            .map(|h| (h.state, h.tokens));
        assert_eq!(hit, Some(("system", 2)));
        assert!(cache.lookup(Some(id(3)), &[7, 8]).is_none());
    }

    #[test]
    fn a_whole_prompt_is_never_a_hit() {
        let mut cache = PrefixCache::new(1000, 1);
        cache.insert(Owner::Conversation(id(1)), vec![1, 2, 3], "one");
        assert!(
            cache.lookup(Some(id(1)), &[1, 2, 3]).is_none(),
            "no token left to read"
        );
    }

    #[test]
    fn a_conversation_keeps_its_two_latest_entries() {
        let mut cache = PrefixCache::new(1000, 1);
        let me = Owner::Conversation(id(1));
        cache.insert(me, vec![1, 2], "turn 1");
        // Turn 2 starts from turn 1 and is kept; then a discarded speculative reply.
        assert!(cache.lookup(Some(id(1)), &[1, 2, 3]).is_some());
        cache.insert(me, vec![1, 2, 3, 4], "turn 2");
        cache.insert(me, vec![1, 2, 3, 4, 9, 9], "discarded");
        let hit = cache.lookup(Some(id(1)), &[1, 2, 3, 4, 5]).map(|h| h.state);
        assert_eq!(
            hit,
            Some("turn 2"),
            "the discarded reply did not displace it"
        );
        cache.insert(me, vec![1, 2, 3, 4, 5, 6], "turn 3");
        assert_eq!(
            cache.bytes(),
            4 + 6,
            "the least recently used (discarded) went"
        );
    }

    #[test]
    fn bytes_are_bounded_least_recently_used_first() {
        let mut cache = PrefixCache::new(10, 1);
        cache.insert(Owner::Conversation(id(1)), vec![1; 4], "one");
        cache.insert(Owner::Conversation(id(2)), vec![2; 4], "two");
        assert!(cache.lookup(Some(id(1)), &[1; 5]).is_some()); // one is now the newer
        cache.insert(Owner::Conversation(id(3)), vec![3; 4], "three");
        assert!(cache.bytes() <= 10);
        assert!(
            cache.lookup(Some(id(2)), &[2; 5]).is_none(),
            "two was least recently used"
        );
        assert!(cache.lookup(Some(id(1)), &[1; 5]).is_some());
        cache.insert(Owner::Conversation(id(4)), vec![4; 11], "too big");
        assert!(cache.lookup(Some(id(4)), &[4; 12]).is_none());
    }

    #[test]
    fn shared_entries_are_deduplicated_and_capped() {
        let mut cache = PrefixCache::new(1000, 1);
        for _ in 0..3 {
            cache.insert(Owner::Shared, vec![1, 2], "system");
        }
        assert_eq!(cache.bytes(), 2);
        for n in 0..10u32 {
            cache.insert(Owner::Shared, vec![100 + n], "other");
        }
        assert_eq!(cache.bytes(), MAX_SHARED);
    }
}
