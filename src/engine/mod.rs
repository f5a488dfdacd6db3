//! The orchestrator: the turn machine (pure decisions) and the session driver (tasks and I/O).
//!
//! - [`turn`]: `(state, input) -> actions`; speculation, promotion, barge-in, history.
//! - [`segment`]: streaming sentence segmentation.
//! - [`session`]: owns the tasks, executes actions, feeds progress back.
//! - [`EngineEvent`]: what the application hears about (`event.rs`).
//! - `response` (internal): one reply's pipeline, LLM -> sentences -> TTS -> gate -> playout.
//! - `playout` (internal): real-time output with pause, resume, clear and heard-text tracking;
//!   [`AudioSink`] is where its frames go.
//! - [`log`]: the timestamped event log the metrics are computed from.

mod event;
pub mod log;
pub(crate) mod playout;
pub(crate) mod response;
pub mod segment;
pub mod session;
pub mod turn;

pub use event::EngineEvent;
pub use playout::AudioSink;
pub use response::{Presynthesis, ResponseOptions};
pub use session::{
    Backends, EVENT_QUEUE, Prompter, ReplyTally, SessionConfig, SessionError, SessionHandle,
    SessionOutcome, start_session,
};
pub use tokio_util::sync::CancellationToken;
pub use turn::{BargeInPolicy, CancelReason, MachineConfig, Prompt, ResponseId};
