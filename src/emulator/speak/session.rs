//! One `/v2/speak` connection's behaviour, pure: requests in, events and audio out, time given
//! by the caller.
//!
//! The turn lifecycle of Deepgram's Flux TTS (`../shared/FLUX-TTS.md` §5): one active turn that
//! produces audio, pending turns queued behind it once it is flushed, `Flushed` and
//! `SpeechMetadata` per turn, `Interrupt` answered with `SpeechInterrupted` split at the played
//! position, or one of the warnings that ignore it.
//!
//! The voice: every character takes [`CHAR_MS`] milliseconds at speed 1.0 (about 180 words a
//! minute), a tone for each word and silence for the spaces, so the text heard at any position
//! is exact and reproducible. Text is synthesized a segment at a time (up to punctuation, or
//! all of it once flushed); a `Configure`d speed applies from the next segment.

use std::collections::VecDeque;

use crate::audio::encode;
use crate::flux::speak::{
    Applied, ControlsApplied, SpeakError, SpeakEvent, SpeakOptions, SpeakRequest, TurnMetadata,
    check_speed,
};
use crate::tts::synthetic::{TABLE_BITS, sine_table};

/// Milliseconds of speech per character at speed 1.0.
pub(crate) const CHAR_MS: u64 = 60;
/// The rate when the client names none (the batch API's default).
const DEFAULT_RATE: u32 = 24000;
/// Most characters one `Speak` may carry (the service publishes no limit; ours).
pub(crate) const MAX_SPEAK_CHARS: usize = 10_000;

/// What the connection sends next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SpeakOutput {
    /// A JSON message.
    Event(SpeakEvent),
    /// A binary frame of audio.
    Audio(Vec<u8>),
    /// A fatal error: the `Error` message, then a close with this code.
    Fatal {
        /// `MESSAGE-0000`, `DATA-0000`, ...
        code: String,
        /// What was wrong.
        description: String,
    },
    /// `SessionMetadata` was sent: close normally.
    Closed,
}

/// How a fatal error code closes the socket (the `/v1/speak` mapping; the v2 one is not
/// published).
pub(crate) fn close_code(code: &str) -> u16 {
    match code.split('-').next() {
        Some("MESSAGE") => 1003,
        Some("DATA") => 1008,
        Some("BIG") => 1009,
        _ => 1011,
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    first_char: usize,
    end_char: usize,
    first_sample: u64,
    end_sample: u64,
}

#[derive(Debug)]
struct Turn {
    id: String,
    text: String,
    chars: usize,
    flushed: bool,
    segments: Vec<Segment>,
    /// Samples sent so far.
    sent: u64,
    /// The session clock, in ms, where this turn's audio began.
    start_ms: u64,
}

impl Turn {
    fn synthesized_chars(&self) -> usize {
        self.segments.last().map_or(0, |s| s.end_char)
    }

    fn planned(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.end_sample)
    }

    /// The character the voice is at after `played` samples.
    fn char_at(&self, played: u64) -> usize {
        for s in &self.segments {
            if played < s.end_sample {
                let into = played.saturating_sub(s.first_sample);
                let span = (s.end_sample - s.first_sample).max(1);
                return s.first_char + (into * (s.end_char - s.first_char) as u64 / span) as usize;
            }
        }
        self.synthesized_chars()
    }

    /// The first sample at which the voice is at character `char` or later.
    fn first_sample_of(&self, char: usize) -> u64 {
        for s in &self.segments {
            if char < s.end_char {
                let into = char.saturating_sub(s.first_char) as u64;
                let chars = (s.end_char - s.first_char) as u64;
                return s.first_sample + (into * (s.end_sample - s.first_sample)).div_ceil(chars);
            }
        }
        self.planned()
    }

    fn metadata(&self, audio_ms: u64) -> TurnMetadata {
        TurnMetadata {
            speech_id: self.id.clone(),
            audio_duration_ms: audio_ms,
            input_character_count: self.chars as u64,
            billable_character_count: self.chars as u64,
            controls_applied: ControlsApplied::default(),
        }
    }
}

