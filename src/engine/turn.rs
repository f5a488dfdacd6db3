//! The turn machine: a pure function from (state, input) to actions.
//!
//! No tasks, no clocks, no I/O. The session driver feeds it Flux turn events, response
//! progress and timer expiries, and executes the [`Action`]s it returns. Every decision about
//! speculation, promotion, barge-in and history lives here, so it can be tested exhaustively.
//!
//! Rules:
//! - `EagerEndOfTurn` starts a speculative response (within the per-turn budget) unless the
//!   turn may still be a backchannel over the agent's speech.
//! - `TurnResumed` cancels the speculation.
//! - `EndOfTurn` promotes the speculation when it was made for the same words (case and
//!   punctuation ignored); otherwise it is cancelled and a committed response starts. The
//!   history cannot change under a speculation: speculation waits while a reply that the user
//!   spoke over is still live, and a cut reply's heard text is committed before anything that
//!   reads the history runs.
//! - `StartOfTurn` while a response is live is a barge-in: `Immediate` cancels at once;
//!   `MinWords(n)` pauses playout, cancels once the turn reaches `n` words, and resumes after a
//!   backchannel (the turn ends below `n` words) or when no new word arrives within the
//!   false-interruption timeout.
//! - History holds user turns that were answered and what the agent was heard to say;
//!   consecutive user messages (a reply cut before it made a sound) are merged.
//! - An `EndOfTurn` that repeats the last one's words without a `StartOfTurn` between them is
//!   ignored: it is neither a new turn nor a barge-in.
//! - The tool calls of a reply that was ever committed enter the history, each call followed by
//!   its result, before what was heard of the reply, even when the user cut it: a call that
//!   was still running then is recorded as such and its result filled in when it comes, so
//!   the model knows what it did and does not do it twice. A guess withdrawn before promotion
//!   leaves no call behind (only read-only calls run before promotion).

use std::time::Duration;

pub use super::event::{CancelReason, EngineEvent, ResponseId};
use crate::error::BackendError;
use crate::llm::{Message, ToolCall};
use crate::text::{normalize, word_count};

/// When a user's speech interrupts the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BargeInPolicy {
    /// Cut on `StartOfTurn`.
    Immediate,
    /// Pause on `StartOfTurn`, cut once the turn has this many words.
    MinWords(usize),
}

/// How the machine decides.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MachineConfig {
    /// Start replies on `EagerEndOfTurn`.
    pub speculation: bool,
    /// Speculations allowed per user turn.
    pub max_speculations_per_turn: u32,
    /// Barge-in policy.
    pub barge_in: BargeInPolicy,
    /// With `MinWords`, resume when no new word arrives for this long.
    pub false_interruption_timeout: Duration,
    /// System prompt placed first in every request.
    pub system_prompt: Option<String>,
    /// Most recent history messages sent to the model with each request (the context
    /// window); older ones are left out, starting at a user message.
    pub context_messages: usize,
    /// Most history messages kept for the session's outcome; older ones are dropped.
    pub history_limit: usize,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            speculation: true,
            max_speculations_per_turn: 3,
            barge_in: BargeInPolicy::Immediate,
            false_interruption_timeout: Duration::from_secs(2),
            system_prompt: None,
            context_messages: 40,
            history_limit: 400,
        }
    }
}

/// A Flux turn event as the machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserEvent {
    /// The user started speaking.
    StartOfTurn,
    /// More words.
    Update,
    /// The user may be done.
    EagerEndOfTurn,
    /// The user kept talking.
    TurnResumed,
    /// The user is done.
    EndOfTurn,
}

/// How a response ended, as reported by the driver.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// Played to the end; `spoken` is the whole text spoken.
    Finished {
        /// The text the user heard.
        spoken: String,
    },
    /// Cancelled; `heard` is what played before the cut (empty if nothing did).
    Cancelled {
        /// The text the user heard.
        heard: String,
    },
    /// A backend failed; `heard` is what played (including any fallback line).
    Failed {
        /// The text the user heard.
        heard: String,
        /// What failed.
        error: BackendError,
    },
}

