//! 300 connect / stream / leave cycles, 20 at a time, with every way of leaving mixed in.
//! Afterwards every leak gauge is back to zero and the process holds no more file
//! descriptors than before. (Its own test binary: the FD count is process-wide.)

mod common;

use std::sync::Arc;

use common::*;
use futures_util::SinkExt;
use hearken::ExitReason;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

const CYCLES: usize = 300;
const CONCURRENCY: usize = 20;

/// Open file descriptors of this process. Panics when `/proc` cannot be read: a count
/// of 0 would make the "no more FDs than before" check pass whatever leaked.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd must be readable to count file descriptors")
        .count()
}

/// How a cycle leaves.
#[derive(Clone, Copy)]
enum Leave {
    CloseFrame,
    DropTcp,
    IdleTimeout,
    Reconnect,
}

async fn cycle(url: String, leave: Leave, audio: Arc<Vec<u8>>) {
    let (mut ws, started) = start_session(&url).await;
    // A little real audio, in 20 ms frames.
    for frame in audio.chunks(640).take(15) {
        ws.send(Message::binary(frame.to_vec()))
            .await
            .expect("send audio");
    }
    match leave {
        Leave::CloseFrame => {
            send_close(&mut ws).await;
            close_code(&mut ws).await;
        }
        Leave::DropTcp => drop(ws),
        Leave::IdleTimeout => assert_eq!(close_code(&mut ws).await, Some(4000)),
        Leave::Reconnect => {
            let id = conversation_id(&started);
            let again = format!("{url}&conversation_id={id}");
            let mut second = connect(&again).await;
            assert_eq!(close_code(&mut ws).await, Some(4001));
            let resumed = next_event_of(&mut second, "session.started").await;
            assert_eq!(resumed["resumed"], true);
            send_close(&mut second).await;
            close_code(&mut second).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_nothing_behind() {
    let mut config = test_config();
    config.session.idle_timeout_ms = 300;
    let server = TestServer::start(config);
    let (speech, _) = fixture("fox_16k.wav");
    let audio = Arc::new(pcm_bytes(&speech[16_000..]));

    // Warm up once so lazily created runtime resources are in the baseline.
    cycle(
        server.url("client_id=warmup"),
        Leave::CloseFrame,
        Arc::clone(&audio),
    )
    .await;
    assert!(eventually(|| server.gauges().iter().all(|(_, v)| *v == 0)).await);
    let fds_before = open_fds();

    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(CYCLES);
    for i in 0..CYCLES {
        let leave = [
            Leave::CloseFrame,
            Leave::DropTcp,
            Leave::IdleTimeout,
            Leave::Reconnect,
        ][i % 4];
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("semaphore open");
        let url = server.url(&format!("client_id=churn-{i}"));
        let audio = Arc::clone(&audio);
        tasks.push(tokio::spawn(async move {
            cycle(url, leave, audio).await;
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("cycle finished");
    }

    assert!(
        eventually(|| server.gauges().iter().all(|(_, v)| *v == 0)).await,
        "gauges after churn: {:?}",
        server.gauges()
    );
    let metrics = &server.metrics;
    let reconnects = CYCLES / 4;
    let expected_events = (1 + CYCLES + reconnects) as u64;
    let published = || {
        ExitReason::ALL
            .iter()
            .map(|r| metrics.disconnects(*r))
            .sum::<u64>()
    };
    // Gauges fall just before the registry counts the event: wait for the last count.
    assert!(eventually(|| published() >= expected_events).await);
    let by_reason: Vec<(ExitReason, u64)> = ExitReason::ALL
        .iter()
        .map(|r| (*r, metrics.disconnects(*r)))
        .collect();
    println!("disconnects by reason: {by_reason:?}");
    assert_eq!(
        metrics.disconnects(ExitReason::Superseded),
        reconnects as u64
    );
    assert_eq!(
        metrics.disconnects(ExitReason::Timeout),
        (CYCLES / 4) as u64
    );
    let total: u64 = ExitReason::ALL
        .iter()
        .map(|r| metrics.disconnects(*r))
        .sum();
    assert_eq!(
        total,
        (1 + CYCLES + reconnects) as u64,
        "one event per session"
    );
    assert_eq!(metrics.duplicate_disconnects.get(), 0);
    assert!(
        eventually(|| open_fds() <= fds_before).await,
        "file descriptors: {} before, {} after",
        fds_before,
        open_fds()
    );
}
