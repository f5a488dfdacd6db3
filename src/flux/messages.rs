//! Wire types of Flux `/v2/listen`: the JSON messages in both directions.
//!
//! Shared by the client ([`crate::flux::client`]) and the emulator ([`crate::emulator`]), so
//! both sides agree on every field name by construction.
//!
//! Parsing is lenient where Flux is known to vary (the official SDKs and the service disagree on
//! some shapes): numbers are accepted as JSON numbers or numeric strings, unknown fields are
//! ignored, and unknown message `type`s, turn `event`s and `trigger`s are kept rather than
//! rejected. The client reads through a repair layer on top (`repair`,
//! [`ServerMessage::parse_repairing`]) that keeps a turn whose other fields are broken.
//! Serialization is strict: numbers are always written as numbers and every required field is
//! present, because the official Deepgram SDKs refuse messages with a missing field.
//!
//! Client messages parse strictly ([`ClientMessage::parse`]), as the real server does: a message
//! that matches none of the known shapes is an `UNPARSABLE_CLIENT_MESSAGE`.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a server message could not be understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The text frame is not JSON at all.
    #[error("server message is not valid json: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The message is JSON but has no string `type` field.
    #[error("server message has no string \"type\" field")]
    MissingType,
    /// A known message type is missing a required field or has a field of the wrong type.
    #[error("server message of type {message_type} is malformed: {source}")]
    Malformed {
        /// The `type` of the message.
        message_type: String,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
}

/// Why a client message was rejected (the emulator's view of client input).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("client message rejected: {0}")]
pub struct ClientMessageError(pub String);

pub(super) fn lenient_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| de::Error::custom("number out of range")),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| de::Error::custom(format!("expected a number, got string {s:?}"))),
        other => Err(de::Error::custom(format!("expected a number, got {other}"))),
    }
}

fn lenient_opt_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => lenient_f64(v).map(Some).map_err(de::Error::custom),
    }
}

pub(super) fn lenient_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = lenient_f64(deserializer)?;
    if value >= 0.0 && value.fract() == 0.0 && value <= u64::MAX as f64 {
        Ok(value as u64)
    } else {
        Err(de::Error::custom(format!(
            "expected a non-negative integer, got {value}"
        )))
    }
}

fn lenient_opt_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => lenient_u64(v).map(Some).map_err(de::Error::custom),
    }
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A turn event carried by `TurnInfo.event`. Open: unknown values are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TurnEvent {
    /// Periodic transcript update (~every 240 ms of audio), also between turns.
    Update,
    /// The user started a turn; the transcript is non-empty.
    StartOfTurn,
    /// The user may have finished; only sent when `eager_eot_threshold` is set.
    EagerEndOfTurn,
    /// The user kept talking after an `EagerEndOfTurn`.
    TurnResumed,
    /// The turn is over; carries a [`TurnTrigger`].
    EndOfTurn,
    /// An event this crate does not know yet.
    Unknown(String),
}

impl TurnEvent {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            TurnEvent::Update => "Update",
            TurnEvent::StartOfTurn => "StartOfTurn",
            TurnEvent::EagerEndOfTurn => "EagerEndOfTurn",
            TurnEvent::TurnResumed => "TurnResumed",
            TurnEvent::EndOfTurn => "EndOfTurn",
            TurnEvent::Unknown(s) => s,
        }
    }

    pub(super) fn from_wire(s: &str) -> Self {
        match s {
            "Update" => TurnEvent::Update,
            "StartOfTurn" => TurnEvent::StartOfTurn,
            "EagerEndOfTurn" => TurnEvent::EagerEndOfTurn,
            "TurnResumed" => TurnEvent::TurnResumed,
            "EndOfTurn" => TurnEvent::EndOfTurn,
            other => TurnEvent::Unknown(other.to_owned()),
        }
    }
}

impl fmt::Display for TurnEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TurnEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TurnEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(TurnEvent::from_wire(&String::deserialize(d)?))
    }
}

/// Why an `EndOfTurn` was sent. Open: unknown values are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TurnTrigger {
    /// The model's end-of-turn confidence reached `eot_threshold`.
    Model,
    /// The client sent `ForceEndTurn`.
    Manual,
    /// `eot_timeout_ms` of audio passed after speech.
    Timeout,
    /// A trigger this crate does not know yet.
    Unknown(String),
}

impl TurnTrigger {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            TurnTrigger::Model => "model",
            TurnTrigger::Manual => "manual",
            TurnTrigger::Timeout => "timeout",
            TurnTrigger::Unknown(s) => s,
        }
    }
}

