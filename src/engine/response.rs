//! One response: LLM -> sentences -> TTS -> gate -> playout.
//!
//! Two tasks under the response's cancellation token: the generator streams the LLM reply,
//! runs tool calls and cuts the text into sentences; the speaker synthesizes each sentence and
//! hands the audio to playout. While the response is speculative its gate is closed: the
//! generator runs, the speaker synthesizes the first piece (see [`Presynthesis`]: by default a
//! quick first chunk) and then waits, holding every byte of audio; nothing reaches playout
//! until promotion. A side-effecting tool call waits for promotion too, and is never made if
//! the speculation is cancelled.
//!
//! Every wait on a backend is bounded: the first token (or audio) must arrive within its limit
//! counted from the request, so a server that never sends headers is caught too, and later
//! chunks within the stall limit. A backend error, a stall, a reply with no text (or only a
//! tool call nobody can run) and a panicking model all end the response with a short spoken
//! fallback line; a speculative response that fails before promotion reports it instead, so
//! `EndOfTurn` can start a fresh one.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::log::{EventLog, LogKind};
use super::playout::PlayoutCommand;
use super::segment::SentenceSplitter;
use super::turn::ResponseId;
use crate::error::{BackendError, ErrorKind};
use crate::llm::{
    LanguageModel, LlmChunk, LlmRequest, Message, ToolCall, ToolEffect, ToolExecutor,
};
use crate::tts::{SpeechSynthesizer, StoredSpeech};

/// What a speculative response synthesizes before it is promoted.
///
/// Whatever is synthesized is held, never played, until promotion; a withdrawn guess wastes
/// its characters (reported as `wasted_tts_chars`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Presynthesis {
    /// Nothing: the voice starts at promotion (LLM-only speculation).
    Off,
    /// The first sentence (or first clause of six words or more), as it would be spoken
    /// without speculation.
    FirstSentence,
    /// The first speakable chunk: the reply's first segment ends at its first punctuation
    /// ("Sure,", "Of course.", "Thanks Jordan."), so its audio is ready a few tokens into the
    /// eager lead and first audio can leave the moment `EndOfTurn` arrives. Replies that open
    /// without punctuation keep their first sentence (cutting mid-phrase sounds broken).
    #[default]
    FirstChunk,
}

/// Per-session settings of the response pipeline.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResponseOptions {
    /// What a speculative response synthesizes (and holds) before promotion.
    pub presynthesis: Presynthesis,
    /// Spoken when a backend fails.
    pub fallback_line: String,
    /// The fallback line rendered ahead ([`StoredSpeech::render`]): played from memory, so it
    /// is heard at once even when the voice is what failed. `None`: the voice is asked for
    /// the line when it is needed. Used only when its rate is the voice's.
    pub stored_fallback: Option<Arc<StoredSpeech>>,
    /// Give up on the LLM when its first chunk has not arrived this long after the request
    /// (headers included: a server that never answers is bounded too).
    pub llm_ttft_timeout: Duration,
    /// Give up on the LLM when no chunk arrives for this long after the first.
    pub llm_stall_timeout: Duration,
    /// Give up on a sentence when its first audio has not arrived this long after the request.
    pub tts_ttfb_timeout: Duration,
    /// Give up on a sentence when no audio arrives for this long after the first.
    pub tts_stall_timeout: Duration,
    /// Most LLM rounds with tool calls in one response.
    pub max_tool_rounds: usize,
    /// Give up on a tool call that has not answered this long after it started: the model
    /// gets an error result to speak about instead of the caller hearing silence forever.
    pub tool_timeout: Duration,
    /// Whether a read-only tool may run while its reply is still a guess (the default). Off,
    /// every call waits for `EndOfTurn`, as the peers do.
    pub tools_on_guess: bool,
    /// Said once per reply when a tool call has run this long while the reply is committed
    /// ("One moment."), so the caller does not hear dead air; `None` says nothing.
    pub tool_filler: Option<String>,
    /// How long a call may run before the filler line.
    pub tool_filler_after: Duration,
    /// Most characters of one reply that are spoken: a model caught in a loop (a local model
    /// repeating itself) is cut at the last whole sentence before this, and its stream closed.
    pub max_reply_chars: usize,
}

