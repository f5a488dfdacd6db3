//! The session driver: owns every task of a conversation and executes the turn machine's
//! actions.
//!
//! Ownership and cancellation mirror each other:
//! ```text
//! session token ── playout task
//!               └─ response token ── generator (LLM stream, tools)
//!                                  └─ speaker (TTS stream, delivery to playout)
//! ```
//! Barge-in cancels one response token and clears its queued audio in playout; that is all the
//! session loop waits for. The voice's `clear()` and the end of the cancelled task are awaited
//! by a reaper the session owns, each bounded, so a provider that never confirms cannot freeze
//! the conversation. Closing stops the live response first (its heard part stays in the
//! history), then cancels the session token and awaits every task; dropping the handle cancels
//! at once. A panicking response ends with the fallback line; a panicking output ends the
//! session with [`SessionError::Panicked`]. All loops `select!` with `biased;` so cancellation
//! wins over work.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::log::{EventLog, LogKind};
use super::playout::{AudioSink, Heard, Interrupter, PlayoutCommand, PlayoutEvent, run_playout};
use super::response::{
    ResponseContext, ResponseOptions, ResponseReport, panic_message, run_response,
};
use super::turn::{
    Action, CancelReason, EngineEvent, Input, MachineConfig, Outcome, Prompt, ResponseId,
    TurnMachine, UserEvent,
};
use crate::error::{BackendError, ErrorKind};
use crate::flux::{FluxError, FluxEventKind, TurnEvent};
use crate::llm::{LanguageModel, Message, ToolExecutor};
use crate::tts::{SpeechCut, SpeechSynthesizer};

/// How a session behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Speculation, barge-in policy, system prompt, history bounds.
    pub machine: MachineConfig,
    /// Response pipeline settings (fallback line, timeouts, pre-synthesis).
    pub response: ResponseOptions,
    /// Entries the event log keeps in memory (see [`EventLog::subscribe`] for all of them).
    pub log_limit: usize,
    /// What the agent says while the speech-to-text service is away.
    pub outage: OutageLines,
}

/// What the agent says when the service that hears the user is away: one line once the
/// reconnect has taken `trouble_after` (said over the user, who cannot be heard anyway), and
/// one when the service is given up on, before the session ends. `None` says nothing.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutageLines {
    /// Said once per outage, `trouble_after` into it.
    pub trouble: Option<String>,
    /// How long an outage lasts before `trouble` is said.
    pub trouble_after: Duration,
    /// Said when the service is given up on; the session ends after it.
    pub goodbye: Option<String>,
}

impl Default for OutageLines {
    fn default() -> Self {
        Self {
            trouble: Some("Sorry, I'm having trouble hearing you. One moment.".into()),
            trouble_after: Duration::from_secs(2),
            goodbye: Some(
                "Sorry, I can't hear you right now. Please try again in a little while.".into(),
            ),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            machine: MachineConfig::default(),
            response: ResponseOptions::default(),
            log_limit: super::log::DEFAULT_LOG_LIMIT,
            outage: OutageLines::default(),
        }
    }
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

/// Why a session ended other than by its Flux stream closing normally.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The Flux stream failed (server error, reconnects exhausted).
    #[error(transparent)]
    Flux(#[from] FluxError),
    /// A task of the session panicked; the session ended.
    #[error("the session's {task} panicked: {message}")]
    Panicked {
        /// Which task (`driver`, `audio output`).
        task: &'static str,
        /// The panic message.
        message: String,
    },
}

/// How the session's replies went.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplyTally {
    /// Replies that played to their end or were cut by the user.
    pub answered: u64,
    /// Replies that ended with a backend failure (the fallback line, if it played, included).
    pub failed: u64,
    /// The last failure, for the closing message of a session where nothing worked.
    pub last_failure: Option<BackendError>,
}

/// What a finished session leaves behind.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionOutcome {
    /// The conversation as the user heard it (the most recent
    /// [`MachineConfig::history_limit`] messages).
    pub history: Vec<Message>,
    /// Why the session ended, if it failed.
    pub error: Option<SessionError>,
    /// How its replies went.
    pub replies: ReplyTally,
}