impl Serialize for TurnTrigger {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TurnTrigger {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "model" => TurnTrigger::Model,
            "manual" => TurnTrigger::Manual,
            "timeout" => TurnTrigger::Timeout,
            _ => TurnTrigger::Unknown(s),
        })
    }
}

/// One recognised word of a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// The word, cased and punctuated.
    pub word: String,
    /// Recognition confidence, 0 to 1.
    #[serde(deserialize_with = "lenient_f64")]
    pub confidence: f64,
    /// Start in seconds of stream audio time, when the server sends it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt_f64"
    )]
    pub start: Option<f64>,
    /// End in seconds of stream audio time, when the server sends it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt_f64"
    )]
    pub end: Option<f64>,
}

/// `TurnInfo`: the only transcript-bearing message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnInfo {
    /// Connection-wide request id.
    pub request_id: String,
    /// Which turn event this is.
    pub event: TurnEvent,
    /// Index of the current turn; increments right after `EndOfTurn`.
    #[serde(deserialize_with = "lenient_u64")]
    pub turn_index: u64,
    /// Start (seconds of audio time) of the audio this transcript covers.
    #[serde(deserialize_with = "lenient_f64")]
    pub audio_window_start: f64,
    /// End (seconds of audio time) of the audio processed so far.
    #[serde(deserialize_with = "lenient_f64")]
    pub audio_window_end: f64,
    /// Full text of the turn so far (not a delta).
    pub transcript: String,
    /// The words of `transcript`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub words: Vec<Word>,
    /// Confidence that the user has finished speaking.
    #[serde(deserialize_with = "lenient_f64")]
    pub end_of_turn_confidence: f64,
    /// Why the turn ended; present on `EndOfTurn` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TurnTrigger>,
    /// Detected languages (`flux-general-multi` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub languages: Option<Vec<String>>,
    /// Language hints active for this turn (`flux-general-multi` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub languages_hinted: Option<Vec<String>>,
    /// Per-connection message counter.
    #[serde(deserialize_with = "lenient_u64")]
    pub sequence_id: u64,
}

/// Thresholds as carried by `Configure` and `ConfigureSuccess`; absent fields are unchanged
/// (in `Configure`) or unset (in `ConfigureSuccess`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Eager end-of-turn threshold, 0.3 to 0.9.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt_f64"
    )]
    pub eager_eot_threshold: Option<f64>,
    /// End-of-turn threshold, 0.5 to 1.0.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt_f64"
    )]
    pub eot_threshold: Option<f64>,
    /// End-of-turn timeout in milliseconds, 500 to 60000.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt_u64"
    )]
    pub eot_timeout_ms: Option<u64>,
}

/// `ConfigureSuccess`: the full active configuration after an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigureSuccess {
    /// Connection-wide request id.
    pub request_id: String,
    /// The thresholds now in force.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// The key terms now in force.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub keyterms: Vec<String>,
    /// The language hints now in force (multi model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_hints: Option<Vec<String>>,
    /// Whether numerals formatting is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerals: Option<bool>,
    /// Per-connection message counter.
    #[serde(deserialize_with = "lenient_u64")]
    pub sequence_id: u64,
}

/// `ConfigureFailure`: the update was rejected and the previous configuration stays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigureFailure {
    /// Connection-wide request id.
    pub request_id: String,
    /// Machine-readable reason (free string; none are published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Per-connection message counter.
    #[serde(deserialize_with = "lenient_u64")]
    pub sequence_id: u64,
}

/// `Warning`: non-fatal; the connection stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    /// Connection-wide request id.
    #[serde(default)]
    pub request_id: String,
    /// Machine-readable code, e.g. `FORCE_END_TURN_NO_ACTIVE_TURN`.
    #[serde(alias = "warn_code")]
    pub code: String,
    /// Human-readable text.
    #[serde(alias = "warn_msg")]
    pub description: String,
    /// Per-connection message counter.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub sequence_id: u64,
}

/// `Error`: fatal; the server closes the connection after it. Has no `request_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FatalError {
    /// Machine-readable code, e.g. `UNPARSABLE_CLIENT_MESSAGE`.
    pub code: String,
    /// Human-readable text.
    pub description: String,
    /// Per-connection message counter.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub sequence_id: u64,
}

