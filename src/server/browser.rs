//! A browser session as a [`Transport`]: the session protocol (`docs/protocol.md`) over one
//! WebSocket, PCM16 both ways, playback reports for what the user heard.
//!
//! The conversation itself, its deadlines and limits are the runner's ([`crate::call`]); this
//! is the codec: binary messages are audio, text messages are the protocol's JSON, and the
//! end is an `error` (when there is one), an `end` and a close code that says why.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use tracing::{Instrument, info, info_span, warn};

use super::State;
use super::protocol::{End, Failure, FromClient, PROTOCOL_VERSION, Ready, ToClient, close_code};
use crate::call::{
    AudioFormat, EndError, Ending, FaultKind, Gone, Inbound, Outbound, PlaybackClock, SessionEnd,
    Start, Transport,
};
use crate::flux::Encoding;

/// Serves one upgraded connection until its session ends.
pub(super) async fn serve(socket: WebSocket, state: Arc<State>) {
    let id = uuid::Uuid::new_v4().to_string();
    let span = info_span!("connection", session = %id);
    async move {
        state.metrics.session_started();
        let mut browser = Browser { socket };
        let ending = state
            .call(&id, &state.browser, state.reporting())
            .run(&mut browser)
            .await;
        state.call_ended(&id, "browser", &ending);
        info!(
            outcome = ending.outcome.as_str(),
            turns = ending.turns,
            detail = %ending.detail,
            "session ended"
        );
    }
    .instrument(span)
    .await
}

/// One browser's WebSocket.
struct Browser {
    socket: WebSocket,
}

fn text(message: &ToClient) -> Message {
    Message::Text(Utf8Bytes::from(message.to_json()))
}

/// The `end` message's reason.
pub(super) fn reason(outcome: SessionEnd) -> &'static str {
    match outcome {
        SessionEnd::Completed => "stopped",
        SessionEnd::ClientClosed => "client_closed",
        SessionEnd::ProtocolError => "protocol_error",
        SessionEnd::SttFailed => "stt_failed",
        SessionEnd::Shutdown => "server_shutdown",
    }
}

/// The close code of an ending.
fn close(ending: &Ending) -> u16 {
    match &ending.error {
        Some(error) => match error.kind {
            FaultKind::Policy => close_code::POLICY,
            FaultKind::Invalid => close_code::INVALID,
            FaultKind::Unsupported => close_code::UNSUPPORTED,
            FaultKind::TooBig => close_code::TOO_BIG,
            FaultKind::Internal => close_code::INTERNAL,
        },
        None if ending.outcome == SessionEnd::Shutdown => close_code::GOING_AWAY,
        None => close_code::NORMAL,
    }
}

impl Transport for Browser {
    fn playback_clock(&self) -> PlaybackClock {
        PlaybackClock::Reports
    }

    async fn recv(&mut self) -> Result<Option<Inbound>, EndError> {
        let message = match self.socket.recv().await {
            Some(Err(e)) if super::too_big(&e) => {
                return Err(EndError::new(
                    "too_big",
                    "a message over the size limit (send 20 ms audio frames and small JSON messages)",
                    FaultKind::TooBig,
                ));
            }
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(message)) => message,
        };
        Ok(Some(match message {
            Message::Binary(audio) => Inbound::Audio(audio),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => Inbound::Other,
            Message::Text(text) => match FromClient::parse(&text) {
                Ok(FromClient::Start(start)) => Inbound::Start(Start::new(AudioFormat {
                    encoding: Encoding::Linear16,
                    sample_rate: start.sample_rate,
                })),
                Ok(FromClient::Played(played)) => Inbound::Playing {
                    samples: played.samples,
                    buffered: played.buffered,
                },
                // A WebSocket's player reports exactly what it played.
                Ok(FromClient::Playout(_)) => Inbound::Other,
                Ok(FromClient::Stop) => Inbound::Stop,
                Err(e) => return Err(EndError::new(e.code(), e.to_string(), FaultKind::Invalid)),
            },
        }))
    }

    async fn send(&mut self, item: Outbound<'_>) -> Result<(), Gone> {
        let message = match item {
            Outbound::Ready {
                call,
                input,
                output_rate,
            } => text(&ToClient::Ready(Ready {
                version: PROTOCOL_VERSION,
                session: call.to_owned(),
                input_sample_rate: input.sample_rate,
                output_sample_rate: output_rate,
                frame_ms: 20,
            })),
            Outbound::Audio(speech) => {
                Message::Binary(crate::audio::encode(Encoding::Linear16, speech.pcm).into())
            }
            Outbound::Clear => text(&ToClient::Clear),
            Outbound::Event(event) => text(&ToClient::Event(event.clone())),
            Outbound::Turn(turn) => text(&ToClient::Turn(Box::new(turn.clone()))),
            // Without a cutter no clear is left half-written.
            Outbound::FlushClear => return Ok(()),
        };
        self.socket.send(message).await.map_err(|_| Gone)
    }

    async fn finish(&mut self, ending: &Ending) {
        if ending.outcome == SessionEnd::ClientClosed {
            return;
        }
        let socket = &mut self.socket;
        if let Some(error) = &ending.error {
            warn!(code = error.code, message = %error.message, "closing the session");
            let _ = socket
                .send(text(&ToClient::Error(Failure {
                    code: error.code.to_owned(),
                    message: error.message.clone(),
                    fatal: true,
                })))
                .await;
        }
        let _ = socket
            .send(text(&ToClient::End(End {
                reason: reason(ending.outcome).to_owned(),
                turns: ending.turns,
            })))
            .await;
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: close(ending),
                reason: Utf8Bytes::from_static(""),
            })))
            .await;
        // The closing handshake: read until the client's close, so what it sent meanwhile is
        // consumed and the close frame is not lost to a reset connection.
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    }
}
