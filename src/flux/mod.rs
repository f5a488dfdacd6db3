//! Deepgram Flux (`/v2/listen`): wire types, listen options and client.
//!
//! - [`messages`]: every JSON message in both directions (lenient in, strict out).
//! - [`options`]: the query parameters with Flux's validation rules, shared with the emulator.
//! - connections come from a [`Connector`] ([`crate::ws`]): a WebSocket, or an in-memory emulator.
//! - `continuity` (internal): pure framing, audio-time and turn bookkeeping, and the repairs of
//!   broken turn events.
//! - [`client`]: [`client::connect`], the handle and the event stream.
//! - [`speak`]: Flux TTS (`/v2/speak`), the speaking half: its messages in both directions.

pub mod client;
pub(crate) mod continuity;
pub(crate) mod lossless;
pub mod messages;
pub mod options;
mod repair;
pub mod speak;

pub use crate::ws::{ApiKey, Connector, WebSocketConnector};
pub use client::{
    FluxConfig, FluxError, FluxEvent, FluxEventKind, FluxEvents, FluxHandle, FluxSender,
    TurnUpdate, connect,
};
pub use messages::{
    ClientMessage, Configure, ServerMessage, Thresholds, TurnEvent, TurnInfo, TurnTrigger, Word,
};
pub use options::{Encoding, FluxModel, ListenOptions, OptionsError};
pub use repair::Parsed;
