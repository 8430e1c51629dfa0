//! hearken nodes on a real Redis (`cluster.redis_url`): each test starts its own
//! `redis-server` on a free loopback port and real nodes, and reads what a real Redis
//! subscriber on `connection_events` and the events stream saw.
//!
//! - Over mixed churn spread on two nodes (close, dropped TCP, reconnects to the same
//!   and to the other node), each session's `connection_started` and
//!   `connection_disconnected` arrive exactly once, alternating per conversation, with
//!   the seed's fields, and the stream holds the same events.
//! - The same conversation on a second node supersedes the first (4001): never two trees.
//! - A node killed with SIGKILL is reported by exactly one of two survivors: one
//!   `server_error` `node_lost` disconnect per conversation it held.
//! - Redis stopped for five seconds mid-churn: teardowns go on, and every event arrives
//!   after it continues (or is counted as dropped).
//! - With `llm.history_store = "redis"` a conversation begun on one node resumes on
//!   another with its history and system prompt; with the default `"memory"` nothing
//!   of it is written to Redis; with Redis stopped, a resume starts a fresh conversation
//!   (counted), never an error.
//! - After each case every gauge is back at its start on every node.

mod cluster_support;
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::*;
use common::*;
use futures_util::SinkExt;
use hearken::metrics::Metrics;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

const CHANNEL: &str = "connection_events";

/// The per-session gauges and the bridge's buffer, all zero at rest.
fn node_gauges(metrics: &Metrics) -> Vec<(String, i64)> {
    let mut all = gauges(metrics);
    all.push((
        "cluster_events_buffered".into(),
        metrics.cluster.events_buffered.get(),
    ));
    all
}

async fn all_back_to_zero(servers: &[&TestServer]) {
    for server in servers {
        let metrics = Arc::clone(&server.metrics);
        let settled = eventually(|| node_gauges(&metrics).iter().all(|(_, v)| *v == 0)).await;
        assert!(settled, "gauges not back: {:?}", node_gauges(&metrics));
    }
}

/// How a churn cycle ends.
#[derive(Clone, Copy, Debug)]
enum Leave {
    CloseFrame,
    DropTcp,
    /// The same id again on the other node: the first session is superseded there.
    ReconnectOther,
    /// The same id again on the same node.
    ReconnectSame,
}

/// One cycle; returns the conversation id and how many sessions it had.
async fn cycle(first: String, other: String, leave: Leave) -> (String, usize) {
    let (mut ws, started) = start_session(&first).await;
    let id = conversation_id(&started);
    ws.send(Message::binary(vec![0u8; 640]))
        .await
        .expect("send audio");
    match leave {
        Leave::CloseFrame => {
            send_close(&mut ws).await;
            close_code(&mut ws).await;
            (id, 1)
        }
        Leave::DropTcp => {
            drop(ws);
            (id, 1)
        }
        Leave::ReconnectOther | Leave::ReconnectSame => {
            let base = if matches!(leave, Leave::ReconnectOther) {
                other
            } else {
                first
            };
            let mut second = connect(&format!("{base}&conversation_id={id}")).await;
            assert_eq!(close_code(&mut ws).await, Some(4001), "{leave:?}");
            let resumed = next_event_of(&mut second, "session.started").await;
            assert_eq!(resumed["resumed"], true, "{leave:?}");
            send_close(&mut second).await;
            close_code(&mut second).await;
            (id, 2)
        }
    }
}

