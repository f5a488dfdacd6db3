//! Failover across voices: switch providers only before the first audio of a sentence.
//!
//! The same loop as [`crate::llm::FailoverLlm`] (`crate::failover`): the first healthy voice is
//! asked; if it fails before its first chunk with a retryable error (rate limited, closed), it
//! is retried once after `retry_backoff` (or the voice's own back-off); one silent past
//! `first_audio_timeout`, a wrong key or refused text is not retried. Then the next voice is
//! asked and the failed one is tried last for `probe_after`. Audio already delivered is never re-synthesized.
//! All voices of a chain must share one sample rate, since playout runs at one rate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{SpeechCut, SpeechStream, SpeechSynthesizer, TtsError};
use crate::failover::{Health, Policy, ProviderHealth};

/// A chain of voices tried in order.
pub struct FailoverTts {
    voices: Vec<Arc<dyn SpeechSynthesizer>>,
    /// Shared by the chains [`SpeechSynthesizer::for_conversation`] makes: a voice that failed
    /// one conversation is skipped by the others too.
    health: Arc<Health>,
    /// Give up on a voice when its first audio takes longer than this.
    pub first_audio_timeout: Duration,
    /// Wait before the single retry of the same voice.
    pub retry_backoff: Duration,
    /// A voice asking to wait longer than this is not retried; the next one is asked.
    pub longest_retry_wait: Duration,
    /// How long a voice that failed a sentence is tried after the others.
    pub probe_after: Duration,
    /// A voice failing every sentence for this long is not asked for `cool_down`.
    pub trip_after: Duration,
    /// How long a voice whose breaker opened is not asked.
    pub cool_down: Duration,
    name: String,
}

impl FailoverTts {
    /// A chain over `voices`, first preferred.
    ///
    /// # Errors
    /// [`TtsError`] when the chain is empty or the voices' sample rates differ.
    pub fn new(voices: Vec<Arc<dyn SpeechSynthesizer>>) -> Result<Self, TtsError> {
        let name = voices
            .iter()
            .map(|v| v.name().to_owned())
            .collect::<Vec<_>>()
            .join(",");
        let error = |message: String| {
            TtsError::new(name.clone(), crate::error::ErrorKind::BadRequest, message)
        };
        let Some(first) = voices.first() else {
            return Err(error("a failover chain needs at least one voice".into()));
        };
        if let Some(other) = voices
            .iter()
            .find(|v| v.sample_rate() != first.sample_rate())
        {
            return Err(error(format!(
                "voices in a chain must share a sample rate: {} is {} Hz, {} is {} Hz",
                first.name(),
                first.sample_rate(),
                other.name(),
                other.sample_rate()
            )));
        }
        let names: Vec<&str> = voices.iter().map(|v| v.name()).collect();
        Ok(Self {
            health: Arc::new(Health::new("tts", &names)),
            voices,
            first_audio_timeout: Duration::from_secs(2),
            retry_backoff: Duration::from_millis(200),
            longest_retry_wait: Duration::from_secs(2),
            probe_after: Duration::from_secs(30),
            trip_after: Duration::from_secs(3),
            cool_down: Duration::from_secs(10),
            name,
        })
    }

    async fn first_audio(
        &self,
        voice: &dyn SpeechSynthesizer,
        text: &str,
    ) -> Result<SpeechStream, TtsError> {
        let mut stream = voice.synthesize(text).await?;
        match tokio::time::timeout(self.first_audio_timeout, stream.next()).await {
            Err(_) => Err(TtsError::new(
                voice.name(),
                crate::error::ErrorKind::Timeout,
                format!("no audio within {:?}", self.first_audio_timeout),
            )),
            Ok(None) => Ok(stream),
            Ok(Some(Err(e))) => Err(e),
            Ok(Some(Ok(first))) => Ok(Box::pin(
                futures_util::stream::once(async move { Ok(first) }).chain(stream),
            )),
        }
    }

    /// Whether voice `index` is currently tried last or not at all.
    pub fn is_unhealthy(&self, index: usize) -> bool {
        self.health.is_unhealthy(index)
    }
}

