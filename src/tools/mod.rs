//! Where the agent's tools come from: executors of [`crate::llm::ToolExecutor`] that the
//! engine calls, each tool carrying its [`crate::llm::ToolEffect`] so that a speculative reply
//! runs only what reads.
//!
//! - [`demo`]: the demo restaurant's `check_availability` (read-only) and `book_table`
//!   (side-effecting), in memory, the offline default beside the scripted model.

pub mod demo;

pub use demo::DemoRestaurant;
