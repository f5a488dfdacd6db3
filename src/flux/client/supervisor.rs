//! The supervisor: the one task that owns a Flux session across connections (timeline,
//! replay, configuration, turn continuity, reconnects), and [`connect`], which starts it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::flux::continuity::{AudioLedger, Chunker, ReplayBuffer, TurnTracker};
use crate::flux::messages::{ClientMessage, Configure, ServerMessage, TurnEvent};
use crate::flux::options::{Encoding, ListenOptions};
use crate::ws::{ConnectError, Connector, WireFrame};

use super::config::dice;
use super::handle::Command;
use super::link::{
    Connecting, FromFlux, Link, connect_result, next_inbound, open_link, writer_room,
};
use super::{
    ClientStats, FluxConfig, FluxError, FluxEvent, FluxEventKind, FluxEvents, FluxHandle,
    FluxSender, TurnUpdate,
};

/// Frames the supervisor holds for a writer that is behind before it stops taking audio
/// from the caller (about 5 s of 80 ms frames).
const OUTBOX_LIMIT: usize = 64;

/// Connects to Flux through `connector` and waits for `Connected`.
///
/// # Errors
/// [`FluxError::InvalidOptions`] before any I/O when the options are invalid;
/// [`FluxError::Connect`] for handshake rejections (with status, `dg-error` and request id) and
/// network failures; [`FluxError::ConnectedTimeout`] when the server never says `Connected`.
pub async fn connect(
    config: FluxConfig,
    connector: Arc<dyn Connector>,
) -> Result<(FluxHandle, FluxEvents), FluxError> {
    config.options.validate()?;
    config.check_base_url()?;
    let cancel = CancellationToken::new();
    let stats = Arc::new(ClientStats::default());
    let (link, request_id) = open_link(
        config.clone(),
        connector.clone(),
        config.options.clone(),
        cancel.clone(),
    )
    .await?;
    let span = info_span!("flux", request_id = %request_id);
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let (close_tx, close_rx) = mpsc::channel(1);
    let (events_tx, events_rx) = mpsc::channel(1024);
    let now = Instant::now();
    let frame_bytes = config
        .bytes_per_second()
        .map(|bps| (bps * config.frame.as_secs_f64()).round() as usize)
        .unwrap_or(0);
    let _ = events_tx
        .send(Ok(FluxEvent {
            received_at: now,
            kind: FluxEventKind::Connected {
                request_id: request_id.clone(),
                attempt: 0,
            },
        }))
        .await;
    let supervisor = Supervisor {
        bytes_per_second: config.bytes_per_second(),
        chunker: Chunker::new(frame_bytes),
        frame_bytes,
        ledger: AudioLedger::new(config.replay_limit * 2),
        replay: ReplayBuffer::new(
            config.replay_limit,
            Duration::from_secs(2),
            config.options.encoding == Some(Encoding::Linear16),
        ),
        tracker: TurnTracker::default(),
        audio_time: 0.0,
        desired: config.options.clone(),
        acked: config.options.clone(),
        inflight: None,
        pending: None,
        config,
        connector,
        commands: commands_rx,
        close: close_rx,
        outbox: VecDeque::new(),
        outbox_blocked_since: None,
        events: events_tx,
        cancel: cancel.clone(),
        link: Some(link),
        connecting: None,
        connected_at: now,
        failed_in_a_row: 0,
        outage_since: None,
        lost_at: now,
        last_source_audio: now,
        last_audio_sent: now,
        last_sent: now,
        last_inbound: now,
        audio_since_inbound: 0.0,
        phase: Phase::Running,
        stats: stats.clone(),
    };
    let supervisor = tokio::spawn(supervisor.run().instrument(span));
    Ok((
        FluxHandle {
            sender: FluxSender {
                commands: commands_tx,
            },
            close: close_tx,
            cancel,
            supervisor: Some(supervisor),
            request_id,
            stats,
        },
        FluxEvents { rx: events_rx },
    ))
}

enum Phase {
    Running,
    /// `attempt` counts failed and short-lived connections in a row; the attempt runs as a
    /// task (`Supervisor::connecting`) so audio, close and drop are served meanwhile.
    Reconnecting {
        attempt: u32,
        retry_at: Instant,
        reason: String,
    },
    ClosingAwaitEnd {
        deadline: Instant,
        reply: Option<oneshot::Sender<()>>,
    },
    ClosingAwaitServer {
        deadline: Instant,
        reply: Option<oneshot::Sender<()>>,
    },
}

