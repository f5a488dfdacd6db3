//! One emulated Flux connection, free of I/O: audio and client messages in, server messages
//! out, time measured only in audio received.
//!
//! # Behaviour model
//! - Audio time advances with audio bytes only (bytes / (rate x sample size)); a WAV header is
//!   parsed when the URL has no `encoding`. Every 240 ms of audio yields exactly one `TurnInfo`:
//!   the state event if the turn state changed in that tick, else an `Update` (also between
//!   turns, with an empty transcript and the index of the next turn).
//! - The scenario's next user turn starts at its `at_ms` audio time, or, for `after_agent_ms`
//!   and `barge_in_ms` starts, at the first sample of speech (|x| >= 1/32 of full scale) after
//!   the previous turn ended: the client decides when the user speaks, as with a real service.
//! - A word becomes part of the transcript once the audio up to its end has arrived.
//!   `StartOfTurn` comes with the first word; `EagerEndOfTurn` (only with `eager_eot_threshold`)
//!   when the confidence reaches it after speech; `TurnResumed` when a new word appears after an
//!   eager end; `EndOfTurn` when the confidence reaches `eot_threshold` (after an
//!   `EagerEndOfTurn` in the previous tick, in eager mode), when `eot_timeout_ms` of silence
//!   passed (trigger `timeout`), or on `ForceEndTurn` (trigger `manual`). `eot_threshold=1.0`
//!   disables model-driven ends. The words of a turn not yet spoken when it ends are dropped.
//!
//! With [`TurnDetection::Vad`] a voice activity detector (earshot, 16 ms frames at 16 kHz; other
//! rates are resampled to it by nearest sample, enough to tell voice from silence)
//! decides instead: speech starts after 48 ms of voice and ends after 240 ms without; during
//! speech one word of the scenario's next user line appears per 0.375 s of voice, and the rest
//! when the user stops, so a microphone or a recording produces real turn timing.
//!
//! # Choices where Deepgram's documentation leaves Flux's behaviour open
//! 1. `audio_window_start` is the stream time where the current turn's window began: 0 for the
//!    first turn, the previous `EndOfTurn`'s `audio_window_end` afterwards.
//! 2. Updates between turns always carry an empty transcript.
//! 3. The Update cadence is exactly 240 ms of audio, whatever the client's chunk size.
//! 4. A manual or timeout `EndOfTurn` in eager mode is not preceded by an `EagerEndOfTurn`.
//! 5. Threshold violations are HTTP 400 at connect and `ConfigureFailure` with code
//!    `INVALID_CONFIGURATION` mid-stream.
//! 6. `ForceEndTurn` without an open turn answers a `Warning` `FORCE_END_TURN_NO_ACTIVE_TURN`.
//! 7. The idle close (60 s without audio or ping) uses close code 1011 with reason `NET-0001`,
//!    as `/v1/listen` does; `CloseStream` closes without a status code.
//! 8. `eot_timeout_ms` counts audio from the end of the last word, and resets when a word starts.
//! 9. `numerals` is accepted in `Configure` and echoed in `ConfigureSuccess`.
//! 10. `profanity_filter` is accepted and has no effect.
//! 11. The newest ranges apply (`eot_threshold` up to 1.0, `eot_timeout_ms` up to 60000).
//! 13. `request_id` in messages equals the `dg-request-id` header.

use std::sync::Arc;

use crate::audio::{decode_into, parse_wav_header};
use crate::flux::messages::{
    ClientMessage, ConfigureFailure, ConfigureSuccess, FatalError, ServerMessage, TurnEvent,
    TurnInfo, TurnTrigger, Warning, Word,
};
use crate::flux::options::{Encoding, FluxModel, ListenOptions};
use crate::scenario::{Phrase, Scenario, TimedWord};
use voice::{Detector, Vad};

mod script;
mod voice;

/// Audio per `TurnInfo`, in seconds.
pub(crate) const TICK_SECONDS: f64 = 0.24;
/// Speech onset level for relative turn starts: 1/32 of full scale.
pub(crate) const ONSET_LEVEL: i16 = 1024;
const SPEAKING_CONFIDENCE: f64 = 0.02;

