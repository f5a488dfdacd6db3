//! Phone calls: Twilio and Telnyx media streams on `/telephony`, and Twilio's call webhook at
//! `/twilio/voice`.
//!
//! One WebSocket is one call, as for browsers, and it shares the server's sessions, limits,
//! metrics and drain. The caller's audio (G.711 mu-law, 8 kHz) goes to Flux as it comes, put
//! back in order first (`reorder`); the agent's audio, at whatever rate the voice speaks, is
//! resampled to 8 kHz (`crate::audio::resample`), encoded, and sent in 40 ms messages, each followed by a `mark`. The carrier
//! echoes a mark once the audio before it has played, so what the caller heard is known from
//! the carrier's own playback clock: on barge-in the history keeps exactly the audio up to the
//! last echoed mark, and `clear` drops the rest at the carrier.
//!
//! A stream is a transport of the conversation runner ([`crate::call`]), as a browser session
//! is, with the same deadlines: its `start` within the start timeout of the upgrade (a
//! `connected` event or a ping does not move it), media within the idle timeout (marks, DTMF
//! and pings do not count), the message rate from the first message, and the end of the wait
//! for `start` when a drain begins. This module is the codec: carrier JSON both ways, the
//! caller's frames put back in order, the agent's voice in 40 ms messages with their marks.
//! What the carrier sends is escaped and cut short before it is logged; digits and custom
//! parameters are never logged.

pub mod carrier;
mod line;
mod reorder;
pub mod transfer;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt as _, StreamExt as _};
use hmac::Mac as _;
use tracing::{Instrument, debug, info, info_span, warn};

use super::State;
use crate::audio::resample::Resampler;
use crate::call::{
    AudioFormat, CutNow, EndError, Ending, FaultKind, Gone, Inbound, Outbound, PlaybackClock,
    Start, Transport,
};
use crate::flux::Encoding;
use carrier::{FromCarrier, StreamStart, ToCarrier};
use line::{LineCutter, Writer};
use reorder::Reorder;

/// The phone line's sample rate.
const PHONE_RATE: u32 = 8000;

/// Agent audio per media message: 40 ms (carriers stutter on tiny chunks).
const MESSAGE_DURATION: Duration = Duration::from_millis(40);

/// A caller's speech at `rate` as a phone line carries it: low-passed, decimated to 8 kHz and
/// mu-law encoded, as the agent's voice is sent to a carrier.
///
/// # Errors
/// A rate of zero, or one too odd to convert from (see the resampler).
pub fn to_phone_line(speech: &[i16], rate: u32) -> Result<Vec<u8>, String> {
    let phone = Resampler::new(rate, PHONE_RATE)?.process(speech);
    Ok(crate::audio::encode(Encoding::Mulaw, &phone))
}

/// Twilio's request signature: HMAC-SHA1 of the URL followed by the POST parameters sorted by
/// name (each name then its value), keyed by the account's auth token, in base64.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    use base64::Engine as _;
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `given` is the signature, compared in constant time.
pub(super) fn signature_valid(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    given: Option<&str>,
) -> bool {
    let expected = twilio_signature(auth_token, url, params);
    given.is_some_and(|g| super::token_matches(&expected, g))
}

/// The TwiML that connects a call to our media-stream endpoint, bidirectionally.
pub(super) fn twiml(stream_url: &str) -> String {
    let escaped = stream_url
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Connect><Stream url=\"{escaped}\"/></Connect></Response>\n"
    )
}

/// Serves one carrier stream until the call ends.
pub(super) async fn serve(socket: WebSocket, state: Arc<State>) {
    let id = uuid::Uuid::new_v4().to_string();
    let span = info_span!("call", session = %id);
    async move {
        state.metrics.session_started();
        let reporting = state.reporting();
        let (writer, reader) = socket.split();
        let mut line = PhoneLine {
            reader,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            call: None,
            voice_rate: state.config.backends.tts.sample_rate(),
            reorder: Reorder::default(),
            bad_payloads: 0,
            id: id.clone(),
            reporting: reporting.clone(),
            carrier_api: {
                let mut api = state.config.carrier_api.clone();
                if api.twilio_auth_token.is_none() {
                    api.twilio_auth_token = state.config.twilio_auth_token.clone();
                }
                api
            },
        };
        let ending = state
            .call(&id, &state.phone, reporting)
            .run(&mut line)
            .await;
        if line.reorder.late + line.reorder.lost > 0 {
            info!(
                late = line.reorder.late,
                lost = line.reorder.lost,
                "caller audio frames out of order"
            );
        }
        state.call_ended(&id, "phone", &ending);
        info!(outcome = ending.outcome.as_str(), reason = %ending.detail, "call ended");
    }
    .instrument(span)
    .await
}

