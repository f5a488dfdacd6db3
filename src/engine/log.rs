//! The session's event log: every step of every turn, stamped once on tokio's monotonic clock
//! where it crosses our edge. The report computes all metrics from it, so the numbers and the
//! timeline tell the same story.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::turn::{CancelReason, ResponseId};
use crate::error::BackendError;
use crate::flux::TurnEvent;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
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
        /// The user turn it answers (the last one, for a prompt).
        turn: u64,
        /// Started by a prompt (the agent speaking first), so it answers no turn.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        prompted: bool,
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
        /// Text chunks received from the LLM when the sentence was released (0 for a fixed
        /// line): how much of the stream the sentence waited for.
        tokens: u64,
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
    /// The voice reported what the sentence cost.
    TtsBilled {
        /// The response.
        id: ResponseId,
        /// Sentence index.
        index: usize,
        /// Characters billed.
        characters: u64,
        /// Milliseconds of audio produced.
        audio_ms: u64,
    },
    /// The TTS's first audio of the sentence arrived.
    TtsFirstAudio {
        /// The response.
        id: ResponseId,
        /// Sentence index.
        index: usize,
    },
    /// The model asked for a tool call (its round's stream ended with it); it starts at once
    /// or, when it must wait for `EndOfTurn`, at promotion.
    ToolRequested {
        /// The response.
        id: ResponseId,
        /// The model's id for the call.
        call_id: String,
        /// The tool.
        tool: String,
        /// Whether it may run while the reply is a guess.
        effect: crate::llm::ToolEffect,
    },
    /// A tool call started.
    ToolStarted {
        /// The response.
        id: ResponseId,
        /// The model's id for the call.
        call_id: String,
        /// The tool.
        tool: String,
        /// Whether it may run while the reply is a guess.
        effect: crate::llm::ToolEffect,
        /// Whether the reply was still a guess when it started.
        speculative: bool,
    },
    /// A tool call ended.
    ToolEnded {
        /// The response.
        id: ResponseId,
        /// The model's id for the call.
        call_id: String,
        /// `ok`, `error`, `timed_out`, or `cancelled` (a read-only call dropped with its reply).
        outcome: &'static str,
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
        error: Option<BackendError>,
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

/// Entries an [`EventLog`] keeps by default: about an hour of conversation.
pub const DEFAULT_LOG_LIMIT: usize = 16_384;

/// A shared log that keeps the most recent entries (up to its limit, the oldest dropped and
/// counted) and copies each new entry to its subscribers, so a recording can be written as
/// the session goes without the log growing for ever.
#[derive(Debug, Clone)]
pub struct EventLog(Arc<Mutex<LogInner>>);

#[derive(Debug)]
struct LogInner {
    entries: VecDeque<LogEntry>,
    limit: usize,
    dropped: u64,
    subscribers: Vec<mpsc::Sender<LogEntry>>,
    missed_by_subscribers: u64,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::with_limit(DEFAULT_LOG_LIMIT)
    }
}

impl EventLog {
    /// A log keeping at most `limit` entries in memory (at least one).
    pub fn with_limit(limit: usize) -> Self {
        Self(Arc::new(Mutex::new(LogInner {
            entries: VecDeque::new(),
            limit: limit.max(1),
            dropped: 0,
            subscribers: Vec::new(),
            missed_by_subscribers: 0,
        })))
    }

    /// Appends an entry stamped now.
    pub fn record(&self, kind: LogKind) {
        self.record_at(Instant::now(), kind);
    }

    /// Appends an entry stamped `at`.
    pub fn record_at(&self, at: Instant, kind: LogKind) {
        let entry = LogEntry { at, kind };
        let mut inner = self.0.lock().expect("event log lock");
        let mut missed = 0;
        inner
            .subscribers
            .retain(|s| match s.try_send(entry.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    missed += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        inner.missed_by_subscribers += missed;
        if inner.entries.len() == inner.limit {
            inner.entries.pop_front();
            inner.dropped += 1;
        }
        inner.entries.push_back(entry);
    }

    /// A copy of the entries kept, in order of recording.
    pub fn entries(&self) -> Vec<LogEntry> {
        self.0
            .lock()
            .expect("event log lock")
            .entries
            .iter()
            .cloned()
            .collect()
    }

    /// When the newest entry kept that `matches` was recorded, found without copying the
    /// log.
    pub fn last_at(&self, matches: impl Fn(&LogKind) -> bool) -> Option<Instant> {
        let inner = self.0.lock().expect("event log lock");
        inner
            .entries
            .iter()
            .rev()
            .find(|e| matches(&e.kind))
            .map(|e| e.at)
    }

    /// Entries kept in memory now.
    pub fn len(&self) -> usize {
        self.0.lock().expect("event log lock").entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped from memory because the log was full.
    pub fn dropped(&self) -> u64 {
        self.0.lock().expect("event log lock").dropped
    }

    /// Entries a subscriber missed because its queue was full.
    pub fn missed_by_subscribers(&self) -> u64 {
        self.0.lock().expect("event log lock").missed_by_subscribers
    }

    /// Every entry recorded from now on, in order, on a queue of `capacity` (a subscriber that
    /// falls further behind misses entries, counted by
    /// [`EventLog::missed_by_subscribers`]). Ends when the log and its clones are dropped.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<LogEntry> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.0.lock().expect("event log lock").subscribers.push(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_newest_matching_entry_is_found_among_those_kept() {
        let log = EventLog::with_limit(2);
        let is_promotion = |kind: &LogKind| matches!(kind, LogKind::Promoted { .. });
        assert_eq!(log.last_at(is_promotion), None);
        let first = Instant::now();
        log.record(LogKind::Promoted { id: ResponseId(1) });
        tokio::time::advance(Duration::from_millis(5)).await;
        let second = Instant::now();
        log.record(LogKind::Promoted { id: ResponseId(2) });
        assert_eq!(log.last_at(is_promotion), Some(second));
        assert_ne!(first, second);
        tokio::time::advance(Duration::from_millis(5)).await;
        log.record(LogKind::Paused { id: ResponseId(2) });
        log.record(LogKind::Paused { id: ResponseId(2) });
        assert_eq!(
            log.last_at(is_promotion),
            None,
            "entries past the limit are gone"
        );
    }
}
