//! The write-stall watchdog of one WebSocket session: what ends a session whose client
//! stopped reading.
//!
//! actix-web-actors runs the session actor *inside* the HTTP response body: the actor,
//! its timers and its mailbox are polled only when actix-http's dispatcher polls the
//! body for more output, and the dispatcher does that only while its write buffer is
//! below its limit. Once a client stops reading and the socket's send buffer is full,
//! the body is never polled again: the actor's idle timer never fires, and its tree
//! lives until the client closes the socket. So the deadline cannot live in the actor.
//!
//! [`WatchedBody`] wraps the body. When the body hands the dispatcher a chunk, it notes
//! the time; when the dispatcher comes back for more (its buffer drained below the
//! limit), the note is cleared. A watchdog task on the same arbiter checks the note: when
//! output has waited longer than `session.write_stall_ms`, it marks the [`StallSignal`]
//! the session shares, drops the body (and so the actor: its `ConversationLink` reads
//! the signal and ends the conversation as `timeout` through the one teardown), and
//! shuts the socket down so the dispatcher, woken by the error, lets the connection go.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;

use crate::metrics::Metrics;

/// Shortest check interval of the watchdog, so tiny test deadlines do not spin.
const MIN_TICK: Duration = Duration::from_millis(10);

/// Set by the watchdog when the session's output stalled; read by the session's
/// `ConversationLink` when the session is dropped.
#[derive(Debug, Default)]
pub struct StallSignal {
    stalled_at: Cell<Option<Instant>>,
}

impl StallSignal {
    /// When the watchdog gave up on the client, if it did.
    pub fn stalled_at(&self) -> Option<Instant> {
        self.stalled_at.get()
    }
}

/// The raw socket of an HTTP connection, recorded when the connection is accepted
/// (`HttpServer::on_connect`) so the watchdog can shut it down.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSocket(pub RawFd);

/// The session's response body, watched for write stalls.
pub struct WatchedBody<S> {
    shared: Rc<Shared<S>>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

struct Shared<S> {
    body: RefCell<Option<Pin<Box<S>>>>,
    /// When the body last handed out a chunk that the dispatcher has not come back
    /// after; `None` while the dispatcher is waiting on the body.
    waiting_since: Cell<Option<Instant>>,
    signal: Rc<StallSignal>,
    socket: Option<ConnectionSocket>,
}

impl<S: Stream + 'static> WatchedBody<S> {
    /// Wrap `body` and start its watchdog on the current arbiter.
    pub fn new(
        body: S,
        signal: Rc<StallSignal>,
        socket: Option<ConnectionSocket>,
        stall: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shared = Rc::new(Shared {
            body: RefCell::new(Some(Box::pin(body))),
            waiting_since: Cell::new(None),
            signal,
            socket,
        });
        let watchdog = tokio::task::spawn_local(watch(Rc::downgrade(&shared), stall, metrics));
        WatchedBody {
            shared,
            watchdog: Some(watchdog),
        }
    }
}

impl<S: Stream> Stream for WatchedBody<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let shared = &self.shared;
        // The dispatcher is asking for more: whatever it had, it has room again.
        shared.waiting_since.set(None);
        let mut body = shared.body.borrow_mut();
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(None); // dropped by the watchdog
        };
        let polled = inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(_)) = polled {
            shared.waiting_since.set(Some(Instant::now()));
        }
        polled
    }
}

impl<S> Drop for WatchedBody<S> {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
    }
}

/// Check every quarter of the deadline until the body is gone or has stalled.
async fn watch<S>(shared: Weak<Shared<S>>, stall: Duration, metrics: Arc<Metrics>) {
    let tick = (stall / 4).max(MIN_TICK);
    loop {
        tokio::time::sleep(tick).await;
        // The body (owned by the connection's dispatcher) is the only other owner: if
        // this upgrade succeeds, the dispatcher, and so its socket, are still alive.
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(since) = shared.waiting_since.get() else {
            continue;
        };
        if since.elapsed() < stall {
            continue;
        }
        metrics.write_stalls.inc();
        tracing::info!(
            waited_ms = since.elapsed().as_millis() as u64,
            "client stopped reading; ending its session"
        );
        shared.signal.stalled_at.set(Some(Instant::now()));
        // Dropping the body drops the session actor: its link starts the teardown.
        let body = shared.body.borrow_mut().take();
        drop(body);
        if let Some(socket) = shared.socket {
            abort_connection(socket);
        }
        return;
    }
}

/// Make the connection fail now: reads see EOF and writes fail, which wakes the
/// dispatcher (stuck on a full send buffer) so it drops the connection, and a zero
/// linger turns that close into a reset instead of keeping the unread bytes queued.
fn abort_connection(socket: ConnectionSocket) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor belongs to the TCP stream of the dispatcher that still owns
    // this body (see `watch`), so it is open and is that connection's socket. Neither
    // call closes it; the dispatcher does, when it drops the stream.
    unsafe {
        libc::setsockopt(
            socket.0,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::shutdown(socket.0, libc::SHUT_RDWR);
    }
}