/// Everything the machine reacts to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// A Flux turn event with the turn's transcript so far.
    User {
        /// Which event.
        event: UserEvent,
        /// The transcript of the turn so far.
        transcript: String,
    },
    /// The first audio frame of a response was written to the output.
    AudioStarted(ResponseId),
    /// A response ended (after finishing, a cancel, or a failure).
    Ended(ResponseId, Outcome),
    /// The false-interruption timer of this generation expired.
    FalseInterruptionTimeout(u64),
    /// A tool call of response `id` started (`result` is `None`) or returned (the text the
    /// model reads, an error included).
    Tool {
        /// The response that made the call.
        id: ResponseId,
        /// The call.
        call: ToolCall,
        /// Its result, once there is one.
        result: Option<String>,
    },
    /// The application wants the agent to speak without being asked (a greeting, a
    /// re-prompt after silence). Taken only while neither side is speaking; ignored otherwise.
    Prompt(Prompt),
    /// The session is closing.
    Shutdown,
}

/// What the agent says when it speaks first.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Prompt {
    /// These words, as written (no language model).
    Line(String),
    /// A reply the language model writes from the conversation so far.
    Reply,
    /// These words now, even over the user (the service that hears them is away, so their
    /// words would not be heard anyway); a guess in the works is withdrawn. Not over a reply
    /// of the agent's own.
    Notice(String),
}

