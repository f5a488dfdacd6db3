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
//! server does the I/O. The faults are described by [`FaultSpec`]s, from a scenario's `faults`
//! list or from `turnflow emulate --fault SPEC` ([`FaultSpec::parse`]).

use super::session::Output;
use crate::flux::{ServerMessage, TurnEvent};
use crate::scenario::{FaultKind, FaultSpec};

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
