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

use super::{SpeechChunk, SpeechCut, SpeechStream, SpeechSynthesizer, TtsError, WordTiming};
use crate::scenario::TtsTiming;

/// A scripted failure of one synthesis request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsFault {
    /// The stream exists but no audio ever arrives.
    Stall,
    /// The request fails at once.
    Fail,
    /// The request is never answered: `synthesize` never returns.
    StallBeforeStream,
    /// The audio stops after this many chunks without ending.
    StallAfterChunks(u64),
    /// The request is refused with this HTTP status.
    Reject(u16),
}

/// The synthetic text-to-speech backend.
#[derive(Debug)]
pub struct SyntheticTts {
    sample_rate: u32,
    timing: TtsTiming,
    faults: Mutex<HashMap<u64, TtsFault>>,
    calls: AtomicU64,
    clears: AtomicU64,
    chunks: std::sync::Arc<AtomicU64>,
    clear_never_confirmed: bool,
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
            chunks: Default::default(),
            clear_never_confirmed: false,
        }
    }

    /// Makes `clear()` hang forever, like a provider that never confirms a clear.
    pub fn never_confirm_clear(mut self) -> Self {
        self.clear_never_confirmed = true;
        self
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

    /// Audio chunks handed out so far (how fast the engine pulls audio).
    pub fn chunks_served(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
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
        let voice = Voice::new(self, text);
        (voice.render(0, voice.len()), voice.words)
    }
}

/// The samples of one sentence, computed on demand: rendering costs a table lookup per sample,
/// spread over the chunks as they are pulled, so the fake provider does not steal the engine's
/// CPU time in benchmarks.
struct Voice {
    words: Vec<WordTiming>,
    per_word: u64,
    voiced: u64,
    fade: u64,
    /// Phase increment per sample for each pitch, in table steps (16.16 fixed point).
    steps: [u64; 5],
}

/// The sine table has 2^`TABLE_BITS` entries.
pub(crate) const TABLE_BITS: u32 = 10;

/// One period of a sine at 0.3 of full scale, for tones rendered by table lookup.
pub(crate) fn sine_table() -> &'static [i16; 1 << TABLE_BITS] {
    static TABLE: std::sync::OnceLock<[i16; 1 << TABLE_BITS]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0i16; 1 << TABLE_BITS];
        for (i, v) in t.iter_mut().enumerate() {
            let phase = std::f64::consts::TAU * i as f64 / f64::from(1u32 << TABLE_BITS);
            *v = (phase.sin() * 0.3 * 32767.0) as i16;
        }
        t
    })
}

impl Voice {
    fn new(tts: &SyntheticTts, text: &str) -> Self {
        let per_word = tts.samples_per_word();
        let voiced = per_word * 4 / 5;
        let rate = f64::from(tts.sample_rate);
        let words = text
            .split_whitespace()
            .enumerate()
            .map(|(i, word)| {
                let start = i as u64 * per_word;
                WordTiming {
                    word: word.to_owned(),
                    start,
                    end: start + voiced,
                }
            })
            .collect();
        let steps = std::array::from_fn(|i| {
            let pitch = 170.0 + 35.0 * i as f64;
            (pitch / rate * f64::from(1u32 << TABLE_BITS) * 65536.0) as u64
        });
        Self {
            words,
            per_word,
            voiced,
            fade: (rate * 0.005) as u64,
            steps,
        }
    }

    fn len(&self) -> u64 {
        self.words.len() as u64 * self.per_word
    }

    /// Samples `start..end` of the voice, rendered a word at a time (no division per sample:
    /// under load the voice's rendering showed in the server's profile).
    fn render(&self, start: u64, end: u64) -> Vec<i16> {
        let table = sine_table();
        let mut samples = Vec::with_capacity(end.saturating_sub(start) as usize);
        let mut n = start;
        while n < end {
            let word = n / self.per_word;
            let word_start = word * self.per_word;
            let run_end = (word_start + self.per_word).min(end);
            let step = self.steps[(word % 5) as usize];
            samples.extend(
                (n - word_start..run_end - word_start)
                    .map(|offset| self.shape(offset, step, table)),
            );
            n = run_end;
        }
        samples
    }

