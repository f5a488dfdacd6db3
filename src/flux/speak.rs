//! Deepgram Flux TTS (`/v2/speak`), the speaking half of Flux: every JSON message in both
//! directions, pure, for the voice client and the emulator alike.
//!
//! One socket carries a conversation's replies as turns: [`SpeakRequest::Speak`] streams a
//! reply's text, [`SpeakRequest::Flush`] closes it (the server answers
//! [`SpeakEvent::Flushed`], the rest of its audio, then [`SpeakEvent::SpeechMetadata`]), and
//! [`SpeakRequest::Interrupt`] cancels it with the position the listener actually played,
//! answered by [`SpeakEvent::SpeechInterrupted`] with the words heard. Audio arrives as binary
//! frames, not here.
//!
//! Reading is lenient where the service may grow (unknown message types are kept as
//! [`SpeakEvent::Unknown`], unknown fields ignored, the early-access `SpeechMetadata` without
//! `breaks_applied` read with zeros) and strict where the service is (an `Interrupt` with a
//! stray field is refused, as the service refuses it).

use serde::{Deserialize, Serialize};

use super::options::{Encoding, OptionsError, Query, percent_decode};

/// A message to the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SpeakRequest {
    /// Text of the active reply; successive texts are joined verbatim.
    Speak {
        /// The text.
        text: String,
    },
    /// The reply's text is complete.
    Flush,
    /// Cancel the active reply. Without an offset the service cannot say what was heard.
    Interrupt {
        /// How much of the session's audio the listener played.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        playback_offset: Option<PlaybackOffset>,
    },
    /// Change the speed from the next segment on.
    Configure {
        /// 0.5 to 1.5 in steps of 0.05 ([`check_speed`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speed: Option<f64>,
    },
    /// Finish what is queued, report the session, close.
    Close,
}

/// `{"type": "time_ms", "value": N}`: milliseconds of the session's audio the listener has
/// played, counted over every reply since the socket opened; each interrupt's must be greater
/// than the last one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybackOffset {
    #[serde(rename = "type")]
    unit: OffsetUnit,
    /// Milliseconds played.
    pub value: u64,
}

impl PlaybackOffset {
    /// `ms` milliseconds of the session's audio played.
    pub fn ms(ms: u64) -> Self {
        PlaybackOffset {
            unit: OffsetUnit::TimeMs,
            value: ms,
        }
    }
}

/// The one unit an offset is given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum OffsetUnit {
    #[serde(rename = "time_ms")]
    TimeMs,
}

/// What a reply cost and produced, reported when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnMetadata {
    /// The reply (`dg_sp_` and 12 hex digits), minted by the service.
    pub speech_id: String,
    /// Audio produced for it.
    pub audio_duration_ms: u64,
    /// Characters received, before normalisation.
    pub input_character_count: u64,
    /// Characters billed (never more than received; a deployment was seen to report 0).
    pub billable_character_count: u64,
    /// Inline controls applied.
    #[serde(default)]
    pub controls_applied: ControlsApplied,
}

/// Inline controls a reply used; absent counts read as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlsApplied {
    /// Pronunciation overrides applied.
    #[serde(default)]
    pub pronunciations_applied: u64,
    /// Pauses applied (always 0 on the socket).
    #[serde(default)]
    pub breaks_applied: u64,
    /// Pronunciation entries with warnings.
    #[serde(default)]
    pub pronunciation_warnings: u64,
}

/// The configuration in force after a `Configure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The speed, when one was set on this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
}

