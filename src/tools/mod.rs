//! Where the agent's tools come from: executors of [`crate::llm::ToolExecutor`] that the
//! engine calls, each tool carrying its [`crate::llm::ToolEffect`] so that a speculative reply
//! runs only what reads.
//!
//! - [`demo`]: the demo restaurant's `check_availability` (read-only) and `book_table`
//!   (side-effecting), in memory, the offline default beside the scripted model.
//! - [`webhook`]: a tool behind a plain HTTP endpoint, its effect declared.
//! - [`mcp`] (feature `mcp`): the tools of a Model Context Protocol server, over stdio or
//!   Streamable HTTP, both protocol eras; read-only only when trusted and annotated so.
//! - [`call_control`]: `end_call` and `transfer_call`, which the call runner carries out once
//!   the reply that asked for them has been heard.
//! - [`toolbox`]: every source in one executor, names mapped to what the model providers take
//!   and clashes refused, each call's arguments checked against its schema ([`schema`]) before
//!   it is made.

pub mod call_control;
pub mod demo;
#[cfg(feature = "mcp")]
pub mod mcp;
pub mod schema;
pub mod toolbox;
pub mod webhook;

pub use call_control::{CallControl, END_CALL, TRANSFER_CALL};
pub use demo::DemoRestaurant;
#[cfg(feature = "mcp")]
pub use mcp::{McpServer, McpServerConfig};
pub use toolbox::{Toolbox, ToolboxError};
pub use webhook::WebhookTool;
