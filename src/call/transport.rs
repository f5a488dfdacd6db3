//! What a transport implements: a codec between its connection and the conversation.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::playback::Playback;
use super::{EndError, Ending};
use crate::audio::Encoding;
use crate::engine::EngineEvent;
use crate::report::TurnReport;

/// The format of the user's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    /// How samples are encoded (PCM16 little-endian, mu-law, ...).
    pub encoding: Encoding,
    /// Samples a second.
    pub sample_rate: u32,
}

/// The far end's start: the conversation begins.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Start {
    /// The format of the audio that follows ([`Inbound::Audio`]).
    pub input: AudioFormat,
}

impl Start {
    /// A start with audio in `input`.
    pub fn new(input: AudioFormat) -> Self {
        Start { input }
    }
}

/// What the far end sent, decoded. Every item counts against the message rate.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Inbound {
    /// The conversation begins; must come first.
    Start(Start),
    /// The user's audio, in the start's format, in order.
    Audio(Bytes),
    /// The far end's player has played `samples` of the agent's audio (at the voice's rate,
    /// counted over the whole call) and holds `buffered` more it goes on playing unless told
    /// to clear.
    Playing {
        /// Samples played.
        samples: u64,
        /// Samples received and not yet played.
        buffered: u64,
    },
    /// The agent's audio up to this running sample count (the `end` of a [`Speech`]) has
    /// played, or been dropped by a clear: a carrier's echoed mark.
    PlayedTo(u64),
    /// The user pressed a key.
    Dtmf(String),
    /// The user's audio ended: the reply in progress finishes, then the conversation ends.
    Stop,
    /// The user hung up: the conversation ends now.
    HungUp,
    /// A message with nothing for the conversation (a ping, an event not used).
    Other,
}

/// Agent audio for the far end, in the transport's chunk size.
#[derive(Debug)]
pub struct Speech<'a> {
    /// PCM16 at the voice's rate.
    pub pcm: &'a [i16],
    /// The running count of agent samples written after this chunk: what a playback report
    /// or an echoed mark names.
    pub end: u64,
    epoch: u64,
    playback: &'a Mutex<Playback>,
}

impl<'a> Speech<'a> {
    pub(super) fn new(pcm: &'a [i16], end: u64, epoch: u64, playback: &'a Mutex<Playback>) -> Self {
        Speech {
            pcm,
            end,
            epoch,
            playback,
        }
    }

    /// Whether no cut has happened since this audio was written. A transport with a
    /// [`Transport::cutter`] checks this while it holds its connection, right before the
    /// write: a clear the cutter wrote in between must not be followed by cut audio.
    pub fn is_current(&self) -> bool {
        self.playback
            .lock()
            .expect("playback lock")
            .is_current(self.epoch)
    }
}

/// What goes to the far end.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outbound<'a> {
    /// The conversation is ready: Flux is connected and audio may flow.
    Ready {
        /// The call's id.
        call: &'a str,
        /// The user's audio format.
        input: AudioFormat,
        /// The agent's audio rate.
        output_rate: u32,
    },
    /// Agent audio.
    Audio(Speech<'a>),
    /// Drop whatever agent audio is buffered and not yet played.
    Clear,
    /// Finish the clear a [`CutNow`] began ([`CutWritten::Started`]).
    FlushClear,
    /// An engine event (a provider's failure carries a fixed message, never the provider's
    /// words).
    Event(&'a EngineEvent),
    /// A turn's figures, once its reply ended.
    Turn(&'a TurnReport),
}

/// How the far end's playback is known, which decides what the user heard of a cut reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlaybackClock {
    /// It is not: what was written counts as heard (a speaker on this machine, a file).
    Written,
    /// From [`Inbound::Playing`] reports (a browser's player); the call's own clock until the
    /// first.
    Reports,
    /// From [`Inbound::PlayedTo`] confirmations of each [`Speech::end`] (a carrier's marks).
    Marks,
}

/// How far a [`CutNow`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutWritten {
    /// The clear is on the connection.
    Sent,
    /// The connection took it; an [`Outbound::FlushClear`] must finish it.
    Started,
    /// Not written (the connection was busy): the call sends [`Outbound::Clear`] next.
    NotNow,
}

/// Writes a barge-in's clear from the engine's task, without waiting, the moment the cut is
/// decided: the call's own task may be queued behind others at that moment.
pub trait CutNow: Send + Sync {
    /// Writes the clear if the connection takes it without waiting. Must not block.
    fn cut_now(&self) -> CutWritten;
}

/// A codec between a connection and a conversation.
///
/// # Cancellation safety
/// [`Transport::recv`] must be cancel-safe: the call polls it in a `select!` and drops it
/// when something else is ready, and nothing it read may be lost then. `send` and `finish`
/// are awaited to completion (each bounded by the call).
pub trait Transport: Send {
    /// Agent audio per [`Outbound::Audio`]: the call gathers the voice's frames into chunks
    /// of this length (a partial one goes out when no more audio came for 25 ms). 20 ms
    /// sends each frame as it is played.
    fn chunk(&self) -> Duration {
        Duration::from_millis(20)
    }

    /// How the far end's playback is known.
    fn playback_clock(&self) -> PlaybackClock {
        PlaybackClock::Written
    }

    /// The next thing the far end sent; `Ok(None)` when it went away.
    ///
    /// # Errors
    /// What the far end sent breaks the transport's format; the call ends with it.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Inbound>, EndError>> + Send;

    /// Writes one item.
    ///
    /// # Errors
    /// The far end is gone or not reading.
    fn send(&mut self, item: Outbound<'_>) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Tells the far end how the conversation ended and closes the connection.
    fn finish(&mut self, ending: &Ending) -> impl Future<Output = ()> + Send;

    /// A handle that writes a barge-in's clear from another task; taken once, at the start.
    /// `None` (the default) sends every clear from the call's task.
    fn cutter(&mut self) -> Option<Arc<dyn CutNow>> {
        None
    }

    /// Hands the far end to the phone number `to` (E.164), when the transport can: a phone
    /// line asks its carrier. The default cannot.
    ///
    /// # Errors
    /// Why the transfer did not happen, for the log.
    fn transfer(&mut self, to: &str) -> impl Future<Output = Result<(), String>> + Send {
        let _ = to;
        async { Err("this transport cannot transfer a call".to_owned()) }
    }
}

/// The far end is gone or stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the far end is gone or not reading")]
pub struct Gone;