/// Splits `text` after the last whole word at or before character `at`: what was spoken, and
/// the rest (which keeps the separating space, as the service's examples do).
pub(crate) fn split_heard(text: &str, at: usize) -> (&str, &str) {
    let byte = |chars: usize| {
        text.char_indices()
            .nth(chars)
            .map_or(text.len(), |(i, _)| i)
    };
    let at_byte = byte(at);
    let cut = if at_byte >= text.len() || text[at_byte..].starts_with(char::is_whitespace) {
        at_byte
    } else {
        text[..at_byte].rfind(char::is_whitespace).unwrap_or(0)
    };
    text.split_at(cut)
}

/// One connection's state.
#[derive(Debug)]
pub(crate) struct SpeakSession {
    options: SpeakOptions,
    rate: u32,
    speed: f64,
    speed_set: bool,
    next_speed: Option<f64>,
    active: Option<Turn>,
    pending: VecDeque<Turn>,
    closing: bool,
    /// The session clock (ms of audio) at the start of the next turn.
    position_ms: u64,
    last_interrupt: Option<u64>,
    produced_audio: bool,
    total_audio_ms: u64,
    total_chars: u64,
    turns: u64,
    id_seed: u64,
    request_id: String,
}

impl SpeakSession {
    /// A session for validated `options`.
    pub(crate) fn new(options: SpeakOptions, request_id: String) -> Self {
        let id_seed = u64::from_str_radix(
            &request_id
                .chars()
                .filter(char::is_ascii_hexdigit)
                .take(12)
                .collect::<String>(),
            16,
        )
        .unwrap_or(0);
        Self {
            rate: options.sample_rate.unwrap_or(DEFAULT_RATE),
            speed: options.speed.unwrap_or(1.0),
            speed_set: options.speed.is_some(),
            next_speed: None,
            options,
            active: None,
            pending: VecDeque::new(),
            closing: false,
            position_ms: 0,
            last_interrupt: None,
            produced_audio: false,
            total_audio_ms: 0,
            total_chars: 0,
            turns: 0,
            id_seed,
            request_id,
        }
    }

    /// The first message.
    pub(crate) fn connected(&self) -> SpeakEvent {
        SpeakEvent::Connected {
            request_id: self.request_id.clone(),
            model_name: self.options.model.clone(),
            model_version: "2026.06.01".into(),
            model_uuids: vec![format!("emulated-{}", self.options.model)],
        }
    }

    /// Samples per second of the audio.
    pub(crate) fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Whether audio is ready to send, and whether it would be the first of its turn.
    pub(crate) fn ready(&self) -> Option<bool> {
        let turn = self.active.as_ref()?;
        (turn.sent < turn.planned()).then_some(turn.sent == 0)
    }

    fn ms(&self, samples: u64) -> u64 {
        samples * 1000 / u64::from(self.rate)
    }

    fn new_turn(&mut self, text: String) -> Turn {
        self.turns += 1;
        Turn {
            id: format!(
                "dg_sp_{:012x}",
                self.id_seed.wrapping_add(self.turns) & 0xffff_ffff_ffff
            ),
            chars: text.chars().count(),
            text,
            flushed: false,
            segments: Vec::new(),
            sent: 0,
            start_ms: 0,
        }
    }

    /// Hands the active turn's text to the voice up to its last segment boundary (all of it
    /// once flushed), at the speed in force.
    fn synthesize(&mut self) {
        let Some(turn) = self.active.as_mut() else {
            return;
        };
        let from = turn.synthesized_chars();
        let until = if turn.flushed {
            turn.chars
        } else {
            turn.text
                .chars()
                .enumerate()
                .filter(|(_, c)| matches!(c, '.' | '!' | '?' | ',' | ';' | ':'))
                .map(|(i, _)| i + 1)
                .last()
                .unwrap_or(0)
        };
        if until <= from {
            return;
        }
        if let Some(speed) = self.next_speed.take() {
            self.speed = speed;
        }
        let per_char = (CHAR_MS as f64 / self.speed * f64::from(self.rate) / 1000.0).round() as u64;
        let first_sample = turn.planned();
        turn.segments.push(Segment {
            first_char: from,
            end_char: until,
            first_sample,
            end_sample: first_sample + (until - from) as u64 * per_char.max(1),
        });
    }

