//! The carriers' media-stream messages, pure: what Twilio and Telnyx send (parsed into one
//! [`FromCarrier`] shape) and what we send back to each. Field names follow the carriers' own
//! media-stream documentation (docs/telephony.md); the carrier is told apart from the `start`
//! message.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};

/// Which carrier a stream comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Twilio Media Streams (`<Connect><Stream>`).
    Twilio,
    /// Telnyx media streaming (bidirectional RTP mode).
    Telnyx,
}

impl Carrier {
    /// The carrier's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Carrier::Twilio => "twilio",
            Carrier::Telnyx => "telnyx",
        }
    }
}

/// The `start` of a stream. Its `Debug` shows the parameters' names, not their values (the
/// caller's number is among them).
#[derive(Clone, PartialEq)]
pub struct StreamStart {
    /// The carrier, told from the fields present.
    pub carrier: Carrier,
    /// Twilio `streamSid` or Telnyx `stream_id`: where our outbound messages go.
    pub stream_id: String,
    /// Twilio `callSid` or Telnyx `call_control_id`.
    pub call_id: String,
    /// Twilio `accountSid` (the account a transfer is asked of); `None` for Telnyx.
    pub account_id: Option<String>,
    /// The audio encoding as the carrier names it (`audio/x-mulaw`, `PCMU`).
    pub encoding: String,
    /// Sample rate of the call audio.
    pub sample_rate: u32,
    /// Channels of the call audio.
    pub channels: u32,
    /// Parameters the call was started with (Twilio `customParameters`, Telnyx
    /// `client_state`), for the application; never logged.
    pub parameters: BTreeMap<String, String>,
}

impl std::fmt::Debug for StreamStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamStart")
            .field("carrier", &self.carrier)
            .field("stream_id", &self.stream_id)
            .field("call_id", &self.call_id)
            .field("account_id", &self.account_id)
            .field("encoding", &self.encoding)
            .field("sample_rate", &self.sample_rate)
            .field("channels", &self.channels)
            .field("parameters", &self.parameters.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl StreamStart {
    /// Whether the call audio is what this endpoint takes: G.711 mu-law, 8 kHz, mono.
    pub fn is_mulaw_8k(&self) -> bool {
        matches!(self.encoding.as_str(), "audio/x-mulaw" | "PCMU" | "pcmu")
            && self.sample_rate == 8000
            && self.channels == 1
    }
}

/// One message from a carrier.
#[derive(Debug, Clone, PartialEq)]
pub enum FromCarrier {
    /// The socket is open (sent before `start`).
    Connected,
    /// The stream starts.
    Start(StreamStart),
    /// 20 ms of the caller's audio, still mu-law.
    Media {
        /// The carrier's message sequence number, when given.
        sequence: Option<u64>,
        /// The media chunk number, when given.
        chunk: Option<u64>,
        /// Milliseconds since the stream started, when given.
        timestamp_ms: Option<u64>,
        /// The audio bytes (mu-law).
        audio: Vec<u8>,
    },
    /// A mark we sent came back: the audio queued before it has played (or was cleared).
    Mark {
        /// The name we gave it.
        name: String,
    },
    /// The caller pressed a key.
    Dtmf {
        /// The digit (`0`-`9`, `*`, `#`, `A`-`D`).
        digit: String,
    },
    /// The carrier reports an error (Telnyx).
    Error {
        /// What it said.
        detail: String,
    },
    /// The call's stream ended.
    Stop,
    /// An event this endpoint does not use.
    Other(String),
}

/// Why a carrier message was not understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CarrierError {
    /// Not JSON or no `event`.
    #[error("not a media-stream message: {0}")]
    Malformed(String),
    /// A known event missing a field it needs.
    #[error("{event} without {field}")]
    Missing {
        /// The event.
        event: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A `media` payload that is not base64.
    #[error("media payload is not base64: {0}")]
    Base64(String),
    /// A `start` from neither Twilio nor Telnyx.
    #[error(
        "a start message from an unknown carrier (no streamSid/callSid or stream_id/call_control_id)"
    )]
    UnknownCarrier,
}