/// A message from the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SpeakEvent {
    /// The first message of a socket.
    Connected {
        /// The request's id (also the `dg-request-id` header).
        request_id: String,
        /// The voice, as the service names it.
        model_name: String,
        /// Its version.
        model_version: String,
        /// The models behind it.
        #[serde(default)]
        model_uuids: Vec<String>,
    },
    /// A reply became active; its audio follows.
    SpeechStarted {
        /// The reply.
        speech_id: String,
    },
    /// A `Flush` was taken: not the end of the reply, more audio may follow.
    Flushed {
        /// The reply.
        speech_id: String,
    },
    /// A flushed reply ended; all its audio came before this.
    SpeechMetadata(TurnMetadata),
    /// An `Interrupt` was taken: the reply ended where the listener stopped hearing it.
    SpeechInterrupted {
        /// The offset sent, or without one the audio generated so far.
        audio_played_ms: u64,
        /// What the listener heard of the reply (only when an offset was sent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text_spoken: Option<String>,
        /// The rest, unheard (only when an offset was sent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text_remaining: Option<String>,
        /// The interrupted reply's figures.
        metadata: TurnMetadata,
    },
    /// A `Configure` was applied.
    ConfigureSuccess {
        /// The configuration now in force.
        #[serde(default)]
        applied: Applied,
    },
    /// A `Configure` was refused; the previous configuration stays.
    ConfigureFailure {
        /// `SPEED_OUT_OF_RANGE`, `SPEED_INCREMENT_INVALID`, ...
        code: String,
        /// The field refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        /// The value refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
        /// What was wrong.
        description: String,
    },
    /// Something was ignored or adjusted; the session goes on.
    Warning {
        /// `NO_ACTIVE_SPEECH`, `INVALID_INTERRUPT_OFFSET`, ... (an open set).
        #[serde(alias = "warn_code")]
        code: String,
        /// What happened.
        #[serde(default, alias = "warn_msg")]
        description: String,
    },
    /// Fatal: the service closes the socket next.
    Error {
        /// `NET-0004` (idle), `NET-0003` (the hour is up), `MESSAGE-0000`, ...
        code: String,
        /// What happened.
        #[serde(default)]
        description: String,
    },
    /// The session's totals, last before a normal close.
    SessionMetadata {
        /// Audio over every reply (an interrupt counts what was played).
        total_audio_duration_ms: u64,
        /// Characters received.
        total_input_character_count: u64,
        /// Characters billed.
        total_billable_character_count: u64,
    },
    /// A message type this version does not know, kept by name.
    #[serde(skip)]
    Unknown(String),
}

/// A message that is not one of `/v2/speak`'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpeakError {
    /// Not JSON, or no string `type`.
    #[error("not a /v2/speak message: {0}")]
    Malformed(String),
    /// A known type with fields that do not fit it.
    #[error("invalid {kind} message: {detail}")]
    Invalid {
        /// The message type.
        kind: String,
        /// What does not fit.
        detail: String,
    },
    /// A type the other side never sends.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
}

/// The type of a message, read before the rest of it.
#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

fn kind_of(text: &str) -> Result<String, SpeakError> {
    serde_json::from_str::<Kind>(text)
        .map(|k| k.kind.into_owned())
        .map_err(|e| SpeakError::Malformed(e.to_string()))
}

impl SpeakRequest {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("requests always serialize")
    }

    /// Reads a request as the service does (the emulator's side).
    ///
    /// # Errors
    /// [`SpeakError`] naming what was wrong: not JSON, a type the service does not take, or
    /// fields that do not fit (an `Interrupt` takes `playback_offset` and nothing else).
    pub fn parse(text: &str) -> Result<Self, SpeakError> {
        let kind = kind_of(text)?;
        if !matches!(
            kind.as_str(),
            "Speak" | "Flush" | "Interrupt" | "Configure" | "Close"
        ) {
            return Err(SpeakError::UnknownType(kind));
        }
        if kind == "Interrupt" {
            // The service refuses an Interrupt with any other field (a stray `speech_id` is a
            // fatal MESSAGE-0000), so the emulator does too.
            let fields: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text).map_err(|e| SpeakError::Malformed(e.to_string()))?;
            if let Some(extra) = fields
                .keys()
                .find(|k| !matches!(k.as_str(), "type" | "playback_offset"))
            {
                return Err(SpeakError::Invalid {
                    kind,
                    detail: format!("unknown field `{extra}`, expected `playback_offset`"),
                });
            }
        }
        serde_json::from_str(text).map_err(|e| SpeakError::Invalid {
            kind,
            detail: e.to_string(),
        })
    }
}

