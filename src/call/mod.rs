//! One conversation, whatever carries it: the runner every transport goes through.
//!
//! A [`Transport`] is a codec over some connection: it turns what the far end sends into
//! [`Inbound`] items (audio in a stated format, playback progress, keys, stop) and writes
//! [`Outbound`] items (agent audio, clears, events) in its own wire format. [`Call::run`] does
//! everything else, the same way for a browser, a phone line or a socket of your own:
//! - the wait for [`Inbound::Start`] under the start deadline (a drain ends it);
//! - the Flux connection with the start's audio format, an optional recording, and the
//!   engine session;
//! - the inbound guards: message rate, audio ahead of real time, frame size, idle time;
//! - the greeting, the re-prompt of a silent user and the goodbye ([`SilencePolicy`]);
//! - the agent's own end of the call: the reply that called `end_call`, heard to its end;
//! - agent audio in the transport's chunk size, every barge-in's cut ([`Transport::cutter`]
//!   for a transport that can write a clear from another task), and what was heard, from
//!   the transport's own playback clock;
//! - the end: the user's stop and the finish deadline, the far end going away, a provider's
//!   failure, a shutdown; told to the transport ([`Transport::finish`]) as one [`Ending`].
//!
//! `examples/custom_transport.rs` is a complete transport (raw PCM over TCP); the server's
//! browser session and phone line are two more.
//!
//! Ownership: the call's task owns the transport, the Flux sender and the engine session;
//! the engine's stop token is a child of the caller's shutdown token. Playout writes into a
//! queue the call's task drains, so a far end that stops reading cannot stall the engine.

mod farewell;
mod guards;
mod playback;
mod recording;
mod runner;
mod silence;
mod transport;
mod turns;

use std::sync::Arc;
use std::time::Duration;

pub use runner::Call;
pub use transport::{
    AudioFormat, CutNow, CutWritten, Gone, Inbound, Outbound, PlaybackClock, Speech, Start,
    Transport,
};

use crate::engine::{Backends, EngineEvent, SessionConfig};
use crate::error::BackendError;
use crate::flux::{Connector, FluxConfig};
use crate::report::TurnReport;

/// What every conversation of a kind shares: the providers, the engine settings and the
/// limits. Made once and shared by every [`Call`] (as an `Arc`).
#[derive(Clone)]
#[non_exhaustive]
pub struct Settings {
    /// Flux: the endpoint, key and listen options (the start's audio format overrides the
    /// encoding and sample rate for each call).
    pub flux: FluxConfig,
    /// How Flux is reached.
    pub connector: Arc<dyn Connector>,
    /// The model and the voice.
    pub backends: Backends,
    /// The engine.
    pub session: SessionConfig,
    /// Deadlines and bounds on what the far end sends.
    pub limits: Limits,
    /// Said first, before the user speaks.
    pub greeting: Option<String>,
    /// What to do when the user stays silent after the agent spoke (nothing by default).
    pub silence: Option<SilencePolicy>,
    /// Each conversation is recorded under this directory, in a folder named by its id
    /// (`docs/recordings.md`).
    pub record_dir: Option<std::path::PathBuf>,
    /// Where `transfer_call` hands the caller ([`Transport::transfer`]): a phone number in
    /// E.164 form. The tool itself must be among the backends' tools.
    pub transfer_to: Option<String>,
}

impl Settings {
    /// Settings with [`Limits::default`], no greeting, no re-prompt, no recording.
    pub fn new(flux: FluxConfig, connector: Arc<dyn Connector>, backends: Backends) -> Self {
        Settings {
            flux,
            connector,
            backends,
            session: SessionConfig::default(),
            limits: Limits::default(),
            greeting: None,
            silence: None,
            record_dir: None,
            transfer_to: None,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("flux", &self.flux)
            .field("backends", &self.backends)
            .field("limits", &self.limits)
            .field("greeting", &self.greeting.is_some())
            .field("silence", &self.silence)
            .field("record_dir", &self.record_dir)
            .finish_non_exhaustive()
    }
}

/// Deadlines and bounds on what the far end sends.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// The start must come within this of the call's beginning; nothing before it moves it.
    pub start_timeout: Duration,
    /// Audio must keep coming within this; playback reports, keys and pings do not count.
    pub idle_timeout: Duration,
    /// After the user's stop, the reply in progress has this long to finish.
    pub finish_timeout: Duration,
    /// How far ahead of real time the user's audio may run (a burst after a stall).
    pub realtime_margin: Duration,
    /// The largest audio message taken, in bytes.
    pub max_audio_bytes: usize,
    /// Messages the far end may send a second, averaged.
    pub messages_per_second: u32,
    /// Messages it may send at once beyond that rate.
    pub message_burst: u32,
}

impl Default for Limits {
    /// 15 s to start and of idleness, a minute to finish, 2 s ahead of real time, 16 KiB
    /// audio messages, 200 messages a second beyond a burst of 400 (four times what a browser
    /// or a carrier sends).
    fn default() -> Self {
        Limits {
            start_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(15),
            finish_timeout: Duration::from_secs(60),
            realtime_margin: Duration::from_secs(2),
            max_audio_bytes: 16 * 1024,
            messages_per_second: 200,
            message_burst: 400,
        }
    }
}

/// The user's silence after the agent spoke: one re-prompt, then a goodbye and the end.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SilencePolicy {
    /// How long the user may stay silent before each nudge.
    pub after: Duration,
    /// Said at the first nudge.
    pub reprompt: String,
    /// Said at the second, after which the conversation ends.
    pub goodbye: String,
}