/// Per conversation, the event types in arrival order.
fn sequences(events: &[Value]) -> HashMap<String, Vec<String>> {
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for event in events {
        let id = event["conversation_id"].as_str().expect("id").to_string();
        let kind = event["type"].as_str().expect("type");
        let short = match kind {
            "connection_started" => "started".to_string(),
            _ => event["reason"].as_str().expect("reason").to_string(),
        };
        by_id.entry(id).or_default().push(short);
    }
    by_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_on_two_nodes_publishes_every_event_exactly_once() {
    const CYCLES: usize = 300;
    const CONCURRENCY: usize = 10;
    let redis = RedisServer::start();
    let url = redis.url();
    let subscriber = Subscriber::start(&url, CHANNEL).await;
    let a = TestServer::start(cluster_config(&url, "a"));
    let b = TestServer::start(cluster_config(&url, "b"));
    let nodes = [a.url("codec=pcm16"), b.url("codec=pcm16")];

    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut cycles = Vec::new();
    for i in 0..CYCLES {
        let permit = Arc::clone(&gate).acquire_owned().await.expect("gate");
        let (first, other) = (nodes[i % 2].clone(), nodes[(i + 1) % 2].clone());
        let leave = match i % 4 {
            0 => Leave::CloseFrame,
            1 => Leave::DropTcp,
            2 => Leave::ReconnectOther,
            _ => Leave::ReconnectSame,
        };
        cycles.push(tokio::spawn(async move {
            let done = cycle(first, other, leave).await;
            drop(permit);
            (done, leave)
        }));
    }
    let mut expected: HashMap<String, (usize, Leave)> = HashMap::new();
    for cycle in cycles {
        let ((id, sessions), leave) = cycle.await.expect("cycle");
        expected.insert(id, (sessions, leave));
    }
    let sessions: usize = expected.values().map(|(n, _)| n).sum();
    subscriber
        .until(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "connection_disconnected")
                .count()
                >= sessions
        })
        .await;
    all_back_to_zero(&[&a, &b]).await;
    // Anything published late (a duplicate) would arrive by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = subscriber.events();
    assert_eq!(
        events.len(),
        sessions * 2,
        "a start and a disconnect per session"
    );

    let by_id = sequences(&events);
    assert_eq!(by_id.len(), CYCLES, "one conversation per cycle");
    for (id, (count, leave)) in &expected {
        let seen = by_id.get(id).map(Vec::as_slice).unwrap_or_default();
        let want: &[&str] = match (count, leave) {
            (1, _) => &["started", "client_disconnect"],
            _ => &["started", "superseded", "started", "client_disconnect"],
        };
        assert_eq!(seen, want, "conversation {id} ({leave:?})");
    }
    for event in events
        .iter()
        .filter(|e| e["type"] == "connection_disconnected")
    {
        assert_seed_fields(event);
    }
    for event in &events {
        let node = event["node_id"].as_str().expect("node_id");
        assert!(node.starts_with("a-") || node.starts_with("b-"), "{node}");
    }
    // The stream holds the same events in the same order.
    let stream = stream_events(&url, CHANNEL).await;
    assert_eq!(stream, events, "the stream and the channel agree");

    for server in [&a, &b] {
        let cluster = &server.metrics.cluster;
        assert_eq!(cluster.events_dropped.get(), 0);
        assert_eq!(cluster.events_superseded.get(), 0);
    }
    let published: u64 = [&a, &b]
        .iter()
        .map(|s| s.metrics.cluster.events_published.get())
        .sum();
    assert_eq!(published as usize, events.len());
    let takeovers: u64 = [&a, &b]
        .iter()
        .map(|s| s.metrics.cluster.takeovers.get())
        .sum();
    assert_eq!(
        takeovers as usize,
        CYCLES / 4,
        "one per cross-node reconnect"
    );
    // Every lease was released, and no node lists a conversation any more.
    assert!(keys(&url, "hearken:lease:*").await.is_empty());
    assert!(keys(&url, "hearken:node:*:conversations").await.is_empty());
    drop(subscriber);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_conversation_on_a_second_node_supersedes_the_first() {
    let redis = RedisServer::start();
    let url = redis.url();
    let subscriber = Subscriber::start(&url, CHANNEL).await;
    let a = TestServer::start(cluster_config(&url, "a"));
    let b = TestServer::start(cluster_config(&url, "b"));

    let (mut on_a, started) = start_session(&a.url("")).await;
    let id = conversation_id(&started);
    let (_, a_node) = lease_of(&url, &id).await;
    assert!(a_node.starts_with("a-"));
    let (mut on_b, resumed) = start_session(&b.url(&format!("conversation_id={id}"))).await;
    assert_eq!(resumed["resumed"], true);
    assert_eq!(close_code(&mut on_a).await, Some(4001));

    // Never two trees: one conversation registered in all, on B, which holds the lease.
    assert!(eventually(|| a.metrics.conversations.get() == 0).await);
    assert_eq!(b.metrics.conversations.get(), 1);
    let (_, owner) = lease_of(&url, &id).await;
    assert!(owner.starts_with("b-"), "lease on {owner}");
    assert_eq!(b.metrics.cluster.lease_conflicts.get(), 1);
    assert_eq!(b.metrics.cluster.takeovers.get(), 1);

    // The operator view: both nodes alive, the session on B.
    let view: Value = reqwest::get(b.http("/v1/cluster"))
        .await
        .expect("GET /v1/cluster")
        .json()
        .await
        .expect("JSON");
    let rows = view["nodes"].as_array().expect("nodes");
    assert_eq!(rows.len(), 2, "{view}");
    assert!(rows.iter().all(|n| n["alive"] == true), "{view}");

    send_close(&mut on_b).await;
    close_code(&mut on_b).await;
    let events = subscriber
        .until(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "connection_disconnected")
                .count()
                >= 2
        })
        .await;
    // A's disconnect went out before B's start: a subscriber never sees two trees.
    let seen = sequences(&events).remove(&id).unwrap_or_default();
    assert_eq!(
        seen,
        ["started", "superseded", "started", "client_disconnect"]
    );
    assert!(keys(&url, "hearken:lease:*").await.is_empty());
    all_back_to_zero(&[&a, &b]).await;
}