impl SpeakEvent {
    /// The JSON text of this message (an [`SpeakEvent::Unknown`] writes its type alone).
    pub fn to_json(&self) -> String {
        match self {
            SpeakEvent::Unknown(kind) => serde_json::json!({ "type": kind }).to_string(),
            known => serde_json::to_string(known).expect("events always serialize"),
        }
    }

    /// Reads a message from the service (the client's side): a type it does not know is kept
    /// as [`SpeakEvent::Unknown`].
    ///
    /// # Errors
    /// [`SpeakError`]: not JSON, or a known type whose fields do not fit.
    pub fn parse(text: &str) -> Result<Self, SpeakError> {
        let kind = kind_of(text)?;
        const KNOWN: [&str; 10] = [
            "Connected",
            "SpeechStarted",
            "Flushed",
            "SpeechMetadata",
            "SpeechInterrupted",
            "ConfigureSuccess",
            "ConfigureFailure",
            "Warning",
            "Error",
            "SessionMetadata",
        ];
        if !KNOWN.contains(&kind.as_str()) {
            return Ok(SpeakEvent::Unknown(kind));
        }
        serde_json::from_str(text).map_err(|e| SpeakError::Invalid {
            kind,
            detail: e.to_string(),
        })
    }
}

/// Why a speed is refused, as the service's `ConfigureFailure` codes name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpeedError {
    /// Outside 0.5 to 1.5.
    #[error("'speed' must be between 0.5 and 1.5")]
    OutOfRange,
    /// Not a multiple of 0.05.
    #[error("'speed' must be provided in increments of 0.05")]
    Increment,
}

impl SpeedError {
    /// The service's code for it.
    pub fn code(self) -> &'static str {
        match self {
            SpeedError::OutOfRange => "SPEED_OUT_OF_RANGE",
            SpeedError::Increment => "SPEED_INCREMENT_INVALID",
        }
    }
}

/// Checks a speed against the service's rule: 0.5 to 1.5, in steps of 0.05.
///
/// # Errors
/// [`SpeedError`] naming the rule broken.
pub fn check_speed(speed: f64) -> Result<(), SpeedError> {
    if !(0.5..=1.5).contains(&speed) {
        return Err(SpeedError::OutOfRange);
    }
    let steps = speed * 20.0;
    if (steps.round() - steps).abs() > 1e-6 {
        return Err(SpeedError::Increment);
    }
    Ok(())
}

/// The query parameters of `/v2/speak`, checked before any I/O: the client renders them, the
/// emulator reads them back with [`SpeakOptions::from_query`] and refuses what the service
/// refuses (unknown and batch-only parameters included).
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakOptions {
    /// `flux-<voice>-<language>`, e.g. `flux-haley-en`; required.
    pub model: String,
    /// `linear16`, `mulaw` or `alaw`.
    pub encoding: Encoding,
    /// Samples per second; the service picks its native rate when absent.
    pub sample_rate: Option<u32>,
    /// 0.5 to 1.5 in steps of 0.05 (1.0 when absent); `Configure` changes it later.
    pub speed: Option<f64>,
    /// -2 to 2, fixed for the socket.
    pub expressivity: Option<i8>,
    /// Opt out of Deepgram's model improvement program.
    pub mip_opt_out: Option<bool>,
    /// Labels for usage reports, each its own `tag=` pair.
    pub tags: Vec<String>,
}

/// A `/v2/speak` option the service would refuse: the parameter, its value, what is allowed,
/// and the service's code for it (`EXPRESSIVITY_OUT_OF_RANGE`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct SpeakOptionsError {
    /// The service's error code.
    pub code: &'static str,
    /// The parameter, its value and what is allowed.
    pub detail: OptionsError,
}

