//! The browser session protocol (version 1), as types: what a client may send, what the server
//! sends, and the close codes. Pure: no I/O, so every malformed input is tested here.
//! `docs/protocol.md` is the prose version of this module.

use serde::{Deserialize, Serialize};

use crate::engine::EngineEvent;
use crate::report::TurnReport;

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Input sample rates a client may declare (PCM16 mono), the ones Flux accepts for linear16.
pub const INPUT_SAMPLE_RATES: [u32; 5] = [8000, 16000, 24000, 44100, 48000];

/// A text message from the client: parsed by the server ([`FromClient::parse`]), written by a
/// client ([`FromClient::to_json`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromClient {
    /// The first message: what the client will send.
    Start(Start),
    /// How much agent audio the client has played.
    Played(Played),
    /// How long the client's player holds agent audio before playing it (WebRTC, where the
    /// server counts what it sent and the browser only knows its jitter buffer).
    Playout(Playout),
    /// The user is done: finish the turn in progress, then end.
    Stop,
}

/// `{"type": "start", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// The protocol version the client speaks (only 1 exists).
    pub version: u32,
    /// Sample rate of the client's PCM16 mono audio.
    pub sample_rate: u32,
}

/// `{"type": "played", "samples": N, "buffered": M}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Played {
    /// Agent audio samples (at the output rate) played since the session started.
    pub samples: u64,
    /// Samples received and not yet played when `samples` was counted; the client goes on
    /// playing them unless told to clear.
    #[serde(default)]
    pub buffered: u64,
}

impl Played {
    /// Reads a sound `played` message straight from `text`: ten a second per session, so they
    /// skip the JSON tree the general path builds to name what is wrong with a bad message.
    fn parse_sound(text: &str) -> Option<Played> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Message<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
            samples: u64,
            #[serde(default)]
            buffered: u64,
        }
        let message: Message<'_> = serde_json::from_str(text).ok()?;
        (message.kind == "played").then_some(Played {
            samples: message.samples,
            buffered: message.buffered,
        })
    }
}

/// `{"type": "playout", "delay_ms": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playout {
    /// Milliseconds from a packet's arrival to its playing, plus half the round trip: the
    /// browser's `jitterBufferDelay / jitterBufferEmittedCount` and its candidate pair's
    /// `currentRoundTripTime / 2`, from `getStats`.
    pub delay_ms: u32,
}

impl Playout {
    /// The largest delay taken; a larger report is read as this.
    pub const MAX_DELAY_MS: u32 = 2000;
}

/// Why a client message was refused: the error message names the field and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON, or not an object with a string `type`.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A `type` this version does not know.
    #[error("unknown message type {0:?}; this server knows start, played, playout and stop")]
    UnknownType(String),
    /// A known message with a missing, unknown or wrong field.
    #[error("invalid {kind} message: {detail}")]
    Invalid {
        /// The message type.
        kind: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A `start` asking for something this server does not do.
    #[error("unsupported start: {0}")]
    Unsupported(String),
}

impl ProtocolError {
    /// The machine-readable code sent in the `error` message.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::Malformed(_) => "malformed",
            ProtocolError::UnknownType(_) => "unknown_type",
            ProtocolError::Invalid { .. } => "invalid",
            ProtocolError::Unsupported(_) => "unsupported",
        }
    }
}

impl FromClient {
    /// The JSON text of this message, as a client sends it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client messages always serialize")
    }

    /// Parses one text message.
    ///
    /// # Errors
    /// [`ProtocolError`] naming what was wrong: not JSON, no `type`, an unknown type, or a
    /// field missing, unknown or out of range.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        if let Some(played) = Played::parse_sound(text) {
            return Ok(FromClient::Played(played));
        }
        let mut value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ProtocolError::Malformed(format!("not JSON ({e})")))?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| ProtocolError::Malformed("expected a JSON object".into()))?;
        let kind = match object.remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            Some(_) => return Err(ProtocolError::Malformed("\"type\" must be a string".into())),
            None => return Err(ProtocolError::Malformed("missing \"type\"".into())),
        };
        fn fields<T: serde::de::DeserializeOwned>(
            kind: &'static str,
            value: serde_json::Value,
        ) -> Result<T, ProtocolError> {
            serde_json::from_value(value).map_err(|e| ProtocolError::Invalid {
                kind,
                detail: e.to_string(),
            })
        }
        match kind.as_str() {
            "start" => {
                let start: Start = fields("start", value)?;
                if start.version != PROTOCOL_VERSION {
                    return Err(ProtocolError::Unsupported(format!(
                        "version {}; this server speaks version {PROTOCOL_VERSION}",
                        start.version
                    )));
                }
                if !INPUT_SAMPLE_RATES.contains(&start.sample_rate) {
                    return Err(ProtocolError::Unsupported(format!(
                        "sample_rate {}; allowed: {INPUT_SAMPLE_RATES:?}",
                        start.sample_rate
                    )));
                }
                Ok(FromClient::Start(start))
            }
            "played" => Ok(FromClient::Played(fields("played", value)?)),
            "playout" => Ok(FromClient::Playout(fields("playout", value)?)),
            "stop" => {
                if !object.is_empty() {
                    return Err(ProtocolError::Invalid {
                        kind: "stop",
                        detail: format!(
                            "unknown field(s): {}",
                            object.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                Ok(FromClient::Stop)
            }
            _ => Err(ProtocolError::UnknownType(kind)),
        }
    }
}

/// `{"type": "ready", ...}`: the session is running; audio may flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Protocol version.
    pub version: u32,
    /// The session's id (also in the server's logs).
    pub session: String,
    /// Sample rate of the client's audio, as accepted.
    pub input_sample_rate: u32,
    /// Sample rate of the agent audio the server sends.
    pub output_sample_rate: u32,
    /// Length of each agent audio frame.
    pub frame_ms: u32,
}

/// `{"type": "error", ...}`: something went wrong; a close follows unless `fatal` is false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Machine-readable code.
    pub code: String,
    /// What was wrong and what is allowed.
    pub message: String,
    /// Whether the session ends.
    pub fatal: bool,
}

