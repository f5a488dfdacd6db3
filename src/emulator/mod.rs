//! A local Flux server, `/v2/listen` and `/v2/speak`, that speaks the same wire types as the
//! real service.
//!
//! The embedded default behind `turnflow simulate`, the server of the integration tests, and a
//! product of its own: any Flux client pointed at it works unchanged.
//!
//! - `session`: one connection's behaviour, pure (audio and messages in, messages out): the
//!   protocol clock, scripted turns (`session/script.rs`) and voice-activity turns
//!   (`session/voice.rs`, feature `vad`).
//! - `speak`: `/v2/speak` (Flux TTS): the turn machine and a voice whose words are timed
//!   exactly (`speak/session.rs`), paced, limited and faulted like the service (`speak/mod.rs`).
//! - `server`: handshake rules for both endpoints, the WebSocket server and the in-memory
//!   connector.
//! - `faults`: stalls, drops, closes, refusals, clock jumps and duplicates on demand, as a
//!   scenario's [`FaultSpec`](crate::scenario::FaultSpec)s describe them.
//!
//! The simulated conversation that drives it (`turnflow simulate`) is a harness above it:
//! [`crate::sim`].

mod faults;
mod server;
mod session;
mod speak;

pub use server::{EmulatorConfig, EmulatorServer, MemoryEmulator};
pub use session::{EmulatorSession, Output, TurnDetection};
pub use speak::{SpeakBehaviour, SpeakFault};
