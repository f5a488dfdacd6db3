//! A WebRTC caller: the offer to `/webrtc`, its speech as Opus, the protocol on the data
//! channel, the agent's Opus decoded (with loss concealment) as it arrives, as a browser's is.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use turnflow::audio::opus::{FRAME_SAMPLES, LossStats, SAMPLE_RATE};
use turnflow::server::protocol::{FromClient, PROTOCOL_VERSION, Playout, Start};
use turnflow::server::webrtc::{
    CALLER_RATE, CallerEvent, CallerStats, EncodedSpeech, WebRtcCaller, Wire,
};

use super::summary::WebRtcMedia;
use super::turns::{Next, Turns};
use super::{BrowserSpeech, CONNECT_PATIENCE, CallerPlan, Progress, SessionResult};

/// IPv4's and UDP's headers, which the datagram counts leave out.
const IP_UDP_BYTES: f64 = 28.0;
/// How long a caller waits, after the answer, for ICE, DTLS and the data channel to finish and
/// the server's `ready`. Longer than a WebSocket's upgrade: on a lossy network each of those
/// retransmits on its own timer (DTLS after 1 s, the data channel's messages after 3 s, each
/// doubling), as a browser's would, and a browser waits that out.
const SETUP_PATIENCE: Duration = Duration::from_secs(20);
/// What the caller tells the server its playout takes: it decodes each packet as it arrives.
const PLAYOUT_MS: u32 = 20;

/// One caller's media, over `seconds` of connection.
fn media_of(stats: &CallerStats, seconds: f64) -> WebRtcMedia {
    let LossStats {
        decoded,
        lost,
        recovered,
        concealed,
        late,
        ..
    } = stats.received;
    let mut media = WebRtcMedia {
        session_seconds: seconds,
        packets_sent: stats.packets_sent,
        packets_received: decoded,
        packets_lost: lost,
        packets_recovered: recovered,
        frames_concealed: concealed,
        packets_late: late,
        ..WebRtcMedia::default()
    };
    let per_second = f64::from(SAMPLE_RATE) / FRAME_SAMPLES as f64;
    let streaming = |wire: &Wire| {
        if wire.media_datagrams == 0 {
            return 0.0;
        }
        let size = wire.media_bytes as f64 / wire.media_datagrams as f64 + IP_UDP_BYTES;
        size * 8.0 * per_second / 1000.0
    };
    let average = |wire: &Wire| {
        let bytes = wire.bytes as f64 + wire.datagrams as f64 * IP_UDP_BYTES;
        if seconds > 0.0 {
            bytes * 8.0 / seconds / 1000.0
        } else {
            0.0
        }
    };
    media.kbit_per_s_up = streaming(&stats.sent);
    media.kbit_per_s_down = streaming(&stats.received_wire);
    media.average_kbit_per_s_up = average(&stats.sent);
    media.average_kbit_per_s_down = average(&stats.received_wire);
    media
}

