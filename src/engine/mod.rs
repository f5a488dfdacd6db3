//! The orchestrator: the turn machine (pure decisions) and the session driver (tasks and I/O).
//!
//! - [`turn`]: `(state, input) -> actions`; speculation, promotion, barge-in, history.
//! - [`segment`]: streaming sentence segmentation.
//! - [`session`]: owns the tasks, executes actions, feeds progress back.
//! - [`EngineEvent`]: what the application hears about (`event.rs`).
//! - `response` (internal): one reply's pipeline, LLM -> sentences -> TTS -> gate -> playout.
//! - `playout` (internal): real-time output with pause, resume, clear and heard-text tracking;
//!   [`AudioSink`] is where its frames go, and a sink's [`Interrupter`] cuts its listener off
//!   at a barge-in without waiting for playout.
//! - [`log`]: the timestamped event log the metrics are computed from.

mod event;
pub mod log;
pub(crate) mod playout;
pub(crate) mod response;
pub mod segment;
pub mod session;
pub mod turn;

pub use event::EngineEvent;
pub use playout::{AudioSink, Interrupter};
pub use response::{Presynthesis, ResponseOptions};
pub use session::{
    Backends, OutageLines, Prompter, ReplyTally, SessionConfig, SessionError, SessionHandle,
    SessionOutcome, TurnEvents, start_session,
};
pub use tokio_util::sync::CancellationToken;
pub use turn::{
    BargeInPolicy, CancelReason, MachineConfig, Prompt, ResponseId, TOOL_STILL_RUNNING,
};

/// A setting spelled in a way its parser does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: expected {expected}")]
pub struct ParseSettingError {
    /// What was given.
    pub value: String,
    /// What is allowed.
    pub expected: &'static str,
}

/// The spellings of [`Presynthesis`] on the command line, in `turnflow.toml` and recordings.
const PRESYNTHESIS_NAMES: [(&str, Presynthesis); 3] = [
    ("first-chunk", Presynthesis::FirstChunk),
    ("first-sentence", Presynthesis::FirstSentence),
    ("off", Presynthesis::Off),
];

impl std::str::FromStr for Presynthesis {
    type Err = ParseSettingError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        PRESYNTHESIS_NAMES
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, p)| *p)
            .ok_or_else(|| ParseSettingError {
                value: value.into(),
                expected: "`first-chunk`, `first-sentence` or `off`",
            })
    }
}

impl std::fmt::Display for Presynthesis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = PRESYNTHESIS_NAMES
            .iter()
            .find(|(_, p)| p == self)
            .map_or("unknown", |(name, _)| name);
        f.write_str(name)
    }
}

impl std::str::FromStr for BargeInPolicy {
    type Err = ParseSettingError;

    /// `immediate` or `min-words=N` with N >= 1.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value == "immediate" {
            return Ok(BargeInPolicy::Immediate);
        }
        value
            .strip_prefix("min-words=")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .map(BargeInPolicy::MinWords)
            .ok_or_else(|| ParseSettingError {
                value: value.into(),
                expected: "`immediate` or `min-words=N` with N >= 1",
            })
    }
}

impl std::fmt::Display for BargeInPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BargeInPolicy::Immediate => f.write_str("immediate"),
            BargeInPolicy::MinWords(n) => write!(f, "min-words={n}"),
        }
    }
}
