//! The latency lab: record real conversations, replay them offline with other thresholds and
//! policies, and sweep settings over many recordings.
//!
//! Recordings themselves (the format and the [`Recorder`](crate::recording::Recorder)) are
//! [`crate::recording`], below the server that makes them.
//! - [`derive`](mod@derive) (pure): Flux's turn events re-derived from the recorded confidence curve under
//!   other thresholds.
//! - [`replay`](mod@replay): a recorded session run again on tokio's paused clock, with the derived events,
//!   the recorded model and voice (their timing and content), and the recorded user audio.
//! - [`compare`] (pure): a recorded session's turns next to a what-if's, paired by transcript.
//! - [`sweep`]: one setting over a range, over many recordings, as a table and an SVG chart.
//! - [`import`]: LiveKit's eot-bench rows (audio, silence spans, words) as recordings.

use std::path::{Path, PathBuf};

pub mod compare;
pub mod derive;
pub mod import;
pub mod replay;
pub mod sweep;

pub use replay::{ReplayOutcome, ReplaySettings, replay};

/// Why a recording could not be written, read or replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A file or directory could not be read or written.
    #[error("{}: {error}", .path.display())]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A file is not what the format says.
    #[error("{}{}: {message}", .path.display(), .line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Malformed {
        /// Which file.
        path: PathBuf,
        /// Which line (1-based), for line-per-record files.
        line: Option<usize>,
        /// What is wrong, and what is allowed.
        message: String,
    },
    /// A recording of a version this build does not read.
    #[error("{}: recording version {found}; this build reads version {}", .path.display(), crate::recording::VERSION)]
    Version {
        /// `recording.json`.
        path: PathBuf,
        /// The version it has.
        found: u32,
    },
    /// The replayed session failed.
    #[error("replay of {}: {message}", .path.display())]
    Replay {
        /// The recording.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A sweep or setting was spelled wrong.
    #[error("{0}")]
    Setting(String),
}

impl From<crate::recording::RecordingError> for LabError {
    fn from(error: crate::recording::RecordingError) -> Self {
        use crate::recording::RecordingError;
        match error {
            RecordingError::Io { path, error } => LabError::Io { path, error },
            RecordingError::Malformed {
                path,
                line,
                message,
            } => LabError::Malformed {
                path,
                line,
                message,
            },
            RecordingError::Version { path, found } => LabError::Version { path, found },
        }
    }
}

impl LabError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        LabError::Io {
            path: path.to_owned(),
            error,
        }
    }
}
