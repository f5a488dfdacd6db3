//! A phone caller, as Twilio or Telnyx would call: mu-law media every 20 ms, the agent's 40 ms
//! messages played on a carrier's real-time clock, every mark echoed once its audio has played.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{
    CarrierKind, FRAME, Progress, REPLY_PATIENCE, SEND_PATIENCE, SendFailure, SessionResult,
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

/// What the load generator reads of a carrier-bound message, in place.
#[derive(serde::Deserialize)]
struct CarrierMessage<'a> {
    event: &'a str,
    #[serde(borrow)]
    media: Option<CarrierPayload<'a>>,
    #[serde(borrow)]
    mark: Option<CarrierMark<'a>>,
}

#[derive(serde::Deserialize)]
struct CarrierPayload<'a> {
    payload: &'a str,
}

#[derive(serde::Deserialize)]
struct CarrierMark<'a> {
    name: &'a str,
}

/// One phone call as a carrier places it: `connected` and `start`, the caller's speech as
/// 20 ms `media` messages in real time, the agent's audio played on a real-time clock with its
/// marks echoed once played (at once on `clear`), `stop` at the end. A turn's reply has ended
/// when no agent audio came for a second after some did.
pub(super) async fn one_call(
    url: String,
    kind: CarrierKind,
    speech: Arc<PhoneSpeech>,
    turns: u32,
    barge_in_after: Option<Duration>,
    progress: Arc<Progress>,
) -> SessionResult {
    use base64::Engine as _;
    let mut result = SessionResult::default();
    let mut socket = match dial(&url, None).await {
        Ok(socket) => socket,
        Err(failure) => {
            result.failure = Some(failure);
            return result;
        }
    };
    progress.open.fetch_add(1, Ordering::Relaxed);
    let twilio = kind == CarrierKind::Twilio;
    let start = if twilio {
        json!({"event": "start", "sequenceNumber": "1", "start": {"accountSid": "AC0",
            "streamSid": "MZload", "callSid": "CAload", "tracks": ["inbound"], "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
            "streamSid": "MZload"})
    } else {
        json!({"event": "start", "sequence_number": "1", "start": {"call_control_id": "v3:load",
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
            "stream_id": "load"})
    };
    let stream_key = if twilio { "streamSid" } else { "stream_id" };
    let stream_id = if twilio { "MZload" } else { "load" };
    for message in [json!({"event": "connected", "version": "1.0.0"}), start] {
        if let Err(e) = send(&mut socket, Message::Text(message.to_string().into())).await {
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
                    let echo = json!({"event": "mark", stream_key: stream_id, "mark": {"name": name}});
                    due.push(Message::Text(echo.to_string().into()));
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
                // Written straight into one string, as a carrier's media messages are many.
                let mut media = format!(
                    r#"{{"event":"media","sequenceNumber":"{sequence}","sequence_number":"{sequence}","{stream_key}":"{stream_id}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{}","payload":""#,
                    chunk * 20
                );
                base64::engine::general_purpose::STANDARD.encode_string(audio, &mut media);
                media.push_str("\"}}");
                due.push(Message::Text(media.into()));
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
                        let stop = json!({"event": "stop", stream_key: stream_id, "stop": {}});
                        if let Some(stalled) = send_or_stall(&mut socket, Message::Text(stop.to_string().into())).await {
                            result.failure = Some(stalled);
                            break;
                        }
                        hung_up = true;
                    } else {
                        position = Some(0);
                    }
                } else if waiting_since.is_some_and(|t| now - t > REPLY_PATIENCE) && last_agent.is_none() {
                    result.failure = Some(format!("no reply within {REPLY_PATIENCE:?} in turn {turn}"));
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
                let Ok(m) = serde_json::from_str::<CarrierMessage>(&text) else { continue };
                match m.event {
                    "media" => {
                        let bytes = m.media.map_or(0, |media| media.payload.len() * 3 / 4);
                        let length = Duration::from_millis(bytes as u64 / 8);
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
                    "mark" => {
                        let name = m.mark.map(|mark| mark.name).unwrap_or_default().to_owned();
                        marks.push_back((playing_until, name));
                    }
                    "clear" => {
                        let echoes = marks.drain(..).map(|(_, name)| {
                            let echo = json!({"event": "mark", stream_key: stream_id, "mark": {"name": name}});
                            Message::Text(echo.to_string().into())
                        });
                        if let Err(SendFailure::Stalled) = send_all(&mut socket, echoes.collect::<Vec<_>>()).await {
                            result.failure = Some(stalled());
                            break;
                        }
                        playing_until = now;
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = tokio::time::timeout(SEND_PATIENCE, socket.close(None)).await;
    progress.ended(&result);
    result
}
