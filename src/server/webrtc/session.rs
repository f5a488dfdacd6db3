//! One WebRTC session as a [`Transport`]: the str0m connection (sans-IO, driven here from the
//! port's datagrams and its own timer), Opus both ways, and the session protocol on a data
//! channel.
//!
//! The user's Opus is decoded with loss concealment ([`crate::audio::opus::VoiceDecoder`])
//! straight to 16 kHz linear16 for Flux. The agent's audio is encoded at the voice's rate (a
//! rate libopus does not take is resampled to 48 kHz first) and sent as one Opus packet per
//! 20 ms, as the call paces it. What the user heard of a cut reply comes from
//! what was sent and when, less the browser's reported playout delay (`playout` messages):
//! the transport turns that into the playback reports a WebSocket page sends itself.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::channel::ChannelId;
use str0m::media::{MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::WebRtcMetrics;
use super::media::{OpusSender, is_dtx};
use super::pacing::Pacing;
use super::port::{Datagram, Registration, WebRtcPort};
use crate::audio::opus::VoiceDecoder;
use crate::call::{
    AudioFormat, EndError, Ending, FaultKind, Gone, Inbound, Outbound, PlaybackClock, SessionEnd,
    Start, Transport,
};
use crate::flux::Encoding;
use crate::server::protocol::{End, FromClient, PROTOCOL_VERSION, Playout, Ready, ToClient};

/// The rate the user's audio reaches Flux at: Flux's native rate, a third of Opus's samples.
const FLUX_RATE: u32 = 16_000;
/// The label of the data channel that carries the session protocol.
pub const CHANNEL_LABEL: &str = "turnflow";
/// The playout delay assumed until the client reports one: a browser's jitter buffer on a
/// quiet network plus a short round trip.
const ASSUMED_PLAYOUT: Duration = Duration::from_millis(80);
/// How often the transport reports the client's playback to the call while audio plays.
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// How long the end of a session waits for the data channel to deliver its last messages (the
/// `end` above all: closing the connection sends the client nothing, so without `end` it
/// learns of the close only when its connectivity checks fail, seconds later). Long enough for
/// SCTP to retransmit a lost message once (its timer is a second at least) and hear the
/// acknowledgement; it is only spent while something is unacknowledged.
const FLUSH_PATIENCE: Duration = Duration::from_secs(3);
/// A pause in the user's packets longer than this is filled with silence.
const PAUSE_FILL_AFTER: Duration = Duration::from_millis(100);
/// One Opus frame's length, and its samples at Flux's rate.
const FRAME: Duration = Duration::from_millis(20);
const FLUX_FRAME: usize = FLUX_RATE as usize / 50;

/// A connection accepted from an offer, before its session runs.
pub(super) struct Accepted {
    pub(super) rtc: Rtc,
    pub(super) registration: Registration,
    pub(super) datagrams: mpsc::Receiver<Datagram>,
}

/// One browser's (or app's) peer connection.
pub(super) struct WebRtcCall {
    rtc: Rtc,
    port: WebRtcPort,
    datagrams: mpsc::Receiver<Datagram>,
    _registration: Registration,
    /// Cancelled by a `DELETE` of the session's resource: the user hung up.
    hang_up: CancellationToken,
    metrics: std::sync::Arc<WebRtcMetrics>,
    /// When str0m next wants its timer.
    wake: Instant,
    audio: Option<Mid>,
    channel: Option<ChannelId>,
    /// What the connection produced for the call, in order; an error ends the call.
    pending: VecDeque<Result<Inbound, EndError>>,
    connected: bool,
    /// When the call said `ready`: the user's audio counts from then, as a WebSocket client
    /// sends none before it (a browser's RTP flows as soon as it connects, and what came while
    /// Flux was connecting would reach it as a burst ahead of real time).
    ready_at: Option<Instant>,
    gone: Option<&'static str>,
    /// The user's audio, decoded straight to Flux's rate into a buffer kept between packets.
    decoder: VoiceDecoder,
    decoded: Vec<i16>,
    /// The agent's audio as Opus, from the voice's rate (known at `Ready`).
    sender: Option<OpusSender>,
    /// When each chunk of agent audio went out, by its running end (at the voice's rate);
    /// the oldest kept is the last one played, or in flight.
    sent: VecDeque<(Instant, u64)>,
    /// The end of the last chunk dropped from `sent`: played.
    played_floor: u64,
    /// When the user's audio last reached Flux: silence fills a pause in the packets (a
    /// sender's discontinuous transmission, a network stall), so Flux still hears time pass.
    heard_until: Option<Instant>,
    /// What of the silence later packets stood for.
    pacing: Pacing,
    /// Whether the user's last packet said its sender is silent (discontinuous transmission):
    /// the silence then starts at once, not after [`PAUSE_FILL_AFTER`], since no packet is
    /// coming until the user speaks (or the next comfort-noise update, 400 ms on).
    sender_silent: bool,
    playout: Duration,
    next_report: Option<Instant>,
}

impl WebRtcCall {
    pub(super) fn new(
        accepted: Accepted,
        port: WebRtcPort,
        hang_up: CancellationToken,
        metrics: std::sync::Arc<WebRtcMetrics>,
    ) -> Result<Self, crate::audio::opus::OpusError> {
        let Accepted {
            rtc,
            registration,
            datagrams,
        } = accepted;
        let mut call = WebRtcCall {
            rtc,
            port,
            datagrams,
            _registration: registration,
            hang_up,
            metrics,
            wake: Instant::now(),
            audio: None,
            channel: None,
            pending: VecDeque::new(),
            connected: false,
            ready_at: None,
            gone: None,
            decoder: VoiceDecoder::at(FLUX_RATE)?,
            decoded: Vec::with_capacity(FLUX_FRAME * 8),
            sender: None,
            sent: VecDeque::new(),
            played_floor: 0,
            heard_until: None,
            pacing: Pacing::default(),
            sender_silent: false,
            playout: ASSUMED_PLAYOUT,
            next_report: None,
        };
        // The offer's media and channel announcements are waiting as events.
        call.drive();
        Ok(call)
    }

    /// Runs str0m until it waits: datagrams out, events to `pending`.
    fn drive(&mut self) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    self.wake = at;
                    return;
                }
                Ok(Output::Transmit(transmit)) => {
                    self.port.send(transmit.destination, &transmit.contents);
                }
                Ok(Output::Event(event)) => self.event(event),
                Err(e) => {
                    warn!(error = %e, "the WebRTC connection failed");
                    self.gone.get_or_insert("the connection failed");
                    return;
                }
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                self.connected = true;
                self.metrics.connected();
                debug!("ICE and DTLS connected");
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.gone.get_or_insert("the connection was lost");
            }
            Event::MediaAdded(added) if added.kind == MediaKind::Audio => {
                self.audio.get_or_insert(added.mid);
            }
            Event::MediaData(data) if Some(data.mid) == self.audio && self.ready_at.is_some() => {
                let seq = **data.seq_range.end() as u16;
                let mut pcm = std::mem::take(&mut self.decoded);
                pcm.clear();
                self.decoder.push(seq, &data.data, &mut pcm);
                self.heard_until = self.heard_until.max(Some(data.network_time));
                // A late packet says nothing of whether the sender is silent now.
                if self
                    .pacing
                    .arrived(seq, data.time.numer() as u32, FLUX_RATE, &mut pcm)
                {
                    self.sender_silent = is_dtx(&data.data);
                }
                self.hand_to_call(&pcm);
                self.decoded = pcm;
            }
            Event::ChannelOpen(id, label) if label == CHANNEL_LABEL => {
                self.channel.get_or_insert(id);
            }
            Event::ChannelOpen(_, label) => {
                debug!(label = %crate::text::Untrusted(&label), "a data channel that is not the protocol's is ignored");
            }
            Event::ChannelData(data) if Some(data.id) == self.channel => {
                let item = self.message(data.binary, &data.data);
                self.pending.push_back(item);
            }
            Event::MediaEgressStats(stats) => {
                if let Some(rtt) = stats.rtt {
                    self.metrics.round_trip(rtt);
                }
            }
            Event::ChannelClose(id) if Some(id) == self.channel => {
                self.gone.get_or_insert("the data channel closed");
            }
            _ => {}
        }
    }

    /// User audio at Flux's rate for the call.
    fn hand_to_call(&mut self, pcm: &[i16]) {
        if !pcm.is_empty() {
            let bytes = crate::audio::encode(Encoding::Linear16, pcm);
            self.pending.push_back(Ok(Inbound::Audio(bytes.into())));
        }
    }

    /// How long after the user's last packet silence starts standing in for the next.
    fn fill_after(&self) -> Duration {
        if self.sender_silent {
            FRAME
        } else {
            PAUSE_FILL_AFTER
        }
    }

    /// Silence for Flux when no packet came for a while: whole frames up to `now`.
    fn fill_pause(&mut self, now: Instant) {
        let Some(until) = self.heard_until else {
            return;
        };
        let frames = now.saturating_duration_since(until).as_millis() / 20;
        if now.saturating_duration_since(until) < self.fill_after() || frames == 0 {
            return;
        }
        let frames = frames as u32;
        self.heard_until = Some(until + FRAME * frames);
        let samples = FLUX_FRAME * frames as usize;
        self.pacing.filled(samples as u64);
        // Linear16 silence is zero bytes: one zeroed buffer, with no samples to encode (this
        // runs every 20 ms while a sender is silent).
        let silence = vec![0u8; samples * 2];
        self.pending.push_back(Ok(Inbound::Audio(silence.into())));
    }

    /// A data channel message, read as the WebSocket reads its text messages.
    fn message(&mut self, binary: bool, data: &[u8]) -> Result<Inbound, EndError> {
        let text = match std::str::from_utf8(data) {
            Ok(text) if !binary => text,
            _ => {
                return Err(EndError::new(
                    "unsupported",
                    "a binary message on the data channel; it carries the protocol's JSON as \
                     text, and audio goes over RTP",
                    FaultKind::Unsupported,
                ));
            }
        };
        Ok(match FromClient::parse(text) {
            Ok(FromClient::Start(_)) => Inbound::Start(Start::new(AudioFormat {
                encoding: Encoding::Linear16,
                sample_rate: FLUX_RATE,
            })),
            Ok(FromClient::Playout(Playout { delay_ms })) => {
                self.playout =
                    Duration::from_millis(u64::from(delay_ms.min(Playout::MAX_DELAY_MS)));
                Inbound::Other
            }
            // The page's player is the browser's; the transport reports playback itself.
            Ok(FromClient::Played(_)) => Inbound::Other,
            Ok(FromClient::Stop) => Inbound::Stop,
            Err(e) => return Err(EndError::new(e.code(), e.to_string(), FaultKind::Invalid)),
        })
    }
}

