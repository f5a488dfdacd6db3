//! The other end of a WebRTC session, as a browser is: full ICE, an offer with audio and the
//! protocol's data channel POSTed to `/webrtc`, Opus both ways. `turnflow load --transport
//! webrtc` and the tests call through it.
//!
//! Ownership: [`WebRtcCaller::connect`] spawns one task that owns the connection and its UDP
//! socket; the caller talks to it through channels. Dropping the caller cancels the task;
//! [`WebRtcCaller::hang_up`] also tells the server (`DELETE`) and waits for the task.
//!
//! [`EncodedSpeech`]: super::EncodedSpeech

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::channel::ChannelId;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::debug;

use super::media::OpusSender;
use super::session::CHANNEL_LABEL;
use crate::audio::opus::{LossStats, VoiceDecoder};
use crate::server::protocol::{FromClient, ToClient};

/// The rate of the audio a caller sends and hears: a browser's microphone as the WebSocket page
/// sends it.
pub const CALLER_RATE: u32 = 16_000;
/// How long the answer to an offer may take.
const ANSWER_PATIENCE: Duration = Duration::from_secs(10);

/// Why a call could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// The server could not be reached, or its answer not read.
    #[error("the offer could not be sent to {url}: {reason}")]
    Unreachable {
        /// Where the offer went.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The server refused the offer.
    #[error("the server refused the offer with {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// What the server said.
        body: String,
        /// Seconds to wait before retrying, when the server said (a full or draining server).
        retry_after: Option<u64>,
    },
    /// The answer could not be used.
    #[error("the server's answer cannot be used: {0}")]
    BadAnswer(String),
    /// A local socket could not be made.
    #[error("no local UDP socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The Opus codec could not be made.
    #[error(transparent)]
    Opus(#[from] crate::audio::opus::OpusError),
}

/// What the connection reports.
#[derive(Debug)]
pub enum CallerEvent {
    /// ICE and DTLS completed and the data channel is open: send `start`.
    Open,
    /// One packet of the agent's audio, decoded at [`CALLER_RATE`] (concealment included).
    Audio(Vec<i16>),
    /// A protocol message from the server.
    Message(ToClient),
    /// The connection ended, and why.
    Closed(String),
}

enum Command {
    /// 20 ms of the caller's speech at [`CALLER_RATE`].
    Audio(Vec<i16>),
    /// 20 ms of the caller's speech, already encoded.
    Packet(Arc<[u8]>),
    /// A protocol message.
    Message(String),
}

/// Counts of a caller's media, readable while the call runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerStats {
    /// Opus packets sent.
    pub packets_sent: u64,
    /// Payload bytes sent (Opus, before RTP and SRTP).
    pub payload_bytes_sent: u64,
    /// The agent's audio as it arrived.
    pub received: LossStats,
    /// Payload bytes received.
    pub payload_bytes_received: u64,
    /// Datagrams the caller sent, as UDP carried them.
    pub sent: Wire,
    /// Datagrams the caller received.
    pub received_wire: Wire,
}

/// UDP datagrams one way: all of them (connectivity checks, DTLS and the data channel,
/// reports) and the media among them (RTP, told apart from RTCP by its payload type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    /// Datagrams.
    pub datagrams: u64,
    /// Their bytes (UDP payload).
    pub bytes: u64,
    /// RTP datagrams.
    pub media_datagrams: u64,
    /// Their bytes (UDP payload).
    pub media_bytes: u64,
}

impl Wire {
    fn count(&mut self, datagram: &[u8]) {
        self.datagrams += 1;
        self.bytes += datagram.len() as u64;
        // RFC 5761: RTCP's packet types 192-223 sit where RTP's marker and payload type are.
        let rtp = matches!(datagram.first(), Some(128..=191))
            && !matches!(datagram.get(1), Some(192..=223));
        if rtp {
            self.media_datagrams += 1;
            self.media_bytes += datagram.len() as u64;
        }
    }
}

/// A placed call.
pub struct WebRtcCaller {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<CallerEvent>,
    stats: watch::Receiver<CallerStats>,
    resource: Option<String>,
    http: reqwest::Client,
    token: Option<String>,
    task: Option<JoinHandle<()>>,
    _stop: DropGuard,
}

