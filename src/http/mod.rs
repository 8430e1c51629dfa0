//! HTTP routes: the WebSocket upgrades (native and Realtime), the operator endpoints
//! and the demo page.

pub mod auth;
pub mod demo;
pub mod events;
pub mod ops;
pub mod realtime;
pub mod ws;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
}

impl ServerStatus {
    pub fn new(models: Arc<crate::services::Readiness>) -> Arc<Self> {
        Arc::new(ServerStatus {
            ready: AtomicBool::new(false),
            models,
            draining: AtomicBool::new(false),
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

    /// Stop admitting sessions. Event streams go on until the registry closes them,
    /// after the last conversation's disconnect (see `Server::shutdown`).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
