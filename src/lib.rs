//! # turnflow
//!
//! Voice-agent turn-taking on Deepgram Flux.
//!
//! ## Crate guide
//! | module | role |
//! |---|---|
//! | [`flux`] | Flux `/v2/listen`: wire types, listen options, transports and the client |
//! | [`emulator`] | a local Flux server (WebSocket or in-memory) driven by a scenario |
//! | [`scenario`] | the scenario file: user turns, confidence shapes, scripted replies, latencies |
//! | [`audio`] | PCM helpers: G.711, sample decoding, WAV |
//! | [`llm`] | the `LanguageModel` trait, conversation types, the scripted model |
//! | [`tts`] | the `SpeechSynthesizer` trait and the synthetic voice |
//! | [`engine`] | turn machine (pure), sentence segmentation, session driver |
//! | [`text`] | transcript normalization shared by engine and backends |
//! | [`report`] | per-turn metrics and the run summary, computed from the session's event log |
//! | [`timeline`] | the SVG timeline of a simulated conversation |
//! | [`sim`] | the simulated conversation behind `turnflow simulate`: emulator + client + engine + user |
//!
//! Data flows one way: audio in -> [`flux`] client -> engine -> response -> audio out.
#![warn(missing_docs)]

pub mod audio;
pub mod emulator;
pub mod engine;
pub mod flux;
pub mod llm;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod text;
pub mod timeline;
pub mod tts;