fn refused(
    code: &'static str,
    parameter: &'static str,
    value: &str,
    allowed: impl Into<String>,
) -> SpeakOptionsError {
    SpeakOptionsError {
        code,
        detail: OptionsError::new(parameter, value, allowed),
    }
}

/// Rates each encoding may take on the socket.
fn rates_for(encoding: Encoding) -> &'static [u32] {
    match encoding {
        Encoding::Mulaw | Encoding::Alaw => &[8000, 16000],
        _ => &[8000, 16000, 24000, 32000, 44100, 48000],
    }
}

impl SpeakOptions {
    /// `model` as linear16 at `sample_rate`, everything else the service's default.
    pub fn new(model: impl Into<String>, sample_rate: u32) -> Self {
        Self {
            model: model.into(),
            encoding: Encoding::Linear16,
            sample_rate: Some(sample_rate),
            speed: None,
            expressivity: None,
            mip_opt_out: None,
            tags: Vec::new(),
        }
    }

    /// Checks every option as the service would.
    ///
    /// # Errors
    /// [`SpeakOptionsError`] naming the first option refused.
    pub fn validate(&self) -> Result<(), SpeakOptionsError> {
        let voice = self
            .model
            .strip_prefix("flux-")
            .and_then(|rest| rest.split_once('-'));
        let well_formed = voice.is_some_and(|(voice, language)| {
            !voice.is_empty()
                && !language.is_empty()
                && voice.chars().all(|c| c.is_ascii_lowercase())
                && language.chars().all(|c| c.is_ascii_lowercase())
        });
        if !well_formed {
            return Err(refused(
                "Bad Request",
                "model",
                &self.model,
                "flux-<voice>-<language>, e.g. flux-haley-en (aura-* voices are served by /v1/speak)",
            ));
        }
        if !matches!(
            self.encoding,
            Encoding::Linear16 | Encoding::Mulaw | Encoding::Alaw
        ) {
            return Err(refused(
                "Bad Request",
                "encoding",
                self.encoding.as_str(),
                "linear16, mulaw or alaw on the socket (containers are batch-only)",
            ));
        }
        if let Some(rate) = self.sample_rate
            && !rates_for(self.encoding).contains(&rate)
        {
            let allowed = rates_for(self.encoding)
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(refused(
                "Bad Request",
                "sample_rate",
                &rate.to_string(),
                format!("one of {allowed} for {}", self.encoding.as_str()),
            ));
        }
        if let Some(speed) = self.speed
            && let Err(e) = check_speed(speed)
        {
            return Err(refused(
                e.code(),
                "speed",
                &speed.to_string(),
                e.to_string(),
            ));
        }
        if let Some(e) = self.expressivity
            && !(-2..=2).contains(&e)
        {
            return Err(refused(
                "EXPRESSIVITY_OUT_OF_RANGE",
                "expressivity",
                &e.to_string(),
                "an integer from -2 to 2",
            ));
        }
        Ok(())
    }

    /// The query string, in the order Deepgram's own SDK writes it.
    pub fn to_query(&self) -> String {
        let mut q = Query::default();
        q.push("model", &self.model);
        q.push("encoding", self.encoding.as_str());
        if let Some(rate) = self.sample_rate {
            q.push("sample_rate", &rate.to_string());
        }
        if let Some(speed) = self.speed {
            q.push("speed", &speed.to_string());
        }
        if let Some(e) = self.expressivity {
            q.push("expressivity", &e.to_string());
        }
        if let Some(opt_out) = self.mip_opt_out {
            q.push("mip_opt_out", if opt_out { "true" } else { "false" });
        }
        for tag in &self.tags {
            q.push("tag", tag);
        }
        q.0
    }

