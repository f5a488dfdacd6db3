//! The session driver: owns every task of a conversation and executes the turn machine's
//! actions.
//!
//! Ownership and cancellation mirror each other:
//! ```text
//! session token ── playout task
//!               └─ response token ── generator (LLM stream, tools)
//!                                  └─ speaker (TTS stream, delivery to playout)
//! ```
//! Barge-in cancels one response token and clears its queued audio in playout; closing
//! cancels the session token and awaits every task. All loops `select!` with `biased;` so
//! cancellation wins over work.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use super::log::{EventLog, LogKind};
use super::playout::{AudioSink, PlayoutCommand, PlayoutEvent, run_playout};
use super::response::{ResponseContext, ResponseOptions, ResponseReport, run_response};
use super::turn::{
    Action, CancelReason, EngineEvent, Input, MachineConfig, Outcome, ResponseId, TurnMachine,
    UserEvent,
};
use crate::flux::{FluxError, FluxEventKind, FluxEvents, TurnEvent};
use crate::llm::{LanguageModel, Message, ToolExecutor};
use crate::tts::SpeechSynthesizer;

/// How a session behaves.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// Speculation, barge-in policy, system prompt.
    pub machine: MachineConfig,
    /// Response pipeline settings (fallback line, timeouts, pre-synthesis).
    pub response: ResponseOptions,
}

/// The backends a session talks to.
#[derive(Clone)]
pub struct Backends {
    /// The language model.
    pub llm: Arc<dyn LanguageModel>,
    /// The voice.
    pub tts: Arc<dyn SpeechSynthesizer>,
    /// Tools, if the model may call any.
    pub tools: Option<Arc<dyn ToolExecutor>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("llm", &self.llm.name())
            .field("tts", &self.tts.name())
            .field("tools", &self.tools.as_ref().map(|t| t.specs().len()))
            .finish()
    }
}

/// What a finished session leaves behind.
#[derive(Debug, Clone)]
pub struct SessionOutcome {
    /// The conversation as the user heard it.
    pub history: Vec<Message>,
    /// Why the Flux stream ended, if it failed.
    pub error: Option<FluxError>,
}

/// A running session.
pub struct SessionHandle {
    cancel: CancellationToken,
    task: JoinHandle<SessionOutcome>,
    log: EventLog,
}

impl SessionHandle {
    /// The session's event log (grows while the session runs).
    pub fn log(&self) -> EventLog {
        self.log.clone()
    }

    /// Waits until the Flux stream has ended and the last reply has played out. A panicked
    /// session task is reported as an outcome with an empty history.
    pub async fn finished(self) -> SessionOutcome {
        self.task.await.unwrap_or_else(|_| SessionOutcome {
            history: Vec::new(),
            error: None,
        })
    }

    /// Stops now: cancels every response and the playout, then awaits them.
    pub async fn close(self) -> SessionOutcome {
        self.cancel.cancel();
        self.finished().await
    }
}

/// Starts a session on a Flux event stream. Events for the application arrive on the
/// returned receiver (drop it if unused).
pub fn start_session(
    config: SessionConfig,
    flux: FluxEvents,
    backends: Backends,
    sink: Box<dyn AudioSink>,
) -> (SessionHandle, mpsc::UnboundedReceiver<EngineEvent>) {
    let cancel = CancellationToken::new();
    let log = EventLog::default();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (playout_tx, playout_rx) = mpsc::channel(256);
    let (playout_events_tx, playout_events) = mpsc::unbounded_channel();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (written_tx, written) = watch::channel(0);
    let session_id = uuid::Uuid::new_v4();
    let span = info_span!("session", id = %session_id);
    let playout = tokio::spawn(
        run_playout(
            sink,
            backends.tts.sample_rate(),
            playout_rx,
            playout_events_tx,
            written_tx,
            log.clone(),
            cancel.child_token(),
        )
        .instrument(span.clone()),
    );
    let driver = Driver {
        machine: TurnMachine::new(config.machine),
        responses: HashMap::new(),
        ctx: Arc::new(ResponseContext {
            llm: backends.llm,
            tts: backends.tts,
            tools: backends.tools,
            playout: playout_tx.clone(),
            reports: reports_tx,
            written,
            log: log.clone(),
            options: config.response,
        }),
        playout: playout_tx,
        events: events_tx,
        log: log.clone(),
        timer: None,
        cancel: cancel.clone(),
    };
    let task = tokio::spawn(
        driver
            .run(flux, playout_events, reports, playout)
            .instrument(span),
    );
    (SessionHandle { cancel, task, log }, events_rx)
}

