//! The session's event log: every step of every turn, stamped once on tokio's monotonic clock
//! where it crosses our edge. The report computes all metrics from it, so the numbers and the
//! timeline tell the same story.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::time::Instant;

use super::turn::{CancelReason, ResponseId};
use crate::flux::TurnEvent;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogKind {
    /// A Flux turn event was received.
    Flux {
        /// The event.
        #[serde(serialize_with = "event_name")]
        event: TurnEvent,
        /// Flux turn index (continuous across reconnects).
        turn_index: u64,
        /// The transcript so far.
        transcript: String,
        /// Seconds of session audio covered.
        audio_window_end: f64,
        /// When we sent the end of the user's last word (for voice-to-voice latency).
        #[serde(skip)]
        speech_end_sent_at: Option<Instant>,
    },
    /// A response started.
    ResponseStarted {
        /// The response.
        id: ResponseId,
        /// Held until promoted.
        speculative: bool,
        /// The user turn it answers.
        turn: u64,
    },
    /// The request went to the LLM.
    LlmRequestSent {
        /// The response.
        id: ResponseId,
    },
    /// The LLM's first chunk arrived.
    LlmFirstToken {
        /// The response.
        id: ResponseId,
    },
    /// The LLM stream ended or was dropped; tokens it produced.
    LlmDone {
        /// The response.
        id: ResponseId,
        /// Text tokens received.
        tokens: u64,
    },
    /// A sentence is ready for synthesis.
    SentenceReady {
        /// The response.
        id: ResponseId,
        /// Sentence index within the response.
        index: usize,
        /// The sentence.
        text: String,
    },
    /// The sentence went to the TTS.
    TtsRequestSent {
        /// The response.
        id: ResponseId,
        /// Sentence index.
        index: usize,
        /// Characters sent.
        chars: usize,
    },
    /// The TTS's first audio of the sentence arrived.
    TtsFirstAudio {
        /// The response.
        id: ResponseId,
        /// Sentence index.
        index: usize,
    },
    /// The speculative gate opened.
    Promoted {
        /// The response.
        id: ResponseId,
    },
    /// The first frame of the response was written to the output.
    FirstFrameWritten {
        /// The response.
        id: ResponseId,
    },
    /// The last frame of the response was written (at its end or cut).
    LastFrameWritten {
        /// The response.
        id: ResponseId,
    },
    /// Playout paused.
    Paused {
        /// The response.
        id: ResponseId,
    },
    /// Playout resumed.
    Resumed {
        /// The response.
        id: ResponseId,
    },
    /// The response was cancelled.
    Cancelled {
        /// The response.
        id: ResponseId,
        /// Why.
        reason: CancelReason,
    },
    /// The response ended.
    Ended {
        /// The response.
        id: ResponseId,
        /// The full text generated.
        generated: String,
        /// The text heard.
        heard: String,
        /// Cut by the user.
        interrupted: bool,
        /// Backend failure, if any.
        error: Option<String>,
    },
}

fn event_name<S: serde::Serializer>(e: &TurnEvent, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(e.as_str())
}

/// One entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// When it happened.
    pub at: Instant,
    /// What happened.
    pub kind: LogKind,
}

/// A shared, append-only log.
#[derive(Debug, Clone, Default)]
pub struct EventLog(Arc<Mutex<Vec<LogEntry>>>);

impl EventLog {
    /// Appends an entry stamped now.
    pub fn record(&self, kind: LogKind) {
        self.record_at(Instant::now(), kind);
    }

    /// Appends an entry stamped `at`.
    pub fn record_at(&self, at: Instant, kind: LogKind) {
        self.0
            .lock()
            .expect("event log lock")
            .push(LogEntry { at, kind });
    }

    /// A copy of every entry so far, in order of recording.
    pub fn entries(&self) -> Vec<LogEntry> {
        self.0.lock().expect("event log lock").clone()
    }
}