/// A number the carriers send as a string (`"sequenceNumber": "3"`) or as a number.
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A `media` or `mark` message read in place: a call's most frequent messages (fifty media a
/// second, a mark per chunk of agent audio), so their strings are borrowed rather than built
/// into a [`Value`]. Any other message, or one this shape does not fit (an escaped string, a
/// number of another type), takes the general path.
#[derive(serde::Deserialize)]
struct BorrowedMessage<'a> {
    event: &'a str,
    #[serde(
        rename = "sequenceNumber",
        default,
        deserialize_with = "carrier_number"
    )]
    sequence_number_twilio: Option<u64>,
    #[serde(
        rename = "sequence_number",
        default,
        deserialize_with = "carrier_number"
    )]
    sequence_number_telnyx: Option<u64>,
    #[serde(borrow)]
    media: Option<BorrowedMediaBody<'a>>,
    #[serde(borrow)]
    mark: Option<BorrowedMark<'a>>,
}

#[derive(serde::Deserialize)]
struct BorrowedMark<'a> {
    name: &'a str,
}

#[derive(serde::Deserialize)]
struct BorrowedMediaBody<'a> {
    payload: &'a str,
    #[serde(default)]
    track: Option<&'a str>,
    #[serde(default, deserialize_with = "carrier_number")]
    chunk: Option<u64>,
    #[serde(default, deserialize_with = "carrier_number")]
    timestamp: Option<u64>,
}

/// [`number`] for the borrowed shape: a string of digits or a whole number; anything else is
/// refused here so the general path decides.
fn carrier_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    struct Digits;
    impl serde::de::Visitor<'_> for Digits {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number, or one as a string")
        }
        fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }
        fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
            Ok(s.parse().ok())
        }
    }
    deserializer.deserialize_any(Digits)
}

/// What a media message of the agent's own track is reported as.
const OUTBOUND_MEDIA: &str = "media of the outbound track";

/// Whether a media message carries the call's outbound audio (the agent, as the carrier plays
/// it), sent when a stream was opened for both tracks: it must never reach speech to text as the
/// caller's voice.
fn is_outbound(track: Option<&str>) -> bool {
    matches!(track, Some("outbound" | "outbound_track"))
}

impl FromCarrier {
    /// Parses one text message of either carrier.
    ///
    /// # Errors
    /// [`CarrierError`] naming what was wrong.
    pub fn parse(message: &str) -> Result<Self, CarrierError> {
        match serde_json::from_str(message) {
            Ok(BorrowedMessage {
                event: "media",
                sequence_number_twilio,
                sequence_number_telnyx,
                media: Some(media),
                ..
            }) => {
                if is_outbound(media.track) {
                    return Ok(FromCarrier::Other(OUTBOUND_MEDIA.into()));
                }
                let audio = base64::engine::general_purpose::STANDARD
                    .decode(media.payload)
                    .map_err(|e| CarrierError::Base64(e.to_string()))?;
                return Ok(FromCarrier::Media {
                    sequence: sequence_number_twilio.or(sequence_number_telnyx),
                    chunk: media.chunk,
                    timestamp_ms: media.timestamp,
                    audio,
                });
            }
            Ok(BorrowedMessage {
                event: "mark",
                mark: Some(mark),
                ..
            }) => {
                return Ok(FromCarrier::Mark {
                    name: mark.name.to_owned(),
                });
            }
            _ => {}
        }
        let value: Value =
            serde_json::from_str(message).map_err(|e| CarrierError::Malformed(e.to_string()))?;
        let event = value["event"]
            .as_str()
            .ok_or_else(|| CarrierError::Malformed("no \"event\"".into()))?;
        Ok(match event {
            "connected" => FromCarrier::Connected,
            "start" => FromCarrier::Start(start(&value)?),
            "media" if is_outbound(value["media"]["track"].as_str()) => {
                FromCarrier::Other(OUTBOUND_MEDIA.into())
            }
            "media" => {
                let media = &value["media"];
                let payload = media["payload"].as_str().ok_or(CarrierError::Missing {
                    event: "media",
                    field: "media.payload",
                })?;
                let audio = base64::engine::general_purpose::STANDARD
                    .decode(payload)
                    .map_err(|e| CarrierError::Base64(e.to_string()))?;
                FromCarrier::Media {
                    sequence: number(&value["sequenceNumber"])
                        .or_else(|| number(&value["sequence_number"])),
                    chunk: number(&media["chunk"]),
                    timestamp_ms: number(&media["timestamp"]),
                    audio,
                }
            }
            "mark" => FromCarrier::Mark {
                name: value["mark"]["name"]
                    .as_str()
                    .ok_or(CarrierError::Missing {
                        event: "mark",
                        field: "mark.name",
                    })?
                    .to_owned(),
            },
            "dtmf" => FromCarrier::Dtmf {
                digit: text(&value["dtmf"]["digit"]).ok_or(CarrierError::Missing {
                    event: "dtmf",
                    field: "dtmf.digit",
                })?,
            },
            "error" => FromCarrier::Error {
                detail: value
                    .get("payload")
                    .map_or_else(|| value.to_string(), Value::to_string),
            },
            "stop" => FromCarrier::Stop,
            other => FromCarrier::Other(other.to_owned()),
        })
    }
}

