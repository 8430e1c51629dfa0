//! Building, running and stopping one hearken server.
//!
//! [`Server::start`] binds, starts the registry, worker pools and HTTP workers, and
//! returns a handle. Shutdown is one routine with one deadline: stop accepting, mark
//! not-ready, end every conversation with `server_shutdown`, wait until the registry is
//! empty, close the event stream and wait until every event sink (each `/v1/events`
//! stream) has sent every disconnect and ended — both waits together bounded by
//! `server.shutdown_drain_ms` — then stop the HTTP server and drop the pools (joining
//! their threads). The binary calls it on SIGTERM/SIGINT; tests and embedders call it
//! directly.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};

use crate::actors::write_stall::ConnectionSocket;
use crate::admission::Admission;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::heap;
use crate::http::{demo::DemoPage, events, ops, realtime, ws, AppState, ServerStatus};
use crate::metrics::Metrics;
use crate::registry::{DrainAll, Registry};
use crate::services::Services;
use crate::workers::CancelToken;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Services(#[from] crate::services::ServicesError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every conversation tore down and every event sink ended within the deadline.
    Clean,
    /// The deadline passed with conversations still registered, or event sinks that
    /// had not sent every disconnect yet.
    DeadlineExceeded,
}

/// A running server. Must be used from inside an actix system (`actix_rt`).
pub struct Server {
    addr: SocketAddr,
    services: Arc<Services>,
    status: Arc<ServerStatus>,
    http: actix_web::dev::ServerHandle,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
    sweeper: tokio::task::JoinHandle<()>,
    /// Hands malloc's free pages back every `server.heap_trim_interval_ms`.
    heap_trimmer: Option<tokio::task::JoinHandle<()>>,
    /// The Redis bridge's tasks, when the cluster is on. Its node task is an event
    /// sink: shutdown's event flush waits for it to publish every disconnect.
    cluster: Option<Cluster>,
}

