//! Speech synthesis: the [`SpeechSynthesizer`] trait and the voices.
//!
//! - [`synthetic`]: tones at a scripted rate (embedded default and test fake).
//! - [`aura`]: Deepgram Aura over one WebSocket per conversation.
//! - [`openai_speech`]: OpenAI-compatible `/audio/speech`, streamed PCM.
//! - [`espeak`]: the local espeak-ng program, offline.
//! - [`failover`]: a chain that switches voices before the first audio.
//!
//! The engine synthesizes one sentence at a time and receives 16-bit mono PCM in chunks, with
//! word timings when the provider has them (they make the heard history exact to the word).
//! Dropping a [`SpeechStream`] cancels that synthesis; [`SpeechSynthesizer::clear`] also drops
//! whatever the provider still buffers (Aura's `Clear`).

use std::pin::Pin;

use async_trait::async_trait;
use futures_util::Stream;

pub mod aura;
pub mod espeak;
pub mod failover;
pub mod openai_speech;
pub mod synthetic;

pub use aura::AuraTts;
pub use espeak::Espeak;
pub use failover::FailoverTts;
pub use openai_speech::OpenAiSpeech;
pub use synthetic::SyntheticTts;

/// A word's position in a sentence's audio, in samples from the sentence start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordTiming {
    /// The word as written in the text.
    pub word: String,
    /// First sample of the word.
    pub start: u64,
    /// One past the last sample of the word.
    pub end: u64,
}

/// A piece of synthesized audio.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpeechChunk {
    /// 16-bit mono PCM at the synthesizer's sample rate.
    pub samples: Vec<i16>,
    /// Timings of words that start in this chunk (sentence-relative sample offsets).
    pub words: Vec<WordTiming>,
}

impl SpeechChunk {
    /// A chunk of 16-bit little-endian PCM bytes (an odd trailing byte is ignored), without
    /// word timings.
    pub fn from_pcm16(bytes: &[u8]) -> Self {
        let mut samples = Vec::with_capacity(bytes.len() / 2);
        crate::audio::decode_into(crate::flux::Encoding::Linear16, bytes, &mut samples);
        Self {
            samples,
            words: Vec::new(),
        }
    }
}

/// Why synthesis failed: a [`crate::error::BackendError`] with its kind.
pub type TtsError = crate::error::BackendError;

/// Streamed audio of one sentence.
pub type SpeechStream = Pin<Box<dyn Stream<Item = Result<SpeechChunk, TtsError>> + Send>>;

/// A text-to-speech backend.
#[async_trait]
pub trait SpeechSynthesizer: Send + Sync {
    /// Short name for logs and reports.
    fn name(&self) -> &str;

    /// Sample rate of the PCM it produces.
    fn sample_rate(&self) -> u32;

    /// Starts synthesizing `text` (one sentence or clause).
    ///
    /// # Errors
    /// [`TtsError`] when synthesis cannot start; later errors arrive in the stream.
    ///
    /// # Cancellation safety
    /// Dropping the stream (or this future) cancels the synthesis.
    async fn synthesize(&self, text: &str) -> Result<SpeechStream, TtsError>;

    /// Drops audio the provider still buffers (barge-in). The default does nothing, for
    /// providers whose streams stop when dropped.
    async fn clear(&self) {}
}
