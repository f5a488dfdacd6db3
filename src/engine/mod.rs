//! The orchestrator: turn machine (pure) and session driver (tasks and I/O).

pub mod segment;
pub mod turn;
