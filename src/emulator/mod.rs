//! A local Flux `/v2/listen` server that speaks the same wire types as the real service.
//!
//! The embedded default behind `turnflow simulate`, the server of the integration tests, and a
//! product of its own: any Flux client pointed at it works unchanged.
//!
//! - [`session`]: one connection's behaviour, pure (audio and messages in, messages out): the
//!   protocol clock, scripted turns (`session/script.rs`) and voice-activity turns
//!   (`session/voice.rs`, feature `vad`).
//! - [`server`]: handshake rules, the WebSocket server and the in-memory connector.
//! - [`sim`]: a whole simulated conversation: this emulator, the real Flux client, the engine
//!   and a simulated user who speaks the scenario and reacts to the agent.
//! - [`faults`]: stalls, drops, closes, refusals, clock jumps and duplicates on demand.

pub mod faults;
pub mod server;
pub mod session;
pub mod sim;

pub use server::{EmulatorConfig, EmulatorServer, MemoryEmulator};
pub use session::{EmulatorSession, TurnDetection};
