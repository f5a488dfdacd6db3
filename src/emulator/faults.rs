//! Faults on demand: what a slow, broken or hostile Flux server does, injected by the emulator
//! so any Flux client can be tested against it.
//!
//! A fault belongs to one connection (the first by default, or every one) and starts once
//! that connection has received `at_ms` of audio:
//! - `stall`: keep reading audio, send nothing more;
//! - `drop`: end the connection without a close frame;
//! - `close`: close with a WebSocket status code and reason;
//! - `refuse`: refuse the handshake with an HTTP status (no `at_ms`);
//! - `clock_jump`: shift every later time by `by_ms` (negative: a restarted clock);
//! - `duplicate`: send every later turn event (not `Update`) twice.
//!
//! Pure: `ConnectionFaults::apply` rewrites a session's output at a given audio time; the
//! server does the I/O. The same faults come from a scenario's `faults` list or from
//! `turnflow emulate --fault SPEC` ([`FaultSpec::parse`]).

use serde::{Deserialize, Deserializer};

use super::session::Output;
use crate::flux::{ServerMessage, TurnEvent};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FaultKind {
    /// Read audio, answer nothing.
    Stall,
    /// Vanish without a close frame.
    Drop,
    /// Close with `code` and `reason`.
    Close,
    /// Refuse the handshake with `status`.
    Refuse,
    /// Shift later times by `by_ms`.
    ClockJump,
    /// Send later turn events twice.
    Duplicate,
}

/// Which connections a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connections {
    /// The n-th connection (0 = the first).
    Nth(u32),
    /// The first connection (the default).
    #[default]
    First,
    /// Every connection, reconnects included.
    All,
}

impl Connections {
    fn matches(self, connection: u32) -> bool {
        match self {
            Connections::Nth(n) => n == connection,
            Connections::First => connection == 0,
            Connections::All => true,
        }
    }
}

impl<'de> Deserialize<'de> for Connections {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Nth(u32),
            Word(String),
        }
        match Wire::deserialize(d)? {
            Wire::Nth(n) => Ok(Connections::Nth(n)),
            Wire::Word(w) if w == "all" => Ok(Connections::All),
            Wire::Word(w) if w == "first" => Ok(Connections::First),
            Wire::Word(w) => Err(serde::de::Error::custom(format!(
                "connection {w:?}: use a number (0 = the first), \"first\" or \"all\""
            ))),
        }
    }
}

/// One fault of a scenario's `faults` list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// What goes wrong.
    pub kind: FaultKind,
    /// Audio received on the connection before it starts, in milliseconds.
    #[serde(default)]
    pub at_ms: u64,
    /// Which connections.
    #[serde(default)]
    pub connection: Connections,
    /// `close`: the WebSocket status code (1000-4999).
    #[serde(default)]
    pub code: Option<u16>,
    /// `close`: the reason text.
    #[serde(default)]
    pub reason: Option<String>,
    /// `refuse`: the HTTP status (400-599).
    #[serde(default)]
    pub status: Option<u16>,
    /// `clock_jump`: milliseconds added to every later time (may be negative).
    #[serde(default)]
    pub by_ms: Option<i64>,
}