    /// Reads a query string as the service does (the emulator's side).
    ///
    /// # Errors
    /// [`SpeakOptionsError`] for a missing model, an unknown or batch-only parameter, or a
    /// value out of its range.
    pub fn from_query(query: &str) -> Result<Self, SpeakOptionsError> {
        let mut options = SpeakOptions::new(String::new(), 0);
        options.sample_rate = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(raw_key);
            let value = percent_decode(raw_value);
            match key.as_str() {
                "model" => options.model = value,
                "encoding" => {
                    options.encoding = value.parse().map_err(|detail| SpeakOptionsError {
                        code: "Bad Request",
                        detail,
                    })?
                }
                "sample_rate" => {
                    options.sample_rate = Some(value.parse().map_err(|_| {
                        refused(
                            "Bad Request",
                            "sample_rate",
                            &value,
                            "an integer number of hertz",
                        )
                    })?)
                }
                "speed" => {
                    options.speed = Some(value.parse().map_err(|_| {
                        refused(
                            "SPEED_OUT_OF_RANGE",
                            "speed",
                            &value,
                            "a number from 0.5 to 1.5",
                        )
                    })?)
                }
                "expressivity" => {
                    let number: f64 = value.parse().map_err(|_| {
                        refused(
                            "EXPRESSIVITY_OUT_OF_RANGE",
                            "expressivity",
                            &value,
                            "an integer from -2 to 2",
                        )
                    })?;
                    if number.fract() != 0.0 {
                        return Err(refused(
                            "EXPRESSIVITY_INCREMENT_INVALID",
                            "expressivity",
                            &value,
                            "a whole number from -2 to 2",
                        ));
                    }
                    options.expressivity = Some(number.clamp(-128.0, 127.0) as i8);
                }
                "mip_opt_out" => {
                    options.mip_opt_out = Some(match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(refused(
                                "Bad Request",
                                "mip_opt_out",
                                &value,
                                "true or false",
                            ));
                        }
                    })
                }
                "tag" => options.tags.push(value),
                "container" | "bit_rate" | "callback" | "callback_method" | "priority" => {
                    return Err(refused(
                        "Bad Request",
                        "query",
                        &key,
                        "not on the socket: container, bit_rate, callback, callback_method and priority are batch-only",
                    ));
                }
                _ => {
                    return Err(refused(
                        "Bad Request",
                        "query",
                        &key,
                        "model, encoding, sample_rate, speed, expressivity, mip_opt_out or tag",
                    ));
                }
            }
        }
        if options.model.is_empty() {
            return Err(refused(
                "Bad Request",
                "model",
                "",
                "required: flux-<voice>-<language>, e.g. flux-haley-en",
            ));
        }
        options.validate()?;
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(id: &str) -> TurnMetadata {
        TurnMetadata {
            speech_id: id.into(),
            audio_duration_ms: 2310,
            input_character_count: 73,
            billable_character_count: 73,
            controls_applied: ControlsApplied::default(),
        }
    }

    #[test]
    fn every_request_is_written_and_read_back_the_same() {
        let requests = [
            SpeakRequest::Speak {
                text: "Your order shipped this morning, ".into(),
            },
            SpeakRequest::Flush,
            SpeakRequest::Interrupt {
                playback_offset: Some(PlaybackOffset::ms(5180)),
            },
            SpeakRequest::Interrupt {
                playback_offset: None,
            },
            SpeakRequest::Configure { speed: Some(0.9) },
            SpeakRequest::Close,
        ];
        for request in requests {
            let text = request.to_json();
            assert_eq!(SpeakRequest::parse(&text), Ok(request), "{text}");
        }
        assert_eq!(
            SpeakRequest::Interrupt {
                playback_offset: Some(PlaybackOffset::ms(5180))
            }
            .to_json(),
            r#"{"type":"Interrupt","playback_offset":{"type":"time_ms","value":5180}}"#
        );
        assert_eq!(
            SpeakRequest::Interrupt {
                playback_offset: None
            }
            .to_json(),
            r#"{"type":"Interrupt"}"#
        );
    }

    #[test]
    fn every_event_is_written_and_read_back_the_same() {
        let events = [
            SpeakEvent::Connected {
                request_id: "7c0b2e91-4f3a-4d8e-9a61-0b5d2f7e3c14".into(),
                model_name: "flux-haley-en".into(),
                model_version: "2026.06.01".into(),
                model_uuids: vec!["3f9d1a52-8c47-4e0b-b1d6-2a7e90c4f518".into()],
            },
            SpeakEvent::SpeechStarted {
                speech_id: "dg_sp_4e1f9a0c7b23".into(),
            },
            SpeakEvent::Flushed {
                speech_id: "dg_sp_4e1f9a0c7b23".into(),
            },
            SpeakEvent::SpeechMetadata(metadata("dg_sp_4e1f9a0c7b23")),
            SpeakEvent::SpeechInterrupted {
                audio_played_ms: 5180,
                text_spoken: Some("The forecast for tomorrow is sunny,".into()),
                text_remaining: Some(" with a light breeze.".into()),
                metadata: metadata("dg_sp_90b2c4d6e8f1"),
            },
            SpeakEvent::SpeechInterrupted {
                audio_played_ms: 900,
                text_spoken: None,
                text_remaining: None,
                metadata: metadata("dg_sp_90b2c4d6e8f2"),
            },
            SpeakEvent::ConfigureSuccess {
                applied: Applied { speed: Some(0.9) },
            },
            SpeakEvent::ConfigureFailure {
                code: "SPEED_INCREMENT_INVALID".into(),
                field: Some("speed".into()),
                value: Some(1.07),
                description: "'speed' must be provided in increments of 0.05".into(),
            },
            SpeakEvent::Warning {
                code: "NO_ACTIVE_SPEECH".into(),
                description: "No turn is active; request ignored.".into(),
            },
            SpeakEvent::Error {
                code: "NET-0004".into(),
                description: "No client message for 60 seconds; closing.".into(),
            },
            SpeakEvent::SessionMetadata {
                total_audio_duration_ms: 41250,
                total_input_character_count: 612,
                total_billable_character_count: 612,
            },
            SpeakEvent::Unknown("SpeechPaused".into()),
        ];
        for event in events {
            let text = event.to_json();
            assert_eq!(SpeakEvent::parse(&text), Ok(event), "{text}");
        }
        let text = SpeakEvent::SpeechMetadata(metadata("dg_sp_1")).to_json();
        assert!(
            text.starts_with(r#"{"type":"SpeechMetadata","speech_id":"dg_sp_1","#),
            "the metadata's fields sit beside its type: {text}"
        );
    }

    #[test]
    fn the_service_s_variations_are_read() {
        // Early access: no breaks_applied; a field from the future; the older warning names.
        let early = r#"{"type":"SpeechMetadata","speech_id":"dg_sp_1","audio_duration_ms":2870,
            "input_character_count":51,"billable_character_count":0,
            "controls_applied":{"pronunciations_applied":1,"pronunciation_warnings":0},"region":"eu"}"#;
        let SpeakEvent::SpeechMetadata(m) = SpeakEvent::parse(early).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                m.billable_character_count,
                m.controls_applied.pronunciations_applied
            ),
            (0, 1)
        );
        assert_eq!(m.controls_applied.breaks_applied, 0);
        assert_eq!(
            SpeakEvent::parse(
                r#"{"type":"Warning","warn_code":"SYNTHESIS_RETRYING","warn_msg":"retrying"}"#
            ),
            Ok(SpeakEvent::Warning {
                code: "SYNTHESIS_RETRYING".into(),
                description: "retrying".into()
            })
        );
    }

    #[test]
    fn what_does_not_fit_is_named() {
        let cases = [
            ("not json", "not a /v2/speak message"),
            (r#"{"text":"hi"}"#, "missing field `type`"),
            (
                r#"{"type":"SpeechStarted"}"#,
                "invalid SpeechStarted message: missing field `speech_id`",
            ),
            (
                r#"{"type":"SpeechInterrupted","audio_played_ms":-1,"metadata":{}}"#,
                "invalid SpeechInterrupted message",
            ),
        ];
        for (input, expected) in cases {
            let error = SpeakEvent::parse(input).unwrap_err().to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
        let requests = [
            (
                r#"{"type":"Interrupt","speech_id":"dg_sp_1"}"#,
                "invalid Interrupt message: unknown field `speech_id`",
            ),
            (
                r#"{"type":"Interrupt","playback_offset":{"type":"samples","value":3}}"#,
                "invalid Interrupt message: unknown variant `samples`",
            ),
            (
                r#"{"type":"Speak"}"#,
                "invalid Speak message: missing field `text`",
            ),
            (
                r#"{"type":"KeepAlive"}"#,
                "unknown message type \"KeepAlive\"",
            ),
        ];
        for (input, expected) in requests {
            let error = SpeakRequest::parse(input).unwrap_err().to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn speeds_follow_the_service_s_rule() {
        for ok in [0.5, 0.85, 0.9, 1.0, 1.05, 1.15, 1.5] {
            assert_eq!(check_speed(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_speed(0.45), Err(SpeedError::OutOfRange));
        assert_eq!(check_speed(1.55), Err(SpeedError::OutOfRange));
        assert_eq!(check_speed(f64::NAN), Err(SpeedError::OutOfRange));
        assert_eq!(check_speed(1.07), Err(SpeedError::Increment));
        assert_eq!(SpeedError::Increment.code(), "SPEED_INCREMENT_INVALID");
        assert_eq!(
            SpeedError::OutOfRange.to_string(),
            "'speed' must be between 0.5 and 1.5"
        );
    }

    #[test]
    fn options_round_trip_and_refusals_name_the_service_s_code() {
        let mut options = SpeakOptions::new("flux-haley-en", 24000);
        options.speed = Some(1.05);
        options.expressivity = Some(-1);
        options.mip_opt_out = Some(true);
        options.tags = vec!["a b".into(), "c".into()];
        let query = options.to_query();
        assert_eq!(
            query,
            "model=flux-haley-en&encoding=linear16&sample_rate=24000&speed=1.05&expressivity=-1&mip_opt_out=true&tag=a%20b&tag=c"
        );
        assert_eq!(SpeakOptions::from_query(&query), Ok(options));
        for (query, code, names) in [
            ("encoding=linear16", "Bad Request", "model"),
            ("model=aura-2-thalia-en", "Bad Request", "aura-*"),
            (
                "model=flux-haley-en&expressivity=3",
                "EXPRESSIVITY_OUT_OF_RANGE",
                "-2 to 2",
            ),
            (
                "model=flux-haley-en&expressivity=1.5",
                "EXPRESSIVITY_INCREMENT_INVALID",
                "whole",
            ),
            (
                "model=flux-haley-en&speed=1.55",
                "SPEED_OUT_OF_RANGE",
                "0.5 and 1.5",
            ),
            (
                "model=flux-haley-en&speed=1.07",
                "SPEED_INCREMENT_INVALID",
                "0.05",
            ),
            (
                "model=flux-haley-en&encoding=mp3",
                "Bad Request",
                "encoding",
            ),
            (
                "model=flux-haley-en&encoding=opus",
                "Bad Request",
                "batch-only",
            ),
            (
                "model=flux-haley-en&encoding=mulaw&sample_rate=24000",
                "Bad Request",
                "8000, 16000 for mulaw",
            ),
            (
                "model=flux-haley-en&container=wav",
                "Bad Request",
                "batch-only",
            ),
            (
                "model=flux-haley-en&colour=red",
                "Bad Request",
                "\"colour\"",
            ),
        ] {
            let e = SpeakOptions::from_query(query).unwrap_err();
            assert_eq!(e.code, code, "{query}");
            assert!(e.to_string().contains(names), "{query}: {e}");
        }
    }
}