#[async_trait]
impl SpeechSynthesizer for FailoverTts {
    fn name(&self) -> &str {
        &self.name
    }

    fn sample_rate(&self) -> u32 {
        self.voices[0].sample_rate()
    }

    async fn synthesize(&self, text: &str) -> Result<SpeechStream, TtsError> {
        let policy = Policy {
            retry_backoff: self.retry_backoff,
            longest_retry_wait: self.longest_retry_wait,
            probe_after: self.probe_after,
            trip_after: self.trip_after,
            cool_down: self.cool_down,
        };
        self.health
            .first_success(policy, &self.name, |index| {
                self.first_audio(&*self.voices[index], text)
            })
            .await
            .map_err(|last| last.expect("a chain has at least one voice"))
    }

    async fn clear(&self, cut: &SpeechCut) {
        for voice in &self.voices {
            voice.clear(cut).await;
        }
    }

    fn for_conversation(&self) -> Option<Arc<dyn SpeechSynthesizer>> {
        let own: Vec<_> = self.voices.iter().map(|v| v.for_conversation()).collect();
        if own.iter().all(Option::is_none) {
            return None;
        }
        let voices = own
            .into_iter()
            .zip(&self.voices)
            .map(|(own, shared)| own.unwrap_or_else(|| shared.clone()))
            .collect();
        Some(Arc::new(FailoverTts {
            voices,
            health: self.health.clone(),
            first_audio_timeout: self.first_audio_timeout,
            retry_backoff: self.retry_backoff,
            longest_retry_wait: self.longest_retry_wait,
            probe_after: self.probe_after,
            trip_after: self.trip_after,
            cool_down: self.cool_down,
            name: self.name.clone(),
        }))
    }

    fn health(&self) -> Vec<ProviderHealth> {
        self.health.report()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::TtsTiming;
    use crate::tts::SyntheticTts;
    use crate::tts::synthetic::TtsFault;

    #[tokio::test(start_paused = true)]
    async fn a_failing_then_stalled_voice_fails_over_and_is_probed_later() {
        let first = Arc::new(
            SyntheticTts::new(16000, TtsTiming::default())
                .fail_call(0, TtsFault::Fail)
                .fail_call(1, TtsFault::Stall),
        );
        let second = Arc::new(SyntheticTts::new(16000, TtsTiming::default()));
        let chain = FailoverTts::new(vec![first.clone(), second.clone()]).unwrap();
        let audio: Vec<_> = chain
            .synthesize("hello there")
            .await
            .unwrap()
            .collect()
            .await;
        assert!(!audio.is_empty() && audio.iter().all(Result::is_ok));
        assert_eq!(
            (first.calls(), second.calls()),
            (2, 1),
            "a failure is retried once; the stalled retry is not, the next voice answers"
        );
        assert!(chain.is_unhealthy(0));
        drop(chain.synthesize("again").await.unwrap());
        assert_eq!(first.calls(), 2, "skipped while unhealthy");
        tokio::time::sleep(Duration::from_secs(31)).await;
        drop(chain.synthesize("probe").await.unwrap());
        assert_eq!(first.calls(), 3);
    }

    #[test]
    fn voices_must_share_a_rate() {
        let a: Arc<dyn SpeechSynthesizer> =
            Arc::new(SyntheticTts::new(16000, TtsTiming::default()));
        let b: Arc<dyn SpeechSynthesizer> =
            Arc::new(SyntheticTts::new(24000, TtsTiming::default()));
        let e = FailoverTts::new(vec![a, b]).err().unwrap();
        assert!(e.to_string().contains("share a sample rate"));
        assert!(FailoverTts::new(vec![]).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_voice_is_not_retried() {
        let first = Arc::new(
            SyntheticTts::new(16000, TtsTiming::default()).fail_call(0, TtsFault::Reject(403)),
        );
        let second = Arc::new(SyntheticTts::new(16000, TtsTiming::default()));
        let chain = FailoverTts::new(vec![first.clone(), second.clone()]).unwrap();
        drop(chain.synthesize("hello").await.unwrap());
        assert_eq!((first.calls(), second.calls()), (1, 1));
    }
}
