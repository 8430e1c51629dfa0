//! When this node may give a conversation's lease back. A lease is held while any local
//! session claims it (waiting for the registry, or live) and until the registry has
//! published the disconnect of every session that got a tree, so the release goes out
//! after that disconnect: a node that takes the conversation over next publishes its
//! `connection_started` after it. The two signals (a claim ends, the registry publishes
//! a disconnect) arrive on different channels in either order; the counts make the
//! decision the same both ways.

use std::collections::HashMap;

use uuid::Uuid;

#[derive(Debug, Default)]
struct Count {
    /// Local sessions holding a claim.
    claims: u32,
    /// Disconnects still to come for claims that got a tree (negative while a
    /// disconnect arrived before its claim's end).
    owed: i64,
}

#[derive(Debug, Default)]
pub struct Claims {
    counts: HashMap<Uuid, Count>,
}

impl Claims {
    /// A local session claimed the conversation.
    pub fn claim(&mut self, id: Uuid) {
        self.counts.entry(id).or_default().claims += 1;
    }

    /// A claim ended; `granted` when its session got a tree (a disconnect will follow or
    /// has been seen). True when the lease is to be released now.
    pub fn end(&mut self, id: Uuid, granted: bool) -> bool {
        let Some(count) = self.counts.get_mut(&id) else {
            return false;
        };
        count.claims = count.claims.saturating_sub(1);
        if granted {
            count.owed += 1;
        }
        self.settle(id)
    }

    /// The registry published a disconnect. True when the lease is to be released now.
    pub fn disconnected(&mut self, id: Uuid) -> bool {
        let Some(count) = self.counts.get_mut(&id) else {
            // Not claimed here (started before the cluster came up): nothing held.
            return false;
        };
        count.owed -= 1;
        self.settle(id)
    }

    fn settle(&mut self, id: Uuid) -> bool {
        let done = self
            .counts
            .get(&id)
            .is_some_and(|c| c.claims == 0 && c.owed <= 0);
        if done {
            self.counts.remove(&id);
        }
        done
    }

    /// Conversations whose lease this node holds (to renew).
    pub fn held(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.counts.keys().copied()
    }

    pub fn holds(&self, id: Uuid) -> bool {
        self.counts.contains_key(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_follows_the_disconnect_in_either_order() {
        let mut claims = Claims::default();
        let id = Uuid::new_v4();
        // The claim ends first: wait for the disconnect.
        claims.claim(id);
        assert!(!claims.end(id, true));
        assert!(claims.disconnected(id));
        assert!(claims.is_empty());
        // The disconnect comes first: wait for the claim's end.
        claims.claim(id);
        assert!(!claims.disconnected(id));
        assert!(claims.end(id, true));
        assert!(claims.is_empty());
    }

    #[test]
    fn a_waiting_reconnect_keeps_the_lease() {
        let mut claims = Claims::default();
        let id = Uuid::new_v4();
        claims.claim(id); // the live session
        claims.claim(id); // its reconnect, superseding it on this node
        assert!(!claims.disconnected(id));
        assert!(!claims.end(id, true));
        assert!(claims.holds(id), "the reconnect still claims it");
        // The reconnect got no tree (a newer one won): no disconnect is owed.
        assert!(claims.end(id, false));
    }

    #[test]
    fn disconnects_of_unclaimed_conversations_hold_nothing() {
        let mut claims = Claims::default();
        assert!(!claims.disconnected(Uuid::new_v4()));
        assert!(claims.is_empty());
    }
}
