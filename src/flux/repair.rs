//! The repair layer over Flux's wire types: how a client that must not lose turns reads a
//! server frame that is not quite what the documentation promises (non-standard JSON, a
//! `TurnInfo` with a broken number), keeping the turn and saying what it replaced.

use serde::Deserialize as _;
use serde::de;
use serde_json::Value;

use super::messages::{
    MessageError, ServerMessage, TurnEvent, TurnInfo, TurnTrigger, Word, lenient_f64, lenient_u64,
};

impl ServerMessage {
    /// Parses one text frame the way a client that must not lose turns should: like
    /// [`ServerMessage::parse`], but a `TurnInfo` whose event, transcript and words are sound is
    /// kept even when other fields are not. Bare `NaN`/`Infinity` tokens (Python's `json`
    /// writes them) are read as missing values, values nested deeper than 32 levels are
    /// dropped, and a `turn_index`, `sequence_id`, time or confidence that is not a usable
    /// number is replaced (times by `NaN`, for the client to re-derive; counters by 0). Each
    /// such change is described in [`Parsed::repairs`].
    ///
    /// # Errors
    /// [`MessageError`] when the frame is not JSON even after those repairs, has no `type`, or
    /// a known message lacks what it cannot do without (a `TurnInfo` without a string `event`
    /// and `transcript`, or with a word that has no text).
    pub fn parse_repairing(text: &str) -> Result<Parsed, MessageError> {
        if let Some(info) = TurnInfo::parse_sound(text) {
            return Ok(Parsed {
                message: ServerMessage::TurnInfo(info),
                repairs: Vec::new(),
            });
        }
        let mut repairs = Vec::new();
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(error) => {
                let Some(cleaned) = sanitize_json(text, MAX_JSON_DEPTH) else {
                    return Err(MessageError::NotJson(error));
                };
                let value = serde_json::from_str(&cleaned).map_err(MessageError::NotJson)?;
                repairs.push(format!(
                    "non-standard json ({error}): bare NaN/Infinity read as null, values nested deeper than {MAX_JSON_DEPTH} levels dropped"
                ));
                value
            }
        };
        if value.get("type").and_then(Value::as_str) == Some("TurnInfo") {
            let info = match TurnInfo::deserialize(&value) {
                Ok(info) => info,
                Err(strict) => salvage_turn_info(&value, &mut repairs).map_err(|reason| {
                    MessageError::Malformed {
                        message_type: "TurnInfo".into(),
                        source: de::Error::custom(format!("{reason} (strictly: {strict})")),
                    }
                })?,
            };
            return Ok(Parsed {
                message: ServerMessage::TurnInfo(info),
                repairs,
            });
        }
        Ok(Parsed {
            message: Self::from_value(value)?,
            repairs,
        })
    }
}

/// A server message and what had to be repaired to read it (see
/// [`ServerMessage::parse_repairing`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The message.
    pub message: ServerMessage,
    /// One readable line per value that was replaced or dropped; empty for a clean message.
    pub repairs: Vec<String>,
}

/// Deepest nesting kept by [`ServerMessage::parse_repairing`]; Flux's own messages nest three
/// levels.
const MAX_JSON_DEPTH: usize = 32;