    /// Makes the next pending turn active, if any.
    fn promote(&mut self, out: &mut Vec<SpeakOutput>) {
        if self.active.is_some() {
            return;
        }
        if let Some(mut turn) = self.pending.pop_front() {
            turn.start_ms = self.position_ms;
            out.push(SpeakOutput::Event(SpeakEvent::SpeechStarted {
                speech_id: turn.id.clone(),
            }));
            let flushed = turn.flushed;
            let id = turn.id.clone();
            self.active = Some(turn);
            if flushed {
                self.synthesize();
                out.push(SpeakOutput::Event(SpeakEvent::Flushed { speech_id: id }));
                self.finish_if_done(out);
            } else {
                self.synthesize();
            }
        } else if self.closing {
            out.push(SpeakOutput::Event(SpeakEvent::SessionMetadata {
                total_audio_duration_ms: self.total_audio_ms,
                total_input_character_count: self.total_chars,
                total_billable_character_count: self.total_chars,
            }));
            out.push(SpeakOutput::Closed);
        }
    }

    /// Ends the active turn once it is flushed and all its audio is sent.
    fn finish_if_done(&mut self, out: &mut Vec<SpeakOutput>) {
        let done = self.active.as_ref().is_some_and(|t| {
            t.flushed && t.synthesized_chars() == t.chars && t.sent == t.planned()
        });
        if !done {
            return;
        }
        let turn = self.active.take().expect("checked above");
        if turn.text.trim().is_empty() {
            out.push(warning(
                "NO_SYNTHESIZABLE_TEXT",
                "the turn's text has nothing to say",
            ));
        }
        let audio_ms = self.ms(turn.sent);
        self.position_ms = turn.start_ms + audio_ms;
        self.total_audio_ms += audio_ms;
        self.total_chars += turn.chars as u64;
        out.push(SpeakOutput::Event(SpeakEvent::SpeechMetadata(
            turn.metadata(audio_ms),
        )));
        self.promote(out);
    }

    /// Up to `max` samples of the active turn's audio, encoded, and what follows them.
    pub(crate) fn next_audio(&mut self, max: u64) -> Vec<SpeakOutput> {
        let mut out = Vec::new();
        let rate = self.rate;
        let encoding = self.options.encoding;
        let Some(turn) = self.active.as_mut() else {
            return out;
        };
        let end = (turn.sent + max).min(turn.planned());
        if end > turn.sent {
            let samples = render(turn, turn.sent, end, rate);
            turn.sent = end;
            self.produced_audio = true;
            out.push(SpeakOutput::Audio(encode(encoding, &samples)));
        }
        self.finish_if_done(&mut out);
        out
    }

    /// Takes one text frame from the client.
    pub(crate) fn on_text(&mut self, text: &str) -> Vec<SpeakOutput> {
        let mut out = Vec::new();
        let request = match SpeakRequest::parse(text) {
            Ok(request) => request,
            Err(SpeakError::Malformed(e)) => {
                return vec![fatal(
                    "MESSAGE-0000",
                    format!("could not parse the message: {e}"),
                )];
            }
            // The service refuses an Interrupt with a stray field as unparseable.
            Err(e @ SpeakError::Invalid { .. }) if matches!(&e, SpeakError::Invalid { kind, .. } if kind == "Interrupt") =>
            {
                return vec![fatal("MESSAGE-0000", e.to_string())];
            }
            Err(e) => return vec![fatal("DATA-0000", e.to_string())],
        };
        if self.closing {
            return out;
        }
        match request {
            SpeakRequest::Speak { text } => {
                if text.chars().count() > MAX_SPEAK_CHARS {
                    return vec![fatal(
                        "BIG-0000",
                        format!("a Speak may carry at most {MAX_SPEAK_CHARS} characters"),
                    )];
                }
                if text.contains("{pause:") {
                    return vec![fatal(
                        "DATA-0002",
                        "pause markers are accepted by the batch API only, not on the socket"
                            .into(),
                    )];
                }
                self.speak(text, &mut out);
            }
            SpeakRequest::Flush => self.flush(&mut out),
            SpeakRequest::Interrupt { playback_offset } => {
                self.interrupt(playback_offset.map(|o| o.value), &mut out);
            }
            SpeakRequest::Configure { speed } => self.configure(speed, &mut out),
            SpeakRequest::Close => {
                self.closing = true;
                if let Some(turn) = self.pending.back_mut() {
                    turn.flushed = true;
                }
                if self.active.as_ref().is_some_and(|t| !t.flushed) {
                    self.flush(&mut out);
                } else if self.active.is_none() {
                    self.promote(&mut out);
                }
            }
        }
        out
    }