impl Server {
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let config = Arc::new(config);
        let metrics = Metrics::new();
        let registry = Registry::start_new(Arc::clone(&metrics));
        let cluster = Cluster::start(&config, &registry, &metrics)?;
        let handle = cluster.as_ref().map(Cluster::handle);
        let services = Services::new(Arc::clone(&config), metrics, registry, handle)?;
        let admission = Admission::new(
            config.server.max_sessions,
            config.server.max_sessions_per_ip,
        );
        let status = ServerStatus::new(Arc::clone(&services.readiness));
        let state = web::Data::new(AppState {
            services: Arc::clone(&services),
            admission,
            status: Arc::clone(&status),
        });
        let bind_addr = format!("{}:{}", config.server.host, config.server.port);
        let ms = Duration::from_millis;
        let auth_required = !config.auth.tokens.is_empty();
        let demo = (config.server.demo_page).then(|| DemoPage::new(auth_required));
        let mut http = HttpServer::new(move || {
            let demo = demo.clone();
            App::new()
                .app_data(state.clone())
                .configure(|cfg| {
                    if let Some(page) = demo {
                        page.routes(cfg)
                    }
                })
                .route("/v1/ws", web::get().to(ws::upgrade))
                .route("/v1/realtime", web::get().to(realtime::upgrade))
                .route("/v1/events", web::get().to(events::events))
                .route("/v1/conversations", web::get().to(ops::conversations))
                .route("/v1/cluster", web::get().to(ops::cluster))
                .route("/health", web::get().to(ops::health))
                .route("/ready", web::get().to(ops::ready))
                .route("/metrics", web::get().to(ops::metrics))
        })
        .on_connect(|connection, extensions| {
            // Remembered so the write-stall watchdog can abort a connection whose
            // client stopped reading (the dispatcher itself would wait forever).
            if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                extensions.insert(ConnectionSocket(tcp.as_raw_fd()));
            }
        })
        .client_request_timeout(ms(config.server.request_head_timeout_ms))
        .keep_alive(ms(config.server.keep_alive_ms))
        .client_disconnect_timeout(ms(config.server.client_disconnect_timeout_ms))
        .disable_signals()
        .shutdown_timeout(1)
        .backlog(4096)
        .max_connections(config.server.max_sessions + 1024);
        if config.server.workers > 0 {
            http = http.workers(config.server.workers);
        }
        let http = http.bind(&bind_addr).map_err(|source| ServerError::Bind {
            addr: bind_addr.clone(),
            source,
        })?;
        let addr = http
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| ServerError::Bind {
                addr: bind_addr,
                source: std::io::Error::other("no address bound"),
            })?;
        let http = http.run();
        let handle = http.handle();
        let running = tokio::task::spawn_local(http);
        let sweeper = tokio::task::spawn_local(sweep_histories(Arc::clone(&services)));
        let trim_every = ms(config.server.heap_trim_interval_ms);
        let heap_trimmer = (!trim_every.is_zero())
            .then(|| tokio::task::spawn_local(trim_heap(Arc::clone(&services), trim_every)));
        status.set_ready(true);
        tracing::info!(%addr, "hearken listening");
        Ok(Server {
            addr,
            services,
            status,
            http: handle,
            running,
            sweeper,
            heap_trimmer,
            cluster,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry, e.g. to subscribe to lifecycle events in-process.
    pub fn registry(&self) -> crate::registry::RegistryHandle {
        self.services.registry.clone()
    }

    /// True once every model thread has loaded its model.
    pub fn models_loaded(&self) -> bool {
        self.services.readiness.models_loaded()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.services.metrics)
    }

    /// The one shutdown routine (see the module docs).
    pub async fn shutdown(self) -> Result<DrainOutcome, ServerError> {
        let drain = Duration::from_millis(self.services.config.server.shutdown_drain_ms);
        let deadline = tokio::time::Instant::now() + drain;
        tracing::info!(deadline_ms = drain.as_millis() as u64, "draining");
        self.status.begin_drain();
        self.http.pause().await;
        let drained = self.services.registry.addr.send(DrainAll);
        let mut outcome = match tokio::time::timeout_at(deadline, drained).await {
            Ok(_) => DrainOutcome::Clean,
            Err(_) => {
                tracing::error!("drain deadline passed with conversations still live");
                DrainOutcome::DeadlineExceeded
            }
        };
        // Every disconnect is published by now: let each sink deliver them and end.
        if !self.services.registry.close_events(deadline).await {
            tracing::error!(
                sinks = self.services.registry.sinks(),
                "drain deadline passed with event sinks still sending"
            );
            outcome = DrainOutcome::DeadlineExceeded;
        }
        if let Some(cluster) = self.cluster {
            cluster.stop().await;
        }
        self.http.stop(true).await;
        self.sweeper.abort();
        if let Some(trimmer) = self.heap_trimmer {
            trimmer.abort();
        }
        let finished = self.running.await;
        drop(self.services);
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(ServerError::Http(error)),
            Err(join) => return Err(ServerError::Http(std::io::Error::other(join.to_string()))),
        }
        tracing::info!(?outcome, "stopped");
        Ok(outcome)
    }
}

/// Remove expired conversation histories every quarter of their TTL (at most a minute),
/// and keep the stored-conversations gauge current.
async fn sweep_histories(services: Arc<Services>) {
    let ttl = Duration::from_millis(services.config.llm.history_ttl_ms);
    let period = (ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        let removed = services.conversations.sweep();
        if removed > 0 {
            tracing::debug!(removed, "expired conversation histories removed");
        }
        let kept = services.conversations.len() as i64;
        services.metrics.stored_conversations.set(kept);
    }
}

/// Every `period`, when malloc keeps more than [`heap::TRIM_WHEN_FREE_BYTES`] free, hand
/// the free pages inside its arenas back to the system, on an I/O worker thread (the trim
/// walks every arena under its lock). One trim at a time; a full I/O queue skips a turn.
async fn trim_heap(services: Arc<Services>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let token = CancelToken::new();
    loop {
        ticks.tick().await;
        if heap::free_bytes() < heap::TRIM_WHEN_FREE_BYTES {
            continue;
        }
        let metrics = Arc::clone(&services.metrics);
        let trimmed = services.io.submit(&token, (), move |_: &mut ()| {
            if heap::release_free_pages() {
                metrics.heap.trims.inc();
            }
        });
        if let Ok(done) = trimmed {
            let _ = done.await;
        }
    }
}
