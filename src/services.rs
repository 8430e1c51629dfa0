//! The server-wide things every conversation shares: configuration, metrics, the
//! registry, the worker pools and the loaded models. Built once per server and handed
//! to each session.
//!
//! Model files are checked before anything starts (a missing or unloadable file fails
//! the start with one message naming it and the command that fetches it); each model
//! thread then loads its own session in the background, and [`Readiness`] says when all
//! have, which is what `GET /ready` reports.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::ClusterHandle;
use crate::config::{Config, HistoryStoreKind, LlmBackendKind, TurnMode, VadEngine};
use crate::history_store::HistoryStore;
use crate::llm::backend::{EmbeddedBackend, LlmBackend};
use crate::llm::breaker::CircuitBreaker;
use crate::llm::history::ConversationStore;
use crate::llm::openai::{OpenAiBackend, OpenAiConfig};
use crate::llm::{ChatMessage, EmbeddedModel, GenerationParams, SMOLLM_FILE};
use crate::metrics::Metrics;
use crate::models::moonshine::MoonshineEncoder;
use crate::models::smart_turn::{SmartTurn, SMART_TURN_FILE};
use crate::models::{
    self, BatchedDecoder, ModelError, MoonshineFiles, SileroVad, Tokenizer, MOONSHINE_DIR,
    ORT_DYLIB_FILE, SILERO_FILE,
};
use crate::registry::RegistryHandle;
use crate::tts::{piper_model_path, PhonemizerPool, PiperVoice, TtsError, PIPER_CONFIG_FILE};
use crate::workers::llm_batcher::{LlmBatcher, PassShape};
use crate::workers::pool::{Lanes, StateInit};
use crate::workers::silero_batcher::SileroBatcher;
use crate::workers::{niceness, SttBatcher, SttModels, WorkerPool};

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot start worker threads: {0}")]
    Threads(#[from] std::io::Error),
    #[error("LLM backend: {0}")]
    Llm(String),
    #[error(transparent)]
    Tts(#[from] TtsError),
    #[error("llm.history_store = \"redis\" needs the cluster (cluster.redis_url)")]
    HistoryStore,
}

/// Counts model threads still loading; ready once none are and none failed.
#[derive(Default)]
pub struct Readiness {
    loading: AtomicUsize,
    failed: AtomicBool,
}

impl Readiness {
    fn expect_loads(&self, threads: usize) {
        self.loading.fetch_add(threads, Ordering::AcqRel);
    }

    fn report(&self, outcome: Result<(), String>) {
        if outcome.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        self.loading.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn models_loaded(&self) -> bool {
        self.loading.load(Ordering::Acquire) == 0 && !self.failed.load(Ordering::Acquire)
    }
}

pub struct Services {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub registry: RegistryHandle,
    /// Opus decoding, resampling and webrtc-vad batches.
    pub dsp: WorkerPool,
    /// File I/O (recordings).
    pub io: WorkerPool,
    /// Silero VAD, when `vad.engine = "silero"`.
    pub silero: Option<SileroBatcher>,
    /// Moonshine speech-to-text, when `stt.enabled`.
    pub stt: Option<SttBatcher>,
    /// Smart Turn end-of-turn verdicts, when `vad.turn = "smart"` and speech is
    /// transcribed (the check reads the segment audio the recogniser keeps).
    pub turn: Option<WorkerPool<SmartTurn>>,
    /// The reply backend, unless `llm.backend = "none"`.
    pub llm: Option<Arc<dyn LlmBackend>>,
    /// Speech synthesis, when `tts.enabled`.
    pub tts: Option<TtsService>,
    /// Conversation histories; they outlive sessions (and, with
    /// `llm.history_store = "redis"`, this node).
    pub conversations: Arc<HistoryStore>,
    /// The Redis cluster, when `cluster.redis_url` is set: sessions take their
    /// conversation's lease through it.
    pub cluster: Option<ClusterHandle>,
    pub readiness: Arc<Readiness>,
}

impl Services {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        registry: RegistryHandle,
        cluster: Option<ClusterHandle>,
    ) -> Result<Arc<Self>, ServicesError> {
        let workers = &config.workers;
        let depth = workers.queue_depth;
        let dsp = WorkerPool::new("dsp", workers.dsp_threads, depth, Arc::clone(&metrics))?;
        let io = WorkerPool::new("io", workers.io_threads, depth, Arc::clone(&metrics))?;
        let readiness = Arc::new(Readiness::default());

        let dir = config.models.dir.clone();
        let needs_runtime =
            config.vad.engine == VadEngine::Silero || config.stt.enabled || config.tts.enabled;
        if needs_runtime {
            models::init_runtime(&dir.join(ORT_DYLIB_FILE))?;
        }

        let silero = match config.vad.engine {
            VadEngine::Webrtc => None,
            VadEngine::Silero => {
                let path = dir.join(SILERO_FILE);
                // Fail the start now, with the file's name, rather than in a thread.
                SileroVad::load(&path)?;
                let threads = config.vad.silero_threads;
                readiness.expect_loads(threads);
                let ready = Arc::clone(&readiness);
                Some(SileroBatcher::new(
                    path,
                    threads,
                    depth,
                    config.vad.max_batch,
                    Arc::clone(&metrics),
                    move |outcome| ready.report(outcome),
                )?)
            }
        };

        let stt = if config.stt.enabled {
            let files = moonshine_files(&dir.join(MOONSHINE_DIR))?;
            let threads = config.stt.threads;
            readiness.expect_loads(threads + 1);
            let ready = Arc::clone(&readiness);
            let (intra, nice) = (config.stt.intra_threads, config.workers.model_nice);
            let encoder_file = files.encoder.clone();
            let encoder: StateInit<MoonshineEncoder> = Arc::new(move || {
                niceness::lower_current_thread(nice);
                MoonshineEncoder::load(&encoder_file, intra).map_err(|e| e.to_string())
            });
            let decoder = Arc::new(move || {
                niceness::lower_current_thread(nice);
                let decoder = BatchedDecoder::load(&files.decoder).map_err(|e| e.to_string())?;
                let tokenizer = Tokenizer::load(&files.tokenizer).map_err(|e| e.to_string())?;
                Ok((decoder, tokenizer))
            });
            Some(SttBatcher::new(
                threads,
                depth,
                config.stt.max_batch,
                Arc::clone(&metrics),
                SttModels { encoder, decoder },
                move |outcome| ready.report(outcome),
            )?)
        } else {
            None
        };

        let turn = if config.vad.turn == TurnMode::Smart && config.stt.enabled {
            let path = dir.join(SMART_TURN_FILE);
            if !path.is_file() {
                return Err(ModelError::ModelFileMissing {
                    model: "smart-turn",
                    path,
                }
                .into());
            }
            readiness.expect_loads(1);
            let ready = Arc::clone(&readiness);
            let init: StateInit<SmartTurn> =
                Arc::new(move || SmartTurn::load(&path).map_err(|e| e.to_string()));
            Some(WorkerPool::with_state(
                "turn",
                1.into(),
                depth,
                Arc::clone(&metrics),
                init,
                move |outcome| ready.report(outcome),
            )?)
        } else {
            None
        };

        let llm = llm_backend(&config, &metrics, &readiness)?;
        let tts = if config.tts.enabled {
            Some(TtsService::start(&config, &metrics, &readiness)?)
        } else {
            None
        };
        let history = &config.llm;
        let local = ConversationStore::new(
            Duration::from_millis(history.history_ttl_ms),
            history.history_max_messages,
            history.history_max_conversations,
        )
        .with_byte_limits(history.history_max_bytes, history.history_total_bytes)
        .with_eviction_counter(metrics.history_evictions.clone());
        let redis = cluster.as_ref().and_then(|c| c.history().cloned());
        let conversations = Arc::new(match (history.history_store, redis) {
            (HistoryStoreKind::Redis, Some(redis)) => HistoryStore::redis(local, redis),
            (HistoryStoreKind::Redis, None) => return Err(ServicesError::HistoryStore),
            (HistoryStoreKind::Memory, _) => HistoryStore::memory(local),
        });

        Ok(Arc::new(Services {
            config,
            metrics,
            registry,
            dsp,
            io,
            silero,
            stt,
            turn,
            llm,
            tts,
            conversations,
            cluster,
            readiness,
        }))
    }
}

/// Piper voices (one per thread) and the espeak-ng processes they share.
pub struct TtsService {
    pub voices: WorkerPool<PiperVoice>,
    pub phonemizer: Arc<PhonemizerPool>,
}

impl TtsService {
    fn start(
        config: &Config,
        metrics: &Arc<Metrics>,
        readiness: &Arc<Readiness>,
    ) -> Result<Self, ServicesError> {
        let dir = &config.models.dir;
        let (model, voice_config) = (piper_model_path(dir), dir.join(PIPER_CONFIG_FILE));
        for path in [&model, &voice_config] {
            if !path.is_file() {
                let path = path.clone();
                return Err(ModelError::ModelFileMissing {
                    model: "piper",
                    path,
                }
                .into());
            }
        }
        let threads = Lanes {
            any: config.tts.threads,
            urgent_only: config.tts.urgent_threads,
        };
        let phonemizer = Arc::new(PhonemizerPool::new(
            threads.total(),
            metrics.child_processes.clone(),
        )?);
        readiness.expect_loads(threads.total());
        let ready = Arc::clone(readiness);
        let init: StateInit<PiperVoice> =
            Arc::new(move || PiperVoice::load(&model, &voice_config).map_err(|e| e.to_string()));
        let voices = WorkerPool::with_state(
            "tts",
            threads,
            config.workers.queue_depth,
            Arc::clone(metrics),
            init,
            move |outcome| ready.report(outcome),
        )?;
        Ok(TtsService { voices, phonemizer })
    }
}

fn llm_backend(
    config: &Config,
    metrics: &Arc<Metrics>,
    readiness: &Arc<Readiness>,
) -> Result<Option<Arc<dyn LlmBackend>>, ServicesError> {
    let llm = &config.llm;
    match llm.backend {
        LlmBackendKind::None => Ok(None),
        LlmBackendKind::Openai => {
            let openai = OpenAiConfig {
                base_url: llm.base_url.clone(),
                model: llm.model.clone(),
                api_key: (!llm.api_key.is_empty()).then(|| llm.api_key.clone()),
                connect_timeout: Duration::from_millis(llm.connect_timeout_ms),
                read_timeout: Duration::from_millis(llm.read_timeout_ms),
            };
            let breaker = CircuitBreaker::new(
                llm.breaker_failures,
                Duration::from_millis(llm.breaker_cooldown_ms),
            );
            let backend = OpenAiBackend::new(openai, breaker)
                .map_err(|e| ServicesError::Llm(e.to_string()))?;
            Ok(Some(backend))
        }
        LlmBackendKind::Embedded => {
            let path = config.models.dir.join(SMOLLM_FILE);
            if !path.is_file() {
                return Err(ModelError::ModelFileMissing {
                    model: "smollm2",
                    path,
                }
                .into());
            }
            readiness.expect_loads(llm.threads);
            let ready = Arc::clone(readiness);
            let kv_cache_bytes = llm.kv_cache_mb as usize * 1024 * 1024;
            metrics
                .latency
                .llm_kv_cache_limit_bytes
                .set((kv_cache_bytes * llm.threads) as i64);
            let nice = config.workers.model_nice;
            let init: StateInit<EmbeddedModel> = Arc::new(move || {
                niceness::lower_current_thread(nice);
                let mut model = EmbeddedModel::load(&path).map_err(|e| e.to_string())?;
                warm_up(&mut model)?;
                Ok(model.with_kv_cache(kv_cache_bytes))
            });
            let batcher = LlmBatcher::new(
                llm.threads,
                config.workers.queue_depth,
                PassShape {
                    rows: llm.max_batch,
                    prompt_chunks: llm.prompt_chunks_per_pass,
                },
                Arc::clone(metrics),
                init,
                move |outcome| ready.report(outcome),
            )?;
            let params = GenerationParams {
                max_tokens: llm.max_tokens as usize,
                ..GenerationParams::default()
            };
            Ok(Some(EmbeddedBackend::new(batcher, params)))
        }
    }
}

/// The Moonshine files the STT threads load, checked to exist before the threads
/// try: the encoder converted where present (else the fetched `.ort`), the decoder
/// always the converted float32 file, whose weights hearken's batched decoder reads.
fn moonshine_files(dir: &Path) -> Result<MoonshineFiles, ModelError> {
    let files = MoonshineFiles {
        decoder: MoonshineFiles::converted(dir).decoder,
        ..MoonshineFiles::find(dir)
    };
    for path in files.paths() {
        if !path.is_file() {
            return Err(ModelError::ModelFileMissing {
                model: "moonshine",
                path: path.to_path_buf(),
            });
        }
    }
    tracing::info!(
        encoder = %files.encoder.display(),
        decoder = %files.decoder.display(),
        "moonshine files"
    );
    Ok(files)
}

/// One token generated at load: the matrix threads start now, not under the first
/// caller's reply, and the thread count a server reports once ready is the one it keeps.
fn warm_up(model: &mut EmbeddedModel) -> Result<(), String> {
    let params = GenerationParams {
        max_tokens: 1,
        ..GenerationParams::default()
    };
    model
        .generate(&[ChatMessage::user("Hello")], &params, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .map(|_| ())
        .map_err(|e| format!("warming up: {e}"))
}
