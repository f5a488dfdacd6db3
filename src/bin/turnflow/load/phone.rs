//! A phone caller, as Twilio or Telnyx would call: mu-law media every 20 ms, the agent's 40 ms
//! messages played on a carrier's real-time clock, every mark echoed once its audio has played.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use turnflow::server::telephony::carrier::{
    Carrier, CarrierCommand, FromCarrier, StreamStart, ToCarrier,
};

use super::{
    CallerPlan, CarrierKind, FRAME, Progress, SEND_PATIENCE, SendFailure, SessionResult,
    TurnSample, dial, ms, send, send_all, send_or_stall, speech_end, stalled,
};

/// The caller's speech as a phone line carries it (16 kHz decimated to 8 kHz by the server's own
/// resampler, mu-law), made once for every call, and where its speech ends (in bytes).
pub(super) struct PhoneSpeech {
    mulaw: Vec<u8>,
    end_of_speech: usize,
}

impl PhoneSpeech {
    pub(super) fn new(speech: &[i16]) -> Result<Self> {
        Ok(Self {
            mulaw: turnflow::server::telephony::to_phone_line(speech, 16000)
                .map_err(|e| anyhow::anyhow!(e))?,
            end_of_speech: speech_end(speech) / 2,
        })
    }
}

/// One phone call as a carrier places it: `connected` and `start`, the caller's speech as
/// 20 ms `media` messages in real time, the agent's audio played on a real-time clock with its
/// marks echoed once played (at once on `clear`), `stop` at the end. A turn's reply has ended
/// when no agent audio came for a second after some did.
pub(super) async fn one_call(
    url: String,
    kind: CarrierKind,
    speech: Arc<PhoneSpeech>,
    plan: CallerPlan,
    progress: Arc<Progress>,
) -> SessionResult {
    let CallerPlan {
        turns,
        barge_in_after,
        reply_patience,
    } = plan;
    let mut result = SessionResult::default();
    let mut socket = match dial(&url, None).await {
        Ok(socket) => socket,
        Err(failure) => {
            result.failure = Some(failure);
            return result;
        }
    };
    progress.open.fetch_add(1, Ordering::Relaxed);
    let (carrier, stream_id, call_id, encoding) = match kind {
        CarrierKind::Twilio => (Carrier::Twilio, "MZload", "CAload", "audio/x-mulaw"),
        CarrierKind::Telnyx => (Carrier::Telnyx, "load", "v3:load", "PCMU"),
    };
    let start = FromCarrier::Start(StreamStart {
        carrier,
        stream_id: stream_id.into(),
        call_id: call_id.into(),
        account_id: (carrier == Carrier::Twilio).then(|| "ACload".to_owned()),
        encoding: encoding.into(),
        sample_rate: 8000,
        channels: 1,
        parameters: Default::default(),
    });
    let write = |message: FromCarrier| Message::Text(message.to_json(carrier, stream_id).into());
    let echo = |name: String| write(FromCarrier::Mark { name });
    for message in [FromCarrier::Connected, start] {
        if let Err(e) = send(&mut socket, write(message)).await {
            result.failure = Some(e.or("the connection closed before start"));
            progress.ended(&result);
            return result;
        }
    }
    let (phone, end_of_speech) = (&speech.mulaw, speech.end_of_speech);
    let silence = [0xffu8; FRAME / 2];
    let mut playing_until = Instant::now();
    let mut marks: std::collections::VecDeque<(Instant, String)> = Default::default();
    let (mut turn, mut sequence, mut chunk) = (0u32, 1u64, 0u64);
    let mut position: Option<usize> = Some(0);
    let mut speech_end_sent: Option<Instant> = None;
    let mut last_agent: Option<Instant> = None;
    let mut waiting_since: Option<Instant> = None;
    let mut sample = TurnSample::default();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut hung_up = false;
    // Agent audio of this turn's reply received so far.
    let mut reply_received = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tick.tick(), if !hung_up => {
                let now = Instant::now();
                let mut due = Vec::new();
                while marks.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, name) = marks.pop_front().expect("checked");
                    due.push(echo(name));
                }
                let audio = match position {
                    Some(at) => {
                        let end = (at + FRAME / 2).min(phone.len());
                        if at < end_of_speech && end >= end_of_speech {
                            speech_end_sent = Some(now);
                        }
                        position = (end < phone.len()).then_some(end);
                        if position.is_none() {
                            waiting_since = Some(now);
                        }
                        &phone[at..end]
                    }
                    None => &silence[..],
                };
                sequence += 1;
                chunk += 1;
                due.push(write(FromCarrier::Media {
                    sequence: Some(sequence),
                    chunk: Some(chunk),
                    timestamp_ms: Some(chunk * 20),
                    audio: audio.to_vec(),
                }));
                if let Err(e) = send_all(&mut socket, due).await {
                    result.failure = Some(e.or("the server closed the call"));
                    break;
                }
                let replied = last_agent.is_some_and(|t| now - t > Duration::from_secs(1));
                let interrupting = barge_in_after.is_some_and(|after| reply_received >= after);
                if (position.is_none() && replied) || interrupting {
                    reply_received = Duration::ZERO;
                    result.turns.push(std::mem::take(&mut sample));
                    progress.turns.fetch_add(1, Ordering::Relaxed);
                    turn += 1;
                    (last_agent, waiting_since, speech_end_sent) = (None, None, None);
                    if turn == turns {
                        if let Some(stalled) = send_or_stall(&mut socket, write(FromCarrier::Stop)).await {
                            result.failure = Some(stalled);
                            break;
                        }
                        hung_up = true;
                    } else {
                        position = Some(0);
                    }
                } else if waiting_since.is_some_and(|t| now - t > reply_patience) && last_agent.is_none() {
                    result.failure = Some(format!("no reply within {reply_patience:?} in turn {turn}"));
                    break;
                }
            }
            message = socket.next() => {
                let now = Instant::now();
                let Some(Ok(Message::Text(text))) = message else {
                    if !hung_up {
                        result.failure = Some("the server closed the call".into());
                    }
                    break;
                };
                let Ok(command) = ToCarrier::parse(&text) else { continue };
                match command {
                    CarrierCommand::Media(mulaw) => {
                        let length = Duration::from_millis(mulaw.len() as u64 / 8);
                        playing_until = playing_until.max(now) + length;
                        if speech_end_sent.is_some() {
                            reply_received += length;
                        }
                        // The reply to this turn: agent audio after the caller's speech ended.
                        if let Some(sent) = speech_end_sent {
                            if sample.voice_to_voice_ms.is_none() {
                                sample.voice_to_voice_ms = Some(ms(sent, now));
                            }
                            last_agent = Some(now);
                        }
                    }
                    CarrierCommand::Mark(name) => marks.push_back((playing_until, name)),
                    CarrierCommand::Clear => {
                        let echoes = marks.drain(..).map(|(_, name)| echo(name));
                        if let Err(SendFailure::Stalled) = send_all(&mut socket, echoes.collect::<Vec<_>>()).await {
                            result.failure = Some(stalled());
                            break;
                        }
                        playing_until = now;
                    }
                }
            }
        }
    }
    let _ = tokio::time::timeout(SEND_PATIENCE, socket.close(None)).await;
    progress.ended(&result);
    result
}