impl Default for ResponseOptions {
    fn default() -> Self {
        Self {
            presynthesis: Presynthesis::default(),
            fallback_line: "Sorry, I'm having trouble right now. Could you say that again?".into(),
            stored_fallback: None,
            llm_ttft_timeout: Duration::from_secs(5),
            llm_stall_timeout: Duration::from_secs(5),
            tts_ttfb_timeout: Duration::from_secs(3),
            tts_stall_timeout: Duration::from_secs(3),
            max_tool_rounds: 3,
            tool_timeout: Duration::from_secs(10),
            tools_on_guess: true,
            tool_filler: Some("One moment.".into()),
            tool_filler_after: Duration::from_millis(700),
            max_reply_chars: 4000,
        }
    }
}

/// What a response reports to the session besides its audio.
#[derive(Debug)]
pub(crate) enum ResponseReport {
    /// A tool call started.
    ToolStarted {
        /// The response.
        id: ResponseId,
        /// The call.
        call: ToolCall,
        /// Whether the reply was still a guess.
        speculative: bool,
    },
    /// A tool call returned.
    ToolFinished {
        /// The response.
        id: ResponseId,
        /// The call.
        call: ToolCall,
        /// What the model reads.
        result: String,
        /// `ok`, `error` or `timed_out`.
        outcome: &'static str,
        /// How long it took.
        took: Duration,
    },
    /// The reply was cut while a side-effecting call ran: the session owns the call now and
    /// records its result when it comes.
    ToolShielded {
        /// The response.
        id: ResponseId,
        /// The call.
        call: ToolCall,
        /// When it started.
        started: Instant,
        /// The call, running.
        task: tokio::task::JoinHandle<(Result<String, String>, &'static str)>,
    },
    /// A speculative response failed before promotion; nothing was played.
    FailedWhileHeld {
        /// The response.
        id: ResponseId,
        /// What failed.
        error: BackendError,
    },
    /// The response's task panicked (a backend or a tool did); it is over.
    Panicked {
        /// The response.
        id: ResponseId,
        /// The panic, as an error of kind `panicked`.
        error: BackendError,
    },
}

/// Everything a response needs from its session.
pub(crate) struct ResponseContext {
    /// The language model.
    pub llm: Arc<dyn LanguageModel>,
    /// The voice.
    pub tts: Arc<dyn SpeechSynthesizer>,
    /// Tools the model may call.
    pub tools: Option<Arc<dyn ToolExecutor>>,
    /// Playout commands.
    pub playout: mpsc::Sender<PlayoutCommand>,
    /// Reports to the session.
    pub reports: mpsc::UnboundedSender<ResponseReport>,
    /// Samples written by playout so far (see [`super::playout::run_playout`]).
    pub written: watch::Receiver<u64>,
    /// The session's event log.
    pub log: EventLog,
    /// Settings.
    pub options: ResponseOptions,
}

enum Piece {
    Sentence(String),
    Failed(BackendError),
}

/// Runs one response to its end or its cancellation.
///
/// # Cancellation safety
/// Cancelling `token` stops the LLM request (its stream is dropped), any synthesis in flight,
/// and delivery to playout; this future then returns promptly.
pub(crate) async fn run_response(
    id: ResponseId,
    messages: Vec<Message>,
    line: Option<String>,
    ctx: Arc<ResponseContext>,
    gate: watch::Receiver<bool>,
    token: CancellationToken,
) {
    let (pieces_tx, pieces_rx) = mpsc::channel(32);
    if let Some(line) = line {
        // A prompt's fixed words: sentences straight to the voice, no model.
        let mut splitter = SentenceSplitter::default();
        let mut sentences = splitter.push(&line);
        sentences.extend(splitter.finish());
        for (index, text) in sentences.into_iter().enumerate() {
            ctx.log.record(LogKind::SentenceReady {
                id,
                index,
                text: text.clone(),
                tokens: 0,
            });
            if pieces_tx.send(Piece::Sentence(text)).await.is_err() {
                return;
            }
        }
        drop(pieces_tx);
        speak(id, &ctx, gate, pieces_rx, &token).await;
        return;
    }
    let generator_token = token.child_token();
    let on_panic = pieces_tx.clone();
    let llm_name = ctx.llm.name().to_owned();
    let generation = generate(
        id,
        messages,
        ctx.clone(),
        gate.clone(),
        pieces_tx,
        generator_token.clone(),
    );
    let generator = tokio::spawn(
        async move {
            // A panicking model must not leave the turn silent: the speaker gets a failure and
            // speaks the fallback line.
            if let Err(panic) = AssertUnwindSafe(generation).catch_unwind().await {
                let error = BackendError::new(
                    llm_name,
                    ErrorKind::Panicked,
                    format!("panicked: {}", panic_message(&*panic)),
                );
                let _ = on_panic.send(Piece::Failed(error)).await;
            }
        }
        .in_current_span(),
    );
    speak(id, &ctx, gate, pieces_rx, &token).await;
    generator_token.cancel();
    let _ = generator.await;
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

/// Logs the tokens a generator produced, however it ends.
struct TokenTally {
    log: EventLog,
    id: ResponseId,
    tokens: u64,
}

impl Drop for TokenTally {
    fn drop(&mut self) {
        self.log.record(LogKind::LlmDone {
            id: self.id,
            tokens: self.tokens,
        });
    }
}

/// How long a backend may take: to its first item counted from the request, and between
/// items after that.
#[derive(Clone, Copy)]
struct Limits {
    first: Duration,
    stall: Duration,
}

/// Why a backend stream was given up on.
enum Late {
    /// Nothing (not even the stream) within `first` of the request.
    First(Duration),
    /// No item for `stall` after an earlier one.
    Stalled(Duration),
}

impl Late {
    fn error(&self, backend: &str, what: &str) -> BackendError {
        let message = match self {
            Late::First(limit) => format!("no first {what} within {limit:?} of the request"),
            Late::Stalled(limit) => format!("stalled, no {what} for {limit:?}"),
        };
        BackendError::new(backend, ErrorKind::Timeout, message)
    }
}

/// A backend stream whose every wait is bounded: opening and the first item share one
/// deadline from the request, later items each get `stall`.
struct Bounded<S> {
    stream: S,
    limits: Limits,
    /// Deadline of the first item, until it arrives.
    first_by: Option<Instant>,
}

impl<S: futures_util::Stream + Unpin> Bounded<S> {
    /// Opens the stream with `open`, bounded by the first-item deadline.
    async fn open<E>(
        open: impl std::future::Future<Output = Result<S, E>>,
        limits: Limits,
    ) -> Result<Result<Self, E>, Late> {
        let first_by = Instant::now() + limits.first;
        match tokio::time::timeout_at(first_by, open).await {
            Err(_) => Err(Late::First(limits.first)),
            Ok(result) => Ok(result.map(|stream| Self {
                stream,
                limits,
                first_by: Some(first_by),
            })),
        }
    }

    async fn next(&mut self) -> Result<Option<S::Item>, Late> {
        let (deadline, late) = match self.first_by {
            Some(at) => (at, Late::First(self.limits.first)),
            None => (
                Instant::now() + self.limits.stall,
                Late::Stalled(self.limits.stall),
            ),
        };
        let item = tokio::time::timeout_at(deadline, self.stream.next())
            .await
            .map_err(|_| late)?;
        self.first_by = None;
        Ok(item)
    }
}

async fn wait_gate(gate: &mut watch::Receiver<bool>, token: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = token.cancelled() => false,
        open = gate.wait_for(|open| *open) => open.is_ok(),
    }
}

async fn generate(
    id: ResponseId,
    mut messages: Vec<Message>,
    ctx: Arc<ResponseContext>,
    mut gate: watch::Receiver<bool>,
    pieces: mpsc::Sender<Piece>,
    token: CancellationToken,
) {
    let mut tally = TokenTally {
        log: ctx.log.clone(),
        id,
        tokens: 0,
    };
    // Only a speculative reply opens with a quick chunk: the eager lead gives the rest of the
    // reply time to be synthesized while the chunk plays. Without a lead a one-word chunk
    // would often run out before the next sentence's audio arrives.
    let speculative = !*gate.borrow();
    let mut splitter = if speculative && ctx.options.presynthesis == Presynthesis::FirstChunk {
        SentenceSplitter::quick_first_chunk()
    } else {
        SentenceSplitter::default()
    };
    let mut sentence_index = 0;
    let tools = ctx.tools.as_ref().map(|t| t.specs()).unwrap_or_default();
    let mut unexecuted: Vec<String> = Vec::new();
    let mut reply_chars = 0;
    // The filler line is said once per reply, however many slow calls it makes.
    let mut filler_said = false;
    // The unfinished sentence of a reply cut at its length limit is dropped, as on a failure:
    // the reply ends on a whole sentence.
    let mut cut_at_length = false;
    let send = |text: String, index: &mut usize, tokens: u64| {
        ctx.log.record(LogKind::SentenceReady {
            id,
            index: *index,
            text: text.clone(),
            tokens,
        });
        *index += 1;
        pieces.send(Piece::Sentence(text))
    };
    for _round in 0..=ctx.options.max_tool_rounds {
        ctx.log.record(LogKind::LlmRequestSent { id });
        let request = LlmRequest {
            messages: messages.clone(),
            tools: tools.clone(),
        };
        let limits = Limits {
            first: ctx.options.llm_ttft_timeout,
            stall: ctx.options.llm_stall_timeout,
        };
        let started = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            started = Bounded::open(ctx.llm.stream(request), limits) => started,
        };
        let mut stream = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let _ = pieces.send(Piece::Failed(e)).await;
                return;
            }
            Err(late) => {
                let error = late.error(ctx.llm.name(), "token");
                let _ = pieces.send(Piece::Failed(error)).await;
                return;
            }
        };
        let mut calls = Vec::new();
        let mut round_text = String::new();
        let mut first = true;
        let mut over_length = false;
        let mut cancelled = std::pin::pin!(token.cancelled());
        loop {
            let chunk = tokio::select! {
                biased;
                () = &mut cancelled => return,
                chunk = stream.next() => chunk,
            };
            let chunk = match chunk {
                Err(late) => {
                    let error = late.error(ctx.llm.name(), "token");
                    let _ = pieces.send(Piece::Failed(error)).await;
                    return;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    // The unfinished sentence is dropped: half a sentence followed by an
                    // apology sounds broken; finished sentences were already spoken.
                    let _ = pieces.send(Piece::Failed(e)).await;
                    return;
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            if first {
                first = false;
                ctx.log.record(LogKind::LlmFirstToken { id });
            }
            match chunk {
                LlmChunk::Text(text) => {
                    tally.tokens += 1;
                    reply_chars += text.chars().count();
                    if reply_chars > ctx.options.max_reply_chars {
                        warn!(%id, limit = ctx.options.max_reply_chars, "the reply passed its length limit; the rest is not spoken");
                        over_length = true;
                        break;
                    }
                    round_text.push_str(&text);
                    for s in splitter.push(&text) {
                        if send(s, &mut sentence_index, tally.tokens).await.is_err() {
                            return;
                        }
                    }
                }
                LlmChunk::ToolCall(call) => calls.push(call),
                LlmChunk::Usage(_) => {}
                LlmChunk::End { .. } => break,
            }
        }
        if over_length {
            cut_at_length = true;
            break;
        }
        if calls.is_empty() {
            break;
        }
        let Some(executor) = ctx.tools.clone() else {
            unexecuted = calls.into_iter().map(|c| c.name).collect();
            warn!(%id, tools = ?unexecuted, "model called a tool but no tools are configured");
            break;
        };
        messages.push(Message::Assistant {
            content: round_text,
            interrupted: false,
            tool_calls: calls.clone(),
        });
        let effect_of = |call: &ToolCall| {
            tools
                .iter()
                .find(|t| t.name == call.name)
                .map_or(ToolEffect::SideEffecting, |t| t.effect)
        };
        for call in &calls {
            ctx.log.record(LogKind::ToolRequested {
                id,
                call_id: call.id.clone(),
                tool: call.name.clone(),
                effect: effect_of(call),
            });
        }
        for call in calls {
            let effect = effect_of(&call);
            let waits = effect == ToolEffect::SideEffecting || !ctx.options.tools_on_guess;
            if waits && !*gate.borrow() {
                debug!(%id, tool = %crate::text::Untrusted(&call.name), ?effect, "tool call waits for promotion");
                if !wait_gate(&mut gate, &token).await {
                    return;
                }
            }
            let speculative = !*gate.borrow();
            ctx.log.record(LogKind::ToolStarted {
                id,
                call_id: call.id.clone(),
                tool: call.name.clone(),
                effect,
                speculative,
            });
            let _ = ctx.reports.send(ResponseReport::ToolStarted {
                id,
                call: call.clone(),
                speculative,
            });
            let started = Instant::now();
            let running = run_tool(executor.clone(), call.clone(), ctx.options.tool_timeout);
            // A side-effecting call runs on as its own task when the reply is cut: it may
            // already have acted, so its result must reach the history, and abandoning it
            // would invite the model to make it again.
            let (mut shielded, mut read_only) = if effect == ToolEffect::SideEffecting {
                (Some(tokio::spawn(running)), None)
            } else {
                (None, Some(Box::pin(running)))
            };
            let filler_at = started + ctx.options.tool_filler_after;
            let finished = loop {
                let filler_due = !filler_said && ctx.options.tool_filler.is_some();
                tokio::select! {
                    biased;
                    _ = token.cancelled() => break None,
                    done = async { shielded.as_mut().expect("guarded").await }, if shielded.is_some() => {
                        break Some(done.unwrap_or_else(|e| {
                            (Err(format!("{} failed: {e}", call.name)), "error")
                        }));
                    }
                    done = async { read_only.as_mut().expect("guarded").await }, if read_only.is_some() => break Some(done),
                    Ok(()) = gate.changed(), if !*gate.borrow() => {}
                    () = tokio::time::sleep_until(filler_at), if filler_due && *gate.borrow() => {
                        filler_said = true;
                        let line = ctx.options.tool_filler.clone().unwrap_or_default();
                        debug!(%id, tool = %crate::text::Untrusted(&call.name), "the tool is slow; saying the filler line");
                        if send(line, &mut sentence_index, tally.tokens).await.is_err() {
                            break None;
                        }
                    }
                }
            };
            let Some((result, outcome)) = finished else {
                match shielded.take() {
                    Some(task) => {
                        let _ = ctx.reports.send(ResponseReport::ToolShielded {
                            id,
                            call,
                            started,
                            task,
                        });
                    }
                    None => ctx.log.record(LogKind::ToolEnded {
                        id,
                        call_id: call.id.clone(),
                        outcome: "cancelled",
                    }),
                }
                return;
            };
            let content = result.unwrap_or_else(|e| format!("error: {e}"));
            ctx.log.record(LogKind::ToolEnded {
                id,
                call_id: call.id.clone(),
                outcome,
            });
            let _ = ctx.reports.send(ResponseReport::ToolFinished {
                id,
                call: call.clone(),
                result: content.clone(),
                outcome,
                took: started.elapsed(),
            });
            messages.push(Message::Tool {
                call_id: call.id.clone(),
                content,
            });
        }
    }
    if !cut_at_length && let Some(rest) = splitter.finish() {
        let _ = send(rest, &mut sentence_index, tally.tokens).await;
    }
    if sentence_index == 0 {
        let message = if unexecuted.is_empty() {
            "the reply had no text".to_owned()
        } else {
            format!(
                "the reply was only a call to {} and no tools are configured",
                unexecuted.join(", ")
            )
        };
        let error = BackendError::new(ctx.llm.name(), ErrorKind::EmptyReply, message);
        let _ = pieces.send(Piece::Failed(error)).await;
    }
    drop(tally);
}