/// Application events queued at most; beyond this the oldest unread are kept and new ones are
/// dropped (and counted in the log) rather than growing without bound.
pub(crate) const EVENT_QUEUE: usize = 1024;

/// Longest the session waits, in the background, for a cancelled reply's task to stop and for
/// the voice to confirm a clear.
const REAP_LIMIT: Duration = Duration::from_secs(2);

/// A running session. Dropping it stops every task of the session at once;
/// [`SessionHandle::close`] stops gracefully.
pub struct SessionHandle {
    prompts: mpsc::UnboundedSender<Prompt>,
    stop: CancellationToken,
    cancel: CancellationToken,
    task: Option<JoinHandle<SessionOutcome>>,
    log: EventLog,
    history: Arc<Mutex<Vec<Message>>>,
}

impl SessionHandle {
    /// The session's event log (grows while the session runs, up to its limit).
    pub fn log(&self) -> EventLog {
        self.log.clone()
    }

    /// A handle that makes the agent speak first (see [`Prompter::prompt`]); it stays usable
    /// while [`SessionHandle::finished`] is awaited.
    pub fn prompter(&self) -> Prompter {
        Prompter(self.prompts.clone())
    }

    /// Waits until the Flux stream has ended and the last reply has played out. A panic of
    /// the session's own task comes back as [`SessionError::Panicked`] with the history as it
    /// was.
    pub async fn finished(mut self) -> SessionOutcome {
        let Some(task) = self.task.take() else {
            unreachable!("the task is taken only here, and finished consumes the handle")
        };
        match task.await {
            Ok(outcome) => outcome,
            Err(e) => SessionOutcome {
                history: self.history.lock().expect("history lock").clone(),
                error: Some(SessionError::Panicked {
                    task: "driver",
                    message: if e.is_panic() {
                        panic_message(&*e.into_panic())
                    } else {
                        "cancelled".to_owned()
                    },
                }),
                replies: ReplyTally::default(),
            },
        }
    }

    /// Stops now: cancels every response, keeps what the user heard of the reply in
    /// progress in the history, stops playout, then awaits every task.
    pub async fn close(self) -> SessionOutcome {
        self.stop.cancel();
        self.finished().await
    }
}

/// Makes the agent speak without being asked: a greeting when a call connects, a re-prompt
/// after silence. The prompt is an ordinary response (interruptible, kept in the history as
/// heard); it is taken only while neither the user nor the agent is speaking and no reply is
/// being prepared, and ignored otherwise (an [`EngineEvent::Prompting`] tells it was taken).
#[derive(Debug, Clone)]
pub struct Prompter(mpsc::UnboundedSender<Prompt>);

