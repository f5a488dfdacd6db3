//! # turnflow
//!
//! Voice-agent turn-taking on Deepgram Flux: Flux turn events in, spoken replies out. Replies
//! start speculatively on `EagerEndOfTurn`, are cancelled when the user keeps talking, are
//! promoted on `EndOfTurn`, and stop within one audio frame when the user barges in; the
//! history keeps only what the user actually heard.
//!
//! ## A session in a few lines
//!
//! A Flux connection, a language model and a voice make a session. Here everything is local:
//! the emulator plays a scenario, and the scripted model and synthetic voice stand in for real
//! providers (implement [`llm::LanguageModel`] and [`tts::SpeechSynthesizer`] for yours).
//!
//! ```
//! use std::sync::Arc;
//! use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
//! use turnflow::engine::{AudioSink, Backends, CancellationToken, SessionConfig, start_session};
//! use turnflow::flux::{FluxConfig, ListenOptions, connect};
//! use turnflow::llm::ScriptedLlm;
//! use turnflow::scenario::Scenario;
//! use turnflow::tts::SyntheticTts;
//!
//! struct Speaker;
//! impl AudioSink for Speaker {
//!     fn write(&mut self, _frame: &[i16]) { /* to the sound card or the phone line */ }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scenario = Scenario::load("scenarios/plain.json".as_ref())?;
//! let flux_server = MemoryEmulator::new(EmulatorConfig::new(Arc::new(scenario.clone())));
//! // With Deepgram: connect(FluxConfig::from_env(options)?, Arc::new(WebSocketConnector)).
//! let (flux, events) = connect(FluxConfig::new(ListenOptions::default()), Arc::new(flux_server)).await?;
//! let backends = Backends {
//!     llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
//!     tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
//!     tools: None,
//! };
//! let stop = CancellationToken::new(); // Ctrl-C, a server's drain, ...
//! let (session, _events) = start_session(SessionConfig::default(), events, backends, Box::new(Speaker), stop);
//!
//! flux.send_audio(vec![0u8; 16000 * 2 * 8]).await?; // 8 s of the microphone
//! tokio::time::sleep(std::time::Duration::from_secs(8)).await;
//! flux.close().await?;
//! let outcome = session.finished().await;
//! assert_eq!(outcome.history.len(), 2); // the question, and the answer as heard
//! # Ok(())
//! # }
//! ```
//!
//! ## Crate guide
//! Modules in layers, bottom first; a module uses its own layer or lower ones, never a higher
//! one, and no two import each other (`.ci/layers.py` checks this on every CI run).
//!
//! | layer | module | role |
//! |---|---|---|
//! | 0 | `text` (internal), [`error`], [`failover`], [`net`], [`audio`] | text helpers (outside text escaped and cut short for logs); the typed error of a model or voice (kind, HTTP status, whether to retry) and the failover loop and circuit breakers the model and voice chains share; API keys, the refusal of unencrypted transports to remote hosts, TLS and the HTTP client; PCM, encodings, G.711, WAV |
//! | 1 | [`ws`] | WebSocket connections as frames (real, or in-memory channels) behind one [`ws::Connector`] trait: Flux's two sockets and Aura's |
//! | 2 | [`flux`] | Flux `/v2/listen`: wire types, listen options and the client (which keeps the open turn's audio packed losslessly for a reconnect); `/v2/speak`'s messages and query both ways ([`flux::speak`]) |
//! | 3 | [`scenario`] | the scenario file: user turns, confidence shapes, scripted replies, latencies, faults ([`scenario::FaultSpec`]) |
//! | 4 | [`llm`], [`tts`], [`tools`] | the `LanguageModel` trait, conversation types, tools (OpenAI-compatible, Anthropic, failover, scripted); the `SpeechSynthesizer` trait (Flux TTS with its interrupt at the played position, Aura, OpenAI-compatible speech, espeak-ng, synthetic); where tools come from (the demo restaurant, webhooks, MCP servers, call control) |
//! | 5 | [`engine`] | turn machine (pure), sentence segmentation, session driver, playout, event log |
//! | 6 | [`report`], [`recording`] | per-turn metrics and the run summary from the event log ([`report::Breakdown`], the SVG timeline [`report::timeline`]); the recording format and the [`recording::Recorder`] that wraps a session's Flux connector, model and voice (`docs/recordings.md`) |
//! | 7 | [`emulator`], [`call`] | a local Flux server (WebSocket or in-memory), listening as a scenario says and speaking (`/v2/speak`) with exactly timed words, with faults on demand; one conversation over any [`call::Transport`] (a codec: audio, playback progress, keys and stop in; audio, clears and events out): Flux, recording, engine, deadlines and guards, greeting and re-prompt, the cut, the ending |
//! | 8 | `server` (feature `server`), [`sim`] | `turnflow serve` as a library: a `Service` to mount in an axum app or a server on its own listener, the browser session (`docs/protocol.md`; over a WebSocket, or WebRTC with feature `webrtc`, `docs/webrtc.md`) and the phone line as transports of [`call`], admission, Prometheus metrics, health and readiness, drain, the browser page; the simulated conversation behind `turnflow simulate` and `bench`: the emulator, and a simulated user as the transport of a [`call::Call`] |
//! | 9 | [`lab`] | the latency lab: Flux events re-derived from a recorded confidence curve under other thresholds ([`lab::derive()`], pure), replay on the paused clock, turns paired side by side, sweeps, the eot-bench importer |
//!
//! Data flows one way: audio in -> [`flux`] client -> [`engine`] turn machine -> response (LLM ->
//! sentences -> TTS -> gate -> playout) -> audio out, every step stamped into one event log that
//! [`report`] reads. Nothing upstream knows what is downstream.
//!
//! ## Crate features
//! - `cli` (default): the `turnflow` binary and what only it needs (clap, anyhow, toml,
//!   tracing-subscriber, a multi-threaded runtime, signals). Depend on turnflow with
//!   `default-features = false` for the library alone.
//! - `virtual-clock` (default): tokio's paused clock for the binary's `--clock virtual`,
//!   `replay` and `bench`; test machinery, so the container image is built without it.
//! - `vad`: the emulator's voice-activity turn detection (earshot); without it
//!   [`emulator::TurnDetection::Vad`] is refused at the handshake.
//! - `server`: the session server behind `turnflow serve` (axum); part of `cli`.
//! - `mcp`: tools from MCP servers ([`tools::mcp`], the official SDK rmcp's client over stdio
//!   and Streamable HTTP); part of `cli`.
//! - `otel`: OpenTelemetry traces of every call over OTLP/HTTP.
//! - `opus`: Opus with error correction and loss concealment for WebRTC (`audio::opus`;
//!   links the system's libopus, Debian `libopus-dev`).
//! - `webrtc`: WebRTC sessions in the server (`server::webrtc`: WHIP-style offers at
//!   `/webrtc`, Opus over one shared UDP port, the protocol on a data channel) and the WebRTC
//!   caller the load generator uses; str0m with its RustCrypto DTLS (no OpenSSL). Implies
//!   `server` and `opus`.
//! - `audio-io`: microphone and speaker for `turnflow run` (cpal; ALSA headers on Linux).
//!
//! TLS is configured per client (ring, Mozilla's roots): turnflow never installs a process-wide
//! rustls provider, so an application's own choice stands.

/// Implementing [`llm::LanguageModel`] or [`tts::SpeechSynthesizer`] takes this attribute;
/// re-exported so a backend needs no dependency of its own for it.
pub use async_trait::async_trait;

/// What backends build their streams with (re-exported from `futures-util`): the [`Stream`]
/// trait, [`StreamExt`] and the constructors used for [`llm::LlmStream`] and
/// [`tts::SpeechStream`].
///
/// [`Stream`]: stream::Stream
/// [`StreamExt`]: stream::StreamExt
pub mod stream {
    pub use futures_util::stream::{empty, iter, once, unfold};
    pub use futures_util::{Stream, StreamExt};
}

pub mod audio;
pub mod call;
pub mod emulator;
pub mod engine;
pub mod error;
pub mod failover;
pub mod flux;
pub mod lab;
pub mod llm;
pub mod net;
pub mod recording;
pub mod report;
pub mod scenario;
#[cfg(feature = "server")]
pub mod server;
pub mod sim;
pub(crate) mod text;
pub mod tools;
pub mod tts;
pub mod ws;
