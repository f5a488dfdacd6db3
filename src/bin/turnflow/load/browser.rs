//! A browser caller: the session protocol, its speech as PCM frames, the agent's audio played
//! on a real-time clock and reported as played.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use turnflow::engine::EngineEvent;
use turnflow::flux::Encoding;
use turnflow::server::protocol::{FromClient, PROTOCOL_VERSION, Start, ToClient};

use super::{
    CONNECT_PATIENCE, CallerPlan, FRAME, PAUSE_AFTER_REPLY, Playback, Progress, SEND_PATIENCE,
    SessionResult, TurnSample, dial, ms, send, send_all, send_or_stall, speech_end,
};

/// The caller's speech as a browser sends it, encoded once for every session: each 20 ms
/// frame is a slice of it, not a copy.
pub(super) struct BrowserSpeech {
    pcm: bytes::Bytes,
    silence: bytes::Bytes,
    /// Where its speech ends, in samples.
    end_of_speech: usize,
}

impl BrowserSpeech {
    pub(super) fn new(speech: &[i16]) -> Self {
        Self {
            pcm: turnflow::audio::encode(Encoding::Linear16, speech).into(),
            silence: vec![0u8; FRAME * 2].into(),
            end_of_speech: speech_end(speech),
        }
    }

    fn samples(&self) -> usize {
        self.pcm.len() / 2
    }
}

