//! Faults a Flux server can be told to commit, as data: what goes wrong, on which connection,
//! and from which moment of its audio. A scenario lists them (`faults`), `turnflow emulate
//! --fault SPEC` parses them ([`FaultSpec::parse`]), and the emulator commits them.

use serde::{Deserialize, Deserializer};

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
    pub(crate) fn matches(self, connection: u32) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
