//! A WAV file being written: the recorder's one resource.
//!
//! `WavSink` owns the writer and an open-file gauge guard. Dropping it finalises the
//! header (hound patches the sizes on drop) and closes the file, so a recording is
//! complete on every path, including a panic elsewhere in its conversation.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::metrics::GaugeGuard;

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("recording {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
}

pub struct WavSink {
    path: PathBuf,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    samples: u64,
    _open_file: GaugeGuard,
}

impl WavSink {
    /// Create `path` (and its directory) for mono 16-bit audio at `sample_rate`.
    pub fn create(path: &Path, sample_rate: u32, open_file: GaugeGuard) -> Result<Self, WavError> {
        let io_err = |source| WavError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(hound::Error::IoError(e)))?;
        }
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(io_err)?;
        Ok(WavSink {
            path: path.to_path_buf(),
            writer: Some(writer),
            samples: 0,
            _open_file: open_file,
        })
    }

    pub fn write(&mut self, samples: &[i16]) -> Result<(), WavError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        for &sample in samples {
            writer.write_sample(sample).map_err(|source| WavError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        self.samples += samples.len() as u64;
        Ok(())
    }

    /// Finalise the header and close the file, reporting errors (drop would ignore them).
    pub fn finish(mut self) -> Result<u64, WavError> {
        if let Some(writer) = self.writer.take() {
            writer.finalize().map_err(|source| WavError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(self.samples)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn a_dropped_sink_still_leaves_a_valid_file() {
        let metrics = Metrics::new();
        let dir = std::env::temp_dir().join(format!("hearken-wav-{}", std::process::id()));
        let path = dir.join("dropped.wav");
        let mut sink =
            WavSink::create(&path, 16_000, GaugeGuard::new(metrics.open_files.clone())).unwrap();
        assert_eq!(metrics.open_files.get(), 1);
        sink.write(&[1, 2, 3, 4]).unwrap();
        drop(sink);
        assert_eq!(metrics.open_files.get(), 0);
        let reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.len(), 4);
        let _ = std::fs::remove_dir_all(dir);
    }
}
