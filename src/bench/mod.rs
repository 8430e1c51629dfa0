//! The bundled load-test client: `hearken bench <streams|ramp|churn|idle|abuse|soak> ...`.
//!
//! It talks to a running server only through its public surface (the native WebSocket
//! protocol of DESIGN.md §3 or, for `streams` and `ramp` with `--protocol realtime`, the
//! OpenAI Realtime API; `GET /metrics`) and, when given the server's pid, through
//! `/proc`. Each subcommand lives in its own file:
//! - [`streams`]: N sessions streaming WAV audio in real time; VAD-event lag,
//!   end-of-speech → transcript and → first reply audio latency, the server's own stage
//!   times of each reply, with an explicit "falling behind" verdict.
//! - [`ramp`]: streams at growing session counts until the server falls behind, or its
//!   session limit refuses sessions while the admitted ones keep up.
//! - [`idle`]: N idle sessions; memory per session and mass-teardown time.
//! - [`churn`]: connect / stream / leave cycles in every leaving style; leak deltas.
//! - [`abuse`]: real streaming sessions while hostile clients attack; their lag and
//!   transcripts, how each attacker ended, and the server back at its start afterwards.
//! - [`soak`]: streams, churn and hostile clients for a long time; RSS slope and leaks.
//!
//! Support: [`audio_src`] (WAV → frames), [`launcher`] and [`session`] (streaming
//! clients), [`protocol`] (what each protocol sends and what its events mean), [`attackers`] (the hostile clients), [`leaks`] (gauges, FDs and threads
//! before and after), [`replies`] (pairing replies with the speech they answer, their outcomes and
//! the server's stage times), [`stats`] (latency histograms), [`plot`] (`--plot` SVG
//! charts), [`metrics_scrape`] (Prometheus text and `/proc`), [`progress`] (the live line
//! on stderr), [`wsconn`] (open, refusals, close, stop signal). `anyhow` is allowed here
//! (STYLE.md rule 12).

mod abuse;
mod attackers;
mod audio_src;
mod churn;
mod idle;
mod launcher;
mod leaks;
mod metrics_scrape;
mod plot;
mod progress;
mod protocol;
mod ramp;
mod replies;
mod session;
mod soak;
mod stats;
mod streams;
mod wsconn;

pub use abuse::AbuseArgs;
pub use churn::ChurnArgs;
pub use idle::IdleArgs;
pub use ramp::RampArgs;
pub use soak::SoakArgs;
pub use streams::StreamsArgs;

use anyhow::Context as _;

/// The load tests; see each argument struct for its options.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// N concurrent sessions streaming WAV audio in real time: VAD lag, transcript and
    /// reply latency.
    Streams(StreamsArgs),
    /// Connect / stream ~300 ms / leave cycles in every leaving style; gauge and FD deltas.
    Churn(ChurnArgs),
    /// Streams at growing session counts: the most sessions the server keeps up with.
    Ramp(RampArgs),
    /// N idle sessions: server memory per session and teardown time of closing them all.
    Idle(IdleArgs),
    /// Real streaming sessions while slowloris, never-reading, flooding and garbage-Opus
    /// clients attack: their lag and transcripts, and every gauge, FD and thread after.
    Abuse(AbuseArgs),
    /// Streams, churn and hostile clients for a long time: RSS slope and what is left.
    Soak(SoakArgs),
}

/// Run one bench command on its own multi-thread tokio runtime.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the bench runtime")?;
    runtime.block_on(async move {
        match cmd {
            BenchCommand::Streams(args) => streams::run(args).await,
            BenchCommand::Churn(args) => churn::run(args).await,
            BenchCommand::Ramp(args) => ramp::run(args).await,
            BenchCommand::Idle(args) => idle::run(args).await,
            BenchCommand::Abuse(args) => abuse::run(args).await,
            BenchCommand::Soak(args) => soak::run(args).await,
        }
    })
}

/// `base` (e.g. `ws://127.0.0.1:8080/v1/ws`) with the given query parameters appended.
fn session_url(base: &str, params: &[(&str, String)]) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(base).with_context(|| format!("bad --url {base}"))?;
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in params {
            query.append_pair(key, value);
        }
    }
    Ok(url.into())
}
