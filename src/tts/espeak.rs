//! One `espeak-ng` child process, owned. espeak-ng is GPL-3.0, so it is run
//! as a separate program and never linked. Started as
//! `espeak-ng -q --ipa -v en-us`, it reads stdin line by line and writes and
//! flushes the IPA of each line at once: one output line per clause espeak
//! sees, so one input line can give several ("Dr. Who" gives two). Every
//! request is therefore followed by a sentinel line, and the answer is all
//! that is read before the sentinel's own (known) phonemes. A reader thread
//! turns stdout into a channel so each wait has a deadline. [`EspeakProcess`]
//! is the guard: `Drop` kills and reaps the child, joins the reader and
//! decrements the gauge, so a leak shows on `/metrics`. The pool
//! ([`super::phonemizer`]) decides when to start and replace processes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use super::phonemizer::PhonemizerOptions;
use super::TtsError;

/// A word no text contains, sent after every request; its phonemes end the
/// answer. It is removed from incoming text so text cannot fake the end.
const SENTINEL: &str = "qjxqjxqjx";

/// espeak-ng's command-line reader takes stdin in pieces of about 1,000 bytes
/// and splits words that cross a piece; longer text is cut at spaces into
/// lines of at most this many bytes (a longer single word stays whole).
const MAX_LINE_BYTES: usize = 800;

/// One running `espeak-ng`, owned: `Drop` kills and reaps it, joins its
/// reader thread and decrements the gauge.
pub(crate) struct EspeakProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
    reader: Option<JoinHandle<()>>,
    /// What espeak prints for [`SENTINEL`], learnt at start.
    sentinel: String,
    gauge: IntGauge,
}

impl EspeakProcess {
    pub(crate) fn spawn(options: &PhonemizerOptions, gauge: &IntGauge) -> Result<Self, TtsError> {
        let spawn_error = |cause: String| TtsError::PhonemizerSpawn {
            program: options.program.clone(),
            cause,
        };
        let mut child = Command::new(&options.program)
            .args(&options.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| spawn_error(e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_error("no stdin/stdout pipe".into()));
        };
        gauge.inc();
        let (tx, lines) = mpsc::channel();
        // From here on Drop kills, reaps and decrements whatever fails next.
        let mut process = Self {
            child,
            stdin,
            lines,
            reader: None,
            sentinel: String::new(),
            gauge: gauge.clone(),
        };
        let reader = thread::Builder::new()
            .name("espeak-reader".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let failed = line.is_err();
                    if tx.send(line).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| spawn_error(e.to_string()))?;
        process.reader = Some(reader);
        process.write(&[])?;
        process.sentinel = process
            .read_line(
                Instant::now() + options.spawn_timeout,
                options.spawn_timeout,
            )
            .map_err(|e| spawn_error(format!("no answer to a first line: {e}")))?;
        Ok(process)
    }

    /// Sends `lines` and the sentinel; returns the phonemes read before the
    /// sentinel's answer, joined by spaces.
    pub(crate) fn request(
        &mut self,
        lines: &[String],
        timeout: Duration,
    ) -> Result<String, TtsError> {
        let deadline = Instant::now() + timeout;
        self.write(lines)?;
        let mut parts = Vec::new();
        loop {
            let line = self.read_line(deadline, timeout)?;
            if line == self.sentinel {
                return Ok(parts.join(" "));
            }
            if !line.is_empty() {
                parts.push(line);
            }
        }
    }

    fn write(&mut self, lines: &[String]) -> Result<(), TtsError> {
        let mut buf = String::new();
        for line in lines.iter().map(String::as_str).chain([SENTINEL]) {
            buf.push_str(line);
            buf.push('\n');
        }
        self.stdin
            .write_all(buf.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| io_error(&format!("write: {e}")))
    }

    fn read_line(&self, deadline: Instant, timeout: Duration) -> Result<String, TtsError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(Ok(line)) => Ok(line.trim().to_string()),
            Ok(Err(e)) => Err(io_error(&format!("read: {e}"))),
            Err(RecvTimeoutError::Timeout) => Err(TtsError::PhonemizerTimeout { timeout }),
            Err(RecvTimeoutError::Disconnected) => Err(io_error("process exited")),
        }
    }
}

impl Drop for EspeakProcess {
    fn drop(&mut self) {
        // Errors only mean it has exited already; wait() reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its stdout is closed now, so the reader sees end of file and ends.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.gauge.dec();
    }
}

pub(crate) fn io_error(cause: &str) -> TtsError {
    TtsError::PhonemizerIo {
        cause: cause.to_string(),
    }
}

/// `text` as espeak input lines: control characters and newlines become
/// spaces, `[` `]` go (`[[...]]` is espeak's raw-phoneme syntax), the
/// sentinel word goes, and long text is cut at spaces.
pub(crate) fn input_lines(text: &str) -> Vec<String> {
    let clean: String = text
        .chars()
        .filter(|c| !matches!(c, '[' | ']'))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in clean.split_whitespace() {
        if word.to_lowercase().contains(SENTINEL) {
            continue;
        }
        if !line.is_empty() && line.len() + 1 + word.len() > MAX_LINE_BYTES {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_cleaned_and_cut_at_spaces() {
        assert!(input_lines(" \n\t ").is_empty());
        assert_eq!(input_lines("a\nb [[h@'loU]]"), ["a b h@'loU"]);
        assert_eq!(input_lines("say QJXQJXQJX. now"), ["say now"]);
        let long = "word ".repeat(400);
        let lines = input_lines(&long);
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE_BYTES));
        assert_eq!(lines.join(" "), long.trim());
    }
}
