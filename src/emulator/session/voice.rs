//! Voice-activity turns ([`TurnDetection::Vad`](super::TurnDetection::Vad)): a detector
//! (earshot, 16 ms frames at 16 kHz, feature `vad`) decides when the user speaks; the words come
//! from the scenario's next user line, one per 0.375 s of voice. Without the feature the mode
//! is refused at the handshake with a message naming the feature.

use super::{EmulatorSession, PlacedTurn};
use crate::scenario::{Phrase, TimedWord};

/// Consecutive voiced frames that start speech (48 ms).
const VAD_ONSET_FRAMES: u32 = 3;
/// Consecutive unvoiced frames that end speech (240 ms; gaps between words are shorter).
const VAD_HANGOVER_FRAMES: u32 = 15;
/// Words one voice-activity turn grows to at most (a turn of nonstop speech or noise must not
/// grow without bound; about eight minutes of speech).
const MAX_TURN_WORDS: usize = 1280;
/// Words of an unscripted turn.
const PLACEHOLDER: &str = "unscripted speech";

pub(super) struct Vad {
    detector: Detector,
    frame: Vec<i16>,
    /// Resampling to the detector's rate: input samples owed, in units of 1/rate.
    phase: u32,
    speaking: bool,
    voiced_run: u32,
    quiet_run: u32,
    /// Where the current run of voiced frames began.
    run_start: f64,
    /// End of the last voiced frame.
    last_voiced: f64,
    /// Speech time already turned into words in this turn.
    words_spoken: f64,
    /// The words of the current turn not yet revealed.
    pending: std::collections::VecDeque<String>,
}

impl Vad {
    pub(super) fn new(detector: Detector) -> Self {
        Self {
            detector,
            frame: Vec::with_capacity(VAD_FRAME),
            phase: 0,
            speaking: false,
            voiced_run: 0,
            quiet_run: 0,
            run_start: 0.0,
            last_voiced: 0.0,
            words_spoken: 0.0,
            pending: Default::default(),
        }
    }

    /// Seconds since the voice stopped at `t` (0 while it speaks).
    pub(super) fn silence(&self, t: f64) -> f64 {
        if self.speaking {
            0.0
        } else {
            (t - self.last_voiced).max(0.0)
        }
    }
}

impl std::fmt::Debug for Vad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vad")
            .field("speaking", &self.speaking)
            .field("pending", &self.pending)
            .finish()
    }
}

/// Samples per detector frame (16 ms at 16 kHz).
pub(super) const VAD_FRAME: usize = 256;

/// The detector's sample rate.
const VAD_RATE: u32 = 16000;

/// Peak amplitude under which a frame is silence (-60 dBFS).
const SILENCE_PEAK: u16 = 33;

/// Says whether one frame of 16 kHz audio is speech.
pub(super) struct Detector {
    #[cfg(feature = "vad")]
    inner: Box<earshot::Detector>,
    /// Without the feature no detector can exist.
    #[cfg(not(feature = "vad"))]
    never: std::convert::Infallible,
}

impl Detector {
    /// A detector, or `None` when this build has no voice activity detection.
    pub(crate) fn new() -> Option<Self> {
        #[cfg(feature = "vad")]
        return Some(Self {
            inner: earshot::Detector::default_boxed(),
        });
        #[cfg(not(feature = "vad"))]
        None
    }

    /// Whether this build can detect voice activity.
    pub(crate) fn available() -> bool {
        cfg!(feature = "vad")
    }

    /// Whether `frame` ([`VAD_FRAME`] samples) is speech. A frame below -60 dBFS at its
    /// peak is silence without asking the network: most of a conversation's frames, and most
    /// of the emulator's CPU under load when they were all predicted.
    pub(crate) fn voiced(&mut self, frame: &[i16]) -> bool {
        if frame.iter().all(|s| s.unsigned_abs() < SILENCE_PEAK) {
            return false;
        }
        #[cfg(feature = "vad")]
        return self.inner.predict_i16(frame) >= 0.5;
        #[cfg(not(feature = "vad"))]
        {
            let _ = frame;
            match self.never {}
        }
    }
}