pub(super) async fn one_session(
    url: String,
    token: Option<String>,
    speech: Arc<BrowserSpeech>,
    plan: CallerPlan,
    progress: Arc<Progress>,
) -> SessionResult {
    let CallerPlan {
        turns,
        barge_in_after,
        reply_patience,
    } = plan;
    let mut result = SessionResult::default();
    let mut socket = match dial(&url, token.as_deref()).await {
        Ok(socket) => socket,
        Err(failure) => {
            result.failure = Some(failure);
            return result;
        }
    };
    progress.open.fetch_add(1, Ordering::Relaxed);
    let start = FromClient::Start(Start {
        version: PROTOCOL_VERSION,
        sample_rate: 16000,
    })
    .to_json();
    if let Err(e) = send(&mut socket, Message::Text(start.into())).await {
        result.failure = Some(e.or("the connection closed before start"));
        progress.ended(&result);
        return result;
    }
    let ready_wait = tokio::time::sleep(CONNECT_PATIENCE);
    tokio::pin!(ready_wait);
    let end_of_speech = speech.end_of_speech;
    let mut playback = Playback {
        rate: 16000.0,
        received: 0,
        dropped: 0,
        buffered_until: Instant::now(),
    };
    let mut ready = false;
    let mut turn = 0u32;
    // Where the caller is: speaking (position in the WAV), waiting for the reply, or pausing.
    let mut position: Option<usize> = None;
    let mut speech_end_sent: Option<Instant> = None;
    let mut finished_at: Option<Instant> = None;
    let mut sample = TurnSample::default();
    let mut reply_ended = false;
    let mut waiting_since: Option<Instant> = None;
    let mut pause_until: Option<Instant> = None;
    let mut stopping = false;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // Playback is reported every fifth frame (100 ms) on the frame's own wakeup, and only
    // when there is news: a caller listening to silence says nothing.
    let mut ticks = 0u64;
    let mut last_report = None;
    // Agent audio of this turn's reply received so far.
    let mut reply_received = Duration::ZERO;
    'session: loop {
        tokio::select! {
            () = &mut ready_wait, if !ready => {
                result.failure = Some(format!("no ready within {CONNECT_PATIENCE:?} of start"));
                break;
            }
            _ = tick.tick(), if ready && !stopping => {
                let now = Instant::now();
                let frame = match position {
                    Some(at) => {
                        let end = (at + FRAME).min(speech.samples());
                        if at < end_of_speech && end >= end_of_speech {
                            speech_end_sent = Some(now);
                        }
                        position = (end < speech.samples()).then_some(end);
                        if position.is_none() {
                            waiting_since = Some(now);
                        }
                        speech.pcm.slice(at * 2..end * 2)
                    }
                    None => speech.silence.clone(),
                };
                let mut due = vec![Message::Binary(frame)];
                ticks += 1;
                if ticks.is_multiple_of(5) && playback.received > 0 {
                    let played = playback.report(now);
                    if Some(played) != last_report {
                        due.push(Message::Text(FromClient::Played(played).to_json().into()));
                        last_report = Some(played);
                    }
                }
                if let Err(e) = send_all(&mut socket, due).await {
                    result.failure = Some(e.or("the server closed the connection mid-session"));
                    break;
                }
                if waiting_since.is_some_and(|t| now - t > reply_patience) && !reply_ended {
                    result.failure = Some(format!("no reply within {reply_patience:?} in turn {turn}"));
                    break;
                }
                if reply_ended && pause_until.is_none() {
                    pause_until = Some(now + PAUSE_AFTER_REPLY);
                }
                let interrupting = !reply_ended
                    && barge_in_after.is_some_and(|after| reply_received >= after);
                if pause_until.is_some_and(|t| now >= t) || interrupting {
                    reply_received = Duration::ZERO;
                    result.turns.push(std::mem::take(&mut sample));
                    progress.turns.fetch_add(1, Ordering::Relaxed);
                    turn += 1;
                    (reply_ended, pause_until, waiting_since, finished_at, speech_end_sent) =
                        (false, None, None, None, None);
                    if turn == turns {
                        stopping = true;
                        let stop = FromClient::Stop.to_json();
                        if let Some(stalled) = send_or_stall(&mut socket, Message::Text(stop.into())).await {
                            result.failure = Some(stalled);
                            break;
                        }
                    } else {
                        position = Some(0);
                    }
                }
            }
            message = socket.next() => {
                let now = Instant::now();
                let Some(Ok(message)) = message else {
                    if !stopping {
                        result.failure = Some("the server closed the connection mid-session".into());
                    }
                    break;
                };
                match message {
                    Message::Binary(audio) => {
                        playback.receive(audio.len() as u64 / 2, now);
                        if speech_end_sent.is_some() {
                            reply_received += Duration::from_secs_f64(audio.len() as f64 / 2.0 / playback.rate);
                        }
                        if let Some(at) = finished_at
                            && sample.response_latency_ms.is_none()
                        {
                            sample.response_latency_ms = Some(ms(at, now));
                            sample.voice_to_voice_ms = speech_end_sent.map(|t| ms(t, now));
                        }
                    }
                    Message::Text(text) => {
                        let Ok(m) = ToClient::parse(&text) else { continue };
                        match m {
                            ToClient::Ready(accepted) => {
                                ready = true;
                                playback.rate = f64::from(accepted.output_sample_rate);
                                position = Some(0);
                            }
                            ToClient::Event(EngineEvent::UserFinished { .. }) => finished_at = Some(now),
                            ToClient::Clear => {
                                playback.clear(now);
                                let played = FromClient::Played(playback.report(now)).to_json();
                                if let Some(stalled) = send_or_stall(&mut socket, Message::Text(played.into())).await {
                                    result.failure = Some(stalled);
                                    break 'session;
                                }
                            }
                            ToClient::Event(EngineEvent::ResponseEnded { .. }) if finished_at.is_some() => reply_ended = true,
                            ToClient::Turn(turn) => {
                                sample.server_response_latency_ms = turn.response_latency_ms;
                                sample.engine_overhead_ms = turn.engine_overhead_ms;
                                sample.barge_in_stop_ms = turn.barge_in_stop_ms;
                                sample.speculation = Some(turn.speculation);
                                sample.speculation_withdrawn = turn.speculation_withdrawn;
                                sample.lead_ms = turn.lead_ms;
                            }
                            ToClient::Error(error) => {
                                result.failure = Some(format!("server error {}: {}", error.code, error.message));
                            }
                            ToClient::End(end) if end.reason != "stopped" && result.failure.is_none() => {
                                result.failure = Some(format!("ended: {:?}", end.reason));
                            }
                            _ => {}
                        }
                    }
                    Message::Close(_) => {
                        if !stopping && result.failure.is_none() {
                            result.failure = Some("the server closed the connection mid-session".into());
                        }
                        break;
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
