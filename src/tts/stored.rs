//! A line rendered once and kept: the apology the engine speaks when a backend fails must play
//! even when the voice is what failed.
//!
//! [`StoredSpeech::render`] asks the configured voice at start; when that voice is down then,
//! a local one stands in (espeak-ng when installed, else the synthetic voice), converted to
//! the configured voice's rate so playout takes it unchanged. The engine plays it from memory
//! (`ResponseOptions::stored_fallback`), so it costs no request and no wait.

use std::time::Duration;

use futures_util::StreamExt;
use tracing::{info, warn};

use super::espeak::ESPEAK_RATE;
use super::{Espeak, SpeechSynthesizer, SyntheticTts, TtsError, WordTiming};
use crate::audio::resample::Resampler;
use crate::error::ErrorKind;
use crate::scenario::TtsTiming;

/// A sentence's audio, kept in memory.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StoredSpeech {
    /// What it says.
    pub text: String,
    /// Which voice rendered it.
    pub voice: String,
    /// Its rate, the configured voice's.
    pub sample_rate: u32,
    /// 16-bit mono PCM.
    pub samples: Vec<i16>,
    /// Where each word starts and ends, when the voice said.
    pub words: Vec<WordTiming>,
}

impl StoredSpeech {
    /// `text` as `voice` says it, within `limit`.
    ///
    /// # Errors
    /// The voice's error, a timeout past `limit`, or an empty rendering.
    ///
    /// # Cancellation safety
    /// Dropping the future drops the synthesis.
    pub async fn render_with(
        voice: &dyn SpeechSynthesizer,
        text: &str,
        limit: Duration,
    ) -> Result<Self, TtsError> {
        let own = voice.for_conversation();
        let voice = own.as_deref().unwrap_or(voice);
        let rendering = async {
            let mut stream = voice.synthesize(text).await?;
            let mut stored = StoredSpeech {
                text: text.to_owned(),
                voice: voice.name().to_owned(),
                sample_rate: voice.sample_rate(),
                samples: Vec::new(),
                words: Vec::new(),
            };
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                stored.words.extend(chunk.words);
                stored.samples.extend_from_slice(&chunk.samples);
            }
            Ok(stored)
        };
        let stored = tokio::time::timeout(limit, rendering).await.map_err(|_| {
            TtsError::new(
                voice.name(),
                ErrorKind::Timeout,
                format!("the line was not rendered within {limit:?}"),
            )
        })??;
        if stored.samples.is_empty() {
            return Err(TtsError::new(
                voice.name(),
                ErrorKind::EmptyReply,
                "the voice sent no audio for the line",
            ));
        }
        Ok(stored)
    }

    /// `text` as `voice` says it, or as a local voice says it at `voice`'s rate when `voice`
    /// fails or takes longer than `limit` (espeak-ng when installed, else the synthetic
    /// voice). Each failure is logged. `None` only when no voice can say `text` (it has no
    /// words).
    pub async fn render(
        voice: &dyn SpeechSynthesizer,
        text: &str,
        limit: Duration,
    ) -> Option<Self> {
        let rate = voice.sample_rate();
        let local: Box<dyn SpeechSynthesizer> =
            if Espeak::available() && Resampler::new(ESPEAK_RATE, rate).is_ok() {
                Box::new(Espeak::new("en-us", 170))
            } else {
                Box::new(SyntheticTts::new(rate, TtsTiming::default()))
            };
        Self::render_or(voice, &*local, text, limit).await
    }

    async fn render_or(
        voice: &dyn SpeechSynthesizer,
        local: &dyn SpeechSynthesizer,
        text: &str,
        limit: Duration,
    ) -> Option<Self> {
        match Self::render_with(voice, text, limit).await {
            Ok(stored) => {
                info!(voice = %stored.voice, samples = stored.samples.len(), "fallback line rendered and kept");
                return Some(stored);
            }
            Err(e) => {
                warn!(voice = voice.name(), error = %e, "the voice could not render the fallback line; a local voice says it instead");
            }
        }
        let rate = voice.sample_rate();
        match Self::render_with(local, text, limit).await {
            Ok(stored) => match stored.at_rate(rate) {
                Some(stored) => return Some(stored),
                None => warn!(
                    voice = local.name(),
                    rate, "cannot convert the local voice's fallback line to the voice's rate"
                ),
            },
            Err(e) => {
                warn!(voice = local.name(), error = %e, "the local voice could not render the fallback line either")
            }
        }
        let synthetic = SyntheticTts::new(rate, TtsTiming::default());
        match Self::render_with(&synthetic, text, limit).await {
            Ok(stored) => Some(stored),
            Err(e) => {
                warn!(error = %e, "no voice can say the fallback line; it will be synthesized when needed");
                None
            }
        }
    }

    /// This audio at `rate`, word timings scaled with it; `None` when the rates cannot be
    /// converted.
    fn at_rate(self, rate: u32) -> Option<Self> {
        if self.sample_rate == rate {
            return Some(self);
        }
        let mut resampler = Resampler::new(self.sample_rate, rate).ok()?;
        let scale = |at: u64| at * u64::from(rate) / u64::from(self.sample_rate);
        Some(Self {
            samples: resampler.process(&self.samples),
            words: self
                .words
                .iter()
                .map(|w| WordTiming {
                    word: w.word.clone(),
                    start: scale(w.start),
                    end: scale(w.end),
                })
                .collect(),
            sample_rate: rate,
            text: self.text,
            voice: self.voice,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tts::synthetic::TtsFault;

    const LINE: &str = "Sorry, one moment.";

    #[tokio::test(start_paused = true)]
    async fn the_configured_voice_renders_the_line_when_it_can() {
        let voice = SyntheticTts::new(24000, TtsTiming::default());
        let local = SyntheticTts::new(16000, TtsTiming::default());
        let stored = StoredSpeech::render_or(&voice, &local, LINE, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(stored.sample_rate, 24000);
        assert_eq!(voice.calls(), 1);
        assert_eq!(local.calls(), 0);
        assert_eq!(stored.words.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_voice_that_is_down_at_start_is_replaced_at_its_rate() {
        let voice = SyntheticTts::new(24000, TtsTiming::default()).fail_call(0, TtsFault::Fail);
        let local = SyntheticTts::new(16000, TtsTiming::default());
        let native = StoredSpeech::render_with(&local, LINE, Duration::from_secs(5))
            .await
            .unwrap();
        let stored = StoredSpeech::render_or(&voice, &local, LINE, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(stored.sample_rate, 24000, "playout takes it unchanged");
        let expected = native.samples.len() * 3 / 2;
        assert!(
            stored.samples.len().abs_diff(expected) < 64,
            "{} samples, about {expected}",
            stored.samples.len()
        );
        let (before, after) = (native.words.last().unwrap(), stored.words.last().unwrap());
        assert_eq!(
            after.end,
            before.end * 3 / 2,
            "word timings scaled to the new rate"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_voice_and_a_line_without_words() {
        let voice = SyntheticTts::new(16000, TtsTiming::default()).fail_call(0, TtsFault::Stall);
        let local = SyntheticTts::new(16000, TtsTiming::default());
        let started = tokio::time::Instant::now();
        let stored = StoredSpeech::render_or(&voice, &local, LINE, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(local.calls(), 1, "the local voice stood in");
        assert!(!stored.samples.is_empty());
        assert!(
            StoredSpeech::render_or(&voice, &local, "", Duration::from_secs(2))
                .await
                .is_none()
        );
    }
}
