//! The server-wide things every conversation shares: configuration, metrics, the
//! registry and the worker pools. Built once per server and handed to each session.

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::RegistryHandle;
use crate::workers::WorkerPool;

pub struct Services {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub registry: RegistryHandle,
    /// Opus decoding, resampling and VAD batches.
    pub dsp: WorkerPool,
    /// File I/O (recordings).
    pub io: WorkerPool,
}

impl Services {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        registry: RegistryHandle,
    ) -> std::io::Result<Arc<Self>> {
        let workers = &config.workers;
        let dsp = WorkerPool::new(
            "dsp",
            workers.dsp_threads,
            workers.queue_depth,
            Arc::clone(&metrics),
        )?;
        let io = WorkerPool::new(
            "io",
            workers.io_threads,
            workers.queue_depth,
            Arc::clone(&metrics),
        )?;
        Ok(Arc::new(Services {
            config,
            metrics,
            registry,
            dsp,
            io,
        }))
    }
}
