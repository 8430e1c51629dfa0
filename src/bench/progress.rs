//! The live progress line on stderr: an indicatif spinner when stderr is a terminal, a
//! plain line every few seconds when it is a file or a pipe (so logs stay readable).

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

/// How often the terminal line is refreshed.
const TTY_REFRESH: Duration = Duration::from_millis(500);
/// How often a plain line is printed when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Show `status()` under `label` until [`Progress::finish`].
    pub fn start<F>(label: &'static str, status: F) -> Progress
    where
        F: Fn() -> String + Send + 'static,
    {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {msg}")
            {
                bar.set_style(style);
            }
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(100));
            let shown = bar.clone();
            let task = tokio::spawn(async move {
                loop {
                    shown.set_message(status());
                    tokio::time::sleep(TTY_REFRESH).await;
                }
            });
            Progress {
                bar: Some(bar),
                task,
            }
        } else {
            let started = tokio::time::Instant::now();
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LOG_EVERY).await;
                    eprintln!("{label} [{:>4}s] {}", started.elapsed().as_secs(), status());
                }
            });
            Progress { bar: None, task }
        }
    }

    /// Print a line above the spinner (or plainly).
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(line.as_ref()),
            None => eprintln!("{}", line.as_ref()),
        }
    }

    pub fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