/// Every message a Flux server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// Sent once, right after the upgrade.
    Connected {
        /// Connection-wide request id.
        request_id: String,
        /// Always 0 in practice.
        sequence_id: u64,
    },
    /// A transcript and turn event.
    TurnInfo(TurnInfo),
    /// A `Configure` was applied.
    ConfigureSuccess(ConfigureSuccess),
    /// A `Configure` was rejected.
    ConfigureFailure(ConfigureFailure),
    /// Non-fatal warning.
    Warning(Warning),
    /// Fatal error; the connection closes after it.
    Error(FatalError),
    /// A message type this crate does not know, kept verbatim.
    Unknown(Value),
}

/// The `type` of a server message, read without building the message's JSON tree.
#[derive(Deserialize)]
struct MessageType<'a> {
    #[serde(rename = "type", borrow)]
    message_type: Option<std::borrow::Cow<'a, str>>,
}

impl TurnInfo {
    /// Reads `text` straight into a `TurnInfo` when it is one and every field is sound: nearly
    /// every message of a session, read without the JSON tree the general path builds. `None` sends the text down that path, which reads every other
    /// message and repairs or rejects a `TurnInfo` this one refused.
    pub(super) fn parse_sound(text: &str) -> Option<TurnInfo> {
        let tag: MessageType<'_> = serde_json::from_str(text).ok()?;
        if tag.message_type.as_deref() != Some("TurnInfo") {
            return None;
        }
        serde_json::from_str(text).ok()
    }
}

#[derive(Deserialize)]
struct ConnectedWire {
    request_id: String,
    #[serde(default, deserialize_with = "lenient_u64")]
    sequence_id: u64,
}

fn malformed(message_type: &str) -> impl FnOnce(serde_json::Error) -> MessageError + '_ {
    move |source| MessageError::Malformed {
        message_type: message_type.to_owned(),
        source,
    }
}

impl ServerMessage {
    /// Parses one text frame from the server.
    ///
    /// # Errors
    /// [`MessageError`] when the frame is not JSON, has no `type`, or a known type lacks a
    /// required field. Unknown types are not errors: they come back as [`ServerMessage::Unknown`].
    pub fn parse(text: &str) -> Result<Self, MessageError> {
        if let Some(info) = TurnInfo::parse_sound(text) {
            return Ok(ServerMessage::TurnInfo(info));
        }
        let value: Value = serde_json::from_str(text).map_err(MessageError::NotJson)?;
        Self::from_value(value)
    }

    /// Like [`ServerMessage::parse`], from an already-decoded JSON value.
    ///
    /// # Errors
    /// As [`ServerMessage::parse`].
    pub fn from_value(value: Value) -> Result<Self, MessageError> {
        let message_type = value
            .get("type")
            .and_then(Value::as_str)
            .ok_or(MessageError::MissingType)?
            .to_owned();
        let t = message_type.as_str();
        Ok(match t {
            "Connected" => {
                let c: ConnectedWire = serde_json::from_value(value).map_err(malformed(t))?;
                ServerMessage::Connected {
                    request_id: c.request_id,
                    sequence_id: c.sequence_id,
                }
            }
            "TurnInfo" => {
                ServerMessage::TurnInfo(serde_json::from_value(value).map_err(malformed(t))?)
            }
            "ConfigureSuccess" => ServerMessage::ConfigureSuccess(
                serde_json::from_value(value).map_err(malformed(t))?,
            ),
            "ConfigureFailure" => ServerMessage::ConfigureFailure(
                serde_json::from_value(value).map_err(malformed(t))?,
            ),
            "Warning" => {
                ServerMessage::Warning(serde_json::from_value(value).map_err(malformed(t))?)
            }
            "Error" => ServerMessage::Error(serde_json::from_value(value).map_err(malformed(t))?),
            _ => ServerMessage::Unknown(value),
        })
    }

    /// The wire `type` of this message.
    pub fn type_name(&self) -> &str {
        match self {
            ServerMessage::Connected { .. } => "Connected",
            ServerMessage::TurnInfo(_) => "TurnInfo",
            ServerMessage::ConfigureSuccess(_) => "ConfigureSuccess",
            ServerMessage::ConfigureFailure(_) => "ConfigureFailure",
            ServerMessage::Warning(_) => "Warning",
            ServerMessage::Error(_) => "Error",
            ServerMessage::Unknown(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }

    /// Serializes to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

/// Writes `{"type": <type>, ...fields of inner}` in the struct's field order, straight to the
/// output.
fn serialize_tagged<S: Serializer, T: Serialize>(
    s: S,
    message_type: &str,
    inner: &T,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Tagged<'a, T> {
        r#type: &'a str,
        #[serde(flatten)]
        body: &'a T,
    }
    Tagged {
        r#type: message_type,
        body: inner,
    }
    .serialize(s)
}

impl Serialize for ServerMessage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ServerMessage::Connected {
                request_id,
                sequence_id,
            } => {
                let mut map = s.serialize_map(Some(3))?;
                map.serialize_entry("type", "Connected")?;
                map.serialize_entry("request_id", request_id)?;
                map.serialize_entry("sequence_id", sequence_id)?;
                map.end()
            }
            ServerMessage::TurnInfo(m) => serialize_tagged(s, "TurnInfo", m),
            ServerMessage::ConfigureSuccess(m) => serialize_tagged(s, "ConfigureSuccess", m),
            ServerMessage::ConfigureFailure(m) => serialize_tagged(s, "ConfigureFailure", m),
            ServerMessage::Warning(m) => serialize_tagged(s, "Warning", m),
            ServerMessage::Error(m) => serialize_tagged(s, "Error", m),
            ServerMessage::Unknown(v) => v.serialize(s),
        }
    }
}