    /// The sample `offset` into a word sung at `step`: a faded tone, then silence.
    fn shape(&self, offset: u64, step: u64, table: &[i16; 1 << TABLE_BITS]) -> i16 {
        if offset >= self.voiced {
            return 0;
        }
        let index = ((offset * step) >> 16) as usize & ((1 << TABLE_BITS) - 1);
        let edge = offset.min(self.voiced - offset);
        let value = i64::from(table[index]);
        if edge < self.fade {
            (value * edge as i64 / self.fade as i64) as i16
        } else {
            value as i16
        }
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
        let requested_at = tokio::time::Instant::now();
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let fault = self.faults.lock().expect("faults lock").remove(&call);
        if fault == Some(TtsFault::StallBeforeStream) {
            std::future::pending::<()>().await
        }
        if let Some(TtsFault::Reject(status)) = fault {
            return Err(TtsError::http(
                "synthetic",
                status,
                None,
                format!("http {status}: scripted refusal"),
            ));
        }
        if fault == Some(TtsFault::Fail) {
            return Err(TtsError::new(
                "synthetic",
                crate::error::ErrorKind::Server,
                "scripted failure",
            ));
        }
        let voice = Voice::new(self, text);
        let chunk_len = u64::from(self.sample_rate / 10).max(1);
        // Absolute: the first audio is due `ttfb_ms` after the request, however late it is read.
        let first_due = requested_at + Duration::from_millis(self.timing.ttfb_ms);
        let stalled = fault == Some(TtsFault::Stall);
        let stall_after = match fault {
            Some(TtsFault::StallAfterChunks(n)) => Some(n * chunk_len),
            _ => None,
        };
        let served = self.chunks.clone();
        let stream = futures_util::stream::unfold((voice, 0u64), move |(voice, start)| {
            let served = served.clone();
            async move {
                if start == 0 {
                    if stalled {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep_until(first_due).await;
                }
                if start >= voice.len() {
                    return None;
                }
                if stall_after.is_some_and(|limit| start >= limit) {
                    std::future::pending::<()>().await
                }
                served.fetch_add(1, Ordering::Relaxed);
                let end = (start + chunk_len).min(voice.len());
                let chunk = SpeechChunk {
                    samples: voice.render(start, end),
                    words: voice
                        .words
                        .iter()
                        .filter(|w| w.start >= start && w.start < end)
                        .cloned()
                        .collect(),
                    billed: None,
                };
                Some((Ok(chunk), (voice, end)))
            }
        });
        Ok(Box::pin(stream))
    }

    async fn clear(&self, _: &SpeechCut) {
        self.clears.fetch_add(1, Ordering::Relaxed);
        if self.clear_never_confirmed {
            std::future::pending::<()>().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::time::Instant;

    #[test]
    fn the_voice_renders_the_same_however_it_is_chunked() {
        let tts = SyntheticTts::new(
            16000,
            TtsTiming {
                ttfb_ms: 0,
                words_per_minute: 150.0,
            },
        );
        let voice = Voice::new(&tts, "one two three four five six seven");
        let whole = voice.render(0, voice.len());
        assert_eq!(whole.len() as u64, voice.len());
        for chunk in [1, 7, 160, 1600, 6399, 6400, 6401] {
            let mut pieces = Vec::new();
            let mut start = 0;
            while start < voice.len() {
                let end = (start + chunk).min(voice.len());
                pieces.extend(voice.render(start, end));
                start = end;
            }
            assert_eq!(pieces, whole, "chunks of {chunk} samples");
        }
        // Each word is a tone that fades in and out, then silence until the next word.
        let per_word = voice.per_word as usize;
        let voiced = voice.voiced as usize;
        for word in whole.chunks(per_word) {
            assert_eq!(word[0], 0, "fades in from silence");
            assert!(
                word[voiced / 2..voiced / 2 + 200]
                    .iter()
                    .any(|s| s.unsigned_abs() > 5000)
            );
            assert!(word[voiced..].iter().all(|s| *s == 0));
        }
    }

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
        tts.clear(&SpeechCut::default()).await;
        assert_eq!(tts.clears(), 1);
        assert_eq!(tts.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn first_audio_is_due_ttfb_after_the_request_however_late_it_is_read() {
        let tts = SyntheticTts::new(
            16000,
            TtsTiming {
                ttfb_ms: 150,
                words_per_minute: 180.0,
            },
        );
        let requested = Instant::now();
        let mut stream = tts.synthesize("hello").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.next().await.unwrap().unwrap();
        assert_eq!(requested.elapsed(), Duration::from_millis(150));
        let mut late = tts.synthesize("hello").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let read_at = Instant::now();
        late.next().await.unwrap().unwrap();
        assert_eq!(read_at.elapsed(), Duration::ZERO, "already due");
    }
}