impl FromCarrier {
    /// The message as `carrier` sends it on stream `stream_id` (what a test or load caller
    /// plays): [`FromCarrier::parse`] reads it back the same.
    pub fn to_json(&self, carrier: Carrier, stream_id: &str) -> String {
        let twilio = carrier == Carrier::Twilio;
        let (stream_key, sequence_key) = if twilio {
            ("streamSid", "sequenceNumber")
        } else {
            ("stream_id", "sequence_number")
        };
        let mut message = match self {
            FromCarrier::Connected => json!({"event": "connected", "version": "1.0.0"}),
            FromCarrier::Start(start) if twilio => json!({
                "event": "start",
                "start": {
                    "streamSid": start.stream_id,
                    "callSid": start.call_id,
                    "accountSid": start.account_id,
                    "tracks": ["inbound"],
                    "customParameters": start.parameters,
                    "mediaFormat": {
                        "encoding": start.encoding,
                        "sampleRate": start.sample_rate,
                        "channels": start.channels,
                    },
                },
            }),
            FromCarrier::Start(start) => {
                let mut body = json!({
                    "call_control_id": start.call_id,
                    "media_format": {
                        "encoding": start.encoding,
                        "sample_rate": start.sample_rate,
                        "channels": start.channels,
                    },
                });
                if let Some(state) = start.parameters.get("client_state") {
                    body["client_state"] = json!(state);
                }
                json!({"event": "start", "start": body})
            }
            FromCarrier::Media {
                sequence,
                chunk,
                timestamp_ms,
                audio,
            } => {
                // Written straight into one string, as a carrier's media messages are many.
                let mut message = String::from(r#"{"event":"media""#);
                if let Some(n) = sequence {
                    message.push_str(&format!(r#","{sequence_key}":"{n}""#));
                }
                message.push_str(&format!(
                    r#","{stream_key}":{},"media":{{"track":"inbound""#,
                    Value::String(stream_id.to_owned())
                ));
                if let Some(n) = chunk {
                    message.push_str(&format!(r#","chunk":"{n}""#));
                }
                if let Some(n) = timestamp_ms {
                    message.push_str(&format!(r#","timestamp":"{n}""#));
                }
                message.push_str(r#","payload":""#);
                base64::engine::general_purpose::STANDARD.encode_string(audio, &mut message);
                message.push_str("\"}}");
                return message;
            }
            FromCarrier::Mark { name } => json!({"event": "mark", "mark": {"name": name}}),
            FromCarrier::Dtmf { digit } => json!({"event": "dtmf", "dtmf": {"digit": digit}}),
            FromCarrier::Error { detail } => json!({
                "event": "error",
                "payload": serde_json::from_str::<Value>(detail)
                    .unwrap_or_else(|_| Value::String(detail.clone())),
            }),
            FromCarrier::Stop => json!({"event": "stop", "stop": {}}),
            FromCarrier::Other(event) => json!({"event": event}),
        };
        message[stream_key] = json!(stream_id);
        message.to_string()
    }
}

fn start(value: &Value) -> Result<StreamStart, CarrierError> {
    let start = &value["start"];
    let string_map = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| text(v).map(|t| (k.clone(), t)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (carrier, stream_id, call_id, format, parameters) = if let (Some(stream), Some(call)) =
        (start["streamSid"].as_str(), start["callSid"].as_str())
    {
        (
            Carrier::Twilio,
            stream,
            call,
            &start["mediaFormat"],
            string_map(&start["customParameters"]),
        )
    } else if let (Some(stream), Some(call)) = (
        value["stream_id"]
            .as_str()
            .or_else(|| start["stream_id"].as_str()),
        start["call_control_id"].as_str(),
    ) {
        let mut parameters = BTreeMap::new();
        if let Some(state) = start["client_state"].as_str() {
            parameters.insert("client_state".to_owned(), state.to_owned());
        }
        (
            Carrier::Telnyx,
            stream,
            call,
            &start["media_format"],
            parameters,
        )
    } else {
        return Err(CarrierError::UnknownCarrier);
    };
    let rate = number(&format["sampleRate"]).or_else(|| number(&format["sample_rate"]));
    Ok(StreamStart {
        carrier,
        stream_id: stream_id.to_owned(),
        call_id: call_id.to_owned(),
        account_id: start["accountSid"].as_str().map(str::to_owned),
        encoding: format["encoding"].as_str().unwrap_or_default().to_owned(),
        sample_rate: rate.unwrap_or(0) as u32,
        channels: number(&format["channels"]).unwrap_or(1) as u32,
        parameters,
    })
}

/// Messages to a carrier, in its own shape.
#[derive(Debug, Clone)]
pub struct ToCarrier {
    carrier: Carrier,
    stream_id: String,
    /// What ends a media message: the stream's id for Twilio (as a JSON string), then `}`.
    media_tail: String,
}

impl ToCarrier {
    /// Messages for the stream `start` opened.
    pub fn new(start: &StreamStart) -> Self {
        let media_tail = match start.carrier {
            Carrier::Twilio => format!(
                ",\"streamSid\":{}}}",
                Value::String(start.stream_id.clone())
            ),
            Carrier::Telnyx => "}".to_owned(),
        };
        Self {
            carrier: start.carrier,
            stream_id: start.stream_id.clone(),
            media_tail,
        }
    }

    fn with_stream(&self, mut message: Value) -> String {
        if self.carrier == Carrier::Twilio {
            message["streamSid"] = Value::String(self.stream_id.clone());
        }
        message.to_string()
    }

    /// Audio to play (mu-law bytes). Written straight into one string: base64 needs no JSON
    /// escaping, and this is the message a call sends most.
    pub fn media(&self, mulaw: &[u8]) -> String {
        const HEAD: &str = r#"{"event":"media","media":{"payload":""#;
        let mut message = String::with_capacity(
            HEAD.len() + mulaw.len().div_ceil(3) * 4 + 2 + self.media_tail.len(),
        );
        message.push_str(HEAD);
        base64::engine::general_purpose::STANDARD.encode_string(mulaw, &mut message);
        message.push_str("\"}");
        message.push_str(&self.media_tail);
        message
    }

    /// A mark the carrier echoes once the audio sent before it has played. Written straight
    /// into one string like [`ToCarrier::media`]: one follows every media message.
    pub fn mark(&self, name: &str) -> String {
        let name = Value::String(name.to_owned());
        format!(
            r#"{{"event":"mark","mark":{{"name":{name}}}{}"#,
            self.media_tail
        )
    }

    /// Drop every audio queued and not yet played.
    pub fn clear(&self) -> String {
        self.with_stream(json!({"event": "clear"}))
    }
}

/// A message to a carrier, as the carrier reads it ([`ToCarrier::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierCommand {
    /// Audio to play (mu-law bytes).
    Media(Vec<u8>),
    /// Echo this name once the audio before it has played.
    Mark(String),
    /// Drop the audio queued and not yet played.
    Clear,
}

impl ToCarrier {
    /// Reads a message [`ToCarrier`] wrote, as the carrier would (a test or load caller).
    ///
    /// # Errors
    /// [`CarrierError`] naming what was wrong: not one of ours, a field missing, a payload
    /// that is not base64.
    pub fn parse(message: &str) -> Result<CarrierCommand, CarrierError> {
        let value: Value =
            serde_json::from_str(message).map_err(|e| CarrierError::Malformed(e.to_string()))?;
        match value["event"].as_str() {
            Some("media") => {
                let payload = value["media"]["payload"]
                    .as_str()
                    .ok_or(CarrierError::Missing {
                        event: "media",
                        field: "media.payload",
                    })?;
                base64::engine::general_purpose::STANDARD
                    .decode(payload)
                    .map(CarrierCommand::Media)
                    .map_err(|e| CarrierError::Base64(e.to_string()))
            }
            Some("mark") => value["mark"]["name"]
                .as_str()
                .map(|name| CarrierCommand::Mark(name.to_owned()))
                .ok_or(CarrierError::Missing {
                    event: "mark",
                    field: "mark.name",
                }),
            Some("clear") => Ok(CarrierCommand::Clear),
            Some(other) => Err(CarrierError::Malformed(format!(
                "event {other:?}; a carrier is sent media, mark and clear"
            ))),
            None => Err(CarrierError::Malformed("no \"event\"".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shapes from the carriers' documentation (values invented).
    const TWILIO_START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC0","streamSid":"MZ1","callSid":"CA2","tracks":["inbound"],"customParameters":{"caller":"+15550100"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ1"}"#;
    const TELNYX_START: &str = r#"{"event":"start","sequence_number":"1","start":{"user_id":"u","call_control_id":"v3:abc","client_state":"aGk=","media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}},"stream_id":"s-9"}"#;

    #[test]
    fn what_a_carrier_sends_is_written_and_read_back_the_same() {
        for carrier in [Carrier::Twilio, Carrier::Telnyx] {
            let parameters = match carrier {
                Carrier::Twilio => [("caller".to_owned(), "+15550100".to_owned())].into(),
                Carrier::Telnyx => [("client_state".to_owned(), "aGk=".to_owned())].into(),
            };
            let messages = [
                FromCarrier::Connected,
                FromCarrier::Start(StreamStart {
                    carrier,
                    stream_id: "s-1".into(),
                    call_id: "c-2".into(),
                    account_id: (carrier == Carrier::Twilio).then(|| "AC1".to_owned()),
                    encoding: "audio/x-mulaw".into(),
                    sample_rate: 8000,
                    channels: 1,
                    parameters,
                }),
                FromCarrier::Media {
                    sequence: Some(7),
                    chunk: Some(5),
                    timestamp_ms: Some(100),
                    audio: vec![0xff, 0x7f, 0x00, 0x80],
                },
                FromCarrier::Media {
                    sequence: None,
                    chunk: None,
                    timestamp_ms: None,
                    audio: vec![1, 2, 3],
                },
                FromCarrier::Mark {
                    name: "tf-\"640\"".into(),
                },
                FromCarrier::Dtmf { digit: "#".into() },
                FromCarrier::Error {
                    detail: r#"{"code":100003,"title":"malformed frame"}"#.into(),
                },
                FromCarrier::Stop,
                FromCarrier::Other("custom".into()),
            ];
            for message in messages {
                let text = message.to_json(carrier, "s-1");
                assert_eq!(FromCarrier::parse(&text), Ok(message), "{text}");
            }
        }
    }

    #[test]
    fn what_is_sent_to_a_carrier_reads_back_as_the_carrier_takes_it() {
        for start in [TWILIO_START, TELNYX_START] {
            let FromCarrier::Start(start) = FromCarrier::parse(start).unwrap() else {
                panic!()
            };
            let out = ToCarrier::new(&start);
            let audio = vec![0xffu8, 0x00, 0x7e];
            assert_eq!(
                ToCarrier::parse(&out.media(&audio)),
                Ok(CarrierCommand::Media(audio))
            );
            assert_eq!(
                ToCarrier::parse(&out.mark("tf-1280")),
                Ok(CarrierCommand::Mark("tf-1280".into()))
            );
            assert_eq!(ToCarrier::parse(&out.clear()), Ok(CarrierCommand::Clear));
        }
        assert_eq!(
            ToCarrier::parse(r#"{"event":"start"}"#),
            Err(CarrierError::Malformed(
                "event \"start\"; a carrier is sent media, mark and clear".into()
            ))
        );
    }

    #[test]
    fn starts_tell_the_carrier() {
        let FromCarrier::Start(twilio) = FromCarrier::parse(TWILIO_START).unwrap() else {
            panic!()
        };
        assert_eq!(twilio.carrier, Carrier::Twilio);
        assert_eq!(
            (twilio.stream_id.as_str(), twilio.call_id.as_str()),
            ("MZ1", "CA2")
        );
        assert!(twilio.is_mulaw_8k());
        assert_eq!(twilio.parameters["caller"], "+15550100");
        let FromCarrier::Start(telnyx) = FromCarrier::parse(TELNYX_START).unwrap() else {
            panic!()
        };
        assert_eq!(telnyx.carrier, Carrier::Telnyx);
        assert_eq!(
            (telnyx.stream_id.as_str(), telnyx.call_id.as_str()),
            ("s-9", "v3:abc")
        );
        assert!(telnyx.is_mulaw_8k());
        assert_eq!(telnyx.parameters["client_state"], "aGk=");
        let shown = format!("{twilio:?}");
        assert!(
            shown.contains("\"caller\"") && shown.contains("CA2"),
            "{shown}"
        );
        assert!(!shown.contains("+15550100"), "the caller's number: {shown}");
    }

    #[test]
    fn media_marks_dtmf_and_stop_parse_for_both() {
        let twilio = r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"2","timestamp":"40","payload":"//8A"},"streamSid":"MZ1"}"#;
        assert_eq!(
            FromCarrier::parse(twilio).unwrap(),
            FromCarrier::Media {
                sequence: Some(3),
                chunk: Some(2),
                timestamp_ms: Some(40),
                audio: vec![0xff, 0xff, 0x00]
            }
        );
        let telnyx = r#"{"event":"media","sequence_number":"4","media":{"track":"inbound","chunk":"3","timestamp":"60","payload":"fw=="},"stream_id":"s-9"}"#;
        let FromCarrier::Media {
            sequence, audio, ..
        } = FromCarrier::parse(telnyx).unwrap()
        else {
            panic!()
        };
        assert_eq!((sequence, audio), (Some(4), vec![0x7f]));
        // Shapes the borrowed reading does not take (an escaped slash, numbers as numbers or
        // of another type) read the same through the general path.
        let escaped = r#"{"event":"media","sequenceNumber":3,"media":{"chunk":2.5,"timestamp":40,"payload":"\/\/8A"}}"#;
        assert_eq!(
            FromCarrier::parse(escaped).unwrap(),
            FromCarrier::Media {
                sequence: Some(3),
                chunk: None,
                timestamp_ms: Some(40),
                audio: vec![0xff, 0xff, 0x00]
            }
        );
        assert_eq!(
            FromCarrier::parse(r#"{"event":"mark","sequenceNumber":"5","streamSid":"MZ1","mark":{"name":"tf-800"}}"#).unwrap(),
            FromCarrier::Mark { name: "tf-800".into() }
        );
        assert_eq!(
            FromCarrier::parse(r#"{"event":"mark","mark":{"name":"tf-\u0038"}}"#).unwrap(),
            FromCarrier::Mark {
                name: "tf-8".into()
            },
            "an escaped name reads the same through the general path"
        );
        assert_eq!(
            FromCarrier::parse(r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"6","dtmf":{"track":"inbound_track","digit":"7"}}"#).unwrap(),
            FromCarrier::Dtmf { digit: "7".into() }
        );
        assert_eq!(
            FromCarrier::parse(r#"{"event":"stop","sequenceNumber":"7","streamSid":"MZ1","stop":{"accountSid":"AC0","callSid":"CA2"}}"#).unwrap(),
            FromCarrier::Stop
        );
        assert_eq!(
            FromCarrier::parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#)
                .unwrap(),
            FromCarrier::Connected
        );
    }

    #[test]
    fn media_of_the_outbound_track_is_never_the_callers_audio() {
        for message in [
            r#"{"event":"media","sequenceNumber":"3","media":{"track":"outbound","chunk":"2","timestamp":"40","payload":"//8A"},"streamSid":"MZ1"}"#,
            r#"{"event":"media","sequence_number":"4","media":{"track":"outbound_track","chunk":"3","timestamp":"60","payload":"fw=="},"stream_id":"s-9"}"#,
            r#"{"event":"media","sequenceNumber":3,"media":{"track":"outbound","chunk":2.5,"payload":"\/\/8A"}}"#,
        ] {
            assert_eq!(
                FromCarrier::parse(message).unwrap(),
                FromCarrier::Other("media of the outbound track".into()),
                "{message}"
            );
        }
        for track in ["inbound", "inbound_track"] {
            let message =
                format!(r#"{{"event":"media","media":{{"track":"{track}","payload":"fw=="}}}}"#);
            assert!(matches!(
                FromCarrier::parse(&message).unwrap(),
                FromCarrier::Media { .. }
            ));
        }
    }

    #[test]
    fn bad_messages_are_named() {
        let e = |m: &str| FromCarrier::parse(m).unwrap_err().to_string();
        assert!(e("nope").starts_with("not a media-stream message"));
        assert_eq!(
            e(r#"{"no":"event"}"#),
            "not a media-stream message: no \"event\""
        );
        assert_eq!(
            e(r#"{"event":"media","media":{}}"#),
            "media without media.payload"
        );
        assert!(
            e(r#"{"event":"media","media":{"payload":"%%%"}}"#)
                .starts_with("media payload is not base64")
        );
        assert_eq!(e(r#"{"event":"mark","mark":{}}"#), "mark without mark.name");
        assert!(e(r#"{"event":"start","start":{}}"#).contains("unknown carrier"));
        assert_eq!(
            FromCarrier::parse(r#"{"event":"bogus"}"#).unwrap(),
            FromCarrier::Other("bogus".into())
        );
    }

    #[test]
    fn outbound_messages_follow_each_carrier() {
        let FromCarrier::Start(twilio) = FromCarrier::parse(TWILIO_START).unwrap() else {
            panic!()
        };
        let out = ToCarrier::new(&twilio);
        let media: Value = serde_json::from_str(&out.media(&[0xff, 0xff, 0x00])).unwrap();
        assert_eq!(
            media,
            json!({"event":"media","streamSid":"MZ1","media":{"payload":"//8A"}})
        );
        let clear: Value = serde_json::from_str(&out.clear()).unwrap();
        assert_eq!(clear, json!({"event":"clear","streamSid":"MZ1"}));
        let odd = ToCarrier::new(&StreamStart {
            stream_id: "MZ\"1\\".into(),
            ..twilio.clone()
        });
        let media: Value = serde_json::from_str(&odd.media(&[1, 2, 3, 4])).unwrap();
        assert_eq!(
            media,
            json!({"event":"media","streamSid":"MZ\"1\\","media":{"payload":"AQIDBA=="}}),
            "a stream id is escaped"
        );
        let FromCarrier::Start(telnyx) = FromCarrier::parse(TELNYX_START).unwrap() else {
            panic!()
        };
        let out = ToCarrier::new(&telnyx);
        let mark: Value = serde_json::from_str(&out.mark("tf-1")).unwrap();
        assert_eq!(mark, json!({"event":"mark","mark":{"name":"tf-1"}}));
        let mark: Value = serde_json::from_str(&odd.mark("a \"b\"")).unwrap();
        assert_eq!(
            mark,
            json!({"event":"mark","streamSid":"MZ\"1\\","mark":{"name":"a \"b\""}}),
            "a mark's name is escaped"
        );
        let media: Value = serde_json::from_str(&out.media(&[0xff])).unwrap();
        assert_eq!(media, json!({"event":"media","media":{"payload":"/w=="}}));
        assert_eq!(
            serde_json::from_str::<Value>(&out.clear()).unwrap(),
            json!({"event":"clear"})
        );
    }
}