/// One tool call bounded by `limit`: its result for the model and its outcome (`ok`, `error`,
/// `timed_out`). A call whose arguments are not a JSON object (the model's malformed JSON,
/// kept as text) is answered with that and never made.
async fn run_tool(
    executor: Arc<dyn ToolExecutor>,
    call: ToolCall,
    limit: Duration,
) -> (Result<String, String>, &'static str) {
    if !call.arguments.is_object() {
        let sent = match &call.arguments {
            serde_json::Value::String(raw) => raw.clone(),
            other => other.to_string(),
        };
        return (
            Err(format!(
                "the call to {} was not made: its arguments must be a JSON object, and they were {}",
                call.name,
                crate::text::Untrusted(&sent)
            )),
            "error",
        );
    }
    match tokio::time::timeout(limit, executor.call(&call)).await {
        Ok(Ok(text)) => (Ok(text), "ok"),
        Ok(Err(e)) => (Err(e), "error"),
        Err(_) => {
            warn!(tool = %crate::text::Untrusted(&call.name), ?limit, "tool call timed out");
            (
                Err(format!("{} did not answer within {limit:?}", call.name)),
                "timed_out",
            )
        }
    }
}

/// Audio on its way to playout, held while the gate is closed, and paced so that at most
/// `ahead` samples are sent but not yet written (synthesis runs faster than real time; without
/// the pacing a whole reply would sit in memory).
struct Delivery<'a> {
    playout: &'a mpsc::Sender<PlayoutCommand>,
    written: watch::Receiver<u64>,
    ahead: u64,
    /// Samples this response sent, and playout's `written` count when it started sending.
    sent: u64,
    base: Option<u64>,
    held: Vec<PlayoutCommand>,
}