impl EmulatorSession {
    /// Feeds `samples` at `rate`, the first being sample number `first` of the stream, to the
    /// voice activity detector, which listens at 16 kHz (nearest-sample resampling: a phone's
    /// 8 kHz sample counts twice, a 48 kHz stream's every third), and turns speech into words.
    pub(super) fn vad_samples(&mut self, samples: &[i16], first: u64, rate: u32) {
        let copies = VAD_RATE.checked_div(rate).unwrap_or(0) as usize;
        if copies > 0 && VAD_RATE.is_multiple_of(rate) && VAD_FRAME.is_multiple_of(copies) {
            // Whole runs of samples into the frame, each sample `copies` times (once at
            // 16 kHz, twice from a phone): no per-sample bookkeeping, and a frame always fills
            // on a sample's last copy.
            let mut done = 0;
            while done < samples.len() {
                let Some(vad) = &mut self.vad else { return };
                let take = ((VAD_FRAME - vad.frame.len()) / copies).min(samples.len() - done);
                let run = &samples[done..done + take];
                if copies == 1 {
                    vad.frame.extend_from_slice(run);
                } else {
                    vad.frame
                        .extend(run.iter().flat_map(|&s| std::iter::repeat_n(s, copies)));
                }
                done += take;
                if vad.frame.len() == VAD_FRAME {
                    self.vad_frame(first + done as u64 - 1, rate);
                }
            }
            return;
        }
        for (k, &sample) in samples.iter().enumerate() {
            let Some(vad) = &mut self.vad else { return };
            vad.phase += VAD_RATE;
            let mut copies = 0;
            while vad.phase >= rate {
                vad.phase -= rate;
                copies += 1;
            }
            for _ in 0..copies {
                let Some(vad) = &mut self.vad else { return };
                vad.frame.push(sample);
                if vad.frame.len() == VAD_FRAME {
                    self.vad_frame(first + k as u64, rate);
                }
            }
        }
    }

    /// One full detector frame, completed by sample number `last` of the stream.
    fn vad_frame(&mut self, last: u64, rate: u32) {
        let Some(vad) = &mut self.vad else { return };
        let end = (last + 1) as f64 / f64::from(rate);
        let start = end - VAD_FRAME as f64 / f64::from(VAD_RATE);
        let voiced = vad.detector.voiced(&vad.frame);
        vad.frame.clear();
        if voiced {
            if vad.voiced_run == 0 {
                vad.run_start = start;
            }
            vad.voiced_run += 1;
            vad.quiet_run = 0;
            vad.last_voiced = end;
        } else {
            vad.voiced_run = 0;
            vad.quiet_run += 1;
        }
        if !vad.speaking && vad.voiced_run >= VAD_ONSET_FRAMES && vad.run_start >= self.window_start
        {
            vad.speaking = true;
            if self.placed.is_none() {
                let line = self
                    .scenario
                    .turns
                    .get(self.next_turn)
                    .map_or_else(|| PLACEHOLDER.to_owned(), |t| t.transcript());
                vad.pending = line.split_whitespace().map(str::to_owned).collect();
                vad.words_spoken = 0.0;
                self.placed = Some(PlacedTurn {
                    words: Vec::new(),
                    phrases: vec![Phrase {
                        text: line,
                        pause_ms: 0,
                        eot_confidence: 0.9,
                        ramp_ms: 800,
                    }],
                });
            }
        }
        let Some(placed) = &mut self.placed else {
            return;
        };
        let word_len = 60.0 / 160.0;
        if vad.speaking {
            // One word per word-length of speech; the last scripted word waits for the pause,
            // so the transcript is complete exactly when the user stops.
            vad.words_spoken +=
                VAD_FRAME as f64 / f64::from(VAD_RATE) * f64::from(u8::from(voiced));
            while vad.words_spoken >= word_len {
                vad.words_spoken -= word_len;
                let word = if vad.pending.len() > 1 {
                    vad.pending.pop_front()
                } else if vad.pending.is_empty() {
                    Some("uh".to_owned())
                } else {
                    None
                };
                if let Some(word) = word
                    && placed.words.len() < MAX_TURN_WORDS
                {
                    placed.words.push(TimedWord {
                        word,
                        start: end - word_len,
                        end,
                        phrase: 0,
                    });
                }
            }
            if vad.quiet_run >= VAD_HANGOVER_FRAMES {
                vad.speaking = false;
                let at = vad.last_voiced;
                placed
                    .words
                    .extend(vad.pending.drain(..).map(|word| TimedWord {
                        word,
                        start: at,
                        end: at,
                        phrase: 0,
                    }));
            }
        }
    }
}