/// Rewrites almost-JSON into JSON: bare `NaN`, `Infinity` and `-Infinity` become `null`, and
/// any array or object opened deeper than `max_depth` becomes `null`. Strings are copied
/// untouched. Iterative, so hostile nesting cannot exhaust the stack. `None` when nothing
/// needed rewriting (the text is broken some other way).
fn sanitize_json(text: &str, max_depth: usize) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut changed = false;
    let mut i = 0;
    // Copies a string literal starting at `i` (the opening quote); returns the index after it.
    let string_end = |mut j: usize| {
        j += 1;
        while j < bytes.len() {
            match bytes[j] {
                b'\\' => j += 2,
                b'"' => return j + 1,
                _ => j += 1,
            }
        }
        bytes.len()
    };
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(i);
                out.push_str(&text[i..end]);
                i = end;
            }
            b'[' | b'{' if depth >= max_depth => {
                // Skip the whole value, strings included, and write null instead.
                let mut nested = 0usize;
                while i < bytes.len() {
                    match bytes[i] {
                        b'"' => {
                            i = string_end(i);
                            continue;
                        }
                        b'[' | b'{' => nested += 1,
                        b']' | b'}' => {
                            nested -= 1;
                            if nested == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                out.push_str("null");
                changed = true;
            }
            b'[' | b'{' => {
                depth += 1;
                out.push(bytes[i] as char);
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                out.push(bytes[i] as char);
                i += 1;
            }
            _ => {
                let rest = &text[i..];
                let token = ["-Infinity", "Infinity", "NaN"]
                    .into_iter()
                    .find(|t| rest.starts_with(t));
                if let Some(token) = token {
                    out.push_str("null");
                    i += token.len();
                    changed = true;
                } else {
                    let c = rest.chars().next().expect("i is on a char boundary");
                    out.push(c);
                    i += c.len_utf8();
                }
            }
        }
    }
    changed.then_some(out)
}

