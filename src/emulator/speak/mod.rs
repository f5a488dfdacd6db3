//! The emulator's `/v2/speak`: Deepgram Flux TTS, the speaking half, beside `/v2/listen`.
//!
//! `session` is the pure turn machine and voice; this module drives one connection: `Connected`
//! first, audio paced like a real voice ([`SpeakBehaviour::first_audio`] before a turn's first
//! frame, then [`SpeakBehaviour::pace`] times faster than real time), the idle limit (any text
//! frame, ping or pong resets it; `Error NET-0004` then a close) and the session limit
//! (`Error NET-0003`). Fatal errors are an `Error` message, then a close whose code follows
//! `/v1/speak`'s mapping. The choices where Deepgram is silent are written down in
//! `docs/flux-tts-emulator.md`.

mod session;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::flux::speak::{SpeakEvent, SpeakRequest};
use crate::ws::{Connection, FrameSink, WireFrame};
pub(crate) use session::SpeakSession;
use session::{SpeakOutput, close_code};

/// How the emulated voice behaves, and what goes wrong on demand.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SpeakBehaviour {
    /// Before a turn's first audio.
    pub first_audio: Duration,
    /// How much faster than real time audio is produced (2.0: a second of speech in half a
    /// second).
    pub pace: f64,
    /// The socket's longest life (the service's: one hour).
    pub session_limit: Duration,
    /// Faults on demand.
    pub faults: Vec<SpeakFault>,
}

impl Default for SpeakBehaviour {
    fn default() -> Self {
        Self {
            first_audio: Duration::from_millis(150),
            pace: 2.0,
            session_limit: Duration::from_secs(3600),
            faults: Vec::new(),
        }
    }
}

/// A misbehaviour of the emulated voice.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpeakFault {
    /// On the first connection, a fatal `Error` with this code right after turn `turn`
    /// (counted from 0) sent its first frame of audio.
    ErrorInTurn {
        /// The turn.
        turn: u32,
        /// The error code (`NET-0000`, ...).
        code: String,
    },
    /// `Interrupt`s are read and never answered; the turn plays on.
    IgnoreInterrupts,
    /// Every `Interrupt` is answered this late.
    SlowInterrupts(Duration),
}

impl SpeakFault {
    /// Reads `error=CODE@TURN` (`error=NET-0000@1`), `ignore-interrupts` or
    /// `slow-interrupts=MS`, as `turnflow emulate --speak-fault` takes them.
    ///
    /// # Errors
    /// What was wrong with `spec`, and the forms allowed.
    pub fn parse(spec: &str) -> Result<Self, String> {
        const FORMS: &str =
            "error=CODE@TURN (error=NET-0000@1), ignore-interrupts or slow-interrupts=MS";
        let (kind, arg) = spec.split_once('=').unwrap_or((spec, ""));
        match (kind, arg) {
            ("ignore-interrupts", "") => Ok(SpeakFault::IgnoreInterrupts),
            ("slow-interrupts", ms) => ms
                .parse()
                .map(|ms| SpeakFault::SlowInterrupts(Duration::from_millis(ms)))
                .map_err(|_| {
                    format!(
                        "{spec:?}: slow-interrupts takes milliseconds, e.g. slow-interrupts=800"
                    )
                }),
            ("error", arg) => {
                let (code, turn) = arg.split_once('@').ok_or_else(|| {
                    format!("{spec:?}: error takes CODE@TURN, e.g. error=NET-0000@1")
                })?;
                let known = ["MESSAGE-", "DATA-", "BIG-", "NET-"];
                if !known.iter().any(|p| code.starts_with(p)) {
                    return Err(format!(
                        "{spec:?}: {code:?} is not a Flux TTS error code (MESSAGE-*, DATA-*, BIG-*, NET-*)"
                    ));
                }
                let turn = turn
                    .parse()
                    .map_err(|_| format!("{spec:?}: the turn is a number counted from 0"))?;
                Ok(SpeakFault::ErrorInTurn {
                    turn,
                    code: code.to_owned(),
                })
            }
            _ => Err(format!("{spec:?}: expected {FORMS}")),
        }
    }
}

/// One frame of audio: 100 ms, the synthetic voice's chunk, so the two compare like for like.
const FRAME_MS: u64 = 100;

async fn send(sink: &mut FrameSink, frame: WireFrame) -> bool {
    tokio::time::timeout(Duration::from_secs(10), sink.send(frame))
        .await
        .is_ok_and(|sent| sent.is_ok())
}

async fn close(sink: &mut FrameSink, code: &str, description: String) {
    let error = SpeakEvent::Error {
        code: code.into(),
        description,
    };
    let _ = send(sink, WireFrame::Text(error.to_json())).await;
    let _ = send(
        sink,
        WireFrame::Close(Some((close_code(code), code.into()))),
    )
    .await;
}

