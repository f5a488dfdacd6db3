//! # turnflow
//!
//! Voice-agent turn-taking on Deepgram Flux.
//!
//! ## Crate guide
//! | module | role |
//! |---|---|
//! | [`flux`] | Flux `/v2/listen`: wire types, listen options, transports and the client |
//!
//! Data flows one way: audio in -> [`flux`] client -> engine -> response -> audio out.
#![warn(missing_docs)]

pub mod flux;