/// What a call's stream knows once it started.
struct Started {
    out: ToCarrier,
    to_phone: Resampler,
    /// What the carrier said of the call: what a transfer names.
    start: StreamStart,
}

/// A carrier's media stream as a [`Transport`]: JSON text messages both ways, the caller's
/// mu-law frames put back in order, the agent's audio low-passed to 8 kHz and followed by a
/// mark whose echo says it played.
struct PhoneLine {
    reader: SplitStream<WebSocket>,
    writer: Writer,
    call: Option<Started>,
    voice_rate: u32,
    reorder: Reorder,
    bad_payloads: u64,
    id: String,
    reporting: Arc<super::observer::Reporting>,
    /// The carriers' APIs, for a transfer.
    carrier_api: transfer::CarrierApi,
}

impl PhoneLine {
    fn started(&mut self, start: &StreamStart) -> Result<Inbound, EndError> {
        self.reporting.call_started(&self.id, start);
        // Who is calling is the application's business; the log gets the call's ids only.
        info!(
            carrier = start.carrier.as_str(),
            call = %crate::text::Untrusted(&start.call_id),
            parameters = start.parameters.len(),
            "call started"
        );
        if !start.is_mulaw_8k() {
            return Err(EndError::new(
                "unsupported_audio",
                format!(
                    "unsupported media format {} {} Hz x{}; this endpoint takes audio/x-mulaw (PCMU) 8000 Hz mono",
                    start.encoding, start.sample_rate, start.channels
                ),
                FaultKind::Unsupported,
            ));
        }
        let to_phone = Resampler::new(self.voice_rate, PHONE_RATE)
            .map_err(|e| EndError::new("unsupported_voice", e, FaultKind::Internal))?;
        self.call = Some(Started {
            out: ToCarrier::new(start),
            to_phone,
            start: start.clone(),
        });
        Ok(Inbound::Start(Start::new(AudioFormat {
            encoding: Encoding::Mulaw,
            sample_rate: PHONE_RATE,
        })))
    }

    fn decode(&mut self, text: &str) -> Result<Inbound, EndError> {
        let started = self.call.is_some();
        let message = match FromCarrier::parse(text) {
            Ok(message) => message,
            Err(carrier::CarrierError::Base64(e)) if started => {
                self.bad_payloads += 1;
                if self.bad_payloads.is_power_of_two() {
                    warn!(bad_payloads = self.bad_payloads, error = %crate::text::Untrusted(&e.to_string()), "media with a payload that is not base64 skipped");
                }
                return Ok(Inbound::Other);
            }
            Err(e) if started => {
                warn!(
                    error = %crate::text::Untrusted(&e.to_string()),
                    "carrier message not understood; the call goes on"
                );
                return Ok(Inbound::Other);
            }
            Err(e) => {
                return Err(EndError::new(
                    "invalid",
                    format!("before start: {e}"),
                    FaultKind::Invalid,
                ));
            }
        };
        Ok(match message {
            FromCarrier::Start(start) if !started => return self.started(&start),
            FromCarrier::Start(_) => {
                warn!("a second start ignored");
                Inbound::Other
            }
            FromCarrier::Media { chunk, audio, .. } => {
                let frames = self.reorder.push(chunk, audio);
                Inbound::Audio(frames.concat().into())
            }
            FromCarrier::Connected => Inbound::Other,
            FromCarrier::Other(event) => {
                debug!(event = %crate::text::Untrusted(&event), "carrier event not used");
                Inbound::Other
            }
            // What the message held (a digit may be a PIN) stays out of the log.
            FromCarrier::Mark { .. }
            | FromCarrier::Dtmf { .. }
            | FromCarrier::Stop
            | FromCarrier::Error { .. }
                if !started =>
            {
                debug!("a carrier event before start ignored");
                Inbound::Other
            }
            FromCarrier::Mark { name } => {
                match name.strip_prefix("tf-").and_then(|n| n.parse().ok()) {
                    Some(end) => Inbound::PlayedTo(end),
                    None => Inbound::Other,
                }
            }
            FromCarrier::Dtmf { digit } => Inbound::Dtmf(digit),
            FromCarrier::Stop => Inbound::HungUp,
            FromCarrier::Error { detail } => {
                warn!(detail = %crate::text::Untrusted(&detail), "the carrier reported an error");
                Inbound::Other
            }
        })
    }
}