impl WebRtcCall {
    /// A datagram from the port into the connection.
    fn receive(&mut self, datagram: Datagram) {
        let Ok(contents) = datagram.bytes.as_slice().try_into() else {
            return;
        };
        let destination = self.destination(datagram.from);
        let input = Input::Receive(
            datagram.at,
            Receive {
                proto: Protocol::Udp,
                source: datagram.from,
                destination,
                contents,
            },
        );
        // A packet str0m cannot use (a stray, a forgery) is its error, not the session's end.
        if let Err(e) = self.rtc.handle_input(input) {
            debug!(error = %e, "a WebRTC packet was refused");
        }
        self.drive();
    }

    /// The local candidate a datagram from `from` was sent to: the port is bound to one
    /// socket, so the candidate of the same address family.
    fn destination(&self, from: SocketAddr) -> SocketAddr {
        let candidates = self.port.candidates();
        candidates
            .iter()
            .find(|c| c.is_ipv4() == from.is_ipv4())
            .copied()
            .unwrap_or(candidates[0])
    }

    /// str0m's timer when it is due (a wake for the session's own timers leaves it be: its
    /// timeout runs through every stream and the data channel), the pause's silence, and the
    /// playback report when one is due.
    fn tick(&mut self, now: Instant) {
        if now >= self.wake {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                debug!(error = %e, "WebRTC timer");
            }
            self.drive();
        }
        if self.ready_at.is_some() {
            self.fill_pause(now);
        }
        if self.next_report.is_some_and(|at| now >= at) {
            self.next_report = Some(now + REPORT_EVERY);
            if let Some(report) = self.playing(now) {
                self.pending.push_back(Ok(report));
            }
        }
    }

    /// What the client has played by `now`: the agent audio sent at least the playout delay
    /// ago.
    fn playing(&mut self, now: Instant) -> Option<Inbound> {
        let written = self.sent.back()?.1;
        let cutoff = now.checked_sub(self.playout)?;
        // Keep the latest entry at or before the cutoff: it is what has played.
        while self.sent.len() > 1 && self.sent[1].0 <= cutoff {
            if let Some((_, end)) = self.sent.pop_front() {
                self.played_floor = end;
            }
        }
        let played = match self.sent.front() {
            Some(&(at, end)) if at <= cutoff => end,
            _ => self.played_floor,
        };
        if played == written {
            // Everything has played: reporting until the next audio would say nothing new.
            self.next_report = None;
        }
        Some(Inbound::Playing {
            samples: played,
            buffered: written - played,
        })
    }

    /// Sends one item on the data channel.
    fn send_message(&mut self, message: &ToClient) -> Result<(), Gone> {
        let Some(id) = self.channel else {
            return Err(Gone);
        };
        let Some(mut channel) = self.rtc.channel(id) else {
            return Err(Gone);
        };
        match channel.write(false, message.to_json().as_bytes()) {
            Ok(true) => {}
            // The channel's buffer is full: the client stopped reading.
            Ok(false) | Err(_) => return Err(Gone),
        }
        self.drive();
        Ok(())
    }

    /// The agent's audio, resampled to 48 kHz and sent in 20 ms Opus packets.
    fn send_audio(&mut self, pcm: &[i16], end: u64) -> Result<(), Gone> {
        let (Some(sender), Some(mid)) = (&mut self.sender, self.audio) else {
            return Ok(());
        };
        let now = Instant::now();
        sender.send(&mut self.rtc, mid, pcm, now);
        self.sent.push_back((now, end));
        self.next_report.get_or_insert(now + REPORT_EVERY);
        self.drive();
        if self.gone.is_some() {
            Err(Gone)
        } else {
            Ok(())
        }
    }
}