struct Supervisor {
    config: FluxConfig,
    connector: Arc<dyn Connector>,
    commands: mpsc::Receiver<Command>,
    close: mpsc::Receiver<oneshot::Sender<()>>,
    /// Frames waiting for room in the writer's queue.
    outbox: VecDeque<WireFrame>,
    /// Since when the writer's queue has been full.
    outbox_blocked_since: Option<Instant>,
    events: mpsc::Sender<Result<FluxEvent, FluxError>>,
    cancel: CancellationToken,
    link: Option<Link>,
    /// A reconnect attempt in flight.
    connecting: Option<Connecting>,
    /// When the current connection was opened.
    connected_at: Instant,
    /// Reconnect attempts that failed, or connections that died before `stable_after`.
    failed_in_a_row: u32,
    /// When the outage in progress began (the budget counts from it); `None` once a
    /// connection has lasted `stable_after`.
    outage_since: Option<Instant>,
    /// When the last connection was lost.
    lost_at: Instant,
    bytes_per_second: Option<f64>,
    frame_bytes: usize,
    chunker: Chunker,
    ledger: AudioLedger,
    replay: ReplayBuffer,
    tracker: TurnTracker,
    /// Session audio time sent so far, in seconds, continuous across connections.
    audio_time: f64,
    /// The configuration once every requested update lands (used for reconnect URLs).
    desired: ListenOptions,
    /// The configuration the server confirmed.
    acked: ListenOptions,
    inflight: Option<Configure>,
    pending: Option<Configure>,
    last_source_audio: Instant,
    last_audio_sent: Instant,
    last_sent: Instant,
    last_inbound: Instant,
    audio_since_inbound: f64,
    phase: Phase,
    stats: Arc<ClientStats>,
}

/// What the supervisor loop should do next.
enum Flow {
    Continue,
    Stop,
}

impl Supervisor {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.frame.min(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // One wait for the whole loop: a fresh one per iteration locks the token each time.
        let mut cancelled = std::pin::pin!(self.cancel.clone().cancelled_owned());
        loop {
            // Audio waits in the caller's queue (backpressure) while the writer is behind.
            let accepting = matches!(self.phase, Phase::Running | Phase::Reconnecting { .. })
                && self.outbox.len() < OUTBOX_LIMIT;
            // The attempt starts at its drawn instant, not the next tick: ticks would put every
            // session's attempts back on an 80 ms grid.
            let retry_at = match &self.phase {
                Phase::Reconnecting { retry_at, .. } if self.connecting.is_none() => {
                    Some(*retry_at)
                }
                _ => None,
            };
            let backlog = (!self.outbox.is_empty())
                .then(|| self.link.as_ref().map(|l| l.to_writer.clone()))
                .flatten();
            let flow = tokio::select! {
                biased;
                () = &mut cancelled => Flow::Stop,
                inbound = next_inbound(&mut self.link) => self.on_inbound(inbound).await,
                reply = self.close.recv() => match reply {
                    Some(reply) => self.begin_close(reply),
                    None => Flow::Stop,
                },
                room = writer_room(backlog) => {
                    if let (Ok(permit), Some(frame)) = (room, self.outbox.pop_front()) {
                        permit.send(frame);
                        self.last_sent = Instant::now();
                        self.outbox_blocked_since = None;
                        self.drain_outbox();
                    }
                    Flow::Continue
                }
                result = connect_result(&mut self.connecting) => {
                    self.connecting = None;
                    self.on_reconnect_result(result).await
                }
                command = self.commands.recv(), if accepting => match command {
                    Some(command) => {
                        self.on_command(command);
                        Flow::Continue
                    }
                    None => Flow::Stop,
                },
                () = async { tokio::time::sleep_until(retry_at.expect("guarded")).await }, if retry_at.is_some() => {
                    self.start_reconnect();
                    Flow::Continue
                }
                _ = tick.tick() => self.on_tick().await,
            };
            if let Flow::Stop = flow {
                break;
            }
        }
        if let Some(connecting) = self.connecting.take() {
            connecting.abandon().await;
        }
        if let Some(link) = self.link.take() {
            link.shutdown().await;
        }
        if let Phase::ClosingAwaitEnd { reply, .. } | Phase::ClosingAwaitServer { reply, .. } =
            &mut self.phase
            && let Some(reply) = reply.take()
        {
            let _ = reply.send(());
        }
    }