impl Delivery<'_> {
    async fn flush(&mut self) -> bool {
        for held in self.held.drain(..) {
            if self.playout.send(held).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn send(&mut self, command: PlayoutCommand, open: bool) -> bool {
        if !open {
            self.held.push(command);
            return true;
        }
        if !self.flush().await {
            return false;
        }
        if let PlayoutCommand::Audio { samples, .. } = &command {
            let base = *self.base.get_or_insert(*self.written.borrow());
            let (sent, ahead) = (self.sent, self.ahead);
            if self
                .written
                .wait_for(|w| sent.saturating_sub(w - base) <= ahead)
                .await
                .is_err()
            {
                return false;
            }
            self.sent += samples.len() as u64;
        }
        self.playout.send(command).await.is_ok()
    }
}

async fn speak(
    id: ResponseId,
    ctx: &ResponseContext,
    mut gate: watch::Receiver<bool>,
    mut pieces: mpsc::Receiver<Piece>,
    token: &CancellationToken,
) {
    let mut delivery = Delivery {
        playout: &ctx.playout,
        written: ctx.written.clone(),
        ahead: u64::from(ctx.tts.sample_rate()),
        sent: 0,
        base: None,
        held: Vec::new(),
    };
    let mut index = 0;
    let mut failure = None;
    loop {
        let waiting_for_promotion = !delivery.held.is_empty() && !*gate.borrow();
        let piece = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            opened = async { gate.wait_for(|open| *open).await.is_ok() }, if waiting_for_promotion => {
                // Promoted: held audio plays now, not when the next sentence is ready.
                if !opened || !delivery.flush().await {
                    return;
                }
                continue;
            }
            piece = pieces.recv() => piece,
        };
        let text = match piece {
            None => break,
            Some(Piece::Failed(e)) => {
                failure = Some(e);
                break;
            }
            Some(Piece::Sentence(s)) => s,
        };
        let may_synthesize =
            *gate.borrow() || (index == 0 && ctx.options.presynthesis != Presynthesis::Off);
        if !may_synthesize && !wait_gate(&mut gate, token).await {
            return;
        }
        match synthesize(id, index, &text, ctx, &gate, &mut delivery, token).await {
            Synthesis::Done => {}
            Synthesis::Cancelled => return,
            Synthesis::Failed(e) => {
                failure = Some(e);
                break;
            }
        }
        index += 1;
    }
    if let Some(error) = &failure {
        warn!(%id, %error, "response failed");
        if !*gate.borrow() {
            let _ = ctx.reports.send(ResponseReport::FailedWhileHeld {
                id,
                error: error.clone(),
            });
            return;
        }
        let stored = ctx
            .options
            .stored_fallback
            .as_ref()
            .filter(|s| s.sample_rate == ctx.tts.sample_rate());
        let said = match stored {
            Some(stored) => play_stored(id, stored, &gate, &mut delivery, token).await,
            None => {
                let fallback = ctx.options.fallback_line.clone();
                synthesize(id, index, &fallback, ctx, &gate, &mut delivery, token).await
            }
        };
        if matches!(said, Synthesis::Cancelled) {
            return;
        }
    }
    if !wait_gate(&mut gate, token).await {
        return;
    }
    let end = PlayoutCommand::End { id, failure };
    tokio::select! {
        biased;
        _ = token.cancelled() => {}
        _ = delivery.send(end, true) => {}
    }
}