impl SilencePolicy {
    /// A re-prompt after `after` of silence, with the default lines.
    pub fn new(after: Duration) -> Self {
        SilencePolicy {
            after,
            reprompt: "Are you still there?".into(),
            goodbye: "I'll let you go now. Goodbye!".into(),
        }
    }
}

/// What an application (or the server's metrics) learns of a conversation as it happens.
/// Called on the conversation's own tasks (the call's; the engine's for `clear_sent`,
/// playout's for `cut_decided_by`): an implementation returns quickly, never blocks and never
/// panics (the server guards an application's observer for it). Every method has an empty
/// default.
pub trait CallObserver: Send + Sync {
    /// The engine session started; `log` is its event log (subscribe to write it as it grows).
    fn session_started(&self, call: &str, log: &crate::engine::log::EventLog) {
        let _ = (call, log);
    }

    /// An engine event, as it happened (a provider's failure with its own words).
    fn event(&self, call: &str, event: &EngineEvent) {
        let _ = (call, event);
    }

    /// A turn's figures, once its reply ended.
    fn turn(&self, call: &str, turn: &TurnReport) {
        let _ = (call, turn);
    }

    /// A provider failed during a reply.
    fn provider_error(&self, error: &BackendError) {
        let _ = error;
    }

    /// The user pressed a key (`0`-`9`, `*`, `#`, `A`-`D`); never logged by turnflow.
    fn dtmf(&self, call: &str, digit: &str) {
        let _ = (call, digit);
    }

    /// A barge-in's clear reached the transport, this long after the StartOfTurn that
    /// caused it.
    fn clear_sent(&self, after: Duration) {
        let _ = after;
    }

    /// A cut was decided by `clock`: `client_reports`, `carrier_marks` or `server_clock`.
    fn cut_decided_by(&self, clock: &'static str) {
        let _ = clock;
    }

    /// Audio frames the far end sent after its stop, dropped.
    fn audio_after_stop(&self, frames: u64) {
        let _ = frames;
    }

    /// How the call's Flux connection fared, at its end: reconnects that succeeded, attempts
    /// that failed, and the time spent without a connection over the outages it rode through.
    fn flux_outages(&self, reconnected: u64, failed_attempts: u64, offline: Duration) {
        let _ = (reconnected, failed_attempts, offline);
    }
}

/// How a conversation ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionEnd {
    /// The user stopped or hung up, or the conversation said goodbye.
    Completed,
    /// The far end went away without stop.
    ClientClosed,
    /// The far end broke the protocol or a limit (malformed, too fast, too big, idle).
    ProtocolError,
    /// Speech to text failed.
    SttFailed,
    /// Cut by a shutdown.
    Shutdown,
}

impl SessionEnd {
    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Completed => "completed",
            SessionEnd::ClientClosed => "client_closed",
            SessionEnd::ProtocolError => "protocol_error",
            SessionEnd::SttFailed => "stt_failed",
            SessionEnd::Shutdown => "shutdown",
        }
    }
}

/// What kind of fault an [`EndError`] is, for a transport to map to its own close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// A limit or the order of messages (flood, idle, too fast, not started).
    Policy,
    /// A message that does not parse or breaks the format.
    Invalid,
    /// A message of a kind or format the transport does not take.
    Unsupported,
    /// A message over the size limit.
    TooBig,
    /// Our side failed (speech to text unavailable).
    Internal,
}

/// The error a conversation ended with, as the far end may be told it: a stable code and a
/// message that never quotes a provider, and quotes the far end only escaped and cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndError {
    /// A stable code (`idle`, `flood`, `too_big`, `stt_unavailable`, ...).
    pub code: &'static str,
    /// What was wrong and what is allowed.
    pub message: String,
    /// Its kind.
    pub kind: FaultKind,
}

impl EndError {
    /// An error; `message` may quote the far end, so it is escaped and cut short.
    pub fn new(code: &'static str, message: impl AsRef<str>, kind: FaultKind) -> Self {
        EndError {
            code,
            message: crate::text::Untrusted(message.as_ref()).to_string(),
            kind,
        }
    }
}

impl std::fmt::Display for EndError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for EndError {}

/// How a conversation ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Ending {
    /// The outcome.
    pub outcome: SessionEnd,
    /// What happened, for the log (escaped).
    pub detail: String,
    /// The error to tell the far end, if it ended on one.
    pub error: Option<EndError>,
    /// User turns started.
    pub turns: u64,
    /// Why Flux could not be reached, in the provider's words: for the operator, never for
    /// the far end.
    pub flux_error: Option<crate::flux::FluxError>,
    /// What the engine session left (the history as heard, its error, how replies went);
    /// `None` when it never started.
    pub session: Option<crate::engine::SessionOutcome>,
    /// The session's event log, for reports; `None` when it never started.
    pub log: Option<crate::engine::log::EventLog>,
}

impl Ending {
    fn new(outcome: SessionEnd, detail: impl AsRef<str>) -> Self {
        Ending {
            outcome,
            detail: crate::text::Untrusted(detail.as_ref()).to_string(),
            error: None,
            turns: 0,
            flux_error: None,
            session: None,
            log: None,
        }
    }

    fn fault(error: EndError) -> Self {
        Ending {
            error: Some(error.clone()),
            ..Ending::new(SessionEnd::ProtocolError, error.to_string())
        }
    }

    /// An ending on an error of ours: `error` tells the far end, `detail` the log.
    fn failed(outcome: SessionEnd, detail: &str, error: EndError) -> Self {
        Ending {
            error: Some(error),
            ..Ending::new(outcome, detail)
        }
    }
}
