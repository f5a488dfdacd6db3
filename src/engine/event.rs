//! What the engine tells the application as a conversation goes: the user's words, the
//! agent's sentences, speculation, interruptions and how each reply ended. Arrives on the
//! receiver [`super::start_session`] returns.

use crate::error::BackendError;

/// Identifies one response (speculative or committed) within a session.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ResponseId(pub u64);

impl std::fmt::Display for ResponseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Why a response was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CancelReason {
    /// The user kept talking after `EagerEndOfTurn`.
    TurnResumed,
    /// `EndOfTurn` came with different words than the speculation.
    TranscriptChanged,
    /// The user interrupted the agent.
    BargeIn,
    /// A newer speculation replaced it.
    Superseded,
    /// The session closed.
    Shutdown,
}

/// Application-facing events.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EngineEvent {
    /// The user started a turn.
    UserStarted {
        /// User turn index.
        turn: u64,
        /// Whether the agent was speaking (or about to).
        over_agent: bool,
    },
    /// The user's words so far in the current turn (interim, may still change).
    UserTranscript {
        /// User turn index.
        turn: u64,
        /// The transcript so far.
        transcript: String,
    },
    /// The user's final transcript of a turn.
    UserFinished {
        /// User turn index.
        turn: u64,
        /// The transcript.
        transcript: String,
    },
    /// A speculative reply started.
    Speculating {
        /// User turn index.
        turn: u64,
        /// The response.
        response: ResponseId,
        /// The eager transcript it answers.
        transcript: String,
    },
    /// A speculative reply was thrown away.
    SpeculationCancelled {
        /// User turn index.
        turn: u64,
        /// The response.
        response: ResponseId,
        /// Why.
        reason: CancelReason,
    },
    /// A speculative reply became the answer.
    SpeculationPromoted {
        /// User turn index.
        turn: u64,
        /// The response.
        response: ResponseId,
    },
    /// The agent speaks first (a greeting, a re-prompt): see [`super::Prompt`].
    Prompting {
        /// The response.
        response: ResponseId,
    },
    /// A committed reply started (no usable speculation).
    Responding {
        /// User turn index.
        turn: u64,
        /// The response.
        response: ResponseId,
    },
    /// The agent's first audio of a response was written.
    AgentSpeaking {
        /// The response.
        response: ResponseId,
    },
    /// Playout paused: the user may be interrupting.
    AgentPaused {
        /// The response.
        response: ResponseId,
    },
    /// Playout resumed: it was a backchannel or a false interruption.
    AgentResumed {
        /// The response.
        response: ResponseId,
    },
    /// The user interrupted the agent.
    Interrupted {
        /// The response.
        response: ResponseId,
    },
    /// The agent started speaking a sentence (for captions).
    AgentSentence {
        /// The response.
        response: ResponseId,
        /// The sentence.
        text: String,
    },
    /// A user turn ignored as a backchannel ("uh-huh") over the agent.
    Backchannel {
        /// User turn index.
        turn: u64,
        /// What the user said.
        transcript: String,
    },
    /// A response called a tool.
    ToolStarted {
        /// The response.
        response: ResponseId,
        /// The tool, as the model named it.
        tool: String,
        /// Whether the reply was still a guess (only read-only tools run then).
        speculative: bool,
    },
    /// A tool call returned (or failed, or timed out).
    ToolFinished {
        /// The response.
        response: ResponseId,
        /// The tool.
        tool: String,
        /// `ok`, `error` or `timed_out`.
        outcome: String,
        /// How long it took.
        duration_ms: f64,
    },
    /// A response ended.
    ResponseEnded {
        /// The response.
        response: ResponseId,
        /// What the user heard of it.
        heard: String,
        /// Whether it was cut.
        interrupted: bool,
        /// The failure, if a backend failed.
        error: Option<BackendError>,
    },
}