/// `{"type": "end", ...}`: the session is over; the socket closes next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// Why (`stopped`, `client_closed`, `stt_failed`, `server_shutdown`, ...).
    pub reason: String,
    /// User turns in the session.
    pub turns: u64,
}

/// A text message from the server. What [`ToClient::to_json`] writes, [`ToClient::parse`]
/// reads back the same.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToClient {
    /// The session is running; audio may flow.
    Ready(Ready),
    /// Drop every agent audio sample received and not yet played, now.
    Clear,
    /// A user turn's figures, once its reply ended.
    Turn(Box<TurnReport>),
    /// Something went wrong; a close follows unless `fatal` is false.
    Error(Failure),
    /// The session is over; the socket closes next.
    End(End),
    /// A conversation event (its own `type`: `user_transcript`, `agent_sentence`, ...).
    #[serde(untagged)]
    Event(EngineEvent),
}

impl ToClient {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }

    /// Reads a message the server sent; a bad one is named by its own fields.
    ///
    /// # Errors
    /// The text is not one of the server's messages (the error names what does not fit).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        let Kind { kind } = serde_json::from_str(text)?;
        Ok(match kind.as_ref() {
            "ready" => ToClient::Ready(serde_json::from_str(text)?),
            "clear" => ToClient::Clear,
            "turn" => ToClient::Turn(serde_json::from_str(text)?),
            "error" => ToClient::Error(serde_json::from_str(text)?),
            "end" => ToClient::End(serde_json::from_str(text)?),
            _ => ToClient::Event(serde_json::from_str(text)?),
        })
    }
}

/// WebSocket close codes the server uses (RFC 6455 section 7.4.1).
pub mod close_code {
    /// The session ended normally.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A message of a type this endpoint does not take (binary before `start`).
    pub const UNSUPPORTED: u16 = 1003;
    /// A message that is not valid for the protocol (malformed JSON, odd-length audio).
    pub const INVALID: u16 = 1007;
    /// A limit was broken: audio too fast, idle, not allowed.
    pub const POLICY: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed (speech to text unavailable).
    pub const INTERNAL: u16 = 1011;
    /// The server is full; retry later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_written_are_read_back_the_same() {
        let messages = [
            FromClient::Start(Start {
                version: PROTOCOL_VERSION,
                sample_rate: 16000,
            }),
            FromClient::Played(Played {
                samples: 16000,
                buffered: 320,
            }),
            FromClient::Playout(Playout { delay_ms: 85 }),
            FromClient::Stop,
        ];
        for message in messages {
            let text = message.to_json();
            assert_eq!(FromClient::parse(&text), Ok(message), "{text}");
        }
        assert_eq!(FromClient::Stop.to_json(), r#"{"type":"stop"}"#);
    }