/// The body of a `Configure` message: every field optional, applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configure {
    /// Thresholds to change; omitted ones keep their value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    /// Replaces the whole key-term list; `Some(vec![])` clears it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_list"
    )]
    pub keyterms: Option<Vec<String>>,
    /// Replaces the language hints (multi model only); `Some(vec![])` clears them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_hints: Option<Vec<String>>,
    /// Turns numerals formatting on or off; must be a JSON boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerals: Option<bool>,
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

impl Configure {
    /// True when the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.thresholds.is_none()
            && self.keyterms.is_none()
            && self.language_hints.is_none()
            && self.numerals.is_none()
    }

    /// Folds a later update into this one, as the server would apply them in order:
    /// thresholds merge field by field, lists and flags are replaced.
    pub fn merge(&mut self, later: Configure) {
        if let Some(t) = later.thresholds {
            let mine = self.thresholds.get_or_insert_with(Thresholds::default);
            mine.eager_eot_threshold = t.eager_eot_threshold.or(mine.eager_eot_threshold);
            mine.eot_threshold = t.eot_threshold.or(mine.eot_threshold);
            mine.eot_timeout_ms = t.eot_timeout_ms.or(mine.eot_timeout_ms);
        }
        if later.keyterms.is_some() {
            self.keyterms = later.keyterms;
        }
        if later.language_hints.is_some() {
            self.language_hints = later.language_hints;
        }
        if later.numerals.is_some() {
            self.numerals = later.numerals;
        }
    }
}

/// Every JSON control message a client sends (audio travels as binary frames).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Finish decoding received audio, then close (does not end the turn).
    CloseStream,
    /// End the current turn now (`EndOfTurn` with trigger `manual`).
    ForceEndTurn,
    /// Change thresholds, key terms, language hints or numerals mid-stream.
    Configure(Configure),
}

