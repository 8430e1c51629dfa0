//! `RecorderActor`: writes the conversation's decoded input audio to
//! `<recorder.dir>/<conversation_id>.wav`.
//!
//! The file is the actor's one resource, a [`WavSink`]. All file work (create, write,
//! finalise) runs on the I/O pool; the sink travels with each write job like the VAD's
//! state does. Recording is data, so write jobs use a token of their own that the
//! conversation's teardown does not cancel. Asked to stop while a write is out, the actor
//! waits for it; `stopped()` then queues one last job that writes what is pending and
//! finalises the file. Every job holds the child link, so the conversation's disconnect
//! event is only published once the file is closed. Should the actor die mid-job, the
//! sink's `Drop` still finalises the file on the worker.

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;

use super::child::{fail_on_request, ChildEnv, ChildLink, ChildRole};
use super::messages::{ChildEvent, Record, StopChild};
use crate::audio::wav::WavSink;
use crate::metrics::{ActorKind, GaugeGuard, Metrics};
use crate::workers::CancelToken;

/// Pending audio beyond this many samples is dropped and counted (about a minute at 48 kHz).
const MAX_PENDING_SAMPLES: usize = 48_000 * 60;

enum SinkState {
    /// Not created yet: the first write job creates the file.
    NotOpened,
    Home(Box<WavSink>),
    Away,
    /// Creation or a write failed; the failure was reported.
    Broken,
}

/// What a write job needs besides the samples.
#[derive(Clone)]
struct FileSpec {
    path: PathBuf,
    sample_rate: u32,
    metrics: Arc<Metrics>,
}

impl FileSpec {
    /// Create the file if needed, then append `samples`. Runs on the I/O pool.
    fn write(&self, sink: Option<Box<WavSink>>, samples: &[i16]) -> Result<Box<WavSink>, String> {
        let mut sink = match sink {
            Some(sink) => sink,
            None => {
                let guard = GaugeGuard::new(self.metrics.open_files.clone());
                let sink = WavSink::create(&self.path, self.sample_rate, guard);
                Box::new(sink.map_err(|e| e.to_string())?)
            }
        };
        sink.write(samples).map_err(|e| e.to_string())?;
        Ok(sink)
    }
}

pub struct RecorderActor {
    env: ChildEnv,
    parent: Recipient<ChildEvent>,
    file: FileSpec,
    sink: SinkState,
    pending: Vec<i16>,
    stop_requested: bool,
    /// Never cancelled: recordings are finished even while the conversation ends.
    writes: CancelToken,
    link: ChildLink,
    _live: GaugeGuard,
}

impl RecorderActor {
    pub fn new(env: ChildEnv, link: ChildLink) -> Self {
        let dir = &env.services.config.recorder.dir;
        let file = FileSpec {
            path: dir.join(format!("{}.wav", env.params.conversation_id)),
            sample_rate: env.params.input.sample_rate,
            metrics: Arc::clone(&env.services.metrics),
        };
        RecorderActor {
            parent: env.parent.clone(),
            file,
            sink: SinkState::NotOpened,
            pending: Vec::new(),
            stop_requested: false,
            writes: CancelToken::new(),
            _live: env.services.metrics.actor_guard(ActorKind::Recorder),
            env,
            link,
        }
    }

    /// Take the sink out for a job: `Some(None)` means "create it".
    fn take_sink(&mut self) -> Option<Option<Box<WavSink>>> {
        match std::mem::replace(&mut self.sink, SinkState::Away) {
            SinkState::NotOpened => Some(None),
            SinkState::Home(sink) => Some(Some(sink)),
            other => {
                self.sink = other;
                None
            }
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.pending.is_empty() {
            return;
        }
        let Some(sink) = self.take_sink() else {
            return;
        };
        let samples = std::mem::take(&mut self.pending);
        let file = self.file.clone();
        let job = self
            .env
            .services
            .io
            .submit(&self.writes, self.link.hold(), move |_| {
                file.write(sink, &samples)
            });
        let answer = match job {
            Ok(answer) => answer,
            Err(error) => return self.fail(error.to_string()),
        };
        ctx.spawn(answer.into_actor(self).map(|result, act, ctx| {
            match result {
                Ok(Ok(Ok(sink))) => act.sink = SinkState::Home(sink),
                Ok(Ok(Err(error))) => act.fail(error),
                Ok(Err(error)) => act.fail(error.to_string()),
                Err(_) => act.fail("the I/O pool dropped the job".into()),
            }
            if act.stop_requested {
                ctx.stop();
            } else {
                act.flush(ctx);
            }
        }));
    }

    fn fail(&mut self, error: String) {
        self.sink = SinkState::Broken;
        self.parent.do_send(ChildEvent::Failed {
            role: ChildRole::Recorder,
            error,
        });
    }
}

impl Actor for RecorderActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        let sink = match std::mem::replace(&mut self.sink, SinkState::Broken) {
            SinkState::Home(sink) => Some(sink),
            SinkState::NotOpened if !self.pending.is_empty() => None,
            // Nothing recorded, a broken file, or (after a panic elsewhere) a job that
            // owns the sink and finalises it when dropped.
            _ => return,
        };
        let samples = std::mem::take(&mut self.pending);
        let file = self.file.clone();
        let finish = move |_: &mut ()| -> Result<u64, String> {
            let sink = file.write(sink, &samples)?;
            sink.finish().map_err(|e| e.to_string())
        };
        let submitted = self
            .env
            .services
            .io
            .submit(&self.writes, self.link.hold(), finish);
        if let Err(error) = submitted {
            tracing::error!(path = %self.file.path.display(), %error, "recording not finalised on the I/O pool");
        }
    }
}

impl Handler<Record> for RecorderActor {
    type Result = ();

    fn handle(&mut self, msg: Record, ctx: &mut Context<Self>) {
        if matches!(self.sink, SinkState::Broken) {
            return;
        }
        if self.pending.len() + msg.samples.len() > MAX_PENDING_SAMPLES {
            self.env.services.metrics.audio_frames_dropped.inc();
            return;
        }
        self.pending.extend_from_slice(&msg.samples);
        self.flush(ctx);
    }
}

impl Handler<StopChild> for RecorderActor {
    type Result = ();

    /// Finish the write that is out first; `stopped()` writes the rest.
    fn handle(&mut self, _: StopChild, ctx: &mut Context<Self>) {
        if matches!(self.sink, SinkState::Away) {
            self.stop_requested = true;
        } else {
            ctx.stop();
        }
    }
}

fail_on_request!(RecorderActor, ChildRole::Recorder);