impl FaultSpec {
    /// Checks the fields each kind needs; the error names the field and what is allowed.
    ///
    /// # Errors
    /// `(field, reason)` for a missing or out-of-range field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self.kind {
            FaultKind::Close => match self.code {
                Some(code) if (1000..=4999).contains(&code) => Ok(()),
                Some(code) => Err(("code", format!("{code} is not a close code: use 1000-4999"))),
                None => Err(("code", "a close fault needs a code (1000-4999)".into())),
            },
            FaultKind::Refuse => match self.status {
                Some(status) if (400..=599).contains(&status) => Ok(()),
                Some(status) => Err((
                    "status",
                    format!("{status} is not an error status: use 400-599"),
                )),
                None => Err(("status", "a refuse fault needs a status (400-599)".into())),
            },
            FaultKind::ClockJump if self.by_ms.is_none() => Err((
                "by_ms",
                "a clock_jump fault needs by_ms (negative for a restarted clock)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Reads the command-line form `KIND[=ARG][@MS][/CONNECTION]`: `stall@3000`,
    /// `close=1011@5000`, `refuse=503/all`, `clock_jump=-5000@4000`, `duplicate`,
    /// `drop@2000/1`. ARG is the close code, the refusal status or the jump in ms;
    /// CONNECTION is a number (0 = the first, the default) or `all`.
    ///
    /// # Errors
    /// A message naming the part that is wrong and the accepted form.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let form = "use KIND[=ARG][@MS][/CONNECTION], e.g. stall@3000, close=1011@5000, refuse=503/all, clock_jump=-5000@4000";
        let (rest, connection) = match spec.rsplit_once('/') {
            Some((rest, "all")) => (rest, Connections::All),
            Some((rest, n)) => (
                rest,
                Connections::Nth(n.parse().map_err(|_| {
                    format!("fault {spec:?}: connection {n:?} is not a number or all; {form}")
                })?),
            ),
            None => (spec, Connections::First),
        };
        let (rest, at_ms) = match rest.split_once('@') {
            Some((rest, ms)) => (
                rest,
                ms.parse()
                    .map_err(|_| format!("fault {spec:?}: @{ms} is not milliseconds; {form}"))?,
            ),
            None => (rest, 0),
        };
        let (kind, arg) = match rest.split_once('=') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (rest, None),
        };
        let kind = match kind {
            "stall" => FaultKind::Stall,
            "drop" => FaultKind::Drop,
            "close" => FaultKind::Close,
            "refuse" => FaultKind::Refuse,
            "clock_jump" => FaultKind::ClockJump,
            "duplicate" => FaultKind::Duplicate,
            other => {
                return Err(format!(
                    "fault {spec:?}: unknown kind {other:?}; kinds: stall, drop, close, refuse, clock_jump, duplicate"
                ));
            }
        };
        let number = |what: &str| -> Result<Option<i64>, String> {
            arg.map(|a| {
                a.parse::<i64>()
                    .map_err(|_| format!("fault {spec:?}: {what} {a:?} is not a number; {form}"))
            })
            .transpose()
        };
        let status_like = |what: &str| -> Result<Option<u16>, String> {
            arg.map(|a| {
                a.parse::<u16>().map_err(|_| {
                    format!("fault {spec:?}: {what} {a:?} is not a number from 0 to 65535; {form}")
                })
            })
            .transpose()
        };
        let fault = FaultSpec {
            kind,
            at_ms,
            connection,
            code: if kind == FaultKind::Close {
                status_like("code")?
            } else {
                None
            },
            reason: (kind == FaultKind::Close).then(|| "emulated fault".to_owned()),
            status: if kind == FaultKind::Refuse {
                status_like("status")?
            } else {
                None
            },
            by_ms: if kind == FaultKind::ClockJump {
                number("jump")?
            } else {
                None
            },
        };
        fault
            .check()
            .map_err(|(field, reason)| format!("fault {spec:?}: {field}: {reason}"))?;
        Ok(fault)
    }
}

/// The HTTP status the `connection`-th handshake is refused with, if a fault says so.
pub(crate) fn refusal(faults: &[FaultSpec], connection: u32) -> Option<u16> {
    faults
        .iter()
        .find(|f| f.kind == FaultKind::Refuse && f.connection.matches(connection))
        .and_then(|f| f.status)
}

/// How a faulty connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Without a close frame.
    Drop,
    /// With this close code and reason.
    Close(u16, String),
}

/// The faults of one connection, applied to its output as its audio time advances.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionFaults {
    active: Vec<FaultSpec>,
}

impl ConnectionFaults {
    /// The faults of `faults` that apply to the `connection`-th connection.
    pub(crate) fn for_connection(faults: &[FaultSpec], connection: u32) -> Self {
        Self {
            active: faults
                .iter()
                .filter(|f| f.kind != FaultKind::Refuse && f.connection.matches(connection))
                .cloned()
                .collect(),
        }
    }