enum Synthesis {
    Done,
    Cancelled,
    Failed(BackendError),
}

/// Plays a line kept in memory as one sentence.
async fn play_stored(
    id: ResponseId,
    stored: &StoredSpeech,
    gate: &watch::Receiver<bool>,
    delivery: &mut Delivery<'_>,
    token: &CancellationToken,
) -> Synthesis {
    let open = *gate.borrow();
    let commands = [
        PlayoutCommand::Sentence {
            id,
            text: stored.text.clone(),
        },
        PlayoutCommand::Audio {
            id,
            samples: stored.samples.clone(),
            words: stored.words.clone(),
        },
    ];
    for command in commands {
        let delivered = tokio::select! {
            biased;
            _ = token.cancelled() => return Synthesis::Cancelled,
            ok = delivery.send(command, open) => ok,
        };
        if !delivered {
            return Synthesis::Cancelled;
        }
    }
    Synthesis::Done
}

/// The most audio a sentence may take, in samples: 10 s plus 0.2 s a character, several times
/// what the slowest voice needs. A voice that streams more (a provider's loop, or one that
/// never ends its stream) is cut there instead of playing until the caller interrupts.
fn longest_speech(text: &str, sample_rate: u32) -> u64 {
    let seconds = 10.0 + 0.2 * text.chars().count() as f64;
    (seconds * f64::from(sample_rate)) as u64
}

