//! The latency lab: record real conversations, replay them offline with other thresholds and
//! policies, and sweep settings over many recordings.
//!
//! Recordings themselves (the format and the [`Recorder`](crate::recording::Recorder)) are
//! [`crate::recording`], below the server that makes them.
//! - [`derive()`] (pure): Flux's turn events re-derived from the recorded confidence curve under
//!   other thresholds ([`Timeline`] in, [`Derivation`] out).
//! - [`replay()`]: a recorded session run again on tokio's paused clock, with the derived events,
//!   the recorded model and voice (their timing and content), and the recorded user audio.
//! - [`pair_turns`] (pure): a recorded session's turns next to a what-if's, paired by transcript.
//! - [`run_sweep`]: one setting over a range, over many recordings, as a table
//!   ([`sweep_table`]) and an SVG chart ([`sweep_chart`]).
//! - [`import_eot_bench`]: LiveKit's eot-bench rows (audio, silence spans, words) as recordings.

use std::path::PathBuf;

mod compare;
mod derive;
mod import;
mod replay;
mod sweep;

pub use compare::{TurnPair, pair_turns};
pub use derive::{Derivation, DerivedTick, RecordedTurn, Tick, Timeline, TurnTaking, derive};
pub use import::{baseline_confidence, import_eot_bench};
pub use replay::{PREMATURE_WINDOW_SECONDS, ReplayOutcome, ReplaySettings, replay};
pub use sweep::{Knob, Sweep, SweepRow, run_sweep, sweep_chart, sweep_table};

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
