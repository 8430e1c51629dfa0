//! Supervision plumbing between a conversation and its children.
//!
//! Each child holds the primary [`ChildLink`]; jobs and resources it hands to worker
//! threads hold clones. The parent's [`ChildWatch`] resolves once every clone is gone, so
//! "the child has stopped" means its actor *and* everything it owned have been dropped.
//! The primary link's `Drop` also tells a clean stop from a panic (it checks whether the
//! thread is unwinding), which actix's own supervisor cannot (actix#204).

use tokio::sync::mpsc;

use crate::protocol::native::FailureMode;

/// The child roles of a conversation tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildRole {
    Vad,
    Stt,
    Llm,
    Tts,
    Recorder,
}

impl ChildRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildRole::Vad => "vad",
            ChildRole::Stt => "stt",
            ChildRole::Llm => "llm",
            ChildRole::Tts => "tts",
            ChildRole::Recorder => "recorder",
        }
    }

    pub fn parse(name: &str) -> Option<ChildRole> {
        [
            ChildRole::Vad,
            ChildRole::Stt,
            ChildRole::Llm,
            ChildRole::Tts,
            ChildRole::Recorder,
        ]
        .into_iter()
        .find(|role| role.as_str() == name)
    }
}

/// How a child ended, as seen by its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOutcome {
    /// Stopped normally and released everything it owned.
    Stopped,
    /// Dropped while unwinding from a panic (its resources are released all the same).
    Died,
}

/// Held by a child and by anything it hands to another thread.
#[derive(Debug)]
pub struct ChildLink {
    alive: mpsc::Sender<()>,
    primary: bool,
}

impl ChildLink {
    /// A secondary holder: keeps the parent waiting until it is dropped.
    pub fn hold(&self) -> ChildLink {
        ChildLink {
            alive: self.alive.clone(),
            primary: false,
        }
    }
}

impl Drop for ChildLink {
    fn drop(&mut self) {
        if self.primary && !std::thread::panicking() {
            let _ = self.alive.try_send(());
        }
    }
}

/// The parent's end of a child's link.
#[derive(Debug)]
pub struct ChildWatch {
    alive: mpsc::Receiver<()>,
}

impl ChildWatch {
    /// Resolves when the child and every holder of its link are gone.
    pub async fn finished(mut self) -> ChildOutcome {
        let outcome = match self.alive.recv().await {
            Some(()) => ChildOutcome::Stopped,
            None => return ChildOutcome::Died,
        };
        while self.alive.recv().await.is_some() {}
        outcome
    }
}

pub fn child_link() -> (ChildLink, ChildWatch) {
    let (alive, watch) = mpsc::channel(1);
    (
        ChildLink {
            alive,
            primary: true,
        },
        ChildWatch { alive: watch },
    )
}

/// What an injected failure does (debug builds of the protocol only).
pub fn injected_failure(role: ChildRole, mode: FailureMode) -> String {
    match mode {
        FailureMode::Panic => panic!("injected panic in the {} child", role.as_str()),
        FailureMode::Error => format!("injected error in the {} child", role.as_str()),
    }
}

/// A child that stops as soon as its supervisor asks.
macro_rules! stop_on_request {
    ($actor:ty) => {
        impl actix::Handler<$crate::actors::messages::StopChild> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::actors::messages::StopChild, ctx: &mut Self::Context) {
                actix::ActorContext::stop(ctx);
            }
        }
    };
}
pub(crate) use stop_on_request;

/// A child that fails on request (`debug.fault_injection` only): it panics, or reports
/// a recoverable failure to its parent through `self.parent`.
macro_rules! fail_on_request {
    ($actor:ty, $role:expr) => {
        impl actix::Handler<$crate::actors::messages::InjectFailure> for $actor {
            type Result = ();
            fn handle(
                &mut self,
                msg: $crate::actors::messages::InjectFailure,
                _: &mut Self::Context,
            ) {
                let error = $crate::actors::child::injected_failure($role, msg.mode);
                self.parent
                    .do_send($crate::actors::messages::ChildEvent::Failed { role: $role, error });
            }
        }
    };
}
pub(crate) use fail_on_request;

/// Both of the above: the controls of a child with nothing to finish before stopping.
macro_rules! child_controls {
    ($actor:ty, $role:expr) => {
        $crate::actors::child::stop_on_request!($actor);
        $crate::actors::child::fail_on_request!($actor, $role);
    };
}
pub(crate) use child_controls;

/// What every child of a conversation is started with.
#[derive(Clone)]
pub struct ChildEnv {
    pub params: crate::protocol::SessionParams,
    pub services: std::sync::Arc<crate::services::Services>,
    /// Cancelled when the conversation's teardown starts.
    pub cancel: crate::workers::CancelToken,
    pub parent: actix::Recipient<crate::actors::messages::ChildEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watch_waits_for_every_holder_and_reports_a_clean_stop() {
        let (link, watch) = child_link();
        let job = link.hold();
        drop(link);
        let waiting = tokio::spawn(watch.finished());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(job);
        assert_eq!(waiting.await.unwrap(), ChildOutcome::Stopped);
    }

    #[tokio::test]
    async fn a_link_dropped_while_panicking_reports_death() {
        let (link, watch) = child_link();
        let _ = std::thread::spawn(move || {
            let _link = link;
            panic!("child blew up");
        })
        .join();
        assert_eq!(watch.finished().await, ChildOutcome::Died);
    }
}
