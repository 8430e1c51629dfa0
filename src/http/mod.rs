//! HTTP routes: the WebSocket upgrade and the operator endpoints.

pub mod auth;
pub mod events;
pub mod ops;
pub mod ws;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::admission::Admission;
use crate::services::Services;

/// Everything a request handler needs, shared by all HTTP workers.
pub struct AppState {
    pub services: Arc<Services>,
    pub admission: Arc<Admission>,
    pub status: Arc<ServerStatus>,
}

/// Server-wide readiness and shutdown flags.
pub struct ServerStatus {
    ready: AtomicBool,
    models: Arc<crate::services::Readiness>,
    draining: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl ServerStatus {
    pub fn new(models: Arc<crate::services::Readiness>) -> Arc<Self> {
        let (shutdown, _) = watch::channel(false);
        Arc::new(ServerStatus {
            ready: AtomicBool::new(false),
            models,
            draining: AtomicBool::new(false),
            shutdown,
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Listening, every model loaded, and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.models.models_loaded() && !self.is_draining()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stop admitting sessions and tell long-lived streams to end.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}