    fn speak(&mut self, text: String, out: &mut Vec<SpeakOutput>) {
        match self.active.as_mut() {
            None => {
                let mut turn = self.new_turn(text);
                turn.start_ms = self.position_ms;
                out.push(SpeakOutput::Event(SpeakEvent::SpeechStarted {
                    speech_id: turn.id.clone(),
                }));
                self.active = Some(turn);
            }
            Some(turn) if !turn.flushed => {
                turn.chars += text.chars().count();
                turn.text.push_str(&text);
            }
            Some(_) => match self.pending.back_mut() {
                Some(open) if !open.flushed => {
                    open.chars += text.chars().count();
                    open.text.push_str(&text);
                }
                _ => {
                    let turn = self.new_turn(text);
                    self.pending.push_back(turn);
                }
            },
        }
        self.synthesize();
    }

    fn flush(&mut self, out: &mut Vec<SpeakOutput>) {
        if let Some(turn) = self.active.as_mut().filter(|t| !t.flushed) {
            turn.flushed = true;
            let id = turn.id.clone();
            self.synthesize();
            out.push(SpeakOutput::Event(SpeakEvent::Flushed { speech_id: id }));
            self.finish_if_done(out);
        } else if let Some(open) = self.pending.back_mut().filter(|t| !t.flushed) {
            open.flushed = true;
        } else {
            out.push(warning(
                "NO_ACTIVE_SPEECH",
                "no turn is open; the Flush was ignored",
            ));
        }
    }

    fn interrupt(&mut self, offset: Option<u64>, out: &mut Vec<SpeakOutput>) {
        if !self.produced_audio {
            out.push(warning(
                "NO_AUDIO_GENERATED",
                "no audio has been produced on this socket yet; the Interrupt was ignored",
            ));
            return;
        }
        if self.active.is_none() {
            out.push(warning(
                "NO_ACTIVE_SPEECH",
                "no turn is active; the Interrupt was ignored",
            ));
            return;
        }
        if let (Some(value), Some(last)) = (offset, self.last_interrupt)
            && value <= last
        {
            out.push(warning(
                "INVALID_INTERRUPT_OFFSET",
                &format!("playback_offset {value} is not past the previous interrupt's {last}"),
            ));
            return;
        }
        let turn = self.active.take().expect("checked above");
        let generated_ms = self.ms(turn.sent);
        let (audio_played_ms, played_ms, text_spoken, text_remaining) = match offset {
            Some(value) => {
                let played_ms = value.saturating_sub(turn.start_ms).min(generated_ms);
                let played = played_ms * u64::from(self.rate) / 1000;
                let (spoken, rest) = split_heard(&turn.text, turn.char_at(played));
                (
                    value,
                    played_ms,
                    Some(spoken.to_owned()),
                    Some(rest.to_owned()),
                )
            }
            None => (turn.start_ms + generated_ms, generated_ms, None, None),
        };
        if offset.is_some() {
            self.last_interrupt = Some(audio_played_ms);
        }
        self.position_ms = audio_played_ms;
        self.total_audio_ms += played_ms;
        self.total_chars += turn.chars as u64;
        out.push(SpeakOutput::Event(SpeakEvent::SpeechInterrupted {
            audio_played_ms,
            text_spoken,
            text_remaining,
            metadata: turn.metadata(played_ms),
        }));
        self.promote(out);
    }

    fn configure(&mut self, speed: Option<f64>, out: &mut Vec<SpeakOutput>) {
        if let Some(speed) = speed {
            if let Err(e) = check_speed(speed) {
                out.push(SpeakOutput::Event(SpeakEvent::ConfigureFailure {
                    code: e.code().into(),
                    field: Some("speed".into()),
                    value: Some(speed),
                    description: e.to_string(),
                }));
                return;
            }
            self.next_speed = Some(speed);
            self.speed_set = true;
        }
        let applied = self.next_speed.unwrap_or(self.speed);
        out.push(SpeakOutput::Event(SpeakEvent::ConfigureSuccess {
            applied: Applied {
                speed: self.speed_set.then_some(applied),
            },
        }));
    }
}

