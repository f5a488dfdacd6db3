//! Speech synthesis: the [`SpeechSynthesizer`] trait and the voices.
//!
//! - [`synthetic`]: tones at a scripted rate (embedded default and test fake).
//! - [`aura`]: Deepgram Aura over one WebSocket per conversation.
//! - [`flux`]: Deepgram Flux TTS (`/v2/speak`): a socket per conversation, interrupts at the
//!   position played.
//! - [`openai_speech`]: OpenAI-compatible `/audio/speech`, streamed PCM.
//! - [`espeak`]: the local espeak-ng program, offline.
//! - [`failover`]: a chain that switches voices before the first audio.
//!
//! The engine synthesizes one sentence at a time and receives 16-bit mono PCM in chunks, with
//! word timings when the provider has them (they make the heard history exact to the word).
//! Dropping a [`SpeechStream`] cancels that synthesis; [`SpeechSynthesizer::clear`] also drops
//! whatever the provider still buffers (Aura's `Clear`, Flux TTS's `Interrupt` with the
//! position played). A voice that holds a connection per conversation gives each session its
//! own through [`SpeechSynthesizer::for_conversation`].

use std::pin::Pin;

use async_trait::async_trait;
use futures_util::Stream;

pub mod aura;
pub mod espeak;
pub mod failover;
pub mod flux;
pub mod openai_speech;
pub mod stored;
pub mod synthetic;

pub use aura::AuraTts;
pub use espeak::Espeak;
pub use failover::FailoverTts;
pub use flux::FluxTts;
pub use openai_speech::OpenAiSpeech;
pub use stored::StoredSpeech;
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
    /// What the provider reports the sentence cost, on its last chunk (Flux TTS's
    /// `SpeechMetadata`); that chunk may carry no samples.
    pub billed: Option<Billed>,
}

/// What a provider reports one sentence cost and produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Billed {
    /// Characters billed.
    pub characters: u64,
    /// Milliseconds of audio produced.
    pub audio_ms: u64,
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
            billed: None,
        }
    }
}

/// What the listener heard of a cut reply's last sentence: what a voice that reports the
/// heard words back (Flux TTS's `Interrupt`) needs to place the cut.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpeechCut {
    /// The last sentence that reached playout, as given to
    /// [`SpeechSynthesizer::synthesize`]; `None` when none did.
    pub sentence: Option<String>,
    /// Samples of it the listener played.
    pub played: u64,
    /// The words of it the engine counts as heard.
    pub heard: String,
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

    /// A reply was cut (barge-in, a withdrawn guess, a cancelled reply): drops whatever the
    /// provider still buffers or bills for it. `cut` says how much of the reply's last sentence
    /// the listener heard. The default does nothing, for providers whose streams stop when
    /// dropped.
    ///
    /// # Cancellation safety
    /// The engine bounds it with a deadline; a voice left mid-clear must treat its connection
    /// as unusable (replace it) rather than reuse it.
    async fn clear(&self, cut: &SpeechCut) {
        let _ = cut;
    }

    /// A voice of its own for one conversation, for providers that keep state per
    /// conversation (a socket, the voice's prosody across replies). `None`, the default: this
    /// voice serves every conversation as it is.
    fn for_conversation(&self) -> Option<std::sync::Arc<dyn SpeechSynthesizer>> {
        None
    }

    /// Whether each provider behind this voice is being asked (a failover chain's breakers,
    /// for `/metrics`). Empty, the default, for a voice with no breaker.
    fn health(&self) -> Vec<crate::failover::ProviderHealth> {
        Vec::new()
    }
}