/// Reads a `TurnInfo` field by field, keeping the event when its event, transcript and words
/// are sound. Unusable numbers become `NaN` (times) or 0 (counters), with a repair line each.
fn salvage_turn_info(value: &Value, repairs: &mut Vec<String>) -> Result<TurnInfo, String> {
    let field = |name: &str| value.get(name).filter(|v| !v.is_null());
    let event = field("event")
        .and_then(Value::as_str)
        .ok_or("no string \"event\"")?;
    let transcript = field("transcript")
        .and_then(Value::as_str)
        .ok_or("no string \"transcript\"")?
        .to_owned();
    let number = |name: &str, v: Option<&Value>, repairs: &mut Vec<String>| match v {
        Some(v) => lenient_f64(v).unwrap_or_else(|e: serde_json::Error| {
            repairs.push(format!("{name}: {e}"));
            f64::NAN
        }),
        None => {
            repairs.push(format!("{name}: missing"));
            f64::NAN
        }
    };
    let counter = |name: &str, repairs: &mut Vec<String>| match field(name) {
        Some(v) => lenient_u64(v).unwrap_or_else(|e: serde_json::Error| {
            repairs.push(format!("{name}: {e}; read as 0"));
            0
        }),
        None => {
            repairs.push(format!("{name}: missing; read as 0"));
            0
        }
    };
    let turn_index = counter("turn_index", repairs);
    let sequence_id = counter("sequence_id", repairs);
    let mut words = Vec::new();
    match field("words") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let text = item
                    .get("word")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("words[{i}] has no string \"word\""))?;
                let optional = |name: &str, repairs: &mut Vec<String>| {
                    item.get(name).filter(|v| !v.is_null()).and_then(|v| {
                        lenient_f64(v)
                            .map_err(|e: serde_json::Error| {
                                repairs.push(format!("words[{i}].{name}: {e}; dropped"))
                            })
                            .ok()
                    })
                };
                let confidence = item.get("confidence").filter(|v| !v.is_null());
                words.push(Word {
                    word: text.to_owned(),
                    confidence: number(&format!("words[{i}].confidence"), confidence, repairs),
                    start: optional("start", repairs),
                    end: optional("end", repairs),
                });
            }
        }
        Some(other) => return Err(format!("\"words\" is not a list: {other}")),
    }
    let strings = |name: &str| {
        field(name).and_then(Value::as_array).map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
    };
    Ok(TurnInfo {
        request_id: field("request_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        event: TurnEvent::from_wire(event),
        turn_index,
        audio_window_start: number("audio_window_start", field("audio_window_start"), repairs),
        audio_window_end: number("audio_window_end", field("audio_window_end"), repairs),
        transcript,
        words,
        end_of_turn_confidence: number(
            "end_of_turn_confidence",
            field("end_of_turn_confidence"),
            repairs,
        ),
        trigger: field("trigger")
            .and_then(Value::as_str)
            .map(|t| TurnTrigger::deserialize(Value::String(t.to_owned())).expect("any string")),
        languages: strings("languages"),
        languages_hinted: strings("languages_hinted"),
        sequence_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RID: &str = "7b3e2c90-15d4-4f6a-8e2b-9a41c0d57f18";

    #[test]
    fn repairing_keeps_a_turn_with_sound_words_and_event() {
        let parsed = ServerMessage::parse_repairing(&format!(
            r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":2.5,"event":"EndOfTurn","turn_index":-1,"audio_window_start":NaN,"audio_window_end":"Infinity","transcript":"book it","words":[{{"word":"book","confidence":NaN,"start":0.1,"end":-Infinity}},{{"word":"it","confidence":0.9}}],"end_of_turn_confidence":0.9,"trigger":"model","extra":{}}}"#,
            "[".repeat(200) + &"]".repeat(200)
        ))
        .unwrap();
        let ServerMessage::TurnInfo(t) = parsed.message else {
            panic!("{:?}", parsed.message)
        };
        assert_eq!(t.event, TurnEvent::EndOfTurn);
        assert_eq!(t.transcript, "book it");
        assert_eq!(t.words.len(), 2);
        assert_eq!(t.words[0].start, Some(0.1));
        assert_eq!(t.words[0].end, None, "-Infinity is no time");
        assert!(t.words[0].confidence.is_nan());
        assert!(t.audio_window_start.is_nan());
        assert!(t.audio_window_end.is_infinite(), "the client re-derives it");
        assert_eq!((t.turn_index, t.sequence_id), (0, 0));
        assert_eq!(t.trigger, Some(TurnTrigger::Model));
        let all = parsed.repairs.join("\n");
        for needle in [
            "non-standard json",
            "turn_index",
            "sequence_id",
            "words[0].confidence",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        assert!(
            ServerMessage::parse(&format!(
                r#"{{"type":"TurnInfo","request_id":"{RID}","sequence_id":1,"event":"Update","turn_index":0.5,"audio_window_start":0,"audio_window_end":0.24,"transcript":"","words":[],"end_of_turn_confidence":0}}"#
            ))
            .is_err(),
            "the strict parser still refuses it"
        );
    }

    #[test]
    fn repairing_refuses_what_a_turn_cannot_do_without() {
        for broken in [
            r#"{"type":"TurnInfo","transcript":"hi"}"#,
            r#"{"type":"TurnInfo","event":"Update"}"#,
            r#"{"type":"TurnInfo","event":"Update","transcript":"hi","words":[{"confidence":1}]}"#,
            r#"{"type":"TurnInfo","event":"Update","transcript":"hi","words":"hi"}"#,
        ] {
            let err = ServerMessage::parse_repairing(broken).unwrap_err();
            assert!(err.to_string().contains("TurnInfo"), "{err}");
        }
        assert!(matches!(
            ServerMessage::parse_repairing("{broken"),
            Err(MessageError::NotJson(_))
        ));
        let clean = ServerMessage::parse_repairing(
            r#"{"type":"Warning","request_id":"r","sequence_id":1,"code":"W","description":"d"}"#,
        )
        .unwrap();
        assert!(clean.repairs.is_empty());
    }

    #[test]
    fn sanitizer_rewrites_only_outside_strings() {
        assert_eq!(
            sanitize_json(r#"{"a":NaN,"b":"NaN [[","c":[-Infinity,1]}"#, 8).as_deref(),
            Some(r#"{"a":null,"b":"NaN [[","c":[null,1]}"#)
        );
        assert_eq!(
            sanitize_json(r#"{"a":[[["x]",{}]]],"b":1}"#, 2).as_deref(),
            Some(r#"{"a":[null],"b":1}"#)
        );
        assert_eq!(sanitize_json(r#"{"a":1"#, 8), None);
        assert_eq!(
            sanitize_json("{\"é\":NaN}", 8).as_deref(),
            Some("{\"é\":null}")
        );
    }
}