async fn synthesize(
    id: ResponseId,
    index: usize,
    text: &str,
    ctx: &ResponseContext,
    gate: &watch::Receiver<bool>,
    delivery: &mut Delivery<'_>,
    token: &CancellationToken,
) -> Synthesis {
    ctx.log.record(LogKind::TtsRequestSent {
        id,
        index,
        chars: text.chars().count(),
    });
    let limits = Limits {
        first: ctx.options.tts_ttfb_timeout,
        stall: ctx.options.tts_stall_timeout,
    };
    let started = tokio::select! {
        biased;
        _ = token.cancelled() => return Synthesis::Cancelled,
        started = Bounded::open(ctx.tts.synthesize(text), limits) => started,
    };
    let mut stream = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Synthesis::Failed(e),
        Err(late) => return Synthesis::Failed(late.error(ctx.tts.name(), "audio")),
    };
    let sentence = PlayoutCommand::Sentence {
        id,
        text: text.to_owned(),
    };
    let mut pending_sentence = Some(sentence);
    let mut first = true;
    let longest = longest_speech(text, ctx.tts.sample_rate());
    let mut samples = 0u64;
    // One wait for the whole stream: a fresh one per chunk locks the token each time.
    let mut cancelled = std::pin::pin!(token.cancelled());
    loop {
        let chunk = tokio::select! {
            biased;
            () = &mut cancelled => return Synthesis::Cancelled,
            chunk = stream.next() => chunk,
        };
        let chunk = match chunk {
            Err(late) => return Synthesis::Failed(late.error(ctx.tts.name(), "audio")),
            Ok(None) => return Synthesis::Done,
            Ok(Some(Err(e))) => return Synthesis::Failed(e),
            Ok(Some(Ok(chunk))) => chunk,
        };
        if let Some(billed) = chunk.billed {
            ctx.log.record(LogKind::TtsBilled {
                id,
                index,
                characters: billed.characters,
                audio_ms: billed.audio_ms,
            });
        }
        if chunk.samples.is_empty() {
            continue;
        }
        if first {
            first = false;
            ctx.log.record(LogKind::TtsFirstAudio { id, index });
        }
        samples += chunk.samples.len() as u64;
        if samples > longest {
            warn!(%id, index, voice = ctx.tts.name(), seconds = longest / u64::from(ctx.tts.sample_rate().max(1)), "the voice sent more audio than its sentence can take; the rest is not played");
            return Synthesis::Done;
        }
        let open = *gate.borrow();
        let delivered = tokio::select! {
            biased;
            () = &mut cancelled => return Synthesis::Cancelled,
            ok = async {
                if let Some(s) = pending_sentence.take()
                    && !delivery.send(s, open).await
                {
                    return false;
                }
                delivery
                    .send(
                        PlayoutCommand::Audio {
                            id,
                            samples: chunk.samples,
                            words: chunk.words,
                        },
                        open,
                    )
                    .await
            } => ok,
        };
        if !delivered {
            return Synthesis::Cancelled;
        }
    }
}