/// The lease key of a conversation and its owner.
async fn lease_of(url: &str, id: &str) -> (String, String) {
    let key = format!("hearken:lease:{id}");
    let mut conn = redis(url).await;
    let owner: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    (key, owner.expect("a lease is held"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_reported_once_by_the_survivors() {
    const SESSIONS: usize = 20;
    let redis = RedisServer::start();
    let url = redis.url();
    let subscriber = Subscriber::start(&url, CHANNEL).await;
    let survivors = [
        TestServer::start(cluster_config(&url, "s1")),
        TestServer::start(cluster_config(&url, "s2")),
    ];
    let mut victim = NodeProcess::start(&url, "victim");

    let mut sockets = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        let (ws, started) = start_session(&victim.url("")).await;
        ids.push(conversation_id(&started));
        sockets.push(ws);
    }
    let started = subscriber
        .until(|events| events.len() >= SESSIONS)
        .await
        .len();
    assert_eq!(started, SESSIONS, "every start published");

    let killed = Instant::now();
    victim.kill_9();
    subscriber
        .until(|events| events.len() >= SESSIONS * 2)
        .await;
    let reported = killed.elapsed();
    // Give a second survivor time to (wrongly) report them again.
    tokio::time::sleep(Duration::from_millis(NODE_TTL_MS + 2 * HEARTBEAT_MS)).await;
    let events = subscriber.events();
    let lost: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "connection_disconnected")
        .collect();
    assert_eq!(
        lost.len(),
        SESSIONS,
        "one report per conversation: {lost:?}"
    );
    let counts = count_by_conversation(&events, "connection_disconnected");
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    for event in &lost {
        assert_seed_fields(event);
        assert_eq!(event["reason"], "server_error");
        assert_eq!(event["node_lost"], true);
        assert!(event["node_id"]
            .as_str()
            .unwrap_or("")
            .starts_with("victim-"));
    }
    let by: u64 = survivors
        .iter()
        .map(|s| s.metrics.cluster.node_lost_events.get())
        .sum();
    assert_eq!(
        by as usize, SESSIONS,
        "reported by the survivors once in all"
    );
    eprintln!(
        "kill -9 to the last node_lost event: {} ms (node TTL {NODE_TTL_MS} ms, heartbeat {HEARTBEAT_MS} ms)",
        reported.as_millis()
    );
    // The victim's leases are gone: its conversations can start elsewhere at once.
    assert!(keys(&url, "hearken:lease:*").await.is_empty());
    let (mut again, resumed) =
        start_session(&survivors[0].url(&format!("conversation_id={}", ids[0]))).await;
    assert_eq!(resumed["conversation_id"], ids[0].as_str());
    send_close(&mut again).await;
    close_code(&mut again).await;
    drop(sockets);
    let [s1, s2] = &survivors;
    all_back_to_zero(&[s1, s2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_churn_loses_nothing() {
    const CYCLES: usize = 120;
    let redis = RedisServer::start();
    let url = redis.url();
    let subscriber = Subscriber::start(&url, CHANNEL).await;
    let node = TestServer::start(cluster_config(&url, "a"));
    let target = node.url("");

    let churn = {
        let target = target.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..CYCLES {
                let leave = if i % 2 == 0 {
                    Leave::CloseFrame
                } else {
                    Leave::DropTcp
                };
                let (id, _) = cycle(target.clone(), target.clone(), leave).await;
                ids.push(id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.pause();
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let buffered = node.metrics.cluster.events_buffered.get();
    redis.resume();
    eprintln!(
        "Redis stopped {} ms; {buffered} events were waiting",
        paused.elapsed().as_millis()
    );
    assert!(buffered > 0, "the churn went on while Redis was stopped");
    let ids = churn.await.expect("churn");

    let events = subscriber
        .until(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "connection_disconnected")
                .count()
                >= CYCLES
        })
        .await;
    all_back_to_zero(&[&node]).await;
    let dropped = node.metrics.cluster.events_dropped.get();
    assert_eq!(dropped, 0, "the buffer held the outage");
    let by_id = sequences(&events);
    for id in &ids {
        let seen = by_id.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(seen, ["started", "client_disconnect"], "conversation {id}");
    }
    assert_eq!(stream_events(&url, CHANNEL).await, events);
    // Sessions kept starting while Redis was stopped (without a lease meanwhile).
    assert!(node.metrics.cluster.leases_unverified.get() > 0);
    let teardown = &node.metrics.teardown_seconds;
    eprintln!(
        "teardowns: {} in {:.1} ms total",
        teardown.get_sample_count(),
        teardown.get_sample_sum() * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_publishes_every_disconnect_then_leaves_the_cluster() {
    const SESSIONS: usize = 5;
    let redis = RedisServer::start();
    let url = redis.url();
    let subscriber = Subscriber::start(&url, CHANNEL).await;
    let node = TestServer::start(cluster_config(&url, "a"));
    let mut sockets = Vec::new();
    for _ in 0..SESSIONS {
        sockets.push(start_session(&node.url("")).await.0);
    }
    let metrics = Arc::clone(&node.metrics);
    assert_eq!(node.shutdown(), Some(hearken::DrainOutcome::Clean));
    // Published before shutdown returned; the subscriber may read them a moment later.
    let events = subscriber
        .until(|events| events.len() >= 2 * SESSIONS)
        .await;
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "connection_disconnected")
        .map(|e| e["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(reasons, ["server_shutdown"; SESSIONS]);
    assert_eq!(metrics.cluster.events_buffered.get(), 0);
    assert_eq!(metrics.cluster.events_dropped.get(), 0);
    // The node left: no node, lease or listed conversation remains.
    assert!(keys(&url, "hearken:node*").await.is_empty());
    assert!(keys(&url, "hearken:lease:*").await.is_empty());
    drop(sockets);
}

/// One cycle through nginx with a client-chosen id (so the hash spreads new sessions);
/// a reconnect goes through nginx again and must reach the same node.
async fn cycle_via(nginx_ws: String, leave: Leave) -> (String, usize) {
    let id = uuid::Uuid::new_v4().to_string();
    let url = format!("{nginx_ws}&conversation_id={id}");
    let (mut ws, _) = start_session(&url).await;
    ws.send(Message::binary(vec![0u8; 640]))
        .await
        .expect("send audio");
    match leave {
        Leave::CloseFrame => {
            send_close(&mut ws).await;
            close_code(&mut ws).await;
            (id, 1)
        }
        Leave::DropTcp => {
            drop(ws);
            (id, 1)
        }
        Leave::ReconnectOther | Leave::ReconnectSame => {
            let mut second = connect(&url).await;
            assert_eq!(close_code(&mut ws).await, Some(4001));
            next_event_of(&mut second, "session.started").await;
            send_close(&mut second).await;
            close_code(&mut second).await;
            (id, 2)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_behind_nginx_on_two_nodes_is_published_exactly_once() {
    const CYCLES: usize = 300;
    const CONCURRENCY: usize = 10;
    let redis = RedisServer::start();
    let url = redis.url();
    let subscriber = Subscriber::start(&url, CHANNEL).await;
    let a = TestServer::start(cluster_config(&url, "a"));
    let b = TestServer::start(cluster_config(&url, "b"));
    let nginx = Nginx::start([a.addr, b.addr]).await;
    let entry = nginx.ws("codec=pcm16");

    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut cycles = Vec::new();
    for i in 0..CYCLES {
        let permit = Arc::clone(&gate).acquire_owned().await.expect("gate");
        let leave = [Leave::CloseFrame, Leave::DropTcp, Leave::ReconnectSame][i % 3];
        let entry = entry.clone();
        cycles.push(tokio::spawn(async move {
            let done = cycle_via(entry, leave).await;
            drop(permit);
            done
        }));
    }
    let mut expected = HashMap::new();
    for cycle in cycles {
        let (id, sessions) = cycle.await.expect("cycle");
        expected.insert(id, sessions);
    }
    let sessions: usize = expected.values().sum();
    subscriber
        .until(|events| events.len() >= 2 * sessions)
        .await;
    all_back_to_zero(&[&a, &b]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = subscriber.events();
    assert_eq!(
        events.len(),
        2 * sessions,
        "a start and a disconnect per session"
    );
    let by_id = sequences(&events);
    for (id, count) in &expected {
        let want: &[&str] = if *count == 1 {
            &["started", "client_disconnect"]
        } else {
            &["started", "superseded", "started", "client_disconnect"]
        };
        let seen = by_id.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(seen, want, "{id}");
        // Reconnects through nginx reach the node that holds the conversation.
        let nodes: std::collections::HashSet<&str> = events
            .iter()
            .filter(|e| e["conversation_id"] == id.as_str())
            .map(|e| e["node_id"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(nodes.len(), 1, "{id} on {nodes:?}");
    }
    let on_a = events
        .iter()
        .filter(|e| e["node_id"].as_str().unwrap_or("").starts_with("a-"))
        .count();
    eprintln!(
        "via nginx: {} events from node a, {} from node b",
        on_a,
        events.len() - on_a
    );
    assert!(
        on_a > 0 && on_a < events.len(),
        "the hash spreads conversations"
    );
    assert_eq!(stream_events(&url, CHANNEL).await, events);
    assert!(keys(&url, "hearken:lease:*").await.is_empty());
    for server in [&a, &b] {
        assert_eq!(server.metrics.cluster.events_dropped.get(), 0);
    }
    drop(nginx);
}

/// A cluster node that answers through the fake OpenAI-compatible upstream, with
/// histories where `store` says.
fn replying_node(
    redis_url: &str,
    name: &str,
    llm_url: &str,
    store: hearken::config::HistoryStoreKind,
) -> hearken::Config {
    let mut config = cluster_config(redis_url, name);
    config.llm.backend = hearken::config::LlmBackendKind::Openai;
    config.llm.base_url = llm_url.to_string();
    config.llm.model = "fake".into();
    config.llm.history_store = store;
    config
}

/// `session.created` of a new Realtime session on `url`.
async fn open_realtime(url: &str) -> (Ws, Value) {
    let mut ws = connect(url).await;
    let created = next_event_of(&mut ws, "session.created").await;
    (ws, created)
}

/// On a Realtime session: set the instructions (the conversation's system prompt) and
/// text replies, add the user's message `q1` and have it answered. Returns the
/// conversation id and the reply's item id.
async fn one_turn(ws: &mut Ws, created: &Value) -> (String, String) {
    let id = created["session"]["conversation_id"]
        .as_str()
        .expect("conversation id")
        .to_string();
    send_json(
        ws,
        serde_json::json!({"type": "session.update", "session": {
            "output_modalities": ["text"], "instructions": "Talk like a pirate."}}),
    )
    .await;
    next_event_of(ws, "session.updated").await;
    send_json(
        ws,
        serde_json::json!({"type": "conversation.item.create", "item": {
            "id": "q1", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Say hello."}]}}),
    )
    .await;
    next_event_of(ws, "conversation.item.added").await;
    send_json(ws, serde_json::json!({"type": "response.create"})).await;
    let done = next_event_of(ws, "response.done").await;
    let response = &done["response"];
    assert_eq!(response["status"], "completed", "{done}");
    let reply = response["output"][0]["id"].as_str().expect("reply id");
    (id, reply.to_string())
}

/// The text of item `item_id`, or the error code if the conversation has none.
async fn retrieve(ws: &mut Ws, item_id: &str) -> Result<String, String> {
    send_json(
        ws,
        serde_json::json!({"type": "conversation.item.retrieve", "item_id": item_id}),
    )
    .await;
    let event = next_event_of_any(ws, &["conversation.item.retrieved", "error"]).await;
    match event["type"].as_str() {
        Some("conversation.item.retrieved") => Ok(event["item"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()),
        _ => Err(event["error"]["code"].as_str().unwrap_or_default().into()),
    }
}

/// Close a session and wait (bounded) until its disconnect is on Redis and its lease
/// released, so the next session of the conversation finds it free.
async fn leave_and_wait(
    ws: &mut Ws,
    (url, subscriber): (&str, &Subscriber),
    id: &str,
    disconnects: usize,
) {
    send_close(ws).await;
    close_code(ws).await;
    let events = subscriber
        .until(|events| {
            let counts = count_by_conversation(events, "connection_disconnected");
            counts.get(id).copied().unwrap_or(0) >= disconnects
        })
        .await;
    let counts = count_by_conversation(&events, "connection_disconnected");
    assert_eq!(counts.get(id).copied(), Some(disconnects), "{events:?}");
    let lease = format!("hearken:lease:{id}");
    let mut free = false;
    for _ in 0..200 {
        if !keys(url, &lease).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        free = true;
        break;
    }
    assert!(free, "the lease of {id} was not released");
}

/// `llm.history_store = "redis"`: a conversation begun on node a (a real turn: the
/// user's message and the model's reply, and a system prompt from `session.update`)
/// is resumed on node b after the client left a, with a's history and settings: b
/// retrieves a's items, and b's next prompt to the model holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_nodes() {
    use hearken::config::HistoryStoreKind;
    let upstream = fake_llm::fake_llm(fake_llm::Upstream::Quick).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let subscriber = Subscriber::start(&url, CHANNEL).await;
    let node = |name| replying_node(&url, name, &upstream.base_url, HistoryStoreKind::Redis);
    let a = TestServer::start(node("a"));
    let b = TestServer::start(node("b"));

    let (mut on_a, created) = open_realtime(&a.realtime_url("")).await;
    assert_eq!(created["session"]["resumed"], false);
    let (id, reply) = one_turn(&mut on_a, &created).await;
    leave_and_wait(&mut on_a, (&url, &subscriber), &id, 1).await;

    // The copy in Redis: one key, expiring with the history's TTL.
    let key = format!("hearken:history:{id}");
    assert_eq!(
        keys(&url, "hearken:history:*").await,
        std::slice::from_ref(&key)
    );
    let mut conn = cluster_support::redis(&url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    let configured = hearken::Config::default().llm.history_ttl_ms as i64;
    assert!(ttl > 0 && ttl <= configured, "PTTL {ttl}");

    let (mut on_b, created) =
        open_realtime(&b.realtime_url(&format!("conversation_id={id}"))).await;
    assert_eq!(created["session"]["resumed"], true, "{created}");
    assert_eq!(retrieve(&mut on_b, "q1").await, Ok("Say hello.".into()));
    assert_eq!(retrieve(&mut on_b, &reply).await, Ok("Hello there".into()));
    send_json(&mut on_b, serde_json::json!({"type": "response.create"})).await;
    next_event_of(&mut on_b, "response.done").await;
    let requests = upstream.requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1]["messages"],
        serde_json::json!([
            {"role": "system", "content": "Talk like a pirate."},
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello there"},
        ]),
        "b's prompt holds a's turn and system prompt"
    );
    leave_and_wait(&mut on_b, (&url, &subscriber), &id, 2).await;

    let history = |server: &TestServer, op: &str, outcome: &str| {
        let counts = &server.metrics.cluster.history;
        counts.with_label_values(&[op, outcome]).get()
    };
    assert_eq!(history(&b, "load", "found"), 1);
    assert!(history(&a, "save", "written") >= 1);
    for server in [&a, &b] {
        for outcome in ["failed", "dropped"] {
            assert_eq!(history(server, "save", outcome), 0, "save {outcome}");
        }
        for outcome in ["failed", "timeout"] {
            assert_eq!(history(server, "load", outcome), 0, "load {outcome}");
        }
    }
    all_back_to_zero(&[&a, &b]).await;
}

/// With the default `llm.history_store = "memory"` nothing of a conversation is
/// written to Redis, and another node does not know it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_histories_stay_off_redis() {
    use hearken::config::HistoryStoreKind;
    assert_eq!(
        hearken::Config::default().llm.history_store,
        HistoryStoreKind::Memory
    );
    let upstream = fake_llm::fake_llm(fake_llm::Upstream::Quick).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let subscriber = Subscriber::start(&url, CHANNEL).await;
    let node = |name| replying_node(&url, name, &upstream.base_url, HistoryStoreKind::Memory);
    let a = TestServer::start(node("a"));
    let b = TestServer::start(node("b"));

    let (mut on_a, created) = open_realtime(&a.realtime_url("")).await;
    let (id, reply) = one_turn(&mut on_a, &created).await;
    leave_and_wait(&mut on_a, (&url, &subscriber), &id, 1).await;
    assert!(keys(&url, "hearken:history:*").await.is_empty());

    let (mut on_b, created) =
        open_realtime(&b.realtime_url(&format!("conversation_id={id}"))).await;
    assert_eq!(created["session"]["resumed"], false, "{created}");
    assert_eq!(
        retrieve(&mut on_b, &reply).await,
        Err("item_not_found".into())
    );
    leave_and_wait(&mut on_b, (&url, &subscriber), &id, 2).await;

    // Only the cluster's own keys: nothing under any other name.
    let all = keys(&url, "*").await;
    assert!(
        all.iter()
            .all(|k| k == CHANNEL || k.starts_with("hearken:node")),
        "{all:?}"
    );
    for server in [&a, &b] {
        let counts = &server.metrics.cluster.history;
        assert_eq!(counts.with_label_values(&["save", "written"]).get(), 0);
        assert_eq!(counts.with_label_values(&["load", "found"]).get(), 0);
    }
    all_back_to_zero(&[&a, &b]).await;
}

/// `llm.history_store = "redis"` with Redis stopped: a resume costs only the history.
/// The session starts (its first event is `session.created`, not an error) as a fresh
/// conversation, answers, and the failed read and the write that could not be sent are
/// counted; once Redis is back everything settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_means_no_resume_not_an_error() {
    use hearken::config::HistoryStoreKind;
    let upstream = fake_llm::fake_llm(fake_llm::Upstream::Quick).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let subscriber = Subscriber::start(&url, CHANNEL).await;
    let node = |name| replying_node(&url, name, &upstream.base_url, HistoryStoreKind::Redis);
    let a = TestServer::start(node("a"));
    let b = TestServer::start(node("b"));
    let (mut on_a, created) = open_realtime(&a.realtime_url("")).await;
    let (id, reply) = one_turn(&mut on_a, &created).await;
    leave_and_wait(&mut on_a, (&url, &subscriber), &id, 1).await;
    assert_eq!(keys(&url, "hearken:history:*").await.len(), 1);

    redis.pause();
    let mut on_b = connect(&b.realtime_url(&format!("conversation_id={id}"))).await;
    let Incoming::Event(first) = next_incoming(&mut on_b).await else {
        panic!("the session did not start");
    };
    assert_eq!(first["type"], "session.created", "{first}");
    assert_eq!(first["session"]["resumed"], false, "{first}");
    assert_eq!(
        retrieve(&mut on_b, &reply).await,
        Err("item_not_found".into())
    );
    send_json(&mut on_b, serde_json::json!({"type": "response.create"})).await;
    let done = next_event_of(&mut on_b, "response.done").await;
    assert_eq!(done["response"]["status"], "completed", "{done}");
    let counts = b.metrics.cluster.history.clone();
    let count = |op: &str, outcome: &str| counts.with_label_values(&[op, outcome]).get();
    assert_eq!(count("load", "found"), 0);
    assert!(
        eventually(|| count("load", "failed") + count("load", "timeout") == 1).await,
        "the failed read is counted"
    );
    assert!(
        eventually(|| count("save", "failed") >= 1).await,
        "the reply's write, dropped while Redis is away, is counted"
    );
    redis.resume();

    send_close(&mut on_b).await;
    close_code(&mut on_b).await;
    all_back_to_zero(&[&a, &b]).await;
}