pub(super) async fn one_webrtc_session(
    url: String,
    token: Option<String>,
    speech: Arc<BrowserSpeech>,
    packets: Arc<EncodedSpeech>,
    plan: CallerPlan,
    progress: Arc<Progress>,
) -> (SessionResult, WebRtcMedia) {
    let connected_at = Instant::now();
    let mut caller = match tokio::time::timeout(
        CONNECT_PATIENCE,
        WebRtcCaller::connect(&url, token.as_deref()),
    )
    .await
    {
        Ok(Ok(caller)) => caller,
        Ok(Err(e)) => return (failed(e.to_string()), WebRtcMedia::default()),
        Err(_) => {
            return (
                failed(format!(
                    "no answer to the offer within {CONNECT_PATIENCE:?}"
                )),
                WebRtcMedia::default(),
            );
        }
    };
    progress.open.fetch_add(1, Ordering::Relaxed);
    let mut turns = Turns::new(plan, speech, progress.clone());
    let ready_wait = tokio::time::sleep(SETUP_PATIENCE);
    tokio::pin!(ready_wait);
    let mut ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // Frames of silence since the caller last spoke: which of the silence's packets is next.
    let mut silent_frames = 0;
    loop {
        tokio::select! {
            () = &mut ready_wait, if !ready => {
                turns.result.failure = Some(format!("not connected and ready within {SETUP_PATIENCE:?} of the answer"));
                break;
            }
            _ = tick.tick(), if ready && !turns.stopping() => {
                let now = Instant::now();
                let packet = match turns.frame(now).index {
                    Some(index) => {
                        silent_frames = 0;
                        packets.speech(index)
                    }
                    None => {
                        silent_frames += 1;
                        packets.silence(silent_frames - 1)
                    }
                };
                // A frame without a packet: the caller is silent and its encoder said so.
                if let Some(packet) = packet
                    && !caller.send_packet(packet).await
                {
                    turns.result.failure = Some("the connection ended mid-session".into());
                    break;
                }
                match turns.after_frame(now) {
                    Next::Continue => {}
                    Next::Failed => break,
                    Next::Stop => {
                        caller.send_message(&FromClient::Stop).await;
                    }
                }
            }
            event = caller.next() => {
                let now = Instant::now();
                match event {
                    Some(CallerEvent::Open) => {
                        let start = FromClient::Start(Start { version: PROTOCOL_VERSION, sample_rate: SAMPLE_RATE });
                        caller.send_message(&start).await;
                        caller.send_message(&FromClient::Playout(Playout { delay_ms: PLAYOUT_MS })).await;
                    }
                    Some(CallerEvent::Audio(pcm)) => {
                        let length = Duration::from_secs_f64(pcm.len() as f64 / f64::from(CALLER_RATE));
                        turns.agent_audio(length, now);
                    }
                    Some(CallerEvent::Message(message)) => {
                        turns.message(&message, now);
                        if matches!(message, turnflow::server::protocol::ToClient::Ready(_)) {
                            ready = true;
                            // The microphone starts now: ticks missed while connecting would
                            // otherwise go out at once, ahead of real time.
                            tick.reset();
                            turns.ready();
                        }
                        if matches!(message, turnflow::server::protocol::ToClient::End(_)) {
                            break;
                        }
                    }
                    Some(CallerEvent::Closed(why)) => {
                        if !turns.stopping() && turns.result.failure.is_none() {
                            turns.result.failure = Some(why);
                        }
                        break;
                    }
                    None => break,
                }
            }
        }
    }
    let media = media_of(&caller.stats(), connected_at.elapsed().as_secs_f64());
    caller.hang_up().await;
    progress.ended(&turns.result);
    (turns.result, media)
}

fn failed(failure: String) -> SessionResult {
    SessionResult {
        failure: Some(failure),
        ..SessionResult::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_the_headers_and_sums_average_by_packets() {
        let wire = |media_datagrams, media_bytes| Wire {
            datagrams: media_datagrams + 10,
            bytes: media_bytes + 1000,
            media_datagrams,
            media_bytes,
        };
        let stats = CallerStats {
            packets_sent: 100,
            received: LossStats {
                decoded: 50,
                lost: 2,
                ..LossStats::default()
            },
            sent: wire(100, 7000),
            received_wire: wire(50, 3500),
            ..CallerStats::default()
        };
        let one = media_of(&stats, 2.0);
        // 70-byte datagrams and 28 bytes of IP and UDP, 50 times a second.
        assert!((one.kbit_per_s_up - 39.2).abs() < 1e-9, "{one:?}");
        assert!((one.kbit_per_s_down - 39.2).abs() < 1e-9, "{one:?}");
        // 8000 bytes in 110 datagrams over 2 s.
        assert!((one.average_kbit_per_s_up - 44.32).abs() < 1e-9, "{one:?}");
        let mut sum = WebRtcMedia::default();
        sum.add(&one);
        sum.add(&media_of(
            &CallerStats {
                packets_sent: 100,
                sent: wire(100, 9000),
                ..CallerStats::default()
            },
            1.0,
        ));
        sum.finish();
        assert_eq!(sum.packets_sent, 200);
        assert_eq!(sum.packets_lost, 2);
        assert!((sum.kbit_per_s_up - 43.2).abs() < 1e-9, "{sum:?}");
        assert!((sum.kbit_per_s_down - 39.2).abs() < 1e-9, "{sum:?}");
        assert_eq!(sum.session_seconds, 3.0);
    }
}