/// What the driver must do, in order. After executing a [`Action::Cancel`], the driver
/// reports [`Input::Ended`] for that response before any other input: the heard text must
/// reach the history before the words of the user who interrupted.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Start a response for `messages`; hold its audio while `speculative`.
    Start {
        /// The response.
        id: ResponseId,
        /// The request conversation (system prompt, history, the user's words).
        messages: Vec<Message>,
        /// Held until promoted.
        speculative: bool,
        /// Speak these words instead of asking the model (a [`Prompt::Line`]).
        line: Option<String>,
        /// Started by a [`Prompt`], not by a user turn.
        prompted: bool,
    },
    /// Open the gate of a speculative response.
    Promote(ResponseId),
    /// Cancel a response: stop its LLM and TTS, drop its queued audio, then report
    /// [`Input::Ended`] with what was heard.
    Cancel(ResponseId, CancelReason),
    /// Pause playout of a response.
    Pause(ResponseId),
    /// Resume playout of a response.
    Resume(ResponseId),
    /// Start (or restart) the false-interruption timer; report its expiry with this generation.
    StartTimer {
        /// Generation to report back.
        generation: u64,
        /// Delay.
        after: Duration,
    },
    /// Tell the application.
    Emit(EngineEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserState {
    Idle,
    Speaking,
    AwaitingEnd,
}

#[derive(Debug, Clone)]
struct Live {
    id: ResponseId,
    transcript: String,
    turn: u64,
    /// Started speculatively (and promoted, when it is the committed response).
    speculative: bool,
}

/// The turn machine.
#[derive(Debug, Clone)]
pub struct TurnMachine {
    config: MachineConfig,
    user: UserState,
    turn: u64,
    started_turns: u64,
    speculations_in_turn: u32,
    speculative: Option<Live>,
    committed: Option<Live>,
    /// The committed response that was live when the current user turn started.
    over: Option<ResponseId>,
    paused: bool,
    words_seen: usize,
    /// The interim transcript last emitted this turn (Flux repeats it on every Update).
    shown: String,
    timer_generation: u64,
    history: Vec<Message>,
    next_id: u64,
    cancelling: Vec<ResponseId>,
    /// A cut response whose heard text must reach the history before the user's words.
    awaiting_cut: Option<ResponseId>,
    /// Work that depends on the history, waiting for `awaiting_cut` to end.
    deferred: Option<(UserEvent, String)>,
    /// The normalized words of the last `EndOfTurn`, to recognise a repeat of it.
    last_end: Option<String>,
    /// Tool calls of live responses, in the order they started, with their results so far.
    tool_calls: std::collections::BTreeMap<ResponseId, Vec<(ToolCall, Option<String>)>>,
    /// Live responses that were committed at some point (promoted or started committed).
    ever_committed: std::collections::BTreeSet<ResponseId>,
}

/// What the history says of a tool call that was still running when its reply ended; replaced
/// by the result when it comes.
pub const TOOL_STILL_RUNNING: &str =
    "(still running when the reply was cut; its result is not known yet)";

impl TurnMachine {
    /// A machine in its initial state.
    pub fn new(config: MachineConfig) -> Self {
        Self {
            config,
            user: UserState::Idle,
            turn: 0,
            started_turns: 0,
            speculations_in_turn: 0,
            speculative: None,
            committed: None,
            over: None,
            paused: false,
            words_seen: 0,
            shown: String::new(),
            timer_generation: 0,
            history: Vec::new(),
            next_id: 0,
            cancelling: Vec::new(),
            awaiting_cut: None,
            deferred: None,
            last_end: None,
            tool_calls: Default::default(),
            ever_committed: Default::default(),
        }
    }

    /// The conversation so far.
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// The current (or last) user turn index.
    pub fn turn(&self) -> u64 {
        self.turn
    }

    /// The response that may be audible now, if any.
    pub fn audible(&self) -> Option<ResponseId> {
        self.committed.as_ref().map(|c| c.id)
    }

    /// The speculative response, if any.
    pub fn speculative(&self) -> Option<ResponseId> {
        self.speculative.as_ref().map(|s| s.id)
    }

    /// Takes one input and returns the actions to execute, in order.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::User { event, transcript } => self.on_user(event, transcript, &mut out),
            Input::AudioStarted(id) => {
                if self.audible() == Some(id) {
                    out.push(Action::Emit(EngineEvent::AgentSpeaking { response: id }));
                }
            }
            Input::Ended(id, outcome) => self.on_ended(id, outcome, &mut out),
            Input::FalseInterruptionTimeout(generation) => {
                if self.paused && generation == self.timer_generation {
                    self.resume(&mut out);
                }
            }
            Input::Tool { id, call, result } => self.on_tool(id, call, result),
            Input::Prompt(prompt) => self.prompt(prompt, &mut out),
            Input::Shutdown => {
                if let Some(s) = self.speculative.take() {
                    self.cancel(s.id, CancelReason::Shutdown, &mut out);
                }
                if let Some(c) = self.committed.take() {
                    self.cancel(c.id, CancelReason::Shutdown, &mut out);
                }
            }
        }
        out
    }

    /// Withdraws the speculative reply, if any, telling the application why.
    fn withdraw_guess(&mut self, reason: CancelReason, out: &mut Vec<Action>) {
        if let Some(s) = self.speculative.take() {
            out.push(Action::Emit(EngineEvent::SpeculationCancelled {
                turn: s.turn,
                response: s.id,
                reason,
            }));
            self.cancel(s.id, reason, out);
        }
    }

    /// Speaks first, when nobody is speaking and nothing is being prepared; a notice speaks
    /// over the user and withdraws a guess, but never over a reply.
    fn prompt(&mut self, prompt: Prompt, out: &mut Vec<Action>) {
        let notice = matches!(prompt, Prompt::Notice(_));
        if self.committed.is_some()
            || (!notice && (self.user != UserState::Idle || self.speculative.is_some()))
        {
            return;
        }
        self.withdraw_guess(CancelReason::Superseded, out);
        let id = self.new_id();
        let line = match prompt {
            Prompt::Line(text) | Prompt::Notice(text) => Some(text),
            Prompt::Reply => None,
        };
        out.push(Action::Start {
            id,
            messages: self.context(),
            speculative: false,
            line,
            prompted: true,
        });
        out.push(Action::Emit(EngineEvent::Prompting { response: id }));
        self.commit(Live {
            id,
            transcript: String::new(),
            turn: self.turn,
            speculative: false,
        });
    }

    /// Makes `live` the committed response: the one whose audio plays and whose tool calls
    /// enter the history.
    fn commit(&mut self, live: Live) {
        self.ever_committed.insert(live.id);
        self.committed = Some(live);
    }

    fn is_live(&self, id: ResponseId) -> bool {
        self.committed.as_ref().is_some_and(|c| c.id == id)
            || self.speculative.as_ref().is_some_and(|s| s.id == id)
            || self.cancelling.contains(&id)
    }

    fn on_tool(&mut self, id: ResponseId, call: ToolCall, result: Option<String>) {
        if self.is_live(id) {
            let calls = self.tool_calls.entry(id).or_default();
            match calls.iter_mut().find(|(c, _)| c.id == call.id) {
                Some(known) => known.1 = result,
                None => calls.push((call, result)),
            }
            return;
        }
        // The reply ended while the call ran: its place in the history gets the result.
        let Some(result) = result else { return };
        let pending = self.history.iter_mut().rev().find_map(|m| match m {
            Message::Tool { call_id, content }
                if *call_id == call.id && content == TOOL_STILL_RUNNING =>
            {
                Some(content)
            }
            _ => None,
        });
        if let Some(content) = pending {
            *content = result;
        }
    }

    fn new_id(&mut self) -> ResponseId {
        self.next_id += 1;
        ResponseId(self.next_id)
    }

    fn cancel(&mut self, id: ResponseId, reason: CancelReason, out: &mut Vec<Action>) {
        if !self.cancelling.contains(&id) {
            self.cancelling.push(id);
            out.push(Action::Cancel(id, reason));
        }
    }

    fn resume(&mut self, out: &mut Vec<Action>) {
        self.paused = false;
        if let Some(c) = &self.committed {
            out.push(Action::Resume(c.id));
            out.push(Action::Emit(EngineEvent::AgentResumed { response: c.id }));
        }
    }

    fn min_words(&self) -> Option<usize> {
        match self.config.barge_in {
            BargeInPolicy::Immediate => None,
            BargeInPolicy::MinWords(n) => Some(n),
        }
    }

    /// Whether the current user turn is speaking over a live committed response.
    fn over_live_response(&self) -> bool {
        self.over.is_some() && self.over == self.audible()
    }

    fn barge_in(&mut self, out: &mut Vec<Action>) {
        if let Some(c) = self.committed.take() {
            self.paused = false;
            self.awaiting_cut = Some(c.id);
            out.push(Action::Emit(EngineEvent::Interrupted { response: c.id }));
            self.cancel(c.id, CancelReason::BargeIn, out);
        }
    }

    fn on_user(&mut self, event: UserEvent, transcript: String, out: &mut Vec<Action>) {
        let words = word_count(&transcript);
        if self.user == UserState::Idle && event == UserEvent::Update {
            return;
        }
        if self.user == UserState::Idle
            && event == UserEvent::EndOfTurn
            && self.last_end.as_deref() == Some(normalize(&transcript).as_str())
        {
            // The same end again without a new StartOfTurn: not a new turn, not a barge-in.
            return;
        }
        match event {
            UserEvent::EndOfTurn => self.last_end = Some(normalize(&transcript)),
            UserEvent::StartOfTurn => self.last_end = None,
            _ => {}
        }
        if event == UserEvent::StartOfTurn || self.user == UserState::Idle {
            self.start_turn(out);
        }
        if self.over_live_response()
            && let Some(n) = self.min_words()
        {
            if words >= n {
                self.barge_in(out);
            } else if words > self.words_seen && self.paused && event != UserEvent::StartOfTurn {
                self.timer_generation += 1;
                out.push(Action::StartTimer {
                    generation: self.timer_generation,
                    after: self.config.false_interruption_timeout,
                });
            }
        }
        self.words_seen = self.words_seen.max(words);
        if event != UserEvent::EndOfTurn && !transcript.is_empty() && transcript != self.shown {
            self.shown.clone_from(&transcript);
            out.push(Action::Emit(EngineEvent::UserTranscript {
                turn: self.turn,
                transcript: transcript.clone(),
            }));
        }
        match event {
            UserEvent::StartOfTurn | UserEvent::Update => {
                if self.user == UserState::Idle {
                    self.user = UserState::Speaking;
                }
            }
            UserEvent::EagerEndOfTurn => {
                self.user = UserState::AwaitingEnd;
                if self.awaiting_cut.is_some() {
                    self.deferred = Some((event, transcript));
                } else {
                    self.speculate(transcript, out);
                }
            }
            UserEvent::TurnResumed => {
                self.user = UserState::Speaking;
                self.withdraw_guess(CancelReason::TurnResumed, out);
            }
            UserEvent::EndOfTurn => {
                self.user = UserState::Idle;
                if self.awaiting_cut.is_some() && !self.is_backchannel(&transcript) {
                    self.deferred = Some((event, transcript));
                } else {
                    self.end_turn(transcript, out);
                }
            }
        }
    }

    fn start_turn(&mut self, out: &mut Vec<Action>) {
        if self.started_turns > 0 {
            self.turn += 1;
        }
        self.started_turns += 1;
        self.user = UserState::Speaking;
        self.speculations_in_turn = 0;
        self.words_seen = 0;
        self.shown.clear();
        self.withdraw_guess(CancelReason::Superseded, out);
        self.over = self.audible();
        out.push(Action::Emit(EngineEvent::UserStarted {
            turn: self.turn,
            over_agent: self.over.is_some(),
        }));
        if let Some(id) = self.over {
            match self.config.barge_in {
                BargeInPolicy::Immediate => self.barge_in(out),
                BargeInPolicy::MinWords(_) => {
                    self.paused = true;
                    self.timer_generation += 1;
                    out.push(Action::Pause(id));
                    out.push(Action::Emit(EngineEvent::AgentPaused { response: id }));
                    out.push(Action::StartTimer {
                        generation: self.timer_generation,
                        after: self.config.false_interruption_timeout,
                    });
                }
            }
        }
    }

    /// A turn that started over the agent and stayed under the min-words threshold.
    fn is_backchannel(&self, transcript: &str) -> bool {
        self.min_words()
            .is_some_and(|n| self.over.is_some() && word_count(transcript) < n)
    }

    fn request(&self, transcript: &str) -> Vec<Message> {
        let mut messages = self.context();
        push_user(&mut messages, transcript);
        messages
    }

    /// The system prompt and the most recent history within the context window, starting at
    /// a user message (providers refuse a conversation that opens with the assistant).
    fn context(&self) -> Vec<Message> {
        let recent = &self.history[self
            .history
            .len()
            .saturating_sub(self.config.context_messages)..];
        let from_user = recent
            .iter()
            .position(|m| matches!(m, Message::User { .. }))
            .unwrap_or(recent.len());
        let mut messages = Vec::with_capacity(recent.len() + 2);
        if let Some(prompt) = &self.config.system_prompt {
            messages.push(Message::System {
                content: prompt.clone(),
            });
        }
        messages.extend(recent[from_user..].iter().cloned());
        messages
    }

    fn trim_history(&mut self) {
        let excess = self.history.len().saturating_sub(self.config.history_limit);
        self.history.drain(..excess);
    }

    fn speculate(&mut self, transcript: String, out: &mut Vec<Action>) {
        if !self.config.speculation || self.over_live_response() || transcript.trim().is_empty() {
            return;
        }
        if let Some(s) = &self.speculative {
            if normalize(&s.transcript) == normalize(&transcript) {
                return;
            }
            let s = self.speculative.take().expect("checked above");
            out.push(Action::Emit(EngineEvent::SpeculationCancelled {
                turn: s.turn,
                response: s.id,
                reason: CancelReason::Superseded,
            }));
            self.cancel(s.id, CancelReason::Superseded, out);
        }
        if self.speculations_in_turn >= self.config.max_speculations_per_turn {
            return;
        }
        self.speculations_in_turn += 1;
        let id = self.new_id();
        out.push(Action::Start {
            id,
            messages: self.request(&transcript),
            speculative: true,
            line: None,
            prompted: false,
        });
        out.push(Action::Emit(EngineEvent::Speculating {
            turn: self.turn,
            response: id,
            transcript: transcript.clone(),
        }));
        self.speculative = Some(Live {
            id,
            transcript,
            turn: self.turn,
            speculative: true,
        });
    }

    fn end_turn(&mut self, transcript: String, out: &mut Vec<Action>) {
        if self.is_backchannel(&transcript) {
            // Started over the agent and stayed short: a backchannel, even if the agent
            // finished meanwhile. Not answered and not part of the history.
            out.push(Action::Emit(EngineEvent::Backchannel {
                turn: self.turn,
                transcript,
            }));
            if self.paused && self.over_live_response() {
                self.resume(out);
            }
            self.over = None;
            if let Some(s) = self.speculative.take() {
                self.cancel(s.id, CancelReason::Superseded, out);
            }
            return;
        }
        if self.over_live_response() {
            self.barge_in(out);
            self.deferred = Some((UserEvent::EndOfTurn, transcript));
            return;
        }
        self.over = None;
        self.paused = false;
        if transcript.trim().is_empty() {
            return;
        }
        let (reuse, stale) = match self.speculative.take() {
            Some(s) if normalize(&s.transcript) == normalize(&transcript) => (Some(s), None),
            other => (None, other),
        };
        if let Some(s) = stale {
            out.push(Action::Emit(EngineEvent::SpeculationCancelled {
                turn: s.turn,
                response: s.id,
                reason: CancelReason::TranscriptChanged,
            }));
            self.cancel(s.id, CancelReason::TranscriptChanged, out);
        }
        out.push(Action::Emit(EngineEvent::UserFinished {
            turn: self.turn,
            transcript: transcript.clone(),
        }));
        let messages = self.request(&transcript);
        self.commit_user(&transcript);
        match reuse {
            Some(s) => {
                out.push(Action::Promote(s.id));
                out.push(Action::Emit(EngineEvent::SpeculationPromoted {
                    turn: self.turn,
                    response: s.id,
                }));
                self.commit(s);
            }
            None => {
                let id = self.new_id();
                out.push(Action::Start {
                    id,
                    messages,
                    speculative: false,
                    line: None,
                    prompted: false,
                });
                out.push(Action::Emit(EngineEvent::Responding {
                    turn: self.turn,
                    response: id,
                }));
                self.commit(Live {
                    id,
                    transcript,
                    turn: self.turn,
                    speculative: false,
                });
            }
        }
    }

    fn commit_user(&mut self, transcript: &str) {
        push_user(&mut self.history, transcript);
        self.trim_history();
    }

    fn on_ended(&mut self, id: ResponseId, outcome: Outcome, out: &mut Vec<Action>) {
        let was_cancelled = if let Some(i) = self.cancelling.iter().position(|c| *c == id) {
            self.cancelling.swap_remove(i);
            true
        } else {
            false
        };
        let was_committed = self.committed.as_ref().is_some_and(|c| c.id == id);
        let was_speculative = self.speculative.as_ref().is_some_and(|s| s.id == id);
        if !was_cancelled && !was_committed && !was_speculative {
            return;
        }
        let retry = if was_committed {
            let live = self.committed.take().expect("checked above");
            self.paused = false;
            // A promoted speculation that failed before a sound (its failure raced the
            // promotion) would leave the user unanswered: answer again, committed this time.
            (live.speculative
                && matches!(&outcome, Outcome::Failed { heard, .. } if heard.trim().is_empty()))
            .then_some(live)
        } else {
            None
        };
        if was_speculative {
            // A speculation that failed on its own: EndOfTurn will start a committed reply.
            self.speculative = None;
        }
        let (heard, interrupted, error) = match outcome {
            Outcome::Finished { spoken } => (spoken, false, None),
            Outcome::Cancelled { heard } => (heard, true, None),
            Outcome::Failed { heard, error } => (heard, false, Some(error)),
        };
        let calls = self.tool_calls.remove(&id).unwrap_or_default();
        if self.ever_committed.remove(&id) {
            for (call, result) in calls {
                self.history.push(Message::Tool {
                    call_id: call.id.clone(),
                    content: result.unwrap_or_else(|| TOOL_STILL_RUNNING.to_owned()),
                });
                let at = self.history.len() - 1;
                self.history.insert(
                    at,
                    Message::Assistant {
                        content: String::new(),
                        interrupted: false,
                        tool_calls: vec![call],
                    },
                );
            }
            self.trim_history();
        }
        if !heard.trim().is_empty() {
            self.history.push(Message::Assistant {
                content: heard.clone(),
                interrupted,
                tool_calls: Vec::new(),
            });
            self.trim_history();
        }
        out.push(Action::Emit(EngineEvent::ResponseEnded {
            response: id,
            heard,
            interrupted,
            error,
        }));
        if let Some(live) = retry {
            let id = self.new_id();
            let messages = self.context();
            out.push(Action::Start {
                id,
                messages,
                speculative: false,
                line: None,
                prompted: false,
            });
            out.push(Action::Emit(EngineEvent::Responding {
                turn: live.turn,
                response: id,
            }));
            self.commit(Live {
                id,
                speculative: false,
                ..live
            });
        }
        if self.awaiting_cut == Some(id) {
            self.awaiting_cut = None;
            match self.deferred.take() {
                Some((UserEvent::EagerEndOfTurn, transcript)) => self.speculate(transcript, out),
                Some((UserEvent::EndOfTurn, transcript)) => self.end_turn(transcript, out),
                _ => {}
            }
        }
    }
}

fn push_user(messages: &mut Vec<Message>, transcript: &str) {
    if let Some(Message::User { content }) = messages.last_mut() {
        content.push(' ');
        content.push_str(transcript.trim());
    } else {
        messages.push(Message::user(transcript.trim()));
    }
}

#[cfg(test)]
mod tests;
