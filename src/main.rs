//! The `hearken` binary: `hearken serve [--config FILE]` runs the server;
//! `hearken bench <streams|churn|ramp|idle|abuse|soak> ...` runs the bundled load-test client.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hearken::{Config, Server};

#[derive(Parser)]
#[command(name = "hearken", version, about = "Real-time voice server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM or SIGINT, then drain and exit 0.
    Serve {
        /// Configuration file; defaults to config/default.toml when it exists.
        #[arg(long, env = "HEARKEN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load-test a hearken server over its native protocol (or, for `streams` and `ramp`,
    /// the OpenAI Realtime API).
    #[cfg(feature = "bench-client")]
    #[command(subcommand)]
    Bench(Box<hearken::bench::BenchCommand>),
}

const DEFAULT_CONFIG: &str = "config/default.toml";

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve { config } => serve(config),
        #[cfg(feature = "bench-client")]
        Command::Bench(command) => hearken::bench::run(*command),
    }
}

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config_path.or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG);
        default.exists().then_some(default)
    });
    let config = Config::load(path.as_deref())?;
    // Before any thread exists: malloc's thresholds, and candle reads its setting once.
    let tuned = hearken::heap::tune_allocator();
    hearken::llm::embedded::pin_candle_threads(config.llm.matmul_threads);
    tracing::debug!(tuned, "malloc mmap threshold fixed");
    actix_web::rt::System::new().block_on(async move {
        let server = Server::start(config).await?;
        wait_for_signal()
            .await
            .context("installing signal handlers")?;
        let outcome = server.shutdown().await?;
        tracing::info!(?outcome, "bye");
        Ok(())
    })
}

/// Resolves on the first SIGTERM or SIGINT.
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}
