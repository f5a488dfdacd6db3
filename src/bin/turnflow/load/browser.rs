//! A browser caller: the session protocol, its speech as PCM frames, the agent's audio played
//! on a real-time clock and reported as played.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use turnflow::flux::Encoding;
use turnflow::server::protocol::{FromClient, PROTOCOL_VERSION, Start, ToClient};

use super::turns::{Next, Turns};
use super::{
    CONNECT_PATIENCE, CallerPlan, FRAME, Playback, Progress, SEND_PATIENCE, SessionResult, dial,
    send, send_all, send_or_stall, speech_end,
};

/// The caller's speech as a browser sends it, encoded once for every session: each 20 ms
/// frame is a slice of it, not a copy.
pub(super) struct BrowserSpeech {
    pub(super) pcm: bytes::Bytes,
    pub(super) silence: bytes::Bytes,
    /// Where its speech ends, in samples.
    pub(super) end_of_speech: usize,
}

impl BrowserSpeech {
    pub(super) fn new(speech: &[i16]) -> Self {
        Self {
            pcm: turnflow::audio::encode(Encoding::Linear16, speech).into(),
            silence: vec![0u8; FRAME * 2].into(),
            end_of_speech: speech_end(speech),
        }
    }

    pub(super) fn samples(&self) -> usize {
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
    let mut socket = match dial(&url, token.as_deref()).await {
        Ok(socket) => socket,
        Err(failure) => {
            return SessionResult {
                failure: Some(failure),
                ..SessionResult::default()
            };
        }
    };
    progress.open.fetch_add(1, Ordering::Relaxed);
    let mut turns = Turns::new(plan, speech, progress.clone());
    let start = FromClient::Start(Start {
        version: PROTOCOL_VERSION,
        sample_rate: 16000,
    })
    .to_json();
    if let Err(e) = send(&mut socket, Message::Text(start.into())).await {
        turns.result.failure = Some(e.or("the connection closed before start"));
        progress.ended(&turns.result);
        return turns.result;
    }
    let ready_wait = tokio::time::sleep(CONNECT_PATIENCE);
    tokio::pin!(ready_wait);
    let mut playback = Playback {
        rate: 16000.0,
        received: 0,
        dropped: 0,
        buffered_until: Instant::now(),
    };
    let mut ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // Playback is reported every fifth frame (100 ms) on the frame's own wakeup, and only
    // when there is news: a caller listening to silence says nothing.
    let mut ticks = 0u64;
    let mut last_report = None;
    'session: loop {
        tokio::select! {
            () = &mut ready_wait, if !ready => {
                turns.result.failure = Some(format!("no ready within {CONNECT_PATIENCE:?} of start"));
                break;
            }
            _ = tick.tick(), if ready && !turns.stopping() => {
                let now = Instant::now();
                let mut due = vec![Message::Binary(turns.frame(now).pcm)];
                ticks += 1;
                if ticks.is_multiple_of(5) && playback.received > 0 {
                    let played = playback.report(now);
                    if Some(played) != last_report {
                        due.push(Message::Text(FromClient::Played(played).to_json().into()));
                        last_report = Some(played);
                    }
                }
                if let Err(e) = send_all(&mut socket, due).await {
                    turns.result.failure = Some(e.or("the server closed the connection mid-session"));
                    break;
                }
                match turns.after_frame(now) {
                    Next::Continue => {}
                    Next::Failed => break,
                    Next::Stop => {
                        let stop = FromClient::Stop.to_json();
                        if let Some(stalled) = send_or_stall(&mut socket, Message::Text(stop.into())).await {
                            turns.result.failure = Some(stalled);
                            break;
                        }
                    }
                }
            }
            message = socket.next() => {
                let now = Instant::now();
                let Some(Ok(message)) = message else {
                    if !turns.stopping() {
                        turns.result.failure = Some("the server closed the connection mid-session".into());
                    }
                    break;
                };
                match message {
                    Message::Binary(audio) => {
                        let samples = audio.len() as u64 / 2;
                        playback.receive(samples, now);
                        turns.agent_audio(Duration::from_secs_f64(samples as f64 / playback.rate), now);
                    }
                    Message::Text(text) => {
                        let Ok(m) = ToClient::parse(&text) else { continue };
                        turns.message(&m, now);
                        match m {
                            ToClient::Ready(accepted) => {
                                ready = true;
                                // The microphone starts now: ticks missed while connecting
                                // would otherwise go out at once, ahead of real time.
                                tick.reset();
                                playback.rate = f64::from(accepted.output_sample_rate);
                                turns.ready();
                            }
                            ToClient::Clear => {
                                playback.clear(now);
                                let played = FromClient::Played(playback.report(now)).to_json();
                                if let Some(stalled) = send_or_stall(&mut socket, Message::Text(played.into())).await {
                                    turns.result.failure = Some(stalled);
                                    break 'session;
                                }
                            }
                            _ => {}
                        }
                    }
                    Message::Close(_) => {
                        if !turns.stopping() && turns.result.failure.is_none() {
                            turns.result.failure = Some("the server closed the connection mid-session".into());
                        }
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = tokio::time::timeout(SEND_PATIENCE, socket.close(None)).await;
    progress.ended(&turns.result);
    turns.result
}
