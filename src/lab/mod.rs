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

use std::path::PathBuf;

pub mod compare;
pub mod derive;
pub mod import;
pub mod replay;
pub mod sweep;

pub use replay::{ReplayOutcome, ReplaySettings, replay};

/// Why a recording could not be read or replayed, or a sweep could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A recording (or a file imported as one) could not be read or written.
    #[error(transparent)]
    Recording(#[from] crate::recording::RecordingError),
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