    /// Whether the connection behaves.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Rewrites `output`, produced once the connection had `audio_seconds` of audio: the
    /// messages to send, and how the connection ends now, if it does.
    pub(crate) fn apply(
        &self,
        audio_seconds: f64,
        output: Output,
    ) -> (Vec<ServerMessage>, Option<Ending>) {
        let started = |f: &&FaultSpec| audio_seconds * 1000.0 + 1e-6 >= f.at_ms as f64;
        let mut messages = output.messages;
        let mut ending = None;
        for fault in self.active.iter().filter(started) {
            match fault.kind {
                FaultKind::Stall => messages.clear(),
                FaultKind::Drop => ending = Some(Ending::Drop),
                FaultKind::Close => {
                    ending = Some(Ending::Close(
                        fault.code.unwrap_or(1011),
                        fault.reason.clone().unwrap_or_default(),
                    ))
                }
                FaultKind::ClockJump => {
                    let by = fault.by_ms.unwrap_or(0) as f64 / 1000.0;
                    // Whole milliseconds, as the emulator writes every time.
                    let shift = |t: f64| ((t + by) * 1000.0).round() / 1000.0;
                    for message in &mut messages {
                        if let ServerMessage::TurnInfo(info) = message {
                            info.audio_window_start = shift(info.audio_window_start);
                            info.audio_window_end = shift(info.audio_window_end);
                            for w in &mut info.words {
                                w.start = w.start.map(shift);
                                w.end = w.end.map(shift);
                            }
                        }
                    }
                }
                FaultKind::Duplicate => {
                    messages = messages
                        .into_iter()
                        .flat_map(|m| {
                            let twice = matches!(&m, ServerMessage::TurnInfo(i) if i.event != TurnEvent::Update);
                            let copy = twice.then(|| m.clone());
                            std::iter::once(m).chain(copy)
                        })
                        .collect();
                }
                FaultKind::Refuse => {}
            }
        }
        (messages, ending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flux::TurnInfo;

    fn info(event: TurnEvent, end: f64) -> ServerMessage {
        ServerMessage::TurnInfo(TurnInfo {
            request_id: "r".into(),
            event,
            turn_index: 0,
            audio_window_start: 0.0,
            audio_window_end: end,
            transcript: "hi".into(),
            words: vec![],
            end_of_turn_confidence: 0.5,
            trigger: None,
            languages: None,
            languages_hinted: None,
            sequence_id: 1,
        })
    }

    fn output(messages: Vec<ServerMessage>) -> Output {
        Output {
            messages,
            close: false,
        }
    }

    #[test]
    fn command_line_forms() {
        let f = FaultSpec::parse("close=1011@5000").unwrap();
        assert_eq!(
            (f.kind, f.code, f.at_ms, f.connection),
            (FaultKind::Close, Some(1011), 5000, Connections::First)
        );
        let f = FaultSpec::parse("refuse=503/all").unwrap();
        assert_eq!((f.status, f.connection), (Some(503), Connections::All));
        let f = FaultSpec::parse("clock_jump=-5000@4000/1").unwrap();
        assert_eq!((f.by_ms, f.connection), (Some(-5000), Connections::Nth(1)));
        assert_eq!(FaultSpec::parse("duplicate").unwrap().at_ms, 0);
        for (bad, needle) in [
            ("explode@1", "unknown kind \"explode\""),
            ("stall@soon", "@soon is not milliseconds"),
            ("close@10", "a close fault needs a code"),
            ("close=99", "99 is not a close code"),
            ("refuse=200", "200 is not an error status"),
            ("close=70000", "not a number from 0 to 65535"),
            ("clock_jump", "needs by_ms"),
            ("drop/x", "connection \"x\""),
        ] {
            let e = FaultSpec::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn faults_start_at_their_audio_time_on_their_connection() {
        let specs = [
            FaultSpec::parse("stall@2000").unwrap(),
            FaultSpec::parse("refuse=503/1").unwrap(),
        ];
        let first = ConnectionFaults::for_connection(&specs, 0);
        let (early, end) = first.apply(1.92, output(vec![info(TurnEvent::Update, 1.92)]));
        assert_eq!((early.len(), end), (1, None));
        let (late, _) = first.apply(2.16, output(vec![info(TurnEvent::Update, 2.16)]));
        assert!(late.is_empty(), "stalled");
        assert!(ConnectionFaults::for_connection(&specs, 1).is_empty());
        assert_eq!(refusal(&specs, 1), Some(503));
        assert_eq!(refusal(&specs, 0), None);
    }

    #[test]
    fn clock_jumps_duplicates_and_endings() {
        let specs = [
            FaultSpec::parse("clock_jump=-1500@0/all").unwrap(),
            FaultSpec::parse("duplicate/all").unwrap(),
            FaultSpec::parse("close=1011@3000/all").unwrap(),
        ];
        let faults = ConnectionFaults::for_connection(&specs, 4);
        let (messages, end) = faults.apply(
            2.4,
            output(vec![
                info(TurnEvent::Update, 2.4),
                info(TurnEvent::EndOfTurn, 2.4),
            ]),
        );
        let ends: Vec<(TurnEvent, f64)> = messages
            .iter()
            .map(|m| match m {
                ServerMessage::TurnInfo(i) => (i.event.clone(), i.audio_window_end),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ends,
            vec![
                (TurnEvent::Update, 0.9),
                (TurnEvent::EndOfTurn, 0.9),
                (TurnEvent::EndOfTurn, 0.9)
            ]
        );
        assert_eq!(end, None);
        let (_, end) = faults.apply(3.0, output(vec![]));
        assert_eq!(end, Some(Ending::Close(1011, "emulated fault".into())));
        let drop = ConnectionFaults::for_connection(&[FaultSpec::parse("drop").unwrap()], 0);
        assert_eq!(drop.apply(0.0, output(vec![])).1, Some(Ending::Drop));
    }
}