/// What the session wants the transport to do after an input.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    /// Messages to send, in order.
    pub messages: Vec<ServerMessage>,
    /// Close the connection (without a status code) after sending them.
    pub close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Ongoing,
    AwaitingEnd,
}

#[derive(Debug)]
enum AudioFormat {
    Raw(Encoding, u32),
    AwaitingWavHeader(Vec<u8>),
}

/// How the emulator decides when the user speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TurnDetection {
    /// The scenario's timing (`at_ms`, or the first loud sample for relative starts).
    #[default]
    Script,
    /// Voice activity detection on the received audio (any rate); the words come from the
    /// scenario's next user line, or a placeholder once the script is exhausted.
    Vad,
}

/// Containerized audio buffered while looking for its WAV header, at most.
const MAX_WAV_HEADER: usize = 64 * 1024;
/// A turn of the script placed on the audio timeline.
#[derive(Debug)]
struct PlacedTurn {
    words: Vec<TimedWord>,
    phrases: Vec<Phrase>,
}

/// One emulated connection.
#[derive(Debug)]
pub struct EmulatorSession {
    options: ListenOptions,
    request_id: String,
    sequence: u64,
    scenario: Arc<Scenario>,
    next_turn: usize,
    format: AudioFormat,
    samples: u64,
    next_tick: u64,
    decoded: Vec<i16>,
    onset: Option<f64>,
    state: State,
    turn_index: u64,
    window_start: f64,
    placed: Option<PlacedTurn>,
    eager_word_count: usize,
    last_tick: f64,
    vad: Option<Vad>,
}

impl EmulatorSession {
    /// A session for validated `options`, playing `scenario`.
    pub fn new(options: ListenOptions, scenario: Arc<Scenario>, request_id: String) -> Self {
        let format = match (options.encoding, options.sample_rate) {
            (Some(e), Some(r)) => AudioFormat::Raw(e, r),
            _ => AudioFormat::AwaitingWavHeader(Vec::new()),
        };
        Self {
            options,
            request_id,
            sequence: 0,
            scenario,
            next_turn: 0,
            format,
            samples: 0,
            next_tick: 0,
            decoded: Vec::new(),
            onset: None,
            state: State::Idle,
            turn_index: 0,
            window_start: 0.0,
            placed: None,
            eager_word_count: 0,
            last_tick: 0.0,
            vad: None,
        }
    }

    /// Switches turn detection (script timing or voice activity).
    pub fn with_turn_detection(mut self, detection: TurnDetection) -> Self {
        self.vad = (detection == TurnDetection::Vad)
            .then(Detector::new)
            .flatten()
            .map(Vad::new);
        self
    }

    /// Whether the emulator can serve `options` (it needs samples to keep the audio clock, and
    /// voice activity detection needs the `vad` feature).
    pub fn supports(options: &ListenOptions, detection: TurnDetection) -> Result<(), String> {
        if detection == TurnDetection::Vad && !Detector::available() {
            return Err(
                "this build has no voice activity detection: build turnflow with the vad feature"
                    .into(),
            );
        }
        match options.encoding {
            Some(e) if e.bytes_per_sample().is_none() => Err(format!(
                "the emulator keeps time by decoding samples and cannot decode {}; use linear16, linear32, mulaw, alaw or WAV",
                e.as_str()
            )),
            _ => Ok(()),
        }
    }

    /// The request id of this connection.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Seconds of audio received.
    pub fn audio_time(&self) -> f64 {
        match self.format {
            AudioFormat::Raw(_, rate) => self.samples as f64 / f64::from(rate),
            AudioFormat::AwaitingWavHeader(_) => 0.0,
        }
    }

    fn next_sequence(&mut self) -> u64 {
        let s = self.sequence;
        self.sequence += 1;
        s
    }

    /// The `Connected` message (sequence 0).
    pub fn connected(&mut self) -> ServerMessage {
        ServerMessage::Connected {
            request_id: self.request_id.clone(),
            sequence_id: self.next_sequence(),
        }
    }