    #[test]
    fn a_start_with_a_supported_rate_parses() {
        assert_eq!(
            FromClient::parse(r#"{"type":"start","version":1,"sample_rate":16000}"#),
            Ok(FromClient::Start(Start {
                version: 1,
                sample_rate: 16000
            }))
        );
    }

    #[test]
    fn every_malformed_message_is_named() {
        let cases = [
            ("not json", "malformed message: not JSON"),
            ("[1,2]", "malformed message: expected a JSON object"),
            (
                r#"{"sample_rate":1}"#,
                "malformed message: missing \"type\"",
            ),
            (r#"{"type":7}"#, "\"type\" must be a string"),
            (
                r#"{"type":"hello"}"#,
                "unknown message type \"hello\"; this server knows start, played, playout and stop",
            ),
            (
                r#"{"type":"start","version":1}"#,
                "invalid start message: missing field `sample_rate`",
            ),
            (
                r#"{"type":"start","version":1,"sample_rate":16000,"codec":"opus"}"#,
                "invalid start message: unknown field `codec`",
            ),
            (
                r#"{"type":"start","version":2,"sample_rate":16000}"#,
                "unsupported start: version 2; this server speaks version 1",
            ),
            (
                r#"{"type":"start","version":1,"sample_rate":11025}"#,
                "unsupported start: sample_rate 11025; allowed: [8000, 16000, 24000, 44100, 48000]",
            ),
            (
                r#"{"type":"played","samples":-4}"#,
                "invalid played message: invalid value: integer `-4`",
            ),
            (
                r#"{"type":"playout","delay_ms":"soon"}"#,
                "invalid playout message: invalid type: string \"soon\"",
            ),
            (
                r#"{"type":"stop","now":true}"#,
                "invalid stop message: unknown field(s): now",
            ),
        ];
        for (input, expected) in cases {
            let error = FromClient::parse(input).unwrap_err().to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn played_defaults_buffered_to_zero() {
        assert_eq!(
            FromClient::parse(r#"{"type":"played","samples":320}"#),
            Ok(FromClient::Played(Played {
                samples: 320,
                buffered: 0
            }))
        );
    }

    #[test]
    fn played_reads_the_same_whichever_way_it_is_read() {
        let played = |samples, buffered| Ok(FromClient::Played(Played { samples, buffered }));
        assert_eq!(
            FromClient::parse(r#"{"buffered":80,"samples":320,"type":"played"}"#),
            played(320, 80)
        );
        // A repeated field is read as JSON objects are (the last one wins), not refused.
        assert_eq!(
            FromClient::parse(r#"{"type":"played","samples":1,"samples":2}"#),
            played(2, 0)
        );
        for (input, expected) in [
            (
                r#"{"type":"played","samples":1,"extra":1}"#,
                "invalid played message: unknown field `extra`",
            ),
            (r#"{"type":"stop","samples":1}"#, "invalid stop message"),
            (r#"{"type":"Played","samples":1}"#, "unknown message type"),
        ] {
            let error = FromClient::parse(input).unwrap_err().to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn server_messages_written_are_read_back_the_same() {
        use crate::error::{BackendError, ErrorKind};
        use crate::report::TurnReport;
        let turn = TurnReport {
            index: 3,
            user_transcript: "a table for two".into(),
            speculation: crate::report::Speculation::Hit,
            lead_ms: Some(212.5),
            voice_to_voice_ms: Some(930.0),
            interrupted: true,
            breakdown: Some(crate::report::Breakdown::default()),
            assistant_heard: "For two, at".into(),
            ..TurnReport::default()
        };
        let mut failure = BackendError::new(
            "aura",
            ErrorKind::RateLimited {
                retry_after: Some(std::time::Duration::from_millis(1500)),
            },
            "slow down",
        );
        failure.status = Some(429);
        let messages = [
            ToClient::Ready(Ready {
                version: PROTOCOL_VERSION,
                session: "s-1".into(),
                input_sample_rate: 16000,
                output_sample_rate: 24000,
                frame_ms: 20,
            }),
            ToClient::Clear,
            ToClient::Turn(Box::new(turn)),
            ToClient::Error(Failure {
                code: "idle".into(),
                message: "no audio received for 15s".into(),
                fatal: true,
            }),
            ToClient::End(End {
                reason: "stopped".into(),
                turns: 4,
            }),
            ToClient::Event(EngineEvent::UserStarted {
                turn: 0,
                over_agent: true,
            }),
            ToClient::Event(EngineEvent::SpeculationCancelled {
                turn: 1,
                response: crate::engine::ResponseId(7),
                reason: crate::engine::CancelReason::TurnResumed,
            }),
            ToClient::Event(EngineEvent::ResponseEnded {
                response: crate::engine::ResponseId(8),
                heard: "We open".into(),
                interrupted: true,
                error: Some(failure),
            }),
        ];
        for message in messages {
            let text = message.to_json();
            assert_eq!(ToClient::parse(&text).unwrap(), message, "{text}");
        }
        for (odd, expected) in [
            (
                r#"{"type":"turn","index":0,"speculation":"maybe"}"#,
                "unknown variant `maybe`",
            ),
            (r#"{"type":"end","turns":2}"#, "missing field `reason`"),
            (
                r#"{"type":"agent_sentence","text":"Hi."}"#,
                "missing field `response`",
            ),
            (r#"{"type":"hello"}"#, "unknown variant `hello`"),
            (r#"{"turns":2}"#, "missing field `type`"),
        ] {
            let error = ToClient::parse(odd).unwrap_err().to_string();
            assert!(error.contains(expected), "{odd}: {error}");
        }
    }

    #[test]
    fn engine_events_keep_their_own_type() {
        let event = EngineEvent::UserTranscript {
            turn: 2,
            transcript: "book a table".into(),
        };
        assert_eq!(
            ToClient::Event(event).to_json(),
            r#"{"type":"user_transcript","turn":2,"transcript":"book a table"}"#
        );
        assert_eq!(ToClient::Clear.to_json(), r#"{"type":"clear"}"#);
    }
}