    /// `&mut`: the supervisor holds the connection's stream, which is `Send` but not `Sync`, so a
    /// shared borrow held across the send would make the task itself not `Send`.
    async fn emit(&mut self, received_at: Instant, kind: FluxEventKind) {
        let _ = self.events.send(Ok(FluxEvent { received_at, kind })).await;
    }

    /// Queues a frame for the writer without waiting: a server that stops reading must not
    /// stall the supervisor. Frames wait in the outbox while the writer is behind; the tick
    /// treats a writer stuck for `writer_stall_timeout` as a lost connection.
    fn write(&mut self, frame: WireFrame) {
        if self.link.is_none() {
            return;
        }
        self.outbox.push_back(frame);
        self.drain_outbox();
    }

    fn drain_outbox(&mut self) {
        let Some(link) = &self.link else {
            self.outbox.clear();
            return;
        };
        while let Some(frame) = self.outbox.pop_front() {
            match link.to_writer.try_send(frame) {
                Ok(()) => {
                    self.last_sent = Instant::now();
                    self.outbox_blocked_since = None;
                }
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    self.outbox.push_front(frame);
                    self.outbox_blocked_since.get_or_insert_with(Instant::now);
                    return;
                }
                // The writer ended; reading the connection tells why.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Audio(audio) => {
                let now = Instant::now();
                self.last_source_audio = now;
                for frame in self.chunker.push(&audio) {
                    self.send_audio_frame(frame, now);
                }
            }
            Command::Configure(update, reply) => {
                let result = self.desired.apply(&update);
                match result {
                    Ok(next) => {
                        self.desired = next;
                        match &mut self.pending {
                            Some(p) => p.merge(update),
                            None => self.pending = Some(update),
                        }
                        let _ = reply.send(Ok(()));
                        self.send_pending_configure();
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::ForceEndTurn => {
                if matches!(self.phase, Phase::Running) {
                    self.write(WireFrame::Text(ClientMessage::ForceEndTurn.to_json()));
                }
            }
        }
    }

    fn send_audio_frame(&mut self, frame: Bytes, now: Instant) {
        let start = self.audio_time;
        if let Some(bps) = self.bytes_per_second {
            let end = start + frame.len() as f64 / bps;
            self.audio_time = end;
            self.audio_since_inbound += end - start;
            self.ledger.record(end, now);
            // While the service is away everything is kept (up to the turn limit): a turn the
            // caller starts during the outage reaches the next connection.
            let keep = self.tracker.turn_open() || !matches!(self.phase, Phase::Running);
            self.replay.push(start, end, &frame, keep);
        }
        self.last_audio_sent = now;
        if matches!(self.phase, Phase::Running) {
            self.stats.audio_frames_sent.fetch_add(1, Ordering::Relaxed);
            self.write(WireFrame::Binary(frame));
        }
    }

    fn send_pending_configure(&mut self) {
        if self.inflight.is_some() || !matches!(self.phase, Phase::Running) {
            return;
        }
        if let Some(update) = self.pending.take().filter(|u| !u.is_empty()) {
            self.write(WireFrame::Text(
                ClientMessage::Configure(update.clone()).to_json(),
            ));
            self.inflight = Some(update);
        }
    }

    fn begin_close(&mut self, reply: oneshot::Sender<()>) -> Flow {
        if !matches!(self.phase, Phase::Running) {
            let _ = reply.send(());
            return Flow::Stop;
        }
        // Audio the caller queued before closing goes out first.
        while let Ok(command) = self.commands.try_recv() {
            self.on_command(command);
        }
        if let Some(rest) = self.chunker.flush() {
            self.send_audio_frame(rest, Instant::now());
        }
        // ForceEndTurn goes out even when we think no turn is open: the server may not have
        // reported a turn for the audio just sent. It answers with EndOfTurn or a Warning.
        self.write(WireFrame::Text(ClientMessage::ForceEndTurn.to_json()));
        self.phase = Phase::ClosingAwaitEnd {
            deadline: Instant::now() + self.config.close_timeout,
            reply: Some(reply),
        };
        Flow::Continue
    }

    fn after_end_of_turn_while_closing(&mut self) {
        if let Phase::ClosingAwaitEnd { reply, .. } = &mut self.phase {
            let reply = reply.take();
            self.write(WireFrame::Text(ClientMessage::CloseStream.to_json()));
            self.phase = Phase::ClosingAwaitServer {
                deadline: Instant::now() + self.config.close_timeout,
                reply,
            };
        }
    }

    async fn on_inbound(&mut self, inbound: FromFlux) -> Flow {
        let (message, received_at, repaired) = match inbound {
            FromFlux::Message(m, at, repaired) => {
                if repaired && !matches!(*m, ServerMessage::TurnInfo(_)) {
                    self.stats.repaired_messages.fetch_add(1, Ordering::Relaxed);
                }
                (*m, at, repaired)
            }
            FromFlux::Malformed(at) => {
                // The server is alive even if this message was garbage.
                self.last_inbound = at;
                self.stats
                    .malformed_messages
                    .fetch_add(1, Ordering::Relaxed);
                return Flow::Continue;
            }
            FromFlux::Closed(reason) => {
                return match self.phase {
                    Phase::ClosingAwaitEnd { .. } | Phase::ClosingAwaitServer { .. } => Flow::Stop,
                    _ => self.connection_lost(reason).await,
                };
            }
        };
        self.last_inbound = received_at;
        self.audio_since_inbound = 0.0;
        match message {
            ServerMessage::TurnInfo(info) => {
                let sent = self.bytes_per_second.map(|_| self.audio_time);
                let accepted = self.tracker.accept(info, sent);
                for anomaly in &accepted.anomalies {
                    warn!(%anomaly, "flux turn event repaired");
                }
                if repaired || !accepted.anomalies.is_empty() {
                    self.stats.repaired_messages.fetch_add(1, Ordering::Relaxed);
                }
                let Some(info) = accepted.info else {
                    return Flow::Continue;
                };
                if info.event == TurnEvent::EndOfTurn {
                    self.replay.discard_until(info.audio_window_end);
                }
                let update = TurnUpdate {
                    audio_sent_at: self.ledger.sent_at(info.audio_window_end),
                    word_end_sent_at: info
                        .words
                        .iter()
                        .map(|w| w.end.and_then(|e| self.ledger.sent_at(e)))
                        .collect(),
                    info,
                };
                let ended = update.info.event == TurnEvent::EndOfTurn;
                self.emit(received_at, FluxEventKind::Turn(update)).await;
                if ended {
                    self.after_end_of_turn_while_closing();
                }
            }
            ServerMessage::ConfigureSuccess(success) => {
                if let Some(update) = self.inflight.take() {
                    match self.acked.apply(&update) {
                        Ok(next) => self.acked = next,
                        Err(e) => {
                            warn!(error = %e, "server accepted a configure we consider invalid")
                        }
                    }
                }
                self.emit(received_at, FluxEventKind::ConfigureApplied(success))
                    .await;
                self.send_pending_configure();
            }
            ServerMessage::ConfigureFailure(failure) => {
                warn!(code = ?failure.code, description = ?failure.description, "configure rejected");
                self.inflight = None;
                self.desired = self.acked.clone();
                if let Some(pending) = &self.pending {
                    match self.acked.apply(pending) {
                        Ok(next) => self.desired = next,
                        Err(_) => self.pending = None,
                    }
                }
                self.emit(received_at, FluxEventKind::ConfigureRejected(failure))
                    .await;
                self.send_pending_configure();
            }
            ServerMessage::Warning(w)
                if w.code == "FORCE_END_TURN_NO_ACTIVE_TURN"
                    && matches!(self.phase, Phase::ClosingAwaitEnd { .. }) =>
            {
                self.after_end_of_turn_while_closing();
            }
            // The turn ended on its own while our closing ForceEndTurn was on its way: the
            // answer to it is expected, not news.
            ServerMessage::Warning(w)
                if w.code == "FORCE_END_TURN_NO_ACTIVE_TURN"
                    && matches!(self.phase, Phase::ClosingAwaitServer { .. }) =>
            {
                debug!(code = %w.code, "flux answered the closing ForceEndTurn after the turn ended");
            }
            ServerMessage::Warning(w) => {
                warn!(code = %crate::text::Untrusted(&w.code), description = %crate::text::Untrusted(&w.description), "flux warning");
                self.emit(received_at, FluxEventKind::Warning(w)).await;
            }
            ServerMessage::Error(e)
                if !matches!(self.phase, Phase::Running | Phase::Reconnecting { .. }) =>
            {
                debug!(code = %e.code, "server error while closing");
                return Flow::Stop;
            }
            ServerMessage::Error(e) => {
                warn!(code = %crate::text::Untrusted(&e.code), description = %crate::text::Untrusted(&e.description), "flux fatal error");
                let _ = self.events.send(Err(FluxError::Server(e))).await;
                return Flow::Stop;
            }
            ServerMessage::Connected { .. } => {}
            ServerMessage::Unknown(value) => {
                debug!(message_type = ?value.get("type"), "unknown server message");
                self.emit(received_at, FluxEventKind::Unknown(value)).await;
            }
        }
        Flow::Continue
    }

    async fn connection_lost(&mut self, reason: String) -> Flow {
        warn!(reason = %crate::text::Untrusted(&reason.to_string()), "flux connection lost");
        if let Some(link) = self.link.take() {
            link.shutdown().await;
        }
        // The replay buffer re-sends the audio that matters on the next connection.
        self.outbox.clear();
        self.outbox_blocked_since = None;
        let policy = self.config.reconnect.clone();
        let now = Instant::now();
        self.lost_at = now;
        if now.duration_since(self.connected_at) >= policy.stable_after {
            self.failed_in_a_row = 0;
            self.outage_since = None;
        } else if self.failed_in_a_row > 0 {
            // The last reconnect "succeeded" but did not last: it counts as a failure.
            info!(
                attempts = self.failed_in_a_row,
                "connection died soon after reconnecting"
            );
        }
        let attempt = self.failed_in_a_row + 1;
        if attempt > policy.max_attempts {
            let last_error = if policy.max_attempts == 0 {
                "reconnecting is disabled".to_owned()
            } else {
                format!(
                    "each new connection was lost within {:?}",
                    policy.stable_after
                )
            };
            return self.give_up(reason, self.failed_in_a_row, last_error).await;
        }
        let since = *self.outage_since.get_or_insert(now);
        let delay = policy.delay(attempt, dice(), None);
        if now + delay > since + policy.budget {
            let last_error = format!(
                "the service has been away for {:?}, past the {:?} budget",
                now.duration_since(since),
                policy.budget
            );
            return self.give_up(reason, self.failed_in_a_row, last_error).await;
        }
        self.emit(
            now,
            FluxEventKind::Reconnecting {
                reason: reason.clone(),
            },
        )
        .await;
        self.phase = Phase::Reconnecting {
            attempt,
            retry_at: now + delay,
            reason,
        };
        Flow::Continue
    }

    async fn give_up(&mut self, reason: String, attempts: u32, last_error: String) -> Flow {
        let error = FluxError::ReconnectFailed {
            reason,
            attempts,
            last_error,
        };
        warn!(error = %crate::text::Untrusted(&error.to_string()), "flux session failed");
        let _ = self.events.send(Err(error)).await;
        Flow::Stop
    }

    fn start_reconnect(&mut self) {
        // The new URL carries every update requested so far, so nothing needs re-sending.
        let token = self.cancel.child_token();
        let attempt = open_link(
            self.config.clone(),
            self.connector.clone(),
            self.desired.clone(),
            token.clone(),
        );
        let cancelled = token.clone();
        let task = tokio::spawn(
            async move {
                tokio::select! {
                    biased;
                    _ = cancelled.cancelled() => Err(FluxError::Closed),
                    result = attempt => result,
                }
            }
            .in_current_span(),
        );
        self.connecting = Some(Connecting { token, task });
    }

    async fn on_reconnect_result(&mut self, result: Result<(Link, String), FluxError>) -> Flow {
        let Phase::Reconnecting {
            attempt, reason, ..
        } = &mut self.phase
        else {
            if let Ok((link, _)) = result {
                link.shutdown().await;
            }
            return Flow::Continue;
        };
        let (attempt, reason) = (*attempt, std::mem::take(reason));
        match result {
            Ok((link, request_id)) => {
                let offline = Instant::now().duration_since(self.lost_at);
                info!(%request_id, attempt, offline_ms = offline.as_millis() as u64, replay_seconds = self.replay.duration(), "flux reconnected");
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .offline_ms
                    .fetch_add(offline.as_millis() as u64, Ordering::Relaxed);
                self.link = Some(link);
                self.failed_in_a_row = attempt;
                self.acked = self.desired.clone();
                self.inflight = None;
                self.pending = None;
                self.tracker.new_connection(self.replay.start());
                let now = Instant::now();
                self.connected_at = now;
                self.last_inbound = now;
                self.audio_since_inbound = 0.0;
                self.phase = Phase::Running;
                let frames: Vec<Bytes> = self.replay.frames().collect();
                self.emit(
                    now,
                    FluxEventKind::Connected {
                        request_id,
                        attempt,
                    },
                )
                .await;
                for frame in frames {
                    self.stats.audio_frames_sent.fetch_add(1, Ordering::Relaxed);
                    self.write(WireFrame::Binary(frame));
                }
                Flow::Continue
            }
            Err(error) => {
                let retryable = match &error {
                    FluxError::Connect(e) => e.is_retryable(),
                    FluxError::ConnectedTimeout(_) => true,
                    _ => false,
                };
                let asked = match &error {
                    FluxError::Connect(ConnectError::Handshake { retry_after, .. }) => *retry_after,
                    _ => None,
                };
                // Once per outage at warn: a thousand calls retrying through a 30 s outage
                // would otherwise write fifteen thousand warnings. The reconnect (with its
                // attempts) or the giving up is logged too.
                if attempt <= 1 {
                    warn!(error = %crate::text::Untrusted(&error.to_string()), attempt, "flux reconnect failed; retrying with backoff");
                } else {
                    debug!(error = %crate::text::Untrusted(&error.to_string()), attempt, "flux reconnect failed");
                }
                self.stats
                    .reconnect_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.failed_in_a_row = attempt;
                let policy = &self.config.reconnect;
                if !retryable || attempt >= policy.max_attempts {
                    return self.give_up(reason, attempt, error.to_string()).await;
                }
                let now = Instant::now();
                let since = *self.outage_since.get_or_insert(self.lost_at);
                let delay = policy.delay(attempt + 1, dice(), asked);
                if now + delay > since + policy.budget {
                    let last_error = format!(
                        "{error}; the service has been away for {:?}, past the {:?} budget",
                        now.duration_since(since),
                        policy.budget
                    );
                    return self.give_up(reason, attempt, last_error).await;
                }
                self.phase = Phase::Reconnecting {
                    attempt: attempt + 1,
                    retry_at: now + delay,
                    reason,
                };
                Flow::Continue
            }
        }
    }

    async fn on_tick(&mut self) -> Flow {
        let now = Instant::now();
        match &mut self.phase {
            Phase::Reconnecting { retry_at, .. } => {
                if now >= *retry_at && self.connecting.is_none() {
                    self.start_reconnect();
                }
                return Flow::Continue;
            }
            Phase::ClosingAwaitEnd { deadline, .. } => {
                if now >= *deadline {
                    warn!("no EndOfTurn after ForceEndTurn; closing anyway");
                    self.after_end_of_turn_while_closing();
                }
                return Flow::Continue;
            }
            Phase::ClosingAwaitServer { deadline, .. } => {
                return if now >= *deadline {
                    Flow::Stop
                } else {
                    Flow::Continue
                };
            }
            Phase::Running => {}
        }
        if let Some(since) = self.outbox_blocked_since
            && now.duration_since(since) >= self.config.writer_stall_timeout
        {
            return self
                .connection_lost(format!(
                    "the server stopped reading: {} frames waited {:?}",
                    self.outbox.len(),
                    now.duration_since(since)
                ))
                .await;
        }
        if self.tracker.turn_open()
            && self.frame_bytes > 0
            && now.duration_since(self.last_source_audio) >= self.config.silence_after
            && now.duration_since(self.last_audio_sent) >= self.config.frame
        {
            if let Some(rest) = self.chunker.flush() {
                self.send_audio_frame(rest, now);
            } else if let Some(sample) = self
                .config
                .options
                .encoding
                .and_then(|e| e.silence_sample())
            {
                let silence = Bytes::from(sample.repeat(self.frame_bytes / sample.len()));
                self.stats.silence_frames.fetch_add(1, Ordering::Relaxed);
                self.send_audio_frame(silence, now);
            }
        }
        if now.duration_since(self.last_sent) >= self.config.ping_interval {
            self.stats.pings_sent.fetch_add(1, Ordering::Relaxed);
            self.write(WireFrame::Ping(Bytes::new()));
        }
        let silent_for = now.duration_since(self.last_inbound);
        if silent_for >= self.config.silent_server_timeout
            && self.audio_since_inbound >= self.config.silent_server_timeout.as_secs_f64() / 2.0
        {
            return self
                .connection_lost(format!(
                    "no message from the server for {silent_for:?} while {:.1} s of audio were sent",
                    self.audio_since_inbound
                ))
                .await;
        }
        Flow::Continue
    }
}