    fn fatal(&mut self, code: &str, description: String) -> Output {
        Output {
            messages: vec![ServerMessage::Error(FatalError {
                code: code.into(),
                description,
                sequence_id: self.next_sequence(),
            })],
            close: true,
        }
    }

    /// Takes a binary frame of audio.
    pub fn on_audio(&mut self, bytes: &[u8]) -> Output {
        let mut out = Output::default();
        // Decoded straight from the frame (or from the bytes after a WAV header): no copy of
        // the audio per frame.
        self.decoded.clear();
        let rate = match &mut self.format {
            AudioFormat::Raw(encoding, rate) => {
                decode_into(*encoding, bytes, &mut self.decoded);
                *rate
            }
            AudioFormat::AwaitingWavHeader(buffer) => {
                buffer.extend_from_slice(bytes);
                match parse_wav_header(buffer) {
                    Ok(None) if buffer.len() > MAX_WAV_HEADER => {
                        return self.fatal(
                            "UNSUPPORTED_AUDIO",
                            format!(
                                "no complete wav header in the first {MAX_WAV_HEADER} bytes; send raw audio with encoding and sample_rate, or a wav file"
                            ),
                        );
                    }
                    Ok(None) => return out,
                    Ok(Some((format, offset))) if format.channels == 1 => {
                        decode_into(format.encoding, &buffer[offset..], &mut self.decoded);
                        self.format = AudioFormat::Raw(format.encoding, format.sample_rate);
                        format.sample_rate
                    }
                    Ok(Some((format, _))) => {
                        return self.fatal(
                            "UNSUPPORTED_AUDIO",
                            format!(
                                "audio must be mono, the wav header declares {} channels",
                                format.channels
                            ),
                        );
                    }
                    Err(e) => return self.fatal("UNSUPPORTED_AUDIO", e.to_string()),
                }
            }
        };
        let tick_samples = (TICK_SECONDS * f64::from(rate)).round() as u64;
        if self.next_tick == 0 {
            self.next_tick = tick_samples;
        }
        let decoded = std::mem::take(&mut self.decoded);
        // Runs of samples up to the next tick: per-sample work only where a sample matters.
        let mut rest: &[i16] = &decoded;
        while !rest.is_empty() {
            let until_tick = usize::try_from(self.next_tick - self.samples).unwrap_or(usize::MAX);
            let (run, tail) = rest.split_at(until_tick.min(rest.len()));
            rest = tail;
            if self.vad.is_some() {
                self.vad_samples(run, self.samples, rate);
            } else if self.onset.is_none() {
                let (first, window_start) = (self.samples, self.window_start);
                self.onset = run
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.unsigned_abs() >= ONSET_LEVEL.unsigned_abs())
                    .map(|(k, _)| (first + k as u64) as f64 / f64::from(rate))
                    .find(|t| *t >= window_start);
            }
            self.samples += run.len() as u64;
            if self.samples == self.next_tick {
                let t = self.next_tick as f64 / f64::from(rate);
                self.next_tick += tick_samples;
                let message = self.tick(t);
                out.messages.push(message);
            }
        }
        self.decoded = decoded;
        out
    }

    /// Takes a text frame.
    pub fn on_text(&mut self, text: &str) -> Output {
        match ClientMessage::parse(text) {
            Err(e) => self.fatal(
                "UNPARSABLE_CLIENT_MESSAGE",
                format!(
                    "Text message received from client did not match any of the formats we expect ({})",
                    e.0
                ),
            ),
            Ok(ClientMessage::CloseStream) => self.close_stream(),
            Ok(ClientMessage::ForceEndTurn) => {
                let message = if self.state == State::Idle {
                    ServerMessage::Warning(Warning {
                        request_id: self.request_id.clone(),
                        code: "FORCE_END_TURN_NO_ACTIVE_TURN".into(),
                        description: "ForceEndTurn received while no turn was in progress.".into(),
                        sequence_id: self.next_sequence(),
                    })
                } else {
                    let t = self.last_tick;
                    self.end_turn(t, TurnTrigger::Manual)
                };
                Output {
                    messages: vec![message],
                    close: false,
                }
            }
            Ok(ClientMessage::Configure(update)) => {
                let message = match self.options.apply(&update) {
                    Ok(next) => {
                        self.options = next;
                        ServerMessage::ConfigureSuccess(ConfigureSuccess {
                            request_id: self.request_id.clone(),
                            thresholds: self.options.thresholds(),
                            keyterms: self.options.keyterms.clone(),
                            language_hints: (self.options.model == FluxModel::GeneralMulti)
                                .then(|| self.options.language_hints.clone()),
                            numerals: Some(self.options.numerals.unwrap_or(false)),
                            sequence_id: self.next_sequence(),
                        })
                    }
                    Err(e) => ServerMessage::ConfigureFailure(ConfigureFailure {
                        request_id: self.request_id.clone(),
                        code: Some("INVALID_CONFIGURATION".into()),
                        description: Some(e.to_string()),
                        sequence_id: self.next_sequence(),
                    }),
                };
                Output {
                    messages: vec![message],
                    close: false,
                }
            }
        }
    }

    /// `CloseStream`: a last `Update` for audio received since the last tick, then close.
    pub fn close_stream(&mut self) -> Output {
        let mut out = Output {
            messages: Vec::new(),
            close: true,
        };
        let t = self.audio_time();
        if t > self.last_tick + 1e-9 {
            let mut info = self.turn_info(t, TurnEvent::Update, None);
            if self.state == State::Idle {
                info.transcript.clear();
                info.words.clear();
            }
            out.messages.push(ServerMessage::TurnInfo(info));
        }
        out
    }

    fn tick(&mut self, t: f64) -> ServerMessage {
        self.last_tick = t;
        if self.state == State::Idle {
            self.place_turn(t);
            let visible = self.visible_words(t);
            let event = if visible > 0 {
                self.state = State::Ongoing;
                TurnEvent::StartOfTurn
            } else {
                TurnEvent::Update
            };
            return ServerMessage::TurnInfo(self.turn_info(t, event, None));
        }
        let visible = self.visible_words(t);
        let silence = self.silence(t, visible);
        let confidence = self.confidence(t, visible);
        let eager = self.options.eager_eot_threshold;
        let eot = self.options.effective_eot_threshold();
        let timeout = self.options.effective_eot_timeout_ms() as f64 / 1000.0;
        let speaking = silence == 0.0;
        let event = if self.state == State::AwaitingEnd && visible > self.eager_word_count {
            self.state = State::Ongoing;
            TurnEvent::TurnResumed
        } else if !speaking && silence + 1e-9 >= timeout {
            return self.end_turn(t, TurnTrigger::Timeout);
        } else if !speaking
            && eot < 1.0
            && confidence >= eot
            && (self.state == State::AwaitingEnd || eager.is_none())
        {
            // In eager mode a model-driven end always follows an EagerEndOfTurn.
            return self.end_turn(t, TurnTrigger::Model);
        } else if !speaking
            && self.state == State::Ongoing
            && eager.is_some_and(|e| confidence >= e)
        {
            self.state = State::AwaitingEnd;
            self.eager_word_count = visible;
            TurnEvent::EagerEndOfTurn
        } else {
            TurnEvent::Update
        };
        ServerMessage::TurnInfo(self.turn_info(t, event, None))
    }

    fn end_turn(&mut self, t: f64, trigger: TurnTrigger) -> ServerMessage {
        let message =
            ServerMessage::TurnInfo(self.turn_info(t, TurnEvent::EndOfTurn, Some(trigger)));
        self.state = State::Idle;
        self.turn_index += 1;
        self.window_start = t;
        self.next_turn += 1;
        self.placed = None;
        self.onset = None;
        self.eager_word_count = 0;
        message
    }

    fn turn_info(&mut self, t: f64, event: TurnEvent, trigger: Option<TurnTrigger>) -> TurnInfo {
        let visible = if self.state == State::Idle && event == TurnEvent::Update {
            0
        } else {
            self.visible_words(t)
        };
        let words: Vec<Word> = self
            .placed
            .as_ref()
            .map(|p| {
                p.words[..visible]
                    .iter()
                    .enumerate()
                    .map(|(i, w)| Word {
                        word: w.word.clone(),
                        confidence: 0.9 + 0.01 * ((i * 7 + w.word.len()) % 9) as f64,
                        start: Some(round_ms(w.start)),
                        end: Some(round_ms(w.end)),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let multi = self.options.model == FluxModel::GeneralMulti;
        TurnInfo {
            request_id: self.request_id.clone(),
            event,
            turn_index: self.turn_index,
            audio_window_start: round_ms(self.window_start),
            audio_window_end: round_ms(t),
            transcript: words
                .iter()
                .map(|w| w.word.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            end_of_turn_confidence: self.confidence(t, visible),
            trigger,
            languages: multi.then(|| {
                if words.is_empty() {
                    Vec::new()
                } else {
                    vec!["en".to_owned()]
                }
            }),
            languages_hinted: multi.then(|| self.options.language_hints.clone()),
            words,
            sequence_id: self.next_sequence(),
        }
    }
}

fn round_ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{encode, wav_header};
    use crate::flux::messages::Configure;

    fn scenario(json: &str) -> Arc<Scenario> {
        Arc::new(Scenario::parse(json, "test").unwrap())
    }

    fn options(eager: Option<f64>) -> ListenOptions {
        ListenOptions {
            eager_eot_threshold: eager,
            ..ListenOptions::default()
        }
    }

    /// Feeds `seconds` of silence (or speech) in 20 ms chunks and returns the TurnInfos.
    fn feed(s: &mut EmulatorSession, seconds: f64, level: i16) -> Vec<TurnInfo> {
        let chunk = encode(Encoding::Linear16, &[level; 320]);
        let mut out = Vec::new();
        for _ in 0..(seconds / 0.02).round() as usize {
            for m in s.on_audio(&chunk).messages {
                if let ServerMessage::TurnInfo(t) = m {
                    out.push(t);
                }
            }
        }
        out
    }

    fn events(infos: &[TurnInfo]) -> Vec<String> {
        infos
            .iter()
            .filter(|i| i.event != TurnEvent::Update)
            .map(|i| format!("{}@{:.2}", i.event, i.audio_window_end))
            .collect()
    }

    #[test]
    fn plain_turn_without_eager_mode() {
        let mut s = EmulatorSession::new(
            options(None),
            scenario(
                r#"{"name":"p","turns":[{"start":{"at_ms":500},"phrases":[{"text":"hello there friend","ramp_ms":480}]}]}"#,
            ),
            "rid".into(),
        );
        assert_eq!(
            s.connected(),
            ServerMessage::Connected {
                request_id: "rid".into(),
                sequence_id: 0
            }
        );
        let infos = feed(&mut s, 4.0, 0);
        // Words end at 0.875, 1.25, 1.625; confidence reaches 0.7 at 1.625 + 0.35.
        assert_eq!(events(&infos), vec!["StartOfTurn@0.96", "EndOfTurn@2.16"]);
        assert_eq!(infos.len(), (4.0 / 0.24) as usize);
        for (i, info) in infos.iter().enumerate() {
            assert_eq!(info.sequence_id, i as u64 + 1);
        }
        let end = infos
            .iter()
            .find(|i| i.event == TurnEvent::EndOfTurn)
            .unwrap();
        assert_eq!(end.transcript, "hello there friend");
        assert_eq!(end.trigger, Some(TurnTrigger::Model));
        assert_eq!(end.turn_index, 0);
        assert_eq!(end.words[2].end, Some(1.625));
        let after = infos.last().unwrap();
        assert_eq!(after.turn_index, 1);
        assert_eq!(after.transcript, "");
        assert_eq!(after.audio_window_start, 2.16);
    }

    #[test]
    fn eager_threshold_changes_when_events_fire() {
        let json = r#"{"name":"p","turns":[{"start":{"at_ms":0},"phrases":[{"text":"one two","eot_confidence":0.9,"ramp_ms":1000}]}]}"#;
        let mut eager = EmulatorSession::new(options(Some(0.4)), scenario(json), "r".into());
        let e = events(&feed(&mut eager, 3.0, 0));
        // Words end at 0.75; confidence 0.4 at +0.43 (tick 1.2), 0.7 at +0.77 (tick 1.68).
        assert_eq!(
            e,
            vec!["StartOfTurn@0.48", "EagerEndOfTurn@1.20", "EndOfTurn@1.68"]
        );
        let mut late = EmulatorSession::new(options(Some(0.6)), scenario(json), "r".into());
        let e = events(&feed(&mut late, 3.0, 0));
        assert_eq!(
            e,
            vec!["StartOfTurn@0.48", "EagerEndOfTurn@1.44", "EndOfTurn@1.68"]
        );
    }

    #[test]
    fn pause_above_eager_then_more_words_resumes() {
        let json = r#"{"name":"m","turns":[{"start":{"at_ms":0},"words_per_minute":120,"phrases":[
            {"text":"change my flight","pause_ms":1000,"eot_confidence":0.6,"ramp_ms":400},
            {"text":"to Friday.","eot_confidence":0.95,"ramp_ms":200}]}]}"#;
        let mut s = EmulatorSession::new(options(Some(0.5)), scenario(json), "r".into());
        let infos = feed(&mut s, 6.0, 0);
        assert_eq!(
            events(&infos),
            vec![
                "StartOfTurn@0.72",
                "EagerEndOfTurn@1.92",
                "TurnResumed@3.12",
                "EagerEndOfTurn@3.84",
                "EndOfTurn@4.08"
            ]
        );
        let eager: Vec<_> = infos
            .iter()
            .filter(|i| i.event == TurnEvent::EagerEndOfTurn)
            .collect();
        assert_eq!(eager[0].transcript, "change my flight");
        let end = infos
            .iter()
            .find(|i| i.event == TurnEvent::EndOfTurn)
            .unwrap();
        assert_eq!(end.transcript, eager[1].transcript);
        assert_eq!(end.transcript, "change my flight to Friday.");
    }

    #[test]
    fn low_confidence_ends_by_timeout() {
        let json = r#"{"name":"t","turns":[{"start":{"at_ms":0},"phrases":[{"text":"my number is","eot_confidence":0.3}]}]}"#;
        let o = ListenOptions {
            eot_timeout_ms: Some(1000),
            ..options(Some(0.5))
        };
        let mut s = EmulatorSession::new(o, scenario(json), "r".into());
        let infos = feed(&mut s, 3.0, 0);
        assert_eq!(events(&infos), vec!["StartOfTurn@0.48", "EndOfTurn@2.16"]);
        assert_eq!(
            infos
                .iter()
                .find(|i| i.event == TurnEvent::EndOfTurn)
                .unwrap()
                .trigger,
            Some(TurnTrigger::Timeout)
        );
    }

    #[test]
    fn relative_turns_start_at_the_speech_onset() {
        let json = r#"{"name":"b","turns":[{"start":{"at_ms":0},"phrases":[{"text":"hi","ramp_ms":100}]},{"start":{"barge_in_ms":100},"say":"stop"}]}"#;
        let mut s = EmulatorSession::new(options(None), scenario(json), "r".into());
        let first = feed(&mut s, 1.0, 0);
        assert_eq!(events(&first), vec!["StartOfTurn@0.48", "EndOfTurn@0.72"]);
        let quiet = feed(&mut s, 1.0, 0);
        assert!(events(&quiet).is_empty(), "no speech, no turn: {quiet:?}");
        // Speech from 2.0 s: "stop" ends at 2.375 and is seen at the 2.40 tick.
        let speech = feed(&mut s, 0.4, 8000);
        assert_eq!(events(&speech), vec!["StartOfTurn@2.40"]);
        let start = speech
            .iter()
            .find(|i| i.event == TurnEvent::StartOfTurn)
            .unwrap();
        assert_eq!(start.words[0].start, Some(2.0));
        assert_eq!(start.turn_index, 1);
        assert_eq!(start.audio_window_start, 0.72);
    }

    #[test]
    fn force_end_turn_and_warning() {
        let json = r#"{"name":"f","turns":[{"start":{"at_ms":0},"phrases":[{"text":"one two three","eot_confidence":0.3}]}]}"#;
        let mut s = EmulatorSession::new(options(None), scenario(json), "r".into());
        let warn = s.on_text(r#"{"type":"ForceEndTurn"}"#);
        assert!(
            matches!(&warn.messages[0], ServerMessage::Warning(w) if w.code == "FORCE_END_TURN_NO_ACTIVE_TURN")
        );
        feed(&mut s, 1.2, 0);
        let out = s.on_text(r#"{"type":"ForceEndTurn"}"#);
        let ServerMessage::TurnInfo(end) = &out.messages[0] else {
            panic!()
        };
        assert_eq!(end.event, TurnEvent::EndOfTurn);
        assert_eq!(end.trigger, Some(TurnTrigger::Manual));
        assert_eq!(end.transcript, "one two three");
        assert!(!out.close);
    }

    #[test]
    fn configure_success_failure_and_bad_json() {
        let mut s = EmulatorSession::new(
            options(Some(0.5)),
            scenario(r#"{"name":"c","turns":[{"say":"hi"}]}"#),
            "r".into(),
        );
        s.connected();
        let ok = s.on_text(
            &ClientMessage::Configure(Configure {
                keyterms: Some(vec!["Acme".into()]),
                numerals: Some(true),
                ..Configure::default()
            })
            .to_json(),
        );
        let ServerMessage::ConfigureSuccess(success) = &ok.messages[0] else {
            panic!()
        };
        assert_eq!(success.keyterms, vec!["Acme"]);
        assert_eq!(success.thresholds.eager_eot_threshold, Some(0.5));
        assert_eq!(success.thresholds.eot_threshold, Some(0.7));
        assert_eq!(success.numerals, Some(true));
        assert_eq!(success.sequence_id, 1);
        let bad = s.on_text(r#"{"type":"Configure","thresholds":{"eot_threshold":0.4}}"#);
        let ServerMessage::ConfigureFailure(failure) = &bad.messages[0] else {
            panic!()
        };
        assert_eq!(failure.code.as_deref(), Some("INVALID_CONFIGURATION"));
        assert!(
            failure
                .description
                .as_deref()
                .unwrap()
                .contains("eot_threshold")
        );
        for text in [r#"{"type":"KeepAlive"}"#, "not json"] {
            let out = s.on_text(text);
            assert!(out.close);
            assert!(
                matches!(&out.messages[0], ServerMessage::Error(e) if e.code == "UNPARSABLE_CLIENT_MESSAGE")
            );
        }
    }

    #[test]
    fn close_stream_flushes_a_partial_update() {
        let mut s = EmulatorSession::new(
            options(None),
            scenario(r#"{"name":"c","turns":[{"say":"hi"}]}"#),
            "r".into(),
        );
        feed(&mut s, 0.3, 0);
        let out = s.on_text(r#"{"type":"CloseStream"}"#);
        assert!(out.close);
        let ServerMessage::TurnInfo(last) = &out.messages[0] else {
            panic!()
        };
        assert_eq!(last.audio_window_end, 0.3);
        assert_eq!(last.event, TurnEvent::Update);
    }

    #[test]
    fn wav_container_sets_the_clock_from_its_header() {
        let mut s = EmulatorSession::new(
            ListenOptions::containerized(),
            scenario(r#"{"name":"w","turns":[{"say":"hi"}]}"#),
            "r".into(),
        );
        let mut bytes = wav_header(8000, 1, 8000).to_vec();
        bytes.extend(encode(Encoding::Linear16, &vec![0; 8000]));
        let (head, rest) = bytes.split_at(30);
        assert!(s.on_audio(head).messages.is_empty());
        let out = s.on_audio(rest);
        assert_eq!(out.messages.len(), 4, "1 s of audio = 4 ticks");
        let mut stereo = EmulatorSession::new(
            ListenOptions::containerized(),
            scenario(r#"{"name":"w","turns":[{"say":"hi"}]}"#),
            "r".into(),
        );
        let out = stereo.on_audio(&wav_header(8000, 2, 10));
        assert!(out.close);
        assert!(
            matches!(&out.messages[0], ServerMessage::Error(e) if e.code == "UNSUPPORTED_AUDIO")
        );
    }

    #[test]
    fn a_wav_header_that_never_ends_is_refused_not_buffered_for_ever() {
        let mut s = EmulatorSession::new(
            ListenOptions::containerized(),
            scenario(r#"{"name":"w","turns":[{"say":"hi"}]}"#),
            "r".into(),
        );
        let mut head = b"RIFF\0\0\0\0WAVELIST".to_vec();
        head.extend_from_slice(&100_000_000u32.to_le_bytes());
        assert!(s.on_audio(&head).messages.is_empty());
        let mut refused = None;
        for _ in 0..20 {
            let out = s.on_audio(&[0u8; 8192]);
            if out.close {
                refused = Some(out);
                break;
            }
        }
        let out = refused.expect("refused within the header limit");
        assert!(
            matches!(&out.messages[0], ServerMessage::Error(e) if e.code == "UNSUPPORTED_AUDIO" && e.description.contains("no complete wav header")),
            "{:?}",
            out.messages
        );
    }

    /// Phone audio reaches the detector two copies a sample, in runs that end wherever the
    /// carrier's chunks and the emulator's ticks do: the turn must not depend on where.
    #[cfg(feature = "vad")]
    #[test]
    fn phone_audio_gives_the_same_turn_however_it_is_chunked() {
        let wav = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/book_table_16k.wav"
        ))
        .unwrap();
        let (_, offset) = crate::audio::parse_wav_header(&wav).unwrap().unwrap();
        let phone: Vec<u8> = wav[offset..]
            .chunks_exact(4)
            .map(|b| crate::audio::mulaw_encode(i16::from_le_bytes([b[0], b[1]])))
            .collect();
        let turn = |chunk: usize| {
            let mut s = EmulatorSession::new(
                ListenOptions::raw(Encoding::Mulaw, 8000),
                scenario(r#"{"name":"v","turns":[{"say":"Book me a table."}]}"#),
                "rid".into(),
            )
            .with_turn_detection(TurnDetection::Vad);
            let mut infos = Vec::new();
            for piece in phone.chunks(chunk) {
                for m in s.on_audio(piece).messages {
                    if let ServerMessage::TurnInfo(t) = m {
                        infos.push(t);
                    }
                }
            }
            infos
        };
        let whole = turn(phone.len());
        assert!(
            events(&whole).iter().any(|e| e.starts_with("EndOfTurn")),
            "{:?}",
            events(&whole)
        );
        for chunk in [160, 127, 1] {
            assert_eq!(events(&turn(chunk)), events(&whole), "chunks of {chunk}");
        }
    }

    #[test]
    fn multi_model_carries_languages() {
        let o = ListenOptions {
            model: FluxModel::GeneralMulti,
            language_hints: vec!["es".into()],
            ..ListenOptions::default()
        };
        let mut s = EmulatorSession::new(
            o,
            scenario(r#"{"name":"w","turns":[{"say":"hola amigo"}]}"#),
            "r".into(),
        );
        let infos = feed(&mut s, 1.5, 0);
        assert!(
            infos
                .iter()
                .all(|i| i.languages.is_some() && i.languages_hinted == Some(vec!["es".into()]))
        );
        let start = infos
            .iter()
            .find(|i| i.event == TurnEvent::StartOfTurn)
            .unwrap();
        assert_eq!(start.languages, Some(vec!["en".to_owned()]));
    }
}