/// Drives one `/v2/speak` session over `connection` until either side closes, a limit or a
/// fatal error ends it, or `cancel` fires.
pub(crate) async fn run_speak_connection(
    mut connection: Connection,
    mut session: SpeakSession,
    behaviour: SpeakBehaviour,
    first_connection: bool,
    idle_timeout: Duration,
    cancel: CancellationToken,
) {
    if !send(
        &mut connection.sink,
        WireFrame::Text(session.connected().to_json()),
    )
    .await
    {
        return;
    }
    let opened = Instant::now();
    let session_end = opened + behaviour.session_limit;
    let mut idle_end = opened + idle_timeout;
    let frame_samples = u64::from(session.sample_rate()) * FRAME_MS / 1000;
    let frame_gap = Duration::from_secs_f64(FRAME_MS as f64 / 1000.0 / behaviour.pace.max(0.01));
    let mut next_audio: Option<Instant> = None;
    let mut turns_started = 0u32;
    let error_in_turn = behaviour.faults.iter().find_map(|f| match f {
        SpeakFault::ErrorInTurn { turn, code } if first_connection => Some((*turn, code.clone())),
        _ => None,
    });
    let ignore_interrupts = behaviour.faults.contains(&SpeakFault::IgnoreInterrupts);
    let slow_interrupts = behaviour.faults.iter().find_map(|f| match f {
        SpeakFault::SlowInterrupts(after) => Some(*after),
        _ => None,
    });
    loop {
        match session.ready() {
            Some(first) if next_audio.is_none() => {
                let wait = if first {
                    behaviour.first_audio
                } else {
                    Duration::ZERO
                };
                next_audio = Some(Instant::now() + wait);
            }
            None => next_audio = None,
            Some(_) => {}
        }
        let output = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                let _ = send(&mut connection.sink, WireFrame::Close(Some((1001, "emulator shutting down".into())))).await;
                return;
            }
            () = tokio::time::sleep_until(session_end) => {
                info!("flux tts session limit reached, closing");
                close(&mut connection.sink, "NET-0003", "the session reached its one-hour limit".into()).await;
                return;
            }
            () = tokio::time::sleep_until(idle_end) => {
                info!("flux tts socket idle, closing");
                close(&mut connection.sink, "NET-0004", format!("no client message for {} seconds", idle_timeout.as_secs())).await;
                return;
            }
            () = async { tokio::time::sleep_until(next_audio.expect("guarded")).await }, if next_audio.is_some() => {
                let first = session.ready() == Some(true);
                next_audio = Some(next_audio.expect("guarded") + frame_gap);
                let mut output = session.next_audio(frame_samples);
                if first {
                    if let Some((turn, code)) = error_in_turn.as_ref().filter(|(turn, _)| *turn == turns_started) {
                        // The turn's first frame goes out, then the error: a reply broken
                        // after the listener heard some of it.
                        info!(turn, code = %code, "emulated fault: error mid-turn");
                        output.truncate(1);
                        output.push(SpeakOutput::Fatal {
                            code: code.clone(),
                            description: "emulated fault".into(),
                        });
                    }
                    turns_started += 1;
                }
                output
            }
            frame = connection.stream.next() => {
                let text = match frame {
                    Some(Ok(WireFrame::Text(text))) => text,
                    Some(Ok(WireFrame::Ping(_) | WireFrame::Pong(_))) => {
                        idle_end = Instant::now() + idle_timeout;
                        continue;
                    }
                    Some(Ok(WireFrame::Binary(_))) => {
                        close(&mut connection.sink, "DATA-0000", "the socket takes JSON text frames only".into()).await;
                        return;
                    }
                    Some(Ok(WireFrame::Close(_))) | None => return,
                    Some(Err(e)) => {
                        debug!(error = %e, "flux tts client connection failed");
                        return;
                    }
                };
                idle_end = Instant::now() + idle_timeout;
                let faulty = ignore_interrupts || slow_interrupts.is_some();
                if faulty && matches!(SpeakRequest::parse(&text), Ok(SpeakRequest::Interrupt { .. })) {
                    if ignore_interrupts {
                        info!("emulated fault: interrupt ignored");
                        continue;
                    }
                    if let Some(after) = slow_interrupts {
                        tokio::time::sleep(after).await;
                    }
                }
                session.on_text(&text)
            }
        };
        for item in output {
            let sent = match item {
                SpeakOutput::Event(event) => {
                    send(&mut connection.sink, WireFrame::Text(event.to_json())).await
                }
                SpeakOutput::Audio(bytes) => {
                    send(&mut connection.sink, WireFrame::Binary(bytes.into())).await
                }
                SpeakOutput::Fatal { code, description } => {
                    info!(code = %code, %description, "flux tts fatal error");
                    close(&mut connection.sink, &code, description).await;
                    return;
                }
                SpeakOutput::Closed => {
                    let _ = send(
                        &mut connection.sink,
                        WireFrame::Close(Some((1000, String::new()))),
                    )
                    .await;
                    return;
                }
            };
            if !sent {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_from_the_command_line_form() {
        assert_eq!(
            SpeakFault::parse("error=NET-0000@1"),
            Ok(SpeakFault::ErrorInTurn {
                turn: 1,
                code: "NET-0000".into()
            })
        );
        assert_eq!(
            SpeakFault::parse("ignore-interrupts"),
            Ok(SpeakFault::IgnoreInterrupts)
        );
        assert_eq!(
            SpeakFault::parse("slow-interrupts=800"),
            Ok(SpeakFault::SlowInterrupts(Duration::from_millis(800)))
        );
        for (bad, names) in [
            ("error=OOPS@1", "not a Flux TTS error code"),
            ("error=NET-0000", "CODE@TURN"),
            ("error=NET-0000@x", "counted from 0"),
            ("slow-interrupts=soon", "milliseconds"),
            ("explode", "ignore-interrupts"),
        ] {
            let e = SpeakFault::parse(bad).unwrap_err();
            assert!(e.contains(names), "{bad}: {e}");
        }
    }
}