impl Prompter {
    /// Asks for `prompt`; false when the session has ended.
    pub fn prompt(&self, prompt: Prompt) -> bool {
        self.0.send(prompt).is_ok()
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Where a session's turn events come from: the Flux client's [`FluxEvents`](crate::flux::FluxEvents), or any stream of
/// the same events (a recording played back, an adapter for another speech-to-text service, a
/// test's script). The stream ends when the listening does; an error item ends the session.
pub trait TurnEvents:
    futures_util::Stream<Item = Result<crate::flux::FluxEvent, FluxError>> + Send + Unpin + 'static
{
}

impl<S> TurnEvents for S where
    S: futures_util::Stream<Item = Result<crate::flux::FluxEvent, FluxError>>
        + Send
        + Unpin
        + 'static
{
}

/// Starts a session on a stream of turn events ([`TurnEvents`]). Cancelling `stop` (or calling
/// [`SessionHandle::close`]) ends it gracefully: the reply in progress is cut, what the user
/// heard of it stays in the history, then every task is awaited. One token can stop many
/// sessions (a server draining). Events for the application arrive on the returned receiver
/// (drop it if unused); it holds at most 1024 unread events.
pub fn start_session(
    config: SessionConfig,
    flux: impl TurnEvents,
    backends: Backends,
    sink: Box<dyn AudioSink>,
    stop: CancellationToken,
) -> (SessionHandle, mpsc::Receiver<EngineEvent>) {
    let cancel = CancellationToken::new();
    // Closing this session must not stop the others sharing the caller's token.
    let stop = stop.child_token();
    let log = EventLog::with_limit(config.log_limit);
    let history = Arc::new(Mutex::new(Vec::new()));
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (prompts_tx, prompts) = mpsc::unbounded_channel();
    let (playout_tx, playout_rx) = mpsc::channel(256);
    let (playout_events_tx, playout_events) = mpsc::unbounded_channel();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (written_tx, written) = watch::channel(0);
    let session_id = uuid::Uuid::new_v4();
    let span = info_span!("session", id = %session_id);
    let interrupter = sink.interrupter();
    let tts = backends.tts.for_conversation().unwrap_or(backends.tts);
    let playout = tokio::spawn(
        run_playout(
            sink,
            tts.sample_rate(),
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
            tts,
            tools: backends.tools,
            playout: playout_tx.clone(),
            reports: reports_tx,
            written,
            log: log.clone(),
            options: config.response,
        }),
        playout: playout_tx,
        events: events_tx,
        events_dropped: 0,
        log: log.clone(),
        timer: None,
        cancel: cancel.clone(),
        stop: stop.clone(),
        reaper: JoinSet::new(),
        replies: ReplyTally::default(),
        history: history.clone(),
        last_logged_words: None,
        interrupter,
        outage: config.outage,
        trouble_at: None,
        away: false,
    };
    let task = tokio::spawn(
        driver
            .run(flux, playout_events, reports, prompts, playout)
            .instrument(span),
    );
    (
        SessionHandle {
            prompts: prompts_tx,
            stop,
            cancel,
            task: Some(task),
            log,
            history,
        },
        events_rx,
    )
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
    events: mpsc::Sender<EngineEvent>,
    events_dropped: u64,
    log: EventLog,
    timer: Option<(Instant, u64)>,
    /// Root of the session's tokens: playout and every response.
    cancel: CancellationToken,
    /// Graceful stop: the driver cancels what plays and keeps what was heard.
    stop: CancellationToken,
    /// Cancelled responses being stopped (and the voice cleared) off the session loop.
    reaper: JoinSet<()>,
    replies: ReplyTally,
    /// The history as of the last step, for the outcome of a panicked driver.
    history: Arc<Mutex<Vec<Message>>>,
    /// Turn and transcript of the last Flux event logged.
    last_logged_words: Option<(u64, String)>,
    /// The sink's own way to cut the listener off at a barge-in, ahead of playout.
    interrupter: Option<Arc<dyn Interrupter>>,
    outage: OutageLines,
    /// When the outage's trouble line is due; `None` while the service is there or once it
    /// was said.
    trouble_at: Option<Instant>,
    /// The speech-to-text service is away (reconnecting).
    away: bool,
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
        mut flux: impl TurnEvents,
        mut playout_events: mpsc::UnboundedReceiver<PlayoutEvent>,
        mut reports: mpsc::UnboundedReceiver<ResponseReport>,
        mut prompts: mpsc::UnboundedReceiver<Prompt>,
        mut playout: JoinHandle<()>,
    ) -> SessionOutcome {
        let mut error = None;
        let mut flux_open = true;
        let mut playout_alive = true;
        let (stop, cancel) = (self.stop.clone(), self.cancel.clone());
        let mut stopped = std::pin::pin!(stop.cancelled());
        let mut cancelled = std::pin::pin!(cancel.cancelled());
        loop {
            if !flux_open && self.responses.is_empty() {
                break;
            }
            let timer = self.timer;
            let trouble_at = self.trouble_at;
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
                () = &mut stopped => break,
                () = &mut cancelled => break,
                ended = &mut playout => {
                    playout_alive = false;
                    let message = match ended {
                        Err(e) if e.is_panic() => panic_message(&*e.into_panic()),
                        _ => "it stopped unexpectedly".to_owned(),
                    };
                    warn!(%message, "audio output failed; ending the session");
                    error = Some(SessionError::Panicked { task: "audio output", message });
                    break;
                }
                Some(event) = playout_events.recv() => self.on_playout(event).await,
                Some(report) = reports.recv() => self.on_report(report).await,
                Some(prompt) = prompts.recv(), if flux_open => self.step(Input::Prompt(prompt)).await,
                Some(_) = self.reaper.join_next(), if !self.reaper.is_empty() => {}
                () = async { tokio::time::sleep_until(trouble_at.expect("guarded")).await }, if trouble_at.is_some() => {
                    self.trouble_at = None;
                    if let Some(line) = self.outage.trouble.clone() {
                        info!("speech to text away for {:?}; telling the user", self.outage.trouble_after);
                        self.step(Input::Prompt(Prompt::Notice(line))).await;
                    }
                }
                generation = expiry => {
                    self.timer = None;
                    self.step(Input::FalseInterruptionTimeout(generation)).await;
                }
                event = futures_util::StreamExt::next(&mut flux), if flux_open => match event {
                    Some(Ok(event)) => self.on_flux(event).await,
                    Some(Err(e)) => {
                        warn!(error = %crate::text::Untrusted(&e.to_string()), "flux stream failed; the session ends");
                        error = Some(SessionError::Flux(e));
                        flux_open = false;
                        self.trouble_at = None;
                        // The session ends once the goodbye has been said.
                        if let Some(line) = self.outage.goodbye.clone() {
                            self.step(Input::Prompt(Prompt::Notice(line))).await;
                        }
                    }
                    None => flux_open = false,
                },
            }
        }
        // Cancels what is live while playout still runs, so the heard part stays in history.
        self.step(Input::Shutdown).await;
        self.cancel.cancel();
        if playout_alive {
            let _ = playout.await;
        }
        while self.reaper.join_next().await.is_some() {}
        // Side-effecting calls that outlived their replies: those cut before the end have
        // answered (the reaper awaited them); those the shutdown itself cut are awaited now,
        // each within its tool timeout. Their results belong in the history the session leaves.
        while let Ok(report) = reports.try_recv() {
            let (id, call, result) = match report {
                ResponseReport::ToolFinished {
                    id, call, result, ..
                } => (id, call, result),
                ResponseReport::ToolShielded { id, call, task, .. } => {
                    info!(%id, tool = %crate::text::Untrusted(&call.name), "the session ends during a side-effecting call; waiting for its result");
                    let (result, outcome) = task
                        .await
                        .unwrap_or_else(|e| (Err(format!("{} failed: {e}", call.name)), "error"));
                    self.log.record(LogKind::ToolEnded {
                        id,
                        call_id: call.id.clone(),
                        outcome,
                    });
                    (id, call, result.unwrap_or_else(|e| format!("error: {e}")))
                }
                _ => continue,
            };
            self.machine.step(Input::Tool {
                id,
                call,
                result: Some(result),
            });
        }
        if self.events_dropped > 0 {
            warn!(
                dropped = self.events_dropped,
                "application events were dropped because the receiver fell behind"
            );
        }
        SessionOutcome {
            history: self.machine.history().to_vec(),
            error,
            replies: self.replies,
        }
    }

    async fn on_flux(&mut self, event: crate::flux::FluxEvent) {
        let update = match event.kind {
            FluxEventKind::Turn(update) => update,
            FluxEventKind::Reconnecting { .. } => {
                if !self.away {
                    self.away = true;
                    self.trouble_at = Some(Instant::now() + self.outage.trouble_after);
                }
                return;
            }
            FluxEventKind::Connected { .. } => {
                self.away = false;
                self.trouble_at = None;
                return;
            }
            _ => return,
        };
        let info = &update.info;
        // An Update that changes nothing (Flux sends one every 240 ms, between turns too)
        // would fill the log without telling the report anything.
        let news = info.event != TurnEvent::Update
            || self
                .last_logged_words
                .as_ref()
                .is_none_or(|(turn, words)| *turn != info.turn_index || *words != info.transcript);
        if news {
            self.last_logged_words = Some((info.turn_index, info.transcript.clone()));
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
        }
        if let Some(user) = user_event(&info.event) {
            debug!(turn = info.turn_index, event = %crate::text::Untrusted(&info.event.to_string()), transcript = %crate::text::Untrusted(&info.transcript), "flux");
            self.step(Input::User {
                event: user,
                transcript: info.transcript.clone(),
            })
            .await;
        } else {
            warn!(event = %crate::text::Untrusted(&info.event.to_string()), turn = info.turn_index, "unknown turn event ignored");
        }
    }

    async fn on_report(&mut self, report: ResponseReport) {
        match report {
            ResponseReport::ToolStarted {
                id,
                call,
                speculative,
            } => {
                self.emit(EngineEvent::ToolStarted {
                    response: id,
                    tool: call.name.clone(),
                    speculative,
                });
                self.step(Input::Tool {
                    id,
                    call,
                    result: None,
                })
                .await;
            }
            ResponseReport::ToolFinished {
                id,
                call,
                result,
                outcome,
                took,
            } => {
                self.emit(EngineEvent::ToolFinished {
                    response: id,
                    tool: call.name.clone(),
                    outcome: outcome.to_owned(),
                    duration_ms: took.as_secs_f64() * 1000.0,
                });
                self.step(Input::Tool {
                    id,
                    call,
                    result: Some(result),
                })
                .await;
            }
            ResponseReport::ToolShielded {
                id,
                call,
                started,
                task,
            } => {
                info!(%id, tool = %crate::text::Untrusted(&call.name), "the reply was cut during a side-effecting call; it completes and its result is kept");
                let reports = self.ctx.reports.clone();
                let log = self.log.clone();
                // Bounded by the tool's own timeout, inside the task.
                self.reaper.spawn(async move {
                    let (result, outcome) = task
                        .await
                        .unwrap_or_else(|e| (Err(format!("{} failed: {e}", call.name)), "error"));
                    log.record(LogKind::ToolEnded {
                        id,
                        call_id: call.id.clone(),
                        outcome,
                    });
                    let _ = reports.send(ResponseReport::ToolFinished {
                        id,
                        call,
                        result: result.unwrap_or_else(|e| format!("error: {e}")),
                        outcome,
                        took: started.elapsed(),
                    });
                });
            }
            ResponseReport::FailedWhileHeld { id, error } => {
                self.reap(id, None);
                self.step(Input::Ended(
                    id,
                    Outcome::Failed {
                        heard: String::new(),
                        error,
                    },
                ))
                .await;
            }
            ResponseReport::Panicked { id, error } => {
                warn!(%id, %error, "response panicked");
                self.reap(id, None);
                let heard = self.clear_playout(id, false).await;
                self.log.record(LogKind::Ended {
                    id,
                    generated: heard.generated,
                    heard: heard.heard.clone(),
                    interrupted: false,
                    error: Some(error.clone()),
                });
                self.step(Input::Ended(
                    id,
                    Outcome::Failed {
                        heard: heard.heard,
                        error,
                    },
                ))
                .await;
            }
        }
    }

    async fn on_playout(&mut self, event: PlayoutEvent) {
        match event {
            PlayoutEvent::Started(id) => self.step(Input::AudioStarted(id)).await,
            PlayoutEvent::Sentence { id, text } => {
                self.emit(EngineEvent::AgentSentence { response: id, text });
            }
            PlayoutEvent::Finished { id, heard, failure } => {
                self.reap(id, None);
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

    /// Stops a response's task (and clears the voice when given) off the session loop, so a
    /// backend that never confirms cannot freeze the session. Bounded by [`REAP_LIMIT`].
    fn reap(&mut self, id: ResponseId, clear: Option<(Arc<dyn SpeechSynthesizer>, SpeechCut)>) {
        let task = self.responses.remove(&id);
        if let Some(t) = &task {
            t.token.cancel();
        }
        if task.is_none() && clear.is_none() {
            return;
        }
        self.reaper.spawn(
            async move {
                if let Some((tts, cut)) = clear
                    && tokio::time::timeout(REAP_LIMIT, tts.clear(&cut)).await.is_err()
                {
                    warn!(%id, voice = tts.name(), "the voice did not confirm the clear within {REAP_LIMIT:?}; going on");
                }
                if let Some(mut t) = task {
                    match tokio::time::timeout(REAP_LIMIT, &mut t.task).await {
                        Err(_) => {
                            t.task.abort();
                            warn!(%id, "the response did not stop within {REAP_LIMIT:?}; aborted");
                        }
                        Ok(Err(e)) if e.is_panic() => {
                            warn!(%id, panic = %panic_message(&*e.into_panic()), "response task panicked")
                        }
                        Ok(_) => {}
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Drops a response's queued audio in playout and returns what was heard. Playout is a
    /// local task that answers at once; a dead playout answers nothing heard. `interrupted`:
    /// the sink's [`Interrupter`] has cut the listener off already.
    async fn clear_playout(&mut self, id: ResponseId, interrupted: bool) -> Heard {
        let (reply, heard) = oneshot::channel();
        if self
            .playout
            .send(PlayoutCommand::Clear {
                id,
                interrupted,
                reply,
            })
            .await
            .is_ok()
        {
            heard.await.unwrap_or_default()
        } else {
            Heard::default()
        }
    }

    /// Queues an application event without waiting: a slow application loses events (counted)
    /// rather than stalling the conversation.
    fn emit(&mut self, event: EngineEvent) {
        match self.events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.events_dropped += 1;
                if self.events_dropped.is_power_of_two() {
                    warn!(
                        dropped = self.events_dropped,
                        "application event queue full; events dropped"
                    );
                }
            }
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
        let history = self.machine.history();
        let mut snapshot = self.history.lock().expect("history lock");
        if snapshot.len() != history.len() || snapshot.last() != history.last() {
            snapshot.clear();
            snapshot.extend_from_slice(history);
        }
    }

    /// Counts a reply the machine reports ended (once per response); speculations thrown
    /// away unheard are neither answered nor failed.
    fn count_reply(&mut self, heard: &str, error: Option<&BackendError>) {
        match error {
            Some(error) => {
                self.replies.failed += 1;
                self.replies.last_failure = Some(error.clone());
            }
            None if !heard.trim().is_empty() => self.replies.answered += 1,
            None => {}
        }
    }

    async fn execute(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Start {
                id,
                messages,
                speculative,
                line,
                prompted,
            } => {
                self.log.record(LogKind::ResponseStarted {
                    id,
                    speculative,
                    turn: self.machine.turn(),
                    prompted,
                });
                let token = self.cancel.child_token();
                let (gate, gate_rx) = watch::channel(!speculative);
                let span = info_span!("response", %id, turn = self.machine.turn(), speculative);
                let reports = self.ctx.reports.clone();
                // The generator catches the model's panics itself; what is left is the voice's.
                let voice = self.ctx.tts.name().to_owned();
                let response =
                    run_response(id, messages, line, self.ctx.clone(), gate_rx, token.clone());
                let task = tokio::spawn(
                    async move {
                        if let Err(panic) = AssertUnwindSafe(response).catch_unwind().await {
                            let error = BackendError::new(
                                voice,
                                ErrorKind::Panicked,
                                format!("panicked: {}", panic_message(&*panic)),
                            );
                            let _ = reports.send(ResponseReport::Panicked { id, error });
                        }
                    }
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
                // Inline only what the turn machine needs: the token and the playout clear
                // with its heard text. The voice's clear and the task's end are reaped.
                if let Some(t) = self.responses.get(&id) {
                    t.token.cancel();
                }
                // A barge-in is the one cut a listener must not wait for: the sink's own
                // interrupter stops it now, before playout and the sink's writer get to run.
                let interrupter = self
                    .interrupter
                    .as_ref()
                    .filter(|_| reason == CancelReason::BargeIn);
                if let Some(interrupter) = interrupter {
                    interrupter.interrupt();
                }
                let heard = self.clear_playout(id, interrupter.is_some()).await;
                // Every cut reaches the voice, not only a barge-in: a withdrawn guess's audio is
                // billed until the provider is told.
                self.reap(id, Some((self.ctx.tts.clone(), heard.cut.clone())));
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
                if let EngineEvent::ResponseEnded { heard, error, .. } = &event {
                    self.count_reply(heard, error.as_ref());
                }
                self.emit(event);
                None
            }
        }
    }
}
