//! What one session's replies were: [`pairing`] pairs each transcript with the
//! `vad.speech_stopped` that ended its segment and each reply with the transcript it
//! answers, and times the reply from that speech's end; [`counts`] holds what the pairing
//! reports ([`ReplyNote`]) and the per-window counts of how replies ended; [`stages`] reads
//! the server's own stage times of a reply (`latency_ms`). Pure bookkeeping on arrival
//! times: [`super::session`] feeds the events and writes the results into the shared
//! window.

mod counts;
mod pairing;
mod stages;

pub use counts::{ReplyCounts, ReplyNote};
pub use pairing::{take_stop, ReplyEvent, ReplyTracker};
pub use stages::{ReplyStages, Stage};