impl std::fmt::Debug for WebRtcCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcCaller")
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl WebRtcCaller {
    /// Offers a call to `url` (the server's `/webrtc`), with `token` as a bearer token when
    /// given, and starts the connection.
    ///
    /// # Errors
    /// [`CallerError`]: no local socket, the server unreachable or refusing, an unusable
    /// answer.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Self, CallerError> {
        let unreachable = |reason: String| CallerError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let target = reqwest::Url::parse(url).map_err(|e| unreachable(e.to_string()))?;
        let local_ip = local_ip_towards(&target).await?;
        let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
        let local = socket.local_addr()?;
        // Never a process-wide provider: an application's own choice stands.
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let mut rtc = super::media::rtc_config(crypto).build(Instant::now());
        let candidate = Candidate::host(local, "udp")
            .map_err(|e| CallerError::BadAnswer(format!("local candidate {local}: {e}")))?;
        rtc.add_local_candidate(candidate);
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        change.add_channel(CHANNEL_LABEL.to_owned());
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| CallerError::BadAnswer("nothing to offer".into()))?;

        let http = crate::net::http_client_builder(ANSWER_PATIENCE)
            .timeout(ANSWER_PATIENCE)
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        let mut request = http
            .post(target.clone())
            .header("content-type", "application/sdp")
            .body(offer.to_sdp_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| target.join(v).ok())
            .map(String::from);
        let body = response
            .text()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if status != reqwest::StatusCode::CREATED {
            return Err(CallerError::Refused {
                status: status.as_u16(),
                body: body.trim().to_owned(),
                retry_after,
            });
        }
        let answer =
            SdpAnswer::from_sdp_string(&body).map_err(|e| CallerError::BadAnswer(e.to_string()))?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| CallerError::BadAnswer(e.to_string()))?;

        let (commands, command_queue) = mpsc::channel(64);
        let (event_sender, events) = mpsc::channel(256);
        let (stats_sender, stats) = watch::channel(CallerStats::default());
        let stop = CancellationToken::new();
        let connection = Connection {
            rtc,
            socket,
            local,
            mid,
            channel: None,
            events: event_sender,
            stats: stats_sender,
            counts: CallerStats::default(),
            decoder: VoiceDecoder::at(CALLER_RATE)?,
            sender: OpusSender::speech(CALLER_RATE, true)?,
            wake: Instant::now(),
            closed: None,
        };
        let task = tokio::spawn(connection.run(command_queue, stop.clone()));
        Ok(Self {
            commands,
            events,
            stats,
            resource: location,
            http,
            token: token.map(str::to_owned),
            task: Some(task),
            _stop: stop.drop_guard(),
        })
    }

    /// The next thing the connection reports; `None` once it has ended. Its `Closed`, with the
    /// reason, comes first unless the caller had let its events pile up.
    ///
    /// # Cancellation safety
    /// Cancel-safe: an event is taken only when this returns it.
    pub async fn next(&mut self) -> Option<CallerEvent> {
        self.events.recv().await
    }

    /// Sends 20 ms of speech at [`CALLER_RATE`], encoded with discontinuous transmission as a
    /// browser the answer asked for `usedtx=1` does (silence sends a packet now and then);
    /// false when the connection has ended.
    pub async fn send_audio(&self, pcm: &[i16]) -> bool {
        self.commands
            .send(Command::Audio(pcm.to_vec()))
            .await
            .is_ok()
    }

    /// Sends one 20 ms Opus packet already encoded ([`EncodedSpeech`]); false when the
    /// connection has ended.
    pub async fn send_packet(&self, packet: Arc<[u8]>) -> bool {
        self.commands.send(Command::Packet(packet)).await.is_ok()
    }

    /// Sends a protocol message on the data channel; false when the connection has ended.
    pub async fn send_message(&self, message: &FromClient) -> bool {
        self.send_text(&message.to_json()).await
    }

    /// Sends `text` on the data channel as it is (for a client that writes its own JSON);
    /// false when the connection has ended.
    pub async fn send_text(&self, text: &str) -> bool {
        self.commands
            .send(Command::Message(text.to_owned()))
            .await
            .is_ok()
    }

    /// The media counts so far.
    pub fn stats(&self) -> CallerStats {
        *self.stats.borrow()
    }

    /// Tells the server the call is over (`DELETE` on the session's resource) and closes
    /// the connection.
    pub async fn hang_up(mut self) {
        if let Some(resource) = self.resource.take() {
            let mut request = self.http.delete(resource);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Err(e) = request.send().await {
                debug!(error = %e, "the hang-up did not reach the server");
            }
        }
        drop(self.commands);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The local address a packet to `target`'s host would leave from: connecting a UDP socket
/// picks the route and sends nothing.
async fn local_ip_towards(target: &reqwest::Url) -> Result<IpAddr, CallerError> {
    let host = target.host_str().unwrap_or("127.0.0.1");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = target.port_or_known_default().unwrap_or(80);
    let remote = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| {
            CallerError::Socket(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} has no address"),
            ))
        })?;
    let probe = UdpSocket::bind(match remote {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    })
    .await?;
    probe.connect(remote).await?;
    Ok(probe.local_addr()?.ip())
}

