//! What the application holds: the handle that owns the client, cloneable senders, and the
//! stream of events.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::flux::messages::{Configure, ConfigureFailure, ConfigureSuccess, TurnInfo, Warning};
use crate::flux::options::OptionsError;

use super::FluxError;

/// Counters a production deployment wants to watch.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// Server messages that could not be parsed (logged and skipped).
    pub malformed_messages: AtomicU64,
    /// Server messages kept after repairing a value (logged).
    pub repaired_messages: AtomicU64,
    /// WebSocket pings sent.
    pub pings_sent: AtomicU64,
    /// Silence frames injected while the source stalled mid-turn.
    pub silence_frames: AtomicU64,
    /// Successful reconnects.
    pub reconnects: AtomicU64,
    /// Reconnect attempts that failed.
    pub reconnect_failures: AtomicU64,
    /// Milliseconds spent without a connection, over the outages that ended in a reconnect.
    pub offline_ms: AtomicU64,
    /// Audio frames sent (including replays and silence).
    pub audio_frames_sent: AtomicU64,
}

/// A turn event with the timing the engine needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnUpdate {
    /// The message, with times in session audio time (continuous across reconnects) and
    /// turn indices counted across reconnects.
    pub info: TurnInfo,
    /// When we sent the audio up to `info.audio_window_end`.
    pub audio_sent_at: Option<Instant>,
    /// When we sent the audio up to each word's `end` (same order as `info.words`).
    pub word_end_sent_at: Vec<Option<Instant>>,
}

impl TurnUpdate {
    /// When we sent the end of the last word, falling back to the window end: the start of the
    /// user's silence as far as voice-to-voice latency is concerned.
    pub fn speech_end_sent_at(&self) -> Option<Instant> {
        self.word_end_sent_at
            .last()
            .copied()
            .flatten()
            .or(self.audio_sent_at)
    }
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FluxEventKind {
    /// A connection is ready (`attempt` 0 is the first connection).
    Connected {
        /// The server's request id.
        request_id: String,
        /// 0 for the first connection, n for the n-th reconnect attempt that succeeded.
        attempt: u32,
    },
    /// The connection was lost; the client is reconnecting.
    Reconnecting {
        /// Why.
        reason: String,
    },
    /// A turn event.
    Turn(TurnUpdate),
    /// A `Configure` took effect.
    ConfigureApplied(ConfigureSuccess),
    /// A `Configure` was refused; the previous configuration stays.
    ConfigureRejected(ConfigureFailure),
    /// A non-fatal server warning.
    Warning(Warning),
    /// A message type this crate does not know, kept verbatim.
    Unknown(serde_json::Value),
}

/// One event, stamped with the instant it crossed our edge.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxEvent {
    /// When the message was received (tokio's monotonic clock).
    pub received_at: Instant,
    /// What happened.
    pub kind: FluxEventKind,
}

/// The stream of events. Ends after [`FluxHandle::close`], or with one error item when the
/// session fails (server `Error`, reconnects exhausted).
pub struct FluxEvents {
    pub(super) rx: mpsc::Receiver<Result<FluxEvent, FluxError>>,
}

impl FluxEvents {
    /// The next event, `None` once the session is over.
    ///
    /// # Cancellation safety
    /// Cancel safe: no event is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<Result<FluxEvent, FluxError>> {
        self.rx.recv().await
    }
}

impl Stream for FluxEvents {
    type Item = Result<FluxEvent, FluxError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

pub(super) enum Command {
    Audio(Bytes),
    Configure(Configure, oneshot::Sender<Result<(), OptionsError>>),
    ForceEndTurn,
}

/// A cheap, cloneable way to send audio and control messages from several tasks.
#[derive(Clone)]
pub struct FluxSender {
    pub(super) commands: mpsc::Sender<Command>,
}

impl FluxSender {
    /// Queues audio in the declared format; it is re-cut into frames of `FluxConfig::frame`.
    ///
    /// # Errors
    /// [`FluxError::Closed`] once the client is closed.
    ///
    /// # Cancellation safety
    /// If cancelled while waiting for queue space, the audio was not queued.
    pub async fn send_audio(&self, audio: impl Into<Bytes>) -> Result<(), FluxError> {
        self.commands
            .send(Command::Audio(audio.into()))
            .await
            .map_err(|_| FluxError::Closed)
    }