struct ResponseTask {
    token: CancellationToken,
    gate: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Driver {
    machine: TurnMachine,
    responses: HashMap<ResponseId, ResponseTask>,
    ctx: Arc<ResponseContext>,
    playout: mpsc::Sender<PlayoutCommand>,
    events: mpsc::UnboundedSender<EngineEvent>,
    log: EventLog,
    timer: Option<(Instant, u64)>,
    cancel: CancellationToken,
}

fn user_event(event: &TurnEvent) -> Option<UserEvent> {
    Some(match event {
        TurnEvent::StartOfTurn => UserEvent::StartOfTurn,
        TurnEvent::Update => UserEvent::Update,
        TurnEvent::EagerEndOfTurn => UserEvent::EagerEndOfTurn,
        TurnEvent::TurnResumed => UserEvent::TurnResumed,
        TurnEvent::EndOfTurn => UserEvent::EndOfTurn,
        TurnEvent::Unknown(_) => return None,
    })
}

impl Driver {
    async fn run(
        mut self,
        mut flux: FluxEvents,
        mut playout_events: mpsc::UnboundedReceiver<PlayoutEvent>,
        mut reports: mpsc::UnboundedReceiver<ResponseReport>,
        playout: JoinHandle<()>,
    ) -> SessionOutcome {
        let mut error = None;
        let mut flux_open = true;
        loop {
            if !flux_open && self.responses.is_empty() {
                break;
            }
            let timer = self.timer;
            let expiry = async move {
                match timer {
                    Some((at, generation)) => {
                        tokio::time::sleep_until(at).await;
                        generation
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(event) = playout_events.recv() => self.on_playout(event).await,
                Some(report) = reports.recv() => match report {
                    ResponseReport::FailedWhileHeld { id, error } => {
                        self.reap(id).await;
                        self.step(Input::Ended(id, Outcome::Failed { heard: String::new(), error })).await;
                    }
                },
                generation = expiry => {
                    self.timer = None;
                    self.step(Input::FalseInterruptionTimeout(generation)).await;
                }
                event = flux.recv(), if flux_open => match event {
                    Some(Ok(event)) => self.on_flux(event).await,
                    Some(Err(e)) => {
                        info!(error = %e, "flux stream failed");
                        error = Some(e);
                        flux_open = false;
                    }
                    None => flux_open = false,
                },
            }
        }
        self.step(Input::Shutdown).await;
        self.cancel.cancel();
        let _ = playout.await;
        SessionOutcome {
            history: self.machine.history().to_vec(),
            error,
        }
    }

    async fn on_flux(&mut self, event: crate::flux::FluxEvent) {
        let FluxEventKind::Turn(update) = event.kind else {
            return;
        };
        let info = &update.info;
        self.log.record_at(
            event.received_at,
            LogKind::Flux {
                event: info.event.clone(),
                turn_index: info.turn_index,
                transcript: info.transcript.clone(),
                audio_window_end: info.audio_window_end,
                speech_end_sent_at: update.speech_end_sent_at(),
            },
        );
        if let Some(user) = user_event(&info.event) {
            debug!(turn = info.turn_index, event = %info.event, transcript = %info.transcript, "flux");
            self.step(Input::User {
                event: user,
                transcript: info.transcript.clone(),
            })
            .await;
        }
    }

    async fn on_playout(&mut self, event: PlayoutEvent) {
        match event {
            PlayoutEvent::Started(id) => self.step(Input::AudioStarted(id)).await,
            PlayoutEvent::Sentence { id, text } => {
                let _ = self
                    .events
                    .send(EngineEvent::AgentSentence { response: id, text });
            }
            PlayoutEvent::Finished { id, heard, failure } => {
                self.reap(id).await;
                self.log.record(LogKind::Ended {
                    id,
                    generated: heard.generated,
                    heard: heard.heard.clone(),
                    interrupted: false,
                    error: failure.clone(),
                });
                let outcome = match failure {
                    Some(error) => Outcome::Failed {
                        heard: heard.heard,
                        error,
                    },
                    None => Outcome::Finished {
                        spoken: heard.heard,
                    },
                };
                self.step(Input::Ended(id, outcome)).await;
            }
        }
    }

    /// Awaits a response's task once it has ended on its own.
    async fn reap(&mut self, id: ResponseId) {
        if let Some(r) = self.responses.remove(&id) {
            r.token.cancel();
            let _ = r.task.await;
        }
    }

    async fn step(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            for action in self.machine.step(input) {
                if let Some(next) = self.execute(action).await {
                    inputs.push_back(next);
                }
            }
        }
    }

    async fn execute(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Start {
                id,
                messages,
                speculative,
            } => {
                self.log.record(LogKind::ResponseStarted {
                    id,
                    speculative,
                    turn: self.machine.turn(),
                });
                let token = self.cancel.child_token();
                let (gate, gate_rx) = watch::channel(!speculative);
                let span = info_span!("response", %id, turn = self.machine.turn(), speculative);
                let task = tokio::spawn(
                    run_response(id, messages, self.ctx.clone(), gate_rx, token.clone())
                        .instrument(span),
                );
                self.responses
                    .insert(id, ResponseTask { token, gate, task });
                None
            }
            Action::Promote(id) => {
                if let Some(r) = self.responses.get(&id) {
                    self.log.record(LogKind::Promoted { id });
                    let _ = r.gate.send(true);
                }
                None
            }
            Action::Cancel(id, reason) => {
                self.log.record(LogKind::Cancelled { id, reason });
                let task = self.responses.remove(&id);
                if let Some(t) = &task {
                    t.token.cancel();
                }
                let (reply, heard) = oneshot::channel();
                let heard = if self
                    .playout
                    .send(PlayoutCommand::Clear { id, reply })
                    .await
                    .is_ok()
                {
                    heard.await.unwrap_or_default()
                } else {
                    Default::default()
                };
                if reason == CancelReason::BargeIn {
                    self.ctx.tts.clear().await;
                }
                if let Some(t) = task {
                    let _ = t.task.await;
                }
                self.log.record(LogKind::Ended {
                    id,
                    generated: heard.generated,
                    heard: heard.heard.clone(),
                    interrupted: !heard.complete,
                    error: None,
                });
                // A reply that finished playing just before the cut was heard whole.
                Some(Input::Ended(
                    id,
                    if heard.complete {
                        Outcome::Finished {
                            spoken: heard.heard,
                        }
                    } else {
                        Outcome::Cancelled { heard: heard.heard }
                    },
                ))
            }
            Action::Pause(id) => {
                let _ = self.playout.send(PlayoutCommand::Pause(id)).await;
                None
            }
            Action::Resume(id) => {
                let _ = self.playout.send(PlayoutCommand::Resume(id)).await;
                None
            }
            Action::StartTimer { generation, after } => {
                self.timer = Some((Instant::now() + after, generation));
                None
            }
            Action::Emit(event) => {
                let _ = self.events.send(event);
                None
            }
        }
    }
}
