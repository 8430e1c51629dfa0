//! Metrics of the Redis cluster bridge (`cluster/`): what became of each lifecycle
//! event (published, waiting, failed attempts, dropped), the conversation leases
//! (conflicts with another node, takeovers, leases lost) and lost nodes reported. Part
//! of [`super::Metrics`]; registered on every server, zero when the cluster is off.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct ClusterMetrics {
    /// Lifecycle events published to Redis (channel and stream) by this node.
    pub events_published: IntCounter,
    /// Events waiting for Redis in the bridge's buffer: back to 0 once Redis answers.
    pub events_buffered: IntGauge,
    /// Round trips that failed (Redis down, slow or refusing); their events are retried.
    pub events_failed: IntCounter,
    /// Events lost: the buffer was full during an outage, or shutdown's deadline passed.
    pub events_dropped: IntCounter,
    /// Disconnects not published because a survivor had already reported the
    /// conversation as lost with this node (it was thought dead): the event went out once.
    pub events_superseded: IntCounter,
    /// 1 while the bridge holds a working Redis connection.
    pub redis_connected: IntGauge,
    /// Starts that found the conversation's lease held by another node.
    pub lease_conflicts: IntCounter,
    /// Conversations taken over from another node (its session ended `superseded`).
    pub takeovers: IntCounter,
    /// Leases this node found taken by another node at renewal; the session was ended.
    pub leases_lost: IntCounter,
    /// Sessions started without a lease because Redis was unreachable (taken on
    /// reconnect, or the session is ended if another node has it).
    pub leases_unverified: IntCounter,
    /// `connection_disconnected` events this node published for lost nodes' conversations.
    pub node_lost_events: IntCounter,
    /// Conversation histories in Redis (`llm.history_store = "redis"`), by `op` and
    /// `outcome`: `load` `found`, `absent`, `failed`, `timeout` (the last two start the
    /// session as a fresh conversation); `save` `written`, `failed`, `dropped`.
    pub history: IntCounterVec,
}

impl ClusterMetrics {
    pub fn new() -> Self {
        ClusterMetrics {
            events_published: counter(
                "hearken_cluster_events_published_total",
                "Lifecycle events published to Redis",
            ),
            events_buffered: gauge(
                "hearken_cluster_events_buffered",
                "Lifecycle events waiting for Redis",
            ),
            events_failed: counter(
                "hearken_cluster_events_failed_total",
                "Failed Redis round trips of the event bridge (retried)",
            ),
            events_dropped: counter(
                "hearken_cluster_events_dropped_total",
                "Lifecycle events lost: buffer full during a Redis outage, or shutdown deadline",
            ),
            events_superseded: counter(
                "hearken_cluster_events_superseded_total",
                "Disconnects not published because a survivor already reported them",
            ),
            redis_connected: gauge(
                "hearken_cluster_redis_connected",
                "1 while the event bridge is connected to Redis",
            ),
            lease_conflicts: counter(
                "hearken_cluster_lease_conflicts_total",
                "Session starts that found the conversation leased by another node",
            ),
            takeovers: counter(
                "hearken_cluster_takeovers_total",
                "Conversations taken over from another node",
            ),
            leases_lost: counter(
                "hearken_cluster_leases_lost_total",
                "Leases found held by another node at renewal (the session was ended)",
            ),
            leases_unverified: counter(
                "hearken_cluster_leases_unverified_total",
                "Sessions started while Redis was unreachable",
            ),
            node_lost_events: counter(
                "hearken_cluster_node_lost_events_total",
                "Disconnects published for conversations of lost nodes",
            ),
            history: IntCounterVec::new(
                Opts::new(
                    "hearken_cluster_history_total",
                    "Conversation history reads and writes in Redis, by outcome",
                ),
                &["op", "outcome"],
            )
            .expect("static metric definition"),
        }
    }

    pub fn register(&self, registry: &Registry) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.events_published.clone()),
            Box::new(self.events_buffered.clone()),
            Box::new(self.events_failed.clone()),
            Box::new(self.events_dropped.clone()),
            Box::new(self.events_superseded.clone()),
            Box::new(self.redis_connected.clone()),
            Box::new(self.lease_conflicts.clone()),
            Box::new(self.takeovers.clone()),
            Box::new(self.leases_lost.clone()),
            Box::new(self.leases_unverified.clone()),
            Box::new(self.node_lost_events.clone()),
            Box::new(self.history.clone()),
        ];
        for collector in collectors {
            // Names are static and unique, so registration cannot collide.
            let _ = registry.register(collector);
        }
    }
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("static metric definition")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("static metric definition")
}