impl ClientMessage {
    /// Serializes to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        match self {
            ClientMessage::CloseStream => r#"{"type":"CloseStream"}"#.to_owned(),
            ClientMessage::ForceEndTurn => r#"{"type":"ForceEndTurn"}"#.to_owned(),
            ClientMessage::Configure(body) => {
                #[derive(Serialize)]
                struct Tagged<'a> {
                    r#type: &'static str,
                    #[serde(flatten)]
                    body: &'a Configure,
                }
                serde_json::to_string(&Tagged {
                    r#type: "Configure",
                    body,
                })
                .expect("configure always serializes")
            }
        }
    }

    /// Parses a client text frame strictly, as the server does.
    ///
    /// # Errors
    /// [`ClientMessageError`] for anything but the three known shapes, including v1-only
    /// messages such as `KeepAlive` and `Finalize`, and wrongly typed fields such as
    /// `"numerals": "true"`.
    pub fn parse(text: &str) -> Result<Self, ClientMessageError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ClientMessageError(format!("not valid json: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(ClientMessageError("expected a json object".into()));
        };
        let message_type = match map.remove("type") {
            Some(Value::String(t)) => t,
            _ => return Err(ClientMessageError("missing string field \"type\"".into())),
        };
        match message_type.as_str() {
            "CloseStream" | "ForceEndTurn" if !map.is_empty() => Err(ClientMessageError(format!(
                "{message_type} takes no fields, got {}",
                map.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
            "CloseStream" => Ok(ClientMessage::CloseStream),
            "ForceEndTurn" => Ok(ClientMessage::ForceEndTurn),
            "Configure" => {
                // Checked field by field so the error names the field at fault.
                for (field, value) in &map {
                    let mut single = serde_json::Map::new();
                    single.insert(field.clone(), value.clone());
                    serde_json::from_value::<Configure>(Value::Object(single)).map_err(|e| {
                        ClientMessageError(format!("invalid Configure field {field:?}: {e}"))
                    })?;
                }
                serde_json::from_value::<Configure>(Value::Object(map))
                    .map(ClientMessage::Configure)
                    .map_err(|e| ClientMessageError(format!("invalid Configure: {e}")))
            }
            other => Err(ClientMessageError(format!(
                "unknown message type {other:?}; /v2/listen accepts CloseStream, ForceEndTurn and Configure"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RID: &str = "7b3e2c90-15d4-4f6a-8e2b-9a41c0d57f18";

    fn turn_info(json: &str) -> TurnInfo {
        match ServerMessage::parse(json).unwrap() {
            ServerMessage::TurnInfo(t) => t,
            other => panic!("expected TurnInfo, got {other:?}"),
        }
    }

    #[test]
    fn connected() {
        let m = ServerMessage::parse(&format!(
            r#"{{"type":"Connected","request_id":"{RID}","sequence_id":0}}"#
        ))
        .unwrap();
        assert_eq!(
            m,
            ServerMessage::Connected {
                request_id: RID.into(),
                sequence_id: 0
            }
        );
    }

    #[test]
    fn idle_update() {
        let t = turn_info(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":1,"event":"Update","turn_index":0,"audio_window_start":0.0,"audio_window_end":0.24,"transcript":"","words":[],"end_of_turn_confidence":0.0042}}"#
        ));
        assert_eq!(t.event, TurnEvent::Update);
        assert_eq!(t.audio_window_end, 0.24);
        assert!(t.words.is_empty());
        assert_eq!(t.trigger, None);
    }

    #[test]
    fn start_of_turn_with_word_timings() {
        let t = turn_info(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":4,"event":"StartOfTurn","turn_index":0,"audio_window_start":0.0,"audio_window_end":0.96,"transcript":"I'd like","words":[{{"word":"I'd","confidence":0.9631,"start":0.62,"end":0.8}},{{"word":"like","confidence":0.9418,"start":0.8,"end":0.96}}],"end_of_turn_confidence":0.0117}}"#
        ));
        assert_eq!(t.event, TurnEvent::StartOfTurn);
        assert_eq!(t.words[1].end, Some(0.96));
        assert_eq!(t.words[0].start, Some(0.62));
    }

    #[test]
    fn eager_end_of_turn_and_words_without_timings() {
        let t = turn_info(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":9,"event":"EagerEndOfTurn","turn_index":0,"audio_window_start":0.0,"audio_window_end":2.16,"transcript":"I'd like to change my flight.","words":[{{"word":"flight.","confidence":0.9655}}],"end_of_turn_confidence":0.5214}}"#
        ));
        assert_eq!(t.event, TurnEvent::EagerEndOfTurn);
        assert_eq!(t.words[0].start, None);
        assert_eq!(t.words[0].end, None);
    }

    #[test]
    fn turn_resumed() {
        let t = turn_info(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":10,"event":"TurnResumed","turn_index":0,"audio_window_start":0.0,"audio_window_end":2.4,"transcript":"I'd like to change my flight to","words":[],"end_of_turn_confidence":0.1362}}"#
        ));
        assert_eq!(t.event, TurnEvent::TurnResumed);
    }

    #[test]
    fn end_of_turn_with_each_trigger() {
        for (wire, trigger) in [
            ("model", TurnTrigger::Model),
            ("manual", TurnTrigger::Manual),
            ("timeout", TurnTrigger::Timeout),
            ("vad", TurnTrigger::Unknown("vad".into())),
        ] {
            let t = turn_info(&format!(
                r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":16,"event":"EndOfTurn","turn_index":0,"audio_window_start":0.0,"audio_window_end":3.6,"transcript":"Friday.","words":[],"end_of_turn_confidence":0.7731,"trigger":"{wire}"}}"#
            ));
            assert_eq!(t.event, TurnEvent::EndOfTurn);
            assert_eq!(t.trigger, Some(trigger));
        }
    }

    #[test]
    fn multi_model_languages() {
        let t = turn_info(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":22,"event":"EndOfTurn","turn_index":3,"audio_window_start":14.4,"audio_window_end":16.32,"transcript":"Quiero cambiar mi vuelo.","words":[],"end_of_turn_confidence":0.8125,"trigger":"timeout","languages":["es"],"languages_hinted":["es","en"]}}"#
        ));
        assert_eq!(t.languages.as_deref(), Some(&["es".to_owned()][..]));
        assert_eq!(t.languages_hinted.unwrap().len(), 2);
    }

    #[test]
    fn unknown_event_is_kept() {
        let t = turn_info(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":3,"event":"SpeakerChanged","turn_index":0,"audio_window_start":0,"audio_window_end":0.48,"transcript":"","words":[],"end_of_turn_confidence":0}}"#
        ));
        assert_eq!(t.event, TurnEvent::Unknown("SpeakerChanged".into()));
        assert_eq!(t.event.to_string(), "SpeakerChanged");
    }

    #[test]
    fn numeric_strings_parse_and_serialize_as_numbers() {
        let t = turn_info(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":"5","event":"Update","turn_index":"1","audio_window_start":"0.5","audio_window_end":"0.72","transcript":"hi","words":[{{"word":"hi","confidence":"0.91","start":"0.5","end":"0.7"}}],"end_of_turn_confidence":"0.1"}}"#
        ));
        assert_eq!(t.sequence_id, 5);
        assert_eq!(t.audio_window_start, 0.5);
        assert_eq!(t.words[0].confidence, 0.91);
        let out: Value =
            serde_json::from_str(&ServerMessage::TurnInfo(t).to_json()).expect("valid json");
        assert_eq!(out["audio_window_end"], serde_json::json!(0.72));
        assert_eq!(out["sequence_id"], serde_json::json!(5));
        assert_eq!(out["words"][0]["end"], serde_json::json!(0.7));
        assert_eq!(out["type"], "TurnInfo");
    }

    #[test]
    fn non_numeric_string_is_malformed() {
        let err = ServerMessage::parse(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":1,"event":"Update","turn_index":0,"audio_window_start":"soon","audio_window_end":0.24,"transcript":"","words":[],"end_of_turn_confidence":0}}"#
        ))
        .unwrap_err();
        assert!(matches!(err, MessageError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("TurnInfo"));
    }

    #[test]
    fn a_turn_info_read_directly_is_the_one_the_json_tree_gives() {
        let texts = [
            format!(
                r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":3,"event":"Update","turn_index":0,"audio_window_start":0.0,"audio_window_end":0.48,"transcript":"book","words":[{{"word":"book","confidence":0.9,"start":0.1,"end":0.4}}],"end_of_turn_confidence":0.1}}"#
            ),
            // The type last, numbers as strings, unknown fields, words null: still direct.
            format!(
                r#"{{"request_id":"{RID}","sequence_id":"9","event":"EndOfTurn","turn_index":"2","audio_window_start":"0.5","audio_window_end":1,"transcript":"","words":null,"end_of_turn_confidence":"0.9","trigger":"model","new":{{"x":[1]}},"type":"TurnInfo"}}"#
            ),
            // A repeated key: the tree keeps the last one, so the direct read steps aside.
            format!(
                r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":4,"event":"Update","turn_index":0,"audio_window_start":0,"audio_window_end":0.24,"transcript":"first","transcript":"second","words":[],"end_of_turn_confidence":0}}"#
            ),
            // Another message type goes the general way.
            format!(r#"{{"type":"Connected","request_id":"{RID}","sequence_id":0}}"#),
        ];
        for text in &texts {
            let tree: Value = serde_json::from_str(text).unwrap();
            let general = ServerMessage::from_value(tree).unwrap();
            assert_eq!(ServerMessage::parse(text).unwrap(), general, "{text}");
            let repaired = ServerMessage::parse_repairing(text).unwrap();
            assert_eq!(repaired.message, general, "{text}");
            assert!(
                repaired.repairs.is_empty(),
                "{text}: {:?}",
                repaired.repairs
            );
        }
        let ServerMessage::TurnInfo(kept) = ServerMessage::parse(&texts[2]).unwrap() else {
            panic!("not a TurnInfo")
        };
        assert_eq!(kept.transcript, "second");
    }

    #[test]
    fn a_server_message_written_and_read_back_is_the_same_message() {
        let ServerMessage::TurnInfo(info) = ServerMessage::parse(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":3,"event":"EndOfTurn","turn_index":1,"audio_window_start":0.0,"audio_window_end":0.48,"transcript":"book","words":[{{"word":"book","confidence":0.9,"start":0.1,"end":0.4}}],"end_of_turn_confidence":0.9,"trigger":"model"}}"#
        ))
        .unwrap() else {
            panic!("not a TurnInfo")
        };
        let message = ServerMessage::TurnInfo(info);
        let json = message.to_json();
        assert!(json.starts_with(r#"{"type":"TurnInfo","#), "{json}");
        assert_eq!(ServerMessage::parse(&json).unwrap(), message);
        let tree: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(tree["trigger"], "model");
        assert_eq!(tree["words"][0]["word"], "book");
    }

    #[test]
    fn missing_required_field_is_malformed() {
        let err = ServerMessage::parse(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":1,"event":"Update"}}"#
        ))
        .unwrap_err();
        assert!(matches!(err, MessageError::Malformed { .. }));
    }

    #[test]
    fn configure_success_and_failure() {
        let m = ServerMessage::parse(&format!(
            r#"{{"type":"ConfigureSuccess","request_id":"{RID}","sequence_id":31,"thresholds":{{"eager_eot_threshold":0.45,"eot_threshold":0.9,"eot_timeout_ms":12000}},"keyterms":["Zephyr Air"],"language_hints":[],"numerals":false}}"#
        ))
        .unwrap();
        let ServerMessage::ConfigureSuccess(s) = m else {
            panic!("expected ConfigureSuccess")
        };
        assert_eq!(s.thresholds.eot_timeout_ms, Some(12000));
        assert_eq!(s.thresholds.eager_eot_threshold, Some(0.45));
        assert_eq!(s.numerals, Some(false));

        let m = ServerMessage::parse(&format!(
            r#"{{"type":"ConfigureFailure","request_id":"{RID}","sequence_id":32,"code":"INVALID_THRESHOLD","description":"eager_eot_threshold must not exceed eot_threshold"}}"#
        ))
        .unwrap();
        let ServerMessage::ConfigureFailure(f) = m else {
            panic!("expected ConfigureFailure")
        };
        assert_eq!(f.code.as_deref(), Some("INVALID_THRESHOLD"));
        let old = ServerMessage::parse(&format!(
            r#"{{"type":"ConfigureFailure","request_id":"{RID}","sequence_id":2}}"#
        ))
        .unwrap();
        assert!(matches!(old, ServerMessage::ConfigureFailure(f) if f.code.is_none()));
    }

    #[test]
    fn warning_accepts_both_spellings() {
        let new = ServerMessage::parse(&format!(
            r#"{{"type":"Warning","request_id":"{RID}","sequence_id":40,"code":"FORCE_END_TURN_NO_ACTIVE_TURN","description":"no turn"}}"#
        ))
        .unwrap();
        let old = ServerMessage::parse(
            r#"{"type":"Warning","warn_code":"FORCE_END_TURN_NO_ACTIVE_TURN","warn_msg":"no turn"}"#,
        )
        .unwrap();
        for m in [new, old] {
            let ServerMessage::Warning(w) = m else {
                panic!("expected Warning")
            };
            assert_eq!(w.code, "FORCE_END_TURN_NO_ACTIVE_TURN");
            assert_eq!(w.description, "no turn");
        }
    }

    #[test]
    fn fatal_error_has_no_request_id() {
        let m = ServerMessage::parse(
            r#"{"type":"Error","sequence_id":12,"code":"UNPARSABLE_CLIENT_MESSAGE","description":"bad"}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ServerMessage::Error(FatalError {
                code: "UNPARSABLE_CLIENT_MESSAGE".into(),
                description: "bad".into(),
                sequence_id: 12
            })
        );
        let json: Value = serde_json::from_str(&m.to_json()).unwrap();
        assert!(json.get("request_id").is_none());
    }

    #[test]
    fn unknown_type_is_kept_verbatim() {
        let text = r#"{"type":"SpeechStarted","timestamp":1.5}"#;
        let m = ServerMessage::parse(text).unwrap();
        assert_eq!(m.type_name(), "SpeechStarted");
        assert_eq!(
            serde_json::from_str::<Value>(&m.to_json()).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn not_json_and_missing_type() {
        assert!(matches!(
            ServerMessage::parse("{oops"),
            Err(MessageError::NotJson(_))
        ));
        assert!(matches!(
            ServerMessage::parse(r#"{"event":"Update"}"#),
            Err(MessageError::MissingType)
        ));
    }

    #[test]
    fn server_messages_round_trip() {
        let messages = vec![
            ServerMessage::Connected {
                request_id: RID.into(),
                sequence_id: 0,
            },
            ServerMessage::TurnInfo(TurnInfo {
                request_id: RID.into(),
                event: TurnEvent::EndOfTurn,
                turn_index: 2,
                audio_window_start: 1.5,
                audio_window_end: 3.36,
                transcript: "Hello there.".into(),
                words: vec![Word {
                    word: "Hello".into(),
                    confidence: 0.99,
                    start: Some(1.6),
                    end: Some(1.9),
                }],
                end_of_turn_confidence: 0.81,
                trigger: Some(TurnTrigger::Timeout),
                languages: Some(vec!["en".into()]),
                languages_hinted: None,
                sequence_id: 14,
            }),
            ServerMessage::ConfigureSuccess(ConfigureSuccess {
                request_id: RID.into(),
                thresholds: Thresholds {
                    eager_eot_threshold: None,
                    eot_threshold: Some(0.8),
                    eot_timeout_ms: Some(5000),
                },
                keyterms: vec!["Acme".into()],
                language_hints: None,
                numerals: Some(true),
                sequence_id: 3,
            }),
            ServerMessage::ConfigureFailure(ConfigureFailure {
                request_id: RID.into(),
                code: Some("INVALID_THRESHOLD".into()),
                description: Some("no".into()),
                sequence_id: 4,
            }),
            ServerMessage::Warning(Warning {
                request_id: RID.into(),
                code: "W".into(),
                description: "w".into(),
                sequence_id: 5,
            }),
            ServerMessage::Error(FatalError {
                code: "INTERNAL_SERVER_ERROR".into(),
                description: "boom".into(),
                sequence_id: 6,
            }),
        ];
        for m in messages {
            let text = m.to_json();
            assert!(text.starts_with(r#"{"type":""#), "type first: {text}");
            assert_eq!(ServerMessage::parse(&text).unwrap(), m, "{text}");
        }
    }

    #[test]
    fn client_messages_serialize_and_round_trip() {
        assert_eq!(
            ClientMessage::CloseStream.to_json(),
            r#"{"type":"CloseStream"}"#
        );
        assert_eq!(
            ClientMessage::ForceEndTurn.to_json(),
            r#"{"type":"ForceEndTurn"}"#
        );
        let configure = ClientMessage::Configure(Configure {
            thresholds: Some(Thresholds {
                eager_eot_threshold: Some(0.45),
                eot_threshold: Some(0.9),
                eot_timeout_ms: Some(12000),
            }),
            keyterms: Some(vec!["Zephyr Air".into()]),
            language_hints: Some(vec![]),
            numerals: Some(true),
        });
        let text = configure.to_json();
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["type"], "Configure");
        assert_eq!(json["thresholds"]["eot_threshold"], serde_json::json!(0.9));
        assert_eq!(json["numerals"], serde_json::json!(true));
        assert_eq!(ClientMessage::parse(&text).unwrap(), configure);
        for m in [ClientMessage::CloseStream, ClientMessage::ForceEndTurn] {
            assert_eq!(ClientMessage::parse(&m.to_json()).unwrap(), m);
        }
    }

    #[test]
    fn configure_accepts_single_keyterm_string() {
        let m = ClientMessage::parse(r#"{"type":"Configure","keyterms":"Acme"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Configure(Configure {
                keyterms: Some(vec!["Acme".into()]),
                ..Configure::default()
            })
        );
    }

    #[test]
    fn client_parse_rejects_what_the_server_rejects() {
        for (text, needle) in [
            (r#"{"type":"KeepAlive"}"#, "KeepAlive"),
            (r#"{"type":"Finalize"}"#, "Finalize"),
            (r#"{"type":"Configure","numerals":"true"}"#, "numerals"),
            (r#"{"type":"Configure","colour":"red"}"#, "colour"),
            (r#"{"type":"CloseStream","now":true}"#, "now"),
            (r#"["CloseStream"]"#, "object"),
            ("CloseStream", "json"),
        ] {
            let err = ClientMessage::parse(text).unwrap_err();
            assert!(err.0.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn configure_merge_keeps_the_later_values() {
        let mut a = Configure {
            thresholds: Some(Thresholds {
                eot_threshold: Some(0.8),
                eot_timeout_ms: Some(3000),
                ..Thresholds::default()
            }),
            keyterms: Some(vec!["a".into()]),
            ..Configure::default()
        };
        a.merge(Configure {
            thresholds: Some(Thresholds {
                eot_threshold: Some(0.9),
                ..Thresholds::default()
            }),
            numerals: Some(true),
            ..Configure::default()
        });
        let t = a.thresholds.unwrap();
        assert_eq!(t.eot_threshold, Some(0.9));
        assert_eq!(t.eot_timeout_ms, Some(3000));
        assert_eq!(a.keyterms, Some(vec!["a".to_owned()]));
        assert_eq!(a.numerals, Some(true));
        assert!(!a.is_empty());
        assert!(Configure::default().is_empty());
    }
}
