//! The bridge's bounded buffer: what the node still has to send to Redis, in the order
//! it happened. Items leave only when Redis confirmed them, so a failed round trip is
//! simply tried again; each carries a sequence number so a retry of a batch that Redis
//! did apply (its answer was lost) is skipped there. When the buffer is full the new
//! item is refused and counted: in order, bounded, never silently lost.

use std::collections::VecDeque;

use prometheus::{IntCounter, IntGauge};
use uuid::Uuid;

/// What an item does in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Publish `connection_started`; list the conversation under this node.
    Started,
    /// Publish `connection_disconnected`, unless a survivor already reported it.
    Disconnected,
    /// Release the conversation's lease, if this node still holds it.
    Release,
}

impl Kind {
    /// The code the publish script reads.
    pub fn code(self) -> &'static str {
        match self {
            Kind::Started => "s",
            Kind::Disconnected => "d",
            Kind::Release => "r",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Item {
    pub seq: u64,
    pub kind: Kind,
    pub conversation_id: Uuid,
    /// The event's JSON (empty for a release).
    pub payload: String,
}

pub struct Outbox {
    items: VecDeque<Item>,
    capacity: usize,
    next_seq: u64,
    buffered: IntGauge,
    dropped: IntCounter,
}

impl Outbox {
    pub fn new(capacity: usize, buffered: IntGauge, dropped: IntCounter) -> Self {
        Outbox {
            items: VecDeque::new(),
            capacity,
            next_seq: 1,
            buffered,
            dropped,
        }
    }

    /// Queue an item; false (and counted as dropped) when the buffer is full.
    pub fn push(&mut self, kind: Kind, conversation_id: Uuid, payload: String) -> bool {
        if self.items.len() >= self.capacity {
            self.dropped.inc();
            return false;
        }
        self.items.push_back(Item {
            seq: self.next_seq,
            kind,
            conversation_id,
            payload,
        });
        self.next_seq += 1;
        self.buffered.inc();
        true
    }

    /// The oldest items, at most `max`, to send next (they stay queued).
    pub fn front(&self, max: usize) -> Vec<Item> {
        self.items.iter().take(max).cloned().collect()
    }

    /// Redis applied the first `n` items.
    pub fn confirm(&mut self, n: usize) {
        let n = n.min(self.items.len());
        self.items.drain(..n);
        self.buffered.sub(n as i64);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }
}

impl Drop for Outbox {
    /// Whatever is left was never published: count it, and the gauge goes back.
    fn drop(&mut self) {
        let left = self.items.len();
        self.dropped.inc_by(left as u64);
        self.buffered.sub(left as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(capacity: usize) -> (Outbox, IntGauge, IntCounter) {
        let buffered = IntGauge::new("b", "b").expect("gauge");
        let dropped = IntCounter::new("d", "d").expect("counter");
        (
            Outbox::new(capacity, buffered.clone(), dropped.clone()),
            buffered,
            dropped,
        )
    }

    #[test]
    fn items_leave_in_order_only_when_confirmed() {
        let (mut out, buffered, _) = outbox(10);
        let id = Uuid::new_v4();
        for kind in [Kind::Started, Kind::Disconnected, Kind::Release] {
            assert!(out.push(kind, id, String::new()));
        }
        let first = out.front(2);
        assert_eq!(
            first.iter().map(|i| i.seq).collect::<Vec<_>>(),
            [1, 2],
            "sequence numbers follow the order of pushes"
        );
        // A failed round trip confirms nothing: the same items go again.
        assert_eq!(out.front(2)[0].seq, 1);
        out.confirm(2);
        assert_eq!(buffered.get(), 1);
        assert_eq!(out.front(5)[0].kind, Kind::Release);
        out.confirm(5);
        assert!(out.is_empty());
        assert_eq!(buffered.get(), 0);
    }

    #[test]
    fn overflow_is_counted_and_what_is_left_at_the_end_too() {
        let (mut out, buffered, dropped) = outbox(2);
        let id = Uuid::new_v4();
        assert!(out.push(Kind::Started, id, "a".into()));
        assert!(out.push(Kind::Disconnected, id, "b".into()));
        assert!(!out.push(Kind::Release, id, String::new()));
        assert_eq!(dropped.get(), 1);
        assert_eq!(out.len(), 2);
        drop(out);
        assert_eq!(dropped.get(), 3, "unsent items count as dropped");
        assert_eq!(buffered.get(), 0);
    }
}