fn warning(code: &str, description: &str) -> SpeakOutput {
    SpeakOutput::Event(SpeakEvent::Warning {
        code: code.into(),
        description: description.into(),
    })
}

fn fatal(code: &str, description: String) -> SpeakOutput {
    SpeakOutput::Fatal {
        code: code.into(),
        description,
    }
}

/// Samples `from..to` of a turn: a tone per word, its pitch changing from word to word,
/// silence over spaces; rendered a character at a time by table lookup (the emulator shares
/// the machine with the engine it serves in benchmarks).
fn render(turn: &Turn, from: u64, to: u64, rate: u32) -> Vec<i16> {
    let table = sine_table();
    let mut word = 0;
    let words: Vec<Option<usize>> = turn
        .text
        .chars()
        .map(|c| {
            if c.is_whitespace() {
                word += 1;
                None
            } else {
                Some(word)
            }
        })
        .collect();
    let mut samples = Vec::with_capacity(to.saturating_sub(from) as usize);
    let mut n = from;
    while n < to {
        let at = turn.char_at(n);
        let run_end = turn.first_sample_of(at + 1).clamp(n + 1, to);
        match words.get(at) {
            Some(Some(word)) => {
                let pitch = 180.0 + 30.0 * (word % 5) as f64;
                let step =
                    (pitch / f64::from(rate) * f64::from(1u32 << TABLE_BITS) * 65536.0) as u64;
                samples.extend(
                    (n..run_end)
                        .map(|k| table[((k * step) >> 16) as usize & ((1 << TABLE_BITS) - 1)] / 2),
                );
            }
            _ => samples.resize(samples.len() + (run_end - n) as usize, 0),
        }
        n = run_end;
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flux::speak::PlaybackOffset;

    /// 60 ms a character at 16 kHz.
    const PER_CHAR: u64 = 960;

    fn session() -> SpeakSession {
        SpeakSession::new(
            SpeakOptions::new("flux-haley-en", 16000),
            "7c0b2e91-4f3a-4d8e-9a61-0b5d2f7e3c14".into(),
        )
    }

    fn request(r: SpeakRequest) -> String {
        r.to_json()
    }

    fn events(out: &[SpeakOutput]) -> Vec<SpeakEvent> {
        out.iter()
            .filter_map(|o| match o {
                SpeakOutput::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn one(out: &[SpeakOutput]) -> SpeakEvent {
        let mut all = events(out);
        assert_eq!(all.len(), 1, "{out:?}");
        all.remove(0)
    }

    fn speak(s: &mut SpeakSession, text: &str) -> Vec<SpeakOutput> {
        s.on_text(&request(SpeakRequest::Speak { text: text.into() }))
    }

    /// Sends all ready audio; the samples and the messages that came with it.
    fn drain(s: &mut SpeakSession) -> (u64, Vec<SpeakEvent>) {
        let mut samples = 0;
        let mut seen = Vec::new();
        while s.ready().is_some() {
            for o in s.next_audio(320) {
                match o {
                    SpeakOutput::Audio(bytes) => samples += bytes.len() as u64 / 2,
                    SpeakOutput::Event(e) => seen.push(e),
                    _ => {}
                }
            }
        }
        (samples, seen)
    }

    #[test]
    fn a_turn_speaks_flushes_and_reports() {
        let mut s = session();
        let out = speak(&mut s, "Your order shipped ");
        let SpeakEvent::SpeechStarted { speech_id } = one(&out) else {
            panic!("{out:?}");
        };
        assert!(speech_id.starts_with("dg_sp_") && speech_id.len() == 18);
        assert_eq!(s.ready(), None, "no segment boundary yet");
        speak(&mut s, "today.");
        assert_eq!(s.ready(), Some(true));
        let out = s.on_text(&request(SpeakRequest::Flush));
        assert_eq!(
            events(&out),
            vec![SpeakEvent::Flushed {
                speech_id: speech_id.clone()
            }]
        );
        let (samples, seen) = drain(&mut s);
        // 25 characters at 60 ms each, 16 samples a millisecond.
        assert_eq!(samples, 25 * 60 * 16);
        assert_eq!(seen.len(), 1, "{seen:?}");
        let SpeakEvent::SpeechMetadata(metadata) = seen[0].clone() else {
            panic!()
        };
        assert_eq!(metadata.speech_id, speech_id);
        assert_eq!(metadata.audio_duration_ms, 1500);
        assert_eq!(metadata.billable_character_count, 25);
        let out = s.on_text(&request(SpeakRequest::Close));
        assert_eq!(
            events(&out),
            vec![SpeakEvent::SessionMetadata {
                total_audio_duration_ms: 1500,
                total_input_character_count: 25,
                total_billable_character_count: 25,
            }]
        );
        assert_eq!(out.last(), Some(&SpeakOutput::Closed));
    }

    #[test]
    fn an_interrupt_splits_the_text_at_the_played_position_on_the_session_clock() {
        let mut s = session();
        speak(&mut s, "One two.");
        s.on_text(&request(SpeakRequest::Flush));
        drain(&mut s);
        // 480 ms of the first turn, then the second begins at 480 on the session's clock.
        speak(
            &mut s,
            "The forecast for tomorrow is sunny, with a light breeze.",
        );
        s.on_text(&request(SpeakRequest::Flush));
        s.next_audio(16000 * 2);
        // 1300 ms into the second turn: character 21, inside "tomorrow", so "tomorrow" was
        // not heard whole.
        let out = s.on_text(&request(SpeakRequest::Interrupt {
            playback_offset: Some(PlaybackOffset::ms(480 + 1300)),
        }));
        let SpeakEvent::SpeechInterrupted {
            audio_played_ms,
            text_spoken,
            text_remaining,
            metadata,
        } = one(&out)
        else {
            panic!("{out:?}")
        };
        assert_eq!(audio_played_ms, 1780);
        assert_eq!(text_spoken.as_deref(), Some("The forecast for"));
        assert_eq!(
            text_remaining.as_deref(),
            Some(" tomorrow is sunny, with a light breeze.")
        );
        assert_eq!(metadata.audio_duration_ms, 1300);
        assert_eq!(s.ready(), None, "no audio of the cut turn follows");
        // The next turn starts where the listener stopped; this one is cut before its Flush.
        speak(&mut s, "Sure. Let me check.");
        s.next_audio(16 * 300);
        let out = s.on_text(&request(SpeakRequest::Interrupt {
            playback_offset: Some(PlaybackOffset::ms(1780)),
        }));
        assert!(
            matches!(&events(&out)[..], [SpeakEvent::Warning { code, .. }] if code == "INVALID_INTERRUPT_OFFSET")
        );
        let out = s.on_text(&request(SpeakRequest::Interrupt {
            playback_offset: Some(PlaybackOffset::ms(1780 + 300)),
        }));
        assert!(matches!(
            &events(&out)[..],
            [SpeakEvent::SpeechInterrupted { text_spoken: Some(t), text_remaining: Some(r), .. }]
                if t == "Sure." && r == " Let me check."
        ));
    }

    #[test]
    fn interrupts_with_nothing_to_cut_are_warned_and_ignored() {
        let mut s = session();
        let code = |out: Vec<SpeakOutput>| match &events(&out)[..] {
            [SpeakEvent::Warning { code, .. }] => code.clone(),
            other => panic!("{other:?}"),
        };
        let interrupt = request(SpeakRequest::Interrupt {
            playback_offset: None,
        });
        assert_eq!(code(s.on_text(&interrupt)), "NO_AUDIO_GENERATED");
        speak(&mut s, "Hi.");
        s.on_text(&request(SpeakRequest::Flush));
        drain(&mut s);
        assert_eq!(code(s.on_text(&interrupt)), "NO_ACTIVE_SPEECH");
        assert_eq!(
            code(s.on_text(&request(SpeakRequest::Flush))),
            "NO_ACTIVE_SPEECH"
        );
        // Without an offset, the service reports what it generated and cannot split the text.
        speak(&mut s, "Hello there.");
        s.next_audio(16 * 100);
        let out = s.on_text(&interrupt);
        assert!(matches!(
            &events(&out)[..],
            [SpeakEvent::SpeechInterrupted {
                audio_played_ms: 280,
                text_spoken: None,
                ..
            }]
        ));
    }

    #[test]
    fn a_turn_spoken_after_a_flush_waits_its_turn() {
        let mut s = session();
        speak(&mut s, "First.");
        s.on_text(&request(SpeakRequest::Flush));
        let out = speak(&mut s, "Second.");
        assert!(events(&out).is_empty(), "pending: no SpeechStarted yet");
        s.on_text(&request(SpeakRequest::Flush));
        let (_, seen) = drain(&mut s);
        let kinds: Vec<_> = seen
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "SpeechMetadata",
                "SpeechStarted",
                "Flushed",
                "SpeechMetadata"
            ]
        );
    }

    #[test]
    fn configure_applies_from_the_next_segment_and_refuses_off_grid_speeds() {
        let mut s = session();
        let out = s.on_text(&request(SpeakRequest::Configure { speed: Some(1.07) }));
        assert!(matches!(
            &events(&out)[..],
            [SpeakEvent::ConfigureFailure { code, .. }] if code == "SPEED_INCREMENT_INVALID"
        ));
        let out = s.on_text(&request(SpeakRequest::Configure { speed: Some(1.5) }));
        assert_eq!(
            events(&out),
            vec![SpeakEvent::ConfigureSuccess {
                applied: Applied { speed: Some(1.5) }
            }]
        );
        speak(&mut s, "Ten chars.");
        s.on_text(&request(SpeakRequest::Flush));
        let (samples, _) = drain(&mut s);
        assert_eq!(samples, 10 * 640, "40 ms a character at 1.5");
    }

    #[test]
    fn bad_messages_are_fatal_with_the_service_s_codes() {
        let mut s = session();
        let code = |out: Vec<SpeakOutput>| match &out[..] {
            [SpeakOutput::Fatal { code, .. }] => code.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(code(s.on_text("{not json")), "MESSAGE-0000");
        assert_eq!(
            code(s.on_text(r#"{"type":"Interrupt","speech_id":"x"}"#)),
            "MESSAGE-0000"
        );
        assert_eq!(code(s.on_text(r#"{"type":"Clear"}"#)), "DATA-0000");
        assert_eq!(code(s.on_text(r#"{"type":"Speak","text":5}"#)), "DATA-0000");
        assert_eq!(code(speak(&mut s, "Wait {pause:1s} here")), "DATA-0002");
        assert_eq!(
            code(speak(&mut s, &"a".repeat(MAX_SPEAK_CHARS + 1))),
            "BIG-0000"
        );
        assert_eq!(close_code("MESSAGE-0000"), 1003);
        assert_eq!(close_code("NET-0004"), 1011);
    }

    #[test]
    fn heard_text_splits_after_whole_words() {
        assert_eq!(split_heard("one two three", 5), ("one", " two three"));
        assert_eq!(split_heard("one two three", 7), ("one two", " three"));
        assert_eq!(split_heard("one two three", 2), ("", "one two three"));
        assert_eq!(split_heard("one two", 50), ("one two", ""));
        assert_eq!(split_heard("héllo wörld", 7), ("héllo", " wörld"));
    }

    #[test]
    fn the_voice_sings_the_words_and_keeps_quiet_between_them() {
        let mut s = session();
        speak(&mut s, "ab cd");
        s.on_text(&request(SpeakRequest::Flush));
        let mut pcm = Vec::new();
        while s.ready().is_some() {
            for o in s.next_audio(1000) {
                if let SpeakOutput::Audio(bytes) = o {
                    pcm.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]])),
                    );
                }
            }
        }
        let per_char = PER_CHAR as usize;
        assert_eq!(pcm.len(), 5 * per_char);
        let loud = |range: std::ops::Range<usize>| pcm[range].iter().any(|s| s.abs() > 1000);
        assert!(loud(0..2 * per_char), "the first word");
        assert!(
            pcm[2 * per_char..3 * per_char].iter().all(|s| *s == 0),
            "the space"
        );
        assert!(loud(3 * per_char..5 * per_char), "the second word");
    }
}
