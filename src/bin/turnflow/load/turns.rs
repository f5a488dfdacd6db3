//! What a browser-like caller does turn after turn, whatever carries it (a WebSocket, WebRTC):
//! speak the WAV, wait for the agent, listen, pause, speak again (or interrupt), and time each
//! turn at the client. Pure apart from the clock it is handed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use turnflow::engine::EngineEvent;
use turnflow::server::protocol::ToClient;

use super::{
    BrowserSpeech, CallerPlan, PAUSE_AFTER_REPLY, Progress, SessionResult, TurnSample, ms,
};

/// One 20 ms frame of the microphone.
pub(super) struct Frame {
    /// Which frame of the WAV it is (`None`: silence): the WebRTC caller sends that frame's
    /// packet, encoded once.
    #[cfg_attr(
        not(feature = "webrtc"),
        expect(dead_code, reason = "only the WebRTC caller reads it")
    )]
    pub(super) index: Option<usize>,
    /// PCM16 little-endian at 16 kHz.
    pub(super) pcm: Bytes,
}

/// What the caller does after a frame.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// Go on.
    Continue,
    /// Every turn is done: send `stop`.
    Stop,
    /// The session failed (the reason is in the result).
    Failed,
}

/// The caller's turns.
pub(super) struct Turns {
    plan: CallerPlan,
    speech: Arc<BrowserSpeech>,
    progress: Arc<Progress>,
    turn: u32,
    /// Where the caller is in the WAV while speaking.
    position: Option<usize>,
    speech_end_sent: Option<Instant>,
    finished_at: Option<Instant>,
    sample: TurnSample,
    reply_ended: bool,
    waiting_since: Option<Instant>,
    pause_until: Option<Instant>,
    stopping: bool,
    /// Agent audio of this turn's reply received so far.
    reply_received: Duration,
    /// What the session measured, and why it failed.
    pub(super) result: SessionResult,
}

impl Turns {
    pub(super) fn new(
        plan: CallerPlan,
        speech: Arc<BrowserSpeech>,
        progress: Arc<Progress>,
    ) -> Self {
        Self {
            plan,
            speech,
            progress,
            turn: 0,
            position: None,
            speech_end_sent: None,
            finished_at: None,
            sample: TurnSample::default(),
            reply_ended: false,
            waiting_since: None,
            pause_until: None,
            stopping: false,
            reply_received: Duration::ZERO,
            result: SessionResult::default(),
        }
    }

    /// Whether the caller has said `stop` (it sends no more audio).
    pub(super) fn stopping(&self) -> bool {
        self.stopping
    }

    /// The server is ready: the first turn begins.
    pub(super) fn ready(&mut self) {
        self.position = Some(0);
    }

    /// The next 20 ms of the microphone: the WAV while speaking, silence otherwise.
    pub(super) fn frame(&mut self, now: Instant) -> Frame {
        let Some(at) = self.position else {
            return Frame {
                index: None,
                pcm: self.speech.silence.clone(),
            };
        };
        let samples = self.speech.samples();
        let end = (at + super::FRAME).min(samples);
        let end_of_speech = self.speech.end_of_speech;
        if at < end_of_speech && end >= end_of_speech {
            self.speech_end_sent = Some(now);
        }
        self.position = (end < samples).then_some(end);
        if self.position.is_none() {
            self.waiting_since = Some(now);
        }
        Frame {
            index: Some(at / super::FRAME),
            pcm: self.speech.pcm.slice(at * 2..end * 2),
        }
    }

    /// After a frame went out: the reply's patience, the pause after it, the next turn or the
    /// interruption, and the end.
    pub(super) fn after_frame(&mut self, now: Instant) -> Next {
        if self
            .waiting_since
            .is_some_and(|t| now - t > self.plan.reply_patience)
            && !self.reply_ended
        {
            self.result.failure = Some(format!(
                "no reply within {:?} in turn {}",
                self.plan.reply_patience, self.turn
            ));
            return Next::Failed;
        }
        if self.reply_ended && self.pause_until.is_none() {
            self.pause_until = Some(now + PAUSE_AFTER_REPLY);
        }
        let interrupting = !self.reply_ended
            && self
                .plan
                .barge_in_after
                .is_some_and(|after| self.reply_received >= after);
        if !(self.pause_until.is_some_and(|t| now >= t) || interrupting) {
            return Next::Continue;
        }
        self.reply_received = Duration::ZERO;
        self.result.turns.push(std::mem::take(&mut self.sample));
        self.progress.turns.fetch_add(1, Ordering::Relaxed);
        self.turn += 1;
        (
            self.reply_ended,
            self.pause_until,
            self.waiting_since,
            self.finished_at,
            self.speech_end_sent,
        ) = (false, None, None, None, None);
        if self.turn == self.plan.turns {
            self.stopping = true;
            Next::Stop
        } else {
            self.position = Some(0);
            Next::Continue
        }
    }

    /// Agent audio arrived: `length` of it.
    pub(super) fn agent_audio(&mut self, length: Duration, now: Instant) {
        if self.speech_end_sent.is_some() {
            self.reply_received += length;
        }
        if let Some(at) = self.finished_at
            && self.sample.response_latency_ms.is_none()
        {
            self.sample.response_latency_ms = Some(ms(at, now));
            self.sample.voice_to_voice_ms = self.speech_end_sent.map(|t| ms(t, now));
        }
    }

    /// A protocol message from the server (`ready` and `clear` are the transport's to act on).
    pub(super) fn message(&mut self, message: &ToClient, now: Instant) {
        match message {
            ToClient::Event(EngineEvent::UserFinished { .. }) => self.finished_at = Some(now),
            ToClient::Event(EngineEvent::ResponseEnded { .. }) if self.finished_at.is_some() => {
                self.reply_ended = true;
            }
            ToClient::Turn(turn) => {
                self.sample.server_response_latency_ms = turn.response_latency_ms;
                self.sample.engine_overhead_ms = turn.engine_overhead_ms;
                self.sample.barge_in_stop_ms = turn.barge_in_stop_ms;
                self.sample.speculation = Some(turn.speculation);
                self.sample.speculation_withdrawn = turn.speculation_withdrawn;
                self.sample.lead_ms = turn.lead_ms;
            }
            ToClient::Error(error) => {
                self.result.failure =
                    Some(format!("server error {}: {}", error.code, error.message));
            }
            ToClient::End(end) if end.reason != "stopped" && self.result.failure.is_none() => {
                self.result.failure = Some(format!("ended: {:?}", end.reason));
            }
            _ => {}
        }
    }
}