impl Transport for PhoneLine {
    fn chunk(&self) -> Duration {
        MESSAGE_DURATION
    }

    fn playback_clock(&self) -> PlaybackClock {
        PlaybackClock::Marks
    }

    async fn recv(&mut self) -> Result<Option<Inbound>, EndError> {
        match self.reader.next().await {
            None | Some(Ok(Message::Close(_))) => Ok(None),
            Some(Err(e)) if super::too_big(&e) => Err(EndError::new(
                "too_big",
                "a message over the size limit",
                FaultKind::TooBig,
            )),
            Some(Err(_)) => Ok(None),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(Some(Inbound::Other)),
            Some(Ok(Message::Binary(_))) if self.call.is_none() => Err(EndError::new(
                "not_started",
                "a binary message before start (carriers send JSON text)",
                FaultKind::Unsupported,
            )),
            Some(Ok(Message::Binary(_))) => {
                warn!("binary message from a carrier ignored");
                Ok(Some(Inbound::Other))
            }
            Some(Ok(Message::Text(text))) => self.decode(&text).map(Some),
        }
    }

    async fn send(&mut self, item: Outbound<'_>) -> Result<(), Gone> {
        let Some(call) = &mut self.call else {
            return Ok(());
        };
        match item {
            Outbound::Audio(speech) => {
                let phone = call.to_phone.process(speech.pcm);
                let mulaw = crate::audio::encode(Encoding::Mulaw, &phone);
                let media = Message::Text(Utf8Bytes::from(call.out.media(&mulaw)));
                let mark = Message::Text(Utf8Bytes::from(
                    call.out.mark(&format!("tf-{}", speech.end)),
                ));
                let mut writer = self.writer.lock().await;
                // The cutter may have written a clear since this audio was queued.
                if !speech.is_current() {
                    return Ok(());
                }
                writer.feed(media).await.map_err(|_| Gone)?;
                writer.feed(mark).await.map_err(|_| Gone)?;
                writer.flush().await.map_err(|_| Gone)
            }
            Outbound::Clear => {
                let clear = Message::Text(Utf8Bytes::from(call.out.clear()));
                self.writer.lock().await.send(clear).await.map_err(|_| Gone)
            }
            Outbound::FlushClear => self.writer.lock().await.flush().await.map_err(|_| Gone),
            Outbound::Ready { .. } | Outbound::Event(_) | Outbound::Turn(_) => Ok(()),
        }
    }

    async fn finish(&mut self, _ending: &Ending) {
        let _ = self.writer.lock().await.send(Message::Close(None)).await;
    }

    async fn transfer(&mut self, to: &str) -> Result<(), String> {
        let start = &self.call.as_ref().ok_or("the call has not started")?.start;
        let request = transfer::transfer_request(&self.carrier_api, start, to)?;
        let client = crate::net::http_client(std::time::Duration::from_secs(5))?;
        info!(
            carrier = start.carrier.as_str(),
            "asking the carrier to transfer the call"
        );
        transfer::send(&client, request).await
    }

    fn cutter(&mut self) -> Option<Arc<dyn CutNow>> {
        let call = self.call.as_ref()?;
        Some(Arc::new(LineCutter {
            writer: self.writer.clone(),
            clear: Utf8Bytes::from(call.out.clear()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_signatures_match_the_documented_algorithm() {
        // Known answers computed independently (Python's hmac and hashlib): the example of
        // Twilio's security documentation, and a WebSocket URL without parameters.
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .rev()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            twilio_signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert_eq!(
            twilio_signature("12345", "wss://agent.example/telephony", &[]),
            "DLFKUdMLs9prY+Er7lIRSBC15Wc="
        );
        assert!(!signature_valid(
            "12345",
            "wss://agent.example/telephony",
            &[],
            Some("x")
        ));
        assert!(!signature_valid(
            "12345",
            "wss://agent.example/telephony",
            &[],
            None
        ));
    }

    #[test]
    fn twiml_connects_the_stream() {
        assert_eq!(
            twiml("wss://agent.example/telephony?a=1&b=2"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Connect><Stream url=\"wss://agent.example/telephony?a=1&amp;b=2\"/></Connect></Response>\n"
        );
    }
}