impl Transport for WebRtcCall {
    fn playback_clock(&self) -> PlaybackClock {
        PlaybackClock::Reports
    }

    async fn recv(&mut self) -> Result<Option<Inbound>, EndError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return item.map(Some);
            }
            if let Some(why) = self.gone {
                debug!(why, "the peer connection ended");
                return Ok(None);
            }
            let mut wake = self.wake;
            if let Some(report) = self.next_report {
                wake = wake.min(report);
            }
            if self.ready_at.is_some()
                && let Some(until) = self.heard_until
            {
                wake = wake.min(until + self.fill_after());
            }
            // Each branch is cancel-safe: a datagram is taken only when its branch wins, and
            // what it produces waits in `pending`.
            tokio::select! {
                biased;
                () = self.hang_up.cancelled() => return Ok(Some(Inbound::HungUp)),
                datagram = self.datagrams.recv() => match datagram {
                    Some(datagram) => self.receive(datagram),
                    None => self.gone = Some("the port closed"),
                },
                () = tokio::time::sleep_until(wake.into()) => self.tick(Instant::now()),
            }
        }
    }

    async fn send(&mut self, item: Outbound<'_>) -> Result<(), Gone> {
        match item {
            Outbound::Ready {
                call,
                input,
                output_rate,
            } => {
                // What came while Flux was connecting is read (the connection's own traffic
                // is in it) and its audio left out.
                while let Ok(datagram) = self.datagrams.try_recv() {
                    self.receive(datagram);
                }
                self.ready_at = Some(Instant::now());
                self.sender = Some(OpusSender::voice(output_rate).map_err(|e| {
                    warn!(error = %e, output_rate, "the voice cannot be sent as Opus");
                    Gone
                })?);
                self.send_message(&ToClient::Ready(Ready {
                    version: PROTOCOL_VERSION,
                    session: call.to_owned(),
                    input_sample_rate: input.sample_rate,
                    output_sample_rate: output_rate,
                    frame_ms: 20,
                }))
            }
            Outbound::Audio(speech) => self.send_audio(speech.pcm, speech.end),
            Outbound::Clear => {
                // What is in flight plays; nothing more is sent, and the page mutes what its
                // jitter buffer holds.
                if let Some(sender) = &mut self.sender {
                    sender.clear();
                }
                self.send_message(&ToClient::Clear)
            }
            Outbound::Event(event) => self.send_message(&ToClient::Event(event.clone())),
            Outbound::Turn(turn) => self.send_message(&ToClient::Turn(Box::new(turn.clone()))),
            Outbound::FlushClear => Ok(()),
        }
    }

    async fn finish(&mut self, ending: &Ending) {
        if self.gone.is_none() && self.channel.is_some() {
            if let Some(error) = &ending.error {
                warn!(code = error.code, message = %error.message, "closing the session");
                let _ = self.send_message(&ToClient::Error(crate::server::protocol::Failure {
                    code: error.code.to_owned(),
                    message: error.message.clone(),
                    fatal: true,
                }));
            }
            let _ = self.send_message(&ToClient::End(End {
                reason: crate::server::browser::reason(ending.outcome).to_owned(),
                turns: ending.turns,
            }));
            // The last messages go out as SCTP retransmits them: wait until the client has
            // acknowledged them, within a bound.
            let deadline = Instant::now() + FLUSH_PATIENCE;
            while self.buffered() > 0 && Instant::now() < deadline && self.gone.is_none() {
                let wake = self.wake.min(deadline);
                tokio::select! {
                    datagram = self.datagrams.recv() => match datagram {
                        Some(datagram) => self.receive(datagram),
                        None => break,
                    },
                    () = tokio::time::sleep_until(wake.into()) => self.tick(Instant::now()),
                }
            }
        }
        if ending.outcome != SessionEnd::ClientClosed {
            debug!("closing the peer connection");
        }
        self.rtc.disconnect();
        self.drive();
    }
}

impl WebRtcCall {
    /// Whether ICE and DTLS completed.
    pub(super) fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the protocol's data channel opened.
    pub(super) fn has_channel(&self) -> bool {
        self.channel.is_some()
    }

    /// Opus packets of the agent's audio sent.
    pub(super) fn packets_sent(&self) -> u64 {
        self.sender.as_ref().map_or(0, |s| s.packets)
    }

    /// What the user's audio lost on the way.
    pub(super) fn loss(&self) -> crate::audio::opus::LossStats {
        self.decoder.stats()
    }

    /// Bytes the data channel holds that the client has not acknowledged.
    fn buffered(&mut self) -> usize {
        self.channel
            .and_then(|id| self.rtc.channel(id))
            .map_or(0, |mut channel| channel.buffered_amount())
    }
}
