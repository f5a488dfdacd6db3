//! The synthetic voice: audible tones, one per word, at a scripted speaking rate and latency.
//!
//! Each word is a short tone (its pitch varies from word to word so a recording is easy to
//! follow) lasting 60/`words_per_minute` seconds, its last fifth silent like the gap between
//! spoken words. Timings are exact, so heard-history tests can be precise. The whole sentence
//! arrives after `ttfb_ms` in 100 ms chunks, faster than real time, as cloud TTS does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{SpeechChunk, SpeechStream, SpeechSynthesizer, TtsError, WordTiming};
use crate::scenario::TtsTiming;

/// A scripted failure of one synthesis request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsFault {
    /// No audio ever arrives.
    Stall,
    /// The request fails at once.
    Fail,
}

/// The synthetic text-to-speech backend.
#[derive(Debug)]
pub struct SyntheticTts {
    sample_rate: u32,
    timing: TtsTiming,
    faults: Mutex<HashMap<u64, TtsFault>>,
    calls: AtomicU64,
    clears: AtomicU64,
}

impl SyntheticTts {
    /// A voice at `sample_rate` with `timing`.
    pub fn new(sample_rate: u32, timing: TtsTiming) -> Self {
        Self {
            sample_rate,
            timing,
            faults: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
            clears: AtomicU64::new(0),
        }
    }

    /// Makes request number `call` (0-based) fail.
    pub fn fail_call(self, call: u64, fault: TtsFault) -> Self {
        self.faults.lock().expect("faults lock").insert(call, fault);
        self
    }

    /// Synthesis requests so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// `clear()` calls so far.
    pub fn clears(&self) -> u64 {
        self.clears.load(Ordering::Relaxed)
    }

    /// Samples per word at this rate and speed.
    pub fn samples_per_word(&self) -> u64 {
        (f64::from(self.sample_rate) * 60.0 / self.timing.words_per_minute).round() as u64
    }

    /// The audio and word timings of `text`, synchronously.
    pub fn render(&self, text: &str) -> (Vec<i16>, Vec<WordTiming>) {
        let per_word = self.samples_per_word();
        let voiced = per_word * 4 / 5;
        let rate = f64::from(self.sample_rate);
        let fade = (rate * 0.005) as u64;
        let mut samples = Vec::new();
        let mut words = Vec::new();
        for (i, word) in text.split_whitespace().enumerate() {
            let start = samples.len() as u64;
            let pitch = 170.0 + 35.0 * (i % 5) as f64;
            for n in 0..per_word {
                let value = if n < voiced {
                    let envelope = (n.min(voiced - n) as f64 / fade as f64).min(1.0);
                    let phase = std::f64::consts::TAU * pitch * n as f64 / rate;
                    (phase.sin() * 0.3 * envelope * 32767.0) as i16
                } else {
                    0
                };
                samples.push(value);
            }
            words.push(WordTiming {
                word: word.to_owned(),
                start,
                end: start + voiced,
            });
        }
        (samples, words)
    }
}

#[async_trait]
impl SpeechSynthesizer for SyntheticTts {
    fn name(&self) -> &str {
        "synthetic"
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    async fn synthesize(&self, text: &str) -> Result<SpeechStream, TtsError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let fault = self.faults.lock().expect("faults lock").remove(&call);
        if fault == Some(TtsFault::Fail) {
            return Err(TtsError {
                provider: "synthetic".into(),
                message: "scripted failure".into(),
            });
        }
        let (samples, mut words) = self.render(text);
        let chunk_len = (self.sample_rate / 10) as usize;
        let mut chunks = Vec::new();
        for (i, piece) in samples.chunks(chunk_len.max(1)).enumerate() {
            let chunk_start = (i * chunk_len) as u64;
            let chunk_end = chunk_start + piece.len() as u64;
            let (starting, rest): (Vec<_>, Vec<_>) =
                words.into_iter().partition(|w| w.start < chunk_end);
            words = rest;
            chunks.push(Ok(SpeechChunk {
                samples: piece.to_vec(),
                words: starting,
            }));
        }
        let ttfb = Duration::from_millis(self.timing.ttfb_ms);
        let stalled = fault == Some(TtsFault::Stall);
        let stream = futures_util::stream::unfold(
            (chunks.into_iter(), true),
            move |(mut chunks, first)| async move {
                if first {
                    if stalled {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(ttfb).await;
                }
                chunks.next().map(|c| (c, (chunks, false)))
            },
        );
        Ok(Box::pin(stream))
    }

    async fn clear(&self) {
        self.clears.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::time::Instant;

    #[test]
    fn words_take_sixty_over_wpm_seconds() {
        let tts = SyntheticTts::new(
            16000,
            TtsTiming {
                ttfb_ms: 0,
                words_per_minute: 120.0,
            },
        );
        let (samples, words) = tts.render("one two three");
        assert_eq!(samples.len(), 3 * 8000);
        assert_eq!(words[1].start, 8000);
        assert_eq!(words[1].end, 8000 + 6400);
        assert!(
            samples[..6400].iter().any(|s| s.unsigned_abs() > 5000),
            "audible"
        );
        assert!(
            samples[6400..8000].iter().all(|s| *s == 0),
            "gap between words"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn streams_after_ttfb_with_timings_in_the_chunk_where_words_start() {
        let tts = SyntheticTts::new(
            16000,
            TtsTiming {
                ttfb_ms: 150,
                words_per_minute: 120.0,
            },
        );
        let start = Instant::now();
        let chunks: Vec<_> = tts.synthesize("one two").await.unwrap().collect().await;
        assert_eq!(start.elapsed(), Duration::from_millis(150));
        assert_eq!(chunks.len(), 10);
        let chunks: Vec<SpeechChunk> = chunks.into_iter().map(Result::unwrap).collect();
        assert_eq!(chunks[0].words.len(), 1);
        assert_eq!(chunks[5].words[0].word, "two");
        assert_eq!(chunks.iter().map(|c| c.samples.len()).sum::<usize>(), 16000);
    }

    #[tokio::test(start_paused = true)]
    async fn faults() {
        let tts = SyntheticTts::new(16000, TtsTiming::default())
            .fail_call(0, TtsFault::Fail)
            .fail_call(1, TtsFault::Stall);
        assert!(tts.synthesize("x").await.is_err());
        let mut s = tts.synthesize("x").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(60), s.next())
                .await
                .is_err()
        );
        assert!(tts.synthesize("x").await.is_ok());
        tts.clear().await;
        assert_eq!(tts.clears(), 1);
        assert_eq!(tts.calls(), 3);
    }
}