/// The connection's task state.
struct Connection {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    mid: Mid,
    channel: Option<ChannelId>,
    events: mpsc::Sender<CallerEvent>,
    stats: watch::Sender<CallerStats>,
    counts: CallerStats,
    decoder: VoiceDecoder,
    sender: OpusSender,
    wake: Instant,
    closed: Option<String>,
}

impl Connection {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, stop: CancellationToken) {
        let mut buffer = vec![0u8; 2048];
        self.drive();
        while self.closed.is_none() {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok((length, source)) => self.receive(&buffer[..length], source),
                    Err(e) => debug!(error = %e, "caller socket"),
                },
                command = commands.recv() => match command {
                    Some(Command::Audio(pcm)) => self.send_audio(&pcm),
                    Some(Command::Packet(packet)) => {
                        self.sender.send_packet(&mut self.rtc, self.mid, packet, Instant::now());
                        self.counted_sent();
                    }
                    Some(Command::Message(text)) => self.send_message(&text),
                    None => break,
                },
                () = tokio::time::sleep_until(self.wake.into()) => {
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                        debug!(error = %e, "caller timer");
                    }
                    self.drive();
                }
            }
        }
        self.rtc.disconnect();
        self.drive();
        let why = self
            .closed
            .take()
            .unwrap_or_else(|| "the caller hung up".to_owned());
        // Without waiting: a caller that hangs up is not reading its events.
        let _ = self.events.try_send(CallerEvent::Closed(why));
    }

    fn receive(&mut self, datagram: &[u8], source: SocketAddr) {
        self.counts.received_wire.count(datagram);
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if let Err(e) = self.rtc.handle_input(input) {
            debug!(error = %e, "a packet the caller could not use");
        }
        self.drive();
    }

    fn drive(&mut self) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    self.wake = at;
                    break;
                }
                Ok(Output::Transmit(transmit)) => {
                    self.counts.sent.count(&transmit.contents);
                    // A full send buffer drops the datagram, as a network would.
                    let _ = self
                        .socket
                        .try_send_to(&transmit.contents, transmit.destination);
                }
                Ok(Output::Event(event)) => self.event(event),
                Err(e) => {
                    self.closed
                        .get_or_insert(format!("the connection failed: {e}"));
                    break;
                }
            }
        }
        self.stats.send_replace(self.counts);
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::ChannelOpen(id, label) if label == CHANNEL_LABEL => {
                self.channel = Some(id);
                let _ = self.events.try_send(CallerEvent::Open);
            }
            Event::ChannelData(data) if Some(data.id) == self.channel && !data.binary => {
                match std::str::from_utf8(&data.data).map(ToClient::parse) {
                    Ok(Ok(message)) => self.emit(CallerEvent::Message(message)),
                    _ => debug!("a data channel message the caller cannot read"),
                }
            }
            Event::ChannelClose(id) if Some(id) == self.channel => {
                self.closed
                    .get_or_insert("the server closed the data channel".into());
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.closed.get_or_insert("the connection was lost".into());
            }
            Event::MediaData(data) if data.mid == self.mid => {
                self.counts.payload_bytes_received += data.data.len() as u64;
                let mut pcm = Vec::with_capacity(CALLER_RATE as usize / 50);
                self.decoder
                    .push(**data.seq_range.end() as u16, &data.data, &mut pcm);
                self.counts.received = self.decoder.stats();
                self.emit(CallerEvent::Audio(pcm));
            }
            _ => {}
        }
    }

    /// Hands an event to the caller; a caller that stopped reading loses it, as a browser
    /// tab that stopped would.
    fn emit(&mut self, event: CallerEvent) {
        if self.events.try_send(event).is_err() {
            debug!("the caller is not reading its events; one dropped");
        }
    }

    fn send_message(&mut self, text: &str) {
        let Some(mut channel) = self.channel.and_then(|id| self.rtc.channel(id)) else {
            debug!("a message before the data channel opened is dropped");
            return;
        };
        if !matches!(channel.write(false, text.as_bytes()), Ok(true)) {
            debug!("the data channel did not take a message");
        }
        self.drive();
    }

    fn send_audio(&mut self, pcm: &[i16]) {
        self.sender
            .send(&mut self.rtc, self.mid, pcm, Instant::now());
        self.counted_sent();
    }

    fn counted_sent(&mut self) {
        self.counts.packets_sent = self.sender.packets;
        self.counts.payload_bytes_sent = self.sender.bytes;
        self.drive();
    }
}
