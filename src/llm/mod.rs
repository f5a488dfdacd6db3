//! Language models: the [`LanguageModel`] trait, conversation types and the backends.
//!
//! - [`scripted`]: replies from a scenario (embedded default and test fake).
//! - [`openai`]: any OpenAI-compatible chat completions server, streamed.
//! - [`anthropic`]: the Anthropic Messages API, streamed.
//! - [`failover`]: a chain that switches providers before the first token.
//! - `sse` (internal): the server-sent-events parser both streaming clients share.
//!
//! A model takes the conversation (and tool definitions) and streams [`LlmChunk`]s. Dropping
//! the stream cancels the request, which is how barge-in and failed speculation stop spending
//! tokens. Tools carry a [`ToolEffect`] so the engine knows which calls may run while a reply
//! is still speculative.

use std::pin::Pin;

use async_trait::async_trait;
use futures_util::Stream;
use serde::Serialize;

pub mod anthropic;
pub mod failover;
pub mod openai;
pub mod scripted;
pub(crate) mod sse;

pub use anthropic::Anthropic;
pub use failover::FailoverLlm;
pub use openai::OpenAiCompatible;
pub use scripted::{ScriptedLlm, ScriptedReply, Stepper};

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// Instructions for the model.
    System {
        /// The prompt.
        content: String,
    },
    /// What the user said (final transcripts only).
    User {
        /// The transcript.
        content: String,
    },
    /// What the agent said, as far as the user heard it.
    Assistant {
        /// The text heard (the whole reply unless interrupted).
        content: String,
        /// True when the user barged in and `content` is the heard prefix.
        interrupted: bool,
        /// Tool calls the model made in this turn.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of a tool call.
    Tool {
        /// The id of the call answered.
        call_id: String,
        /// The tool's output.
        content: String,
    },
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::User {
            content: content.into(),
        }
    }

    /// A complete (not interrupted) assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::Assistant {
            content: content.into(),
            interrupted: false,
            tool_calls: Vec::new(),
        }
    }
}

/// Whether a tool may run while its reply is still speculative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolEffect {
    /// Reads only; safe to run speculatively and to discard.
    Pure,
    /// Changes the world (books, sends, pays); runs only once the reply is committed.
    SideEffecting,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    /// Name the model uses.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON schema of the arguments.
    pub parameters: serde_json::Value,
    /// Pure or side-effecting.
    pub effect: ToolEffect,
}

/// A call the model wants made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    /// Id to answer with a [`Message::Tool`].
    pub id: String,
    /// Which tool.
    pub name: String,
    /// Arguments as JSON.
    pub arguments: serde_json::Value,
}

/// What the engine asks a model for.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    /// The conversation so far, ending with the user's message (or a tool result).
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<ToolSpec>,
}

/// Token accounting of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// One piece of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LlmChunk {
    /// Text to append to the reply.
    Text(String),
    /// A complete tool call.
    ToolCall(ToolCall),
    /// Token usage (usually last).
    Usage(Usage),
    /// The reply is complete.
    End {
        /// The provider's finish reason, when it gives one.
        finish_reason: Option<String>,
    },
}

/// Why a model request failed: a [`crate::error::BackendError`] with its kind.
pub type LlmError = crate::error::BackendError;

/// A streamed reply.
pub type LlmStream = Pin<Box<dyn Stream<Item = Result<LlmChunk, LlmError>> + Send>>;

/// A chat model that streams its reply.
#[async_trait]
pub trait LanguageModel: Send + Sync {
    /// Short name for logs and reports.
    fn name(&self) -> &str;

    /// Starts a streamed reply.
    ///
    /// # Errors
    /// [`LlmError`] when the request cannot be started; errors after that arrive in the stream.
    ///
    /// # Cancellation safety
    /// Dropping the returned stream (or this future) cancels the request.
    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError>;

    /// Whether each provider behind this model is being asked (a failover chain's breakers,
    /// for `/metrics`). Empty, the default, for a model with no breaker.
    fn health(&self) -> Vec<crate::failover::ProviderHealth> {
        Vec::new()
    }
}

/// Runs the tools a model calls.
#[async_trait]
pub trait ToolExecutor: Send + Sync {
    /// The tools offered to the model, with their effects.
    fn specs(&self) -> Vec<ToolSpec>;

    /// A number that grows whenever [`specs`](Self::specs) would answer differently (an MCP
    /// server announced a new tool list), so whoever keeps a copy knows to read it again. A
    /// source whose tools never change keeps the default.
    fn revision(&self) -> u64 {
        0
    }

    /// Runs one call and returns its result text (or an error text the model will see).
    ///
    /// # Errors
    /// A message for the model when the call fails.
    ///
    /// # Cancellation safety
    /// The engine drops this future when the response is cancelled; a side-effecting tool
    /// should make its effect atomic or idempotent.
    async fn call(&self, call: &ToolCall) -> Result<String, String>;
}

impl std::fmt::Debug for dyn ToolExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.specs().into_iter().map(|t| t.name))
            .finish()
    }
}
