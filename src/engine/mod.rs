//! The orchestrator: the turn machine (pure decisions) and the session driver (tasks and I/O).
//!
//! - [`turn`]: `(state, input) -> actions`; speculation, promotion, barge-in, history.
//! - [`segment`]: streaming sentence segmentation.
//! - [`session`]: owns the tasks, executes actions, feeds progress back.
//! - [`response`]: one reply's pipeline, LLM -> sentences -> TTS -> gate -> playout.
//! - [`playout`]: real-time output with pause, resume, clear and heard-text tracking.
//! - [`log`]: the timestamped event log the metrics are computed from.

pub mod log;
pub mod playout;
pub mod response;
pub mod segment;
pub mod session;
pub mod turn;

pub use playout::AudioSink;
pub use session::{
    Backends, EVENT_QUEUE, ReplyTally, SessionConfig, SessionError, SessionHandle, SessionOutcome,
    start_session,
};
pub use turn::{BargeInPolicy, EngineEvent, MachineConfig, ResponseId};