    /// Changes thresholds, key terms, language hints or numerals mid-stream. Validated against
    /// the configuration the server will have once earlier updates land; at most one
    /// `Configure` is in flight and later ones coalesce. The outcome arrives as
    /// [`FluxEventKind::ConfigureApplied`] or [`FluxEventKind::ConfigureRejected`].
    ///
    /// # Errors
    /// [`FluxError::InvalidOptions`] when the update would be refused (nothing is sent);
    /// [`FluxError::Closed`] once the client is closed.
    pub async fn configure(&self, update: Configure) -> Result<(), FluxError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Configure(update, tx))
            .await
            .map_err(|_| FluxError::Closed)?;
        rx.await.map_err(|_| FluxError::Closed)?.map_err(Into::into)
    }

    /// Ends the current turn now (`EndOfTurn` with trigger `manual`).
    ///
    /// # Errors
    /// [`FluxError::Closed`] once the client is closed.
    pub async fn force_end_turn(&self) -> Result<(), FluxError> {
        self.commands
            .send(Command::ForceEndTurn)
            .await
            .map_err(|_| FluxError::Closed)
    }
}

/// Owns the client's tasks. Dropping it cancels them; [`FluxHandle::close`] ends gracefully.
pub struct FluxHandle {
    pub(super) sender: FluxSender,
    /// Close requests travel apart from audio so a full audio queue cannot delay them.
    pub(super) close: mpsc::Sender<oneshot::Sender<()>>,
    pub(super) cancel: CancellationToken,
    pub(super) supervisor: Option<JoinHandle<()>>,
    pub(super) request_id: String,
    pub(super) stats: Arc<ClientStats>,
}

impl FluxHandle {
    /// A sender for audio and control messages.
    pub fn sender(&self) -> FluxSender {
        self.sender.clone()
    }

    /// See [`FluxSender::send_audio`].
    ///
    /// # Errors
    /// [`FluxError::Closed`] once the client is closed.
    pub async fn send_audio(&self, audio: impl Into<Bytes>) -> Result<(), FluxError> {
        self.sender.send_audio(audio).await
    }

    /// See [`FluxSender::configure`].
    ///
    /// # Errors
    /// As [`FluxSender::configure`].
    pub async fn configure(&self, update: Configure) -> Result<(), FluxError> {
        self.sender.configure(update).await
    }

    /// See [`FluxSender::force_end_turn`].
    ///
    /// # Errors
    /// [`FluxError::Closed`] once the client is closed.
    pub async fn force_end_turn(&self) -> Result<(), FluxError> {
        self.sender.force_end_turn().await
    }

    /// The request id of the first connection.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ClientStats> {
        self.stats.clone()
    }

    /// Ends the session: sends the last partial frame, then `ForceEndTurn` and waits for the
    /// `EndOfTurn` (or the server's "no active turn" warning), so the transcript of an open turn
    /// is not lost, then `CloseStream` and waits for the server to close; each wait is bounded
    /// by `close_timeout`. Self-hosted deployments without `ForceEndTurn` answer with an error,
    /// which ends the close early. Then stops and
    /// awaits every task. The event stream ends after the last event.
    ///
    /// # Errors
    /// Never fails today; returns `Result` so transports that can fail on close may report it.
    pub async fn close(mut self) -> Result<(), FluxError> {
        let (tx, rx) = oneshot::channel();
        if self.close.send(tx).await.is_ok() {
            let _ = rx.await;
        }
        self.cancel.cancel();
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
        Ok(())
    }
}

impl Drop for FluxHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
