//! Per-turn metrics and the run summary, computed from a session's event log.
//!
//! One vocabulary, the same in the report, the server's metrics and BENCHMARKS.md, every figure
//! derived from instants stamped once where the event crossed our edge:
//! - `response_latency_ms`: `EndOfTurn` received -> first agent frame written.
//! - `voice_to_voice_ms`: the audio with the end of the user's last word sent -> first frame.
//! - `engine_overhead_ms`: trigger received -> LLM request sent, plus first sentence ready ->
//!   TTS request sent, plus first TTS audio received -> first frame written; for a speculative
//!   reply the last two start no earlier than its promotion (waiting for `EndOfTurn` is not
//!   overhead).
//! - `llm_ttft_ms`, `tts_ttfb_ms`: provider latencies seen from our edge.
//! - `speculation`: none | hit | miss, with `lead_ms` = `EndOfTurn` minus the receipt of the
//!   `EagerEndOfTurn` whose speculation was promoted.
//! - `barge_in_stop_ms`: `StartOfTurn` received -> last agent frame written (0 if none after).
//! - `breakdown`: voice-to-voice split into consecutive parts that add up exactly
//!   ([`Breakdown`]).

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::time::Instant;

use crate::engine::log::{LogEntry, LogKind};
use crate::engine::turn::{CancelReason, ResponseId};
use crate::flux::TurnEvent;

mod breakdown;
#[cfg(feature = "otel")]
pub mod otlp;
pub mod timeline;
#[cfg(feature = "otel")]
pub mod trace;

pub use breakdown::Breakdown;
use breakdown::CriticalPath;

/// Metrics of one user turn; what it serializes to reads back the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct TurnReport {
    /// User turn index.
    pub index: u64,
    /// Final transcript.
    pub user_transcript: String,
    /// `none` (no speculation), `hit` (answered by a promoted speculation) or `miss`
    /// (speculated, answered by a fresh reply).
    pub speculation: Speculation,
    /// Speculative replies started in this turn; each is either promoted or withdrawn.
    pub speculation_attempts: u64,
    /// Of those, the ones thrown away (the user resumed, the words changed, superseded).
    pub speculation_withdrawn: u64,
    /// Eager lead of a hit.
    pub lead_ms: Option<f64>,
    /// `EndOfTurn` -> first agent frame.
    pub response_latency_ms: Option<f64>,
    /// End of the user's speech sent -> first agent frame.
    pub voice_to_voice_ms: Option<f64>,
    /// Time our code added on the critical path.
    pub engine_overhead_ms: Option<f64>,
    /// Our own time around the tool calls on the way to the first sentence, part of
    /// `engine_overhead_ms`: the model's call received (or `EndOfTurn`, for a call that
    /// waited) -> sent, and the last result -> the next request to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_engine_ms: Option<f64>,
    /// LLM time to first token.
    pub llm_ttft_ms: Option<f64>,
    /// TTS time to first byte of the first sentence.
    pub tts_ttfb_ms: Option<f64>,
    /// LLM text chunks the reply's first piece waited for (the scripted model's chunks are
    /// words): with the provider latencies, what sets the earliest possible first audio.
    pub first_piece_tokens: Option<u64>,
    /// Whether the user cut the reply to this turn.
    pub interrupted: bool,
    /// For a turn that barged in: `StartOfTurn` -> last agent frame written.
    pub barge_in_stop_ms: Option<f64>,
    /// The voice-to-voice latency in consecutive parts that add up exactly (the parts after
    /// `EndOfTurn` add up to the response latency).
    pub breakdown: Option<Breakdown>,
    /// What the agent generated in reply.
    pub assistant_text: String,
    /// What the user heard of it.
    pub assistant_heard: String,
    /// Characters of the reply the voice billed, over the sentences it finished, when the
    /// voice reports them (Flux TTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_billed_characters: Option<u64>,
    /// Milliseconds of audio the voice reported producing for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_audio_ms: Option<u64>,
    /// The tool calls of the turn's replies, in the order they started (those of a withdrawn
    /// guess included: only read-only tools run before promotion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallReport>,
}

/// One tool call of a turn.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ToolCallReport {
    /// The tool.
    pub tool: String,
    /// Whether it may run while the reply is a guess.
    pub effect: crate::llm::ToolEffect,
    /// Whether it ran while the reply was still a guess.
    pub speculative: bool,
    /// Whether its reply was withdrawn (a guess the user went on past).
    pub withdrawn: bool,
    /// When the model asked for it, from `EndOfTurn` (negative: before it).
    pub requested_ms: f64,
    /// When it started, from `EndOfTurn`; `None` when it was never sent (it waited for
    /// `EndOfTurn` and its reply was withdrawn or cut first).
    pub start_ms: Option<f64>,
    /// How long it ran; `None` when it was dropped with its reply or never sent.
    pub duration_ms: Option<f64>,
    /// `ok`, `error`, `timed_out`, `cancelled` (a read-only call dropped with its reply) or
    /// `not_sent`.
    pub outcome: String,
}

/// How speculation went in a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speculation {
    /// No speculative reply was started.
    #[default]
    None,
    /// A speculative reply was promoted: it answered the turn.
    Hit,
    /// Speculative replies were started and thrown away; a fresh reply answered.
    Miss,
}

impl Speculation {
    /// `none`, `hit` or `miss`, as reports and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Speculation::None => "none",
            Speculation::Hit => "hit",
            Speculation::Miss => "miss",
        }
    }
}

impl std::fmt::Display for Speculation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Speculation {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Distribution of one latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Samples.
    pub count: usize,
    /// Median (nearest rank).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Stats {
    /// Nearest-rank percentiles of `values`.
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[i.clamp(1, values.len()) - 1]
        };
        Self {
            count: values.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: *values.last().expect("not empty"),
        }
    }
}

/// Speculation accounting: every attempt is exactly one hit or one miss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SpeculationSummary {
    /// Speculative responses started.
    pub attempts: u64,
    /// Speculative responses promoted on `EndOfTurn`.
    pub hits: u64,
    /// Speculative responses withdrawn (`TurnResumed`, other words at `EndOfTurn`, superseded,
    /// failed, or still held when the session ended).
    pub misses: u64,
    /// LLM tokens generated by speculations that were thrown away.
    pub wasted_llm_tokens: u64,
    /// Characters sent to TTS by speculations that were thrown away.
    pub wasted_tts_chars: u64,
}

/// The run summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Turns reported.
    pub turns: usize,
    /// See [`TurnReport::response_latency_ms`].
    pub response_latency_ms: Stats,
    /// See [`TurnReport::voice_to_voice_ms`].
    pub voice_to_voice_ms: Stats,
    /// See [`TurnReport::engine_overhead_ms`].
    pub engine_overhead_ms: Stats,
    /// See [`TurnReport::tool_engine_ms`].
    pub tool_engine_ms: Stats,
    /// See [`TurnReport::llm_ttft_ms`].
    pub llm_ttft_ms: Stats,
    /// See [`TurnReport::tts_ttfb_ms`].
    pub tts_ttfb_ms: Stats,
    /// See [`TurnReport::barge_in_stop_ms`].
    pub barge_in_stop_ms: Stats,
    /// See [`TurnReport::lead_ms`].
    pub lead_ms: Stats,
    /// Speculation accounting.
    pub speculation: SpeculationSummary,
    /// The mean of each part of the turns' breakdowns: they add up to the mean latency.
    pub breakdown_mean_ms: Option<Breakdown>,
}

/// A run's report: `report.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Per user turn.
    pub turns: Vec<TurnReport>,
    /// Over all turns.
    pub summary: Summary,
}

#[derive(Default)]
struct Response {
    speculative: bool,
    turn: u64,
    started: Option<Instant>,
    trigger: Option<Instant>,
    llm_sent: Option<Instant>,
    llm_first: Option<Instant>,
    /// Every request to the LLM and every round's first chunk (a tool call adds a round).
    llm_rounds_sent: Vec<Instant>,
    llm_rounds_first: Vec<Instant>,
    tokens: u64,
    sentence0: Option<Instant>,
    sentence0_tokens: Option<u64>,
    tts_sent0: Option<Instant>,
    tts_first0: Option<Instant>,
    tts_chars: u64,
    billed: Option<(u64, u64)>,
    promoted: Option<Instant>,
    first_frame: Option<Instant>,
    last_frame: Option<Instant>,
    cancelled: Option<(Instant, CancelReason)>,
    generated: String,
    heard: String,
    interrupted: bool,
    tools: Vec<ToolRun>,
}

/// One tool call of a response, as its log entries tell it.
pub(crate) struct ToolRun {
    pub(crate) call_id: String,
    pub(crate) tool: String,
    pub(crate) effect: crate::llm::ToolEffect,
    pub(crate) speculative: bool,
    pub(crate) requested: Instant,
    /// When it was sent; `None` while it waits for `EndOfTurn` (for good, if its reply goes).
    pub(crate) started: Option<Instant>,
    /// When it ended and how.
    pub(crate) ended: Option<(Instant, &'static str)>,
}

impl ToolRun {
    /// Notes a `ToolRequested`, `ToolStarted` or `ToolEnded` entry stamped `at` into its
    /// response's `runs`; other entries are left alone.
    pub(crate) fn note(runs: &mut Vec<ToolRun>, kind: &LogKind, at: Instant) {
        match kind {
            LogKind::ToolRequested {
                call_id,
                tool,
                effect,
                ..
            } => runs.push(ToolRun {
                call_id: call_id.clone(),
                tool: tool.clone(),
                effect: *effect,
                speculative: false,
                requested: at,
                started: None,
                ended: None,
            }),
            LogKind::ToolStarted {
                call_id,
                tool,
                effect,
                speculative,
                ..
            } => match runs
                .iter_mut()
                .find(|t| t.call_id == *call_id && t.started.is_none())
            {
                Some(run) => {
                    run.started = Some(at);
                    run.speculative = *speculative;
                }
                // The log keeps its most recent entries: the request may have been dropped.
                None => runs.push(ToolRun {
                    call_id: call_id.clone(),
                    tool: tool.clone(),
                    effect: *effect,
                    speculative: *speculative,
                    requested: at,
                    started: Some(at),
                    ended: None,
                }),
            },
            LogKind::ToolEnded {
                call_id, outcome, ..
            } => {
                if let Some(run) = runs.iter_mut().find(|t| t.call_id == *call_id) {
                    run.ended = Some((at, outcome));
                }
            }
            _ => {}
        }
    }
}

/// The tool calls on the way to a reply's first sentence, as instants; see
/// [`breakdown::ToolSpan`].
#[derive(Clone, Copy)]
struct ToolPath {
    requested: Instant,
    started: Instant,
    until: Instant,
    next_llm: Option<(Instant, Instant)>,
}

impl Response {
    /// `None` when no tool was sent before the first sentence.
    fn tool_path(&self) -> Option<ToolPath> {
        let first_sentence = self.sentence0?;
        let before: Vec<&ToolRun> = self
            .tools
            .iter()
            .filter(|t| t.requested < first_sentence)
            .collect();
        let requested = before.iter().map(|t| t.requested).min()?;
        let started = before.iter().filter_map(|t| t.started).min()?;
        // A filler line spoken while a call runs is the first sentence: the wait ends there.
        let until = before
            .iter()
            .map(|t| {
                t.ended
                    .map_or(first_sentence, |(at, _)| at.min(first_sentence))
            })
            .max()?;
        let next_llm = self
            .llm_rounds_sent
            .iter()
            .find(|at| **at >= until && **at < first_sentence)
            .and_then(|sent| {
                let first = self.llm_rounds_first.iter().find(|at| **at >= *sent)?;
                Some((*sent, *first))
            });
        Some(ToolPath {
            requested,
            started,
            until,
            next_llm,
        })
    }
}

#[derive(Default)]
struct Turn {
    start: Option<Instant>,
    end: Option<Instant>,
    transcript: String,
    speech_end_sent: Option<Instant>,
    eagers: Vec<Instant>,
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

impl Report {
    /// Computes the report from a session's log.
    pub fn from_log(entries: &[LogEntry]) -> Self {
        let mut turns: BTreeMap<u64, Turn> = BTreeMap::new();
        let mut responses: BTreeMap<ResponseId, Response> = BTreeMap::new();
        let mut last_flux: Option<Instant> = None;
        let mut prompted_responses: Vec<ResponseId> = Vec::new();
        for entry in entries {
            let at = entry.at;
            match &entry.kind {
                LogKind::Flux {
                    event,
                    turn_index,
                    transcript,
                    speech_end_sent_at,
                    ..
                } => {
                    last_flux = Some(at);
                    let t = turns.entry(*turn_index);
                    match event {
                        TurnEvent::StartOfTurn => {
                            t.or_default().start = Some(at);
                        }
                        TurnEvent::EagerEndOfTurn => t.or_default().eagers.push(at),
                        TurnEvent::EndOfTurn => {
                            let t = t.or_default();
                            t.end = Some(at);
                            t.transcript = transcript.clone();
                            t.speech_end_sent = *speech_end_sent_at;
                        }
                        _ => {}
                    }
                }
                LogKind::ResponseStarted {
                    id,
                    speculative,
                    turn,
                    prompted,
                } => {
                    if *prompted {
                        // Answers no user turn; a barge-in over it still counts.
                        prompted_responses.push(*id);
                    }
                    responses.insert(
                        *id,
                        Response {
                            speculative: *speculative,
                            turn: *turn,
                            started: Some(at),
                            trigger: last_flux,
                            ..Response::default()
                        },
                    );
                }
                LogKind::LlmRequestSent { id } => {
                    let r = responses.entry(*id).or_default();
                    r.llm_sent.get_or_insert(at);
                    r.llm_rounds_sent.push(at);
                }
                LogKind::LlmFirstToken { id } => {
                    let r = responses.entry(*id).or_default();
                    r.llm_first.get_or_insert(at);
                    r.llm_rounds_first.push(at);
                }
                LogKind::LlmDone { id, tokens } => {
                    responses.entry(*id).or_default().tokens += tokens
                }
                LogKind::SentenceReady {
                    id,
                    index: 0,
                    tokens,
                    ..
                } => {
                    let r = responses.entry(*id).or_default();
                    r.sentence0.get_or_insert(at);
                    r.sentence0_tokens.get_or_insert(*tokens);
                }
                LogKind::TtsRequestSent { id, index, chars } => {
                    let r = responses.entry(*id).or_default();
                    r.tts_chars += *chars as u64;
                    if *index == 0 {
                        r.tts_sent0.get_or_insert(at);
                    }
                }
                LogKind::TtsBilled {
                    id,
                    characters,
                    audio_ms,
                    ..
                } => {
                    let billed = responses
                        .entry(*id)
                        .or_default()
                        .billed
                        .get_or_insert((0, 0));
                    billed.0 += characters;
                    billed.1 += audio_ms;
                }
                LogKind::TtsFirstAudio { id, index: 0 } => {
                    responses
                        .entry(*id)
                        .or_default()
                        .tts_first0
                        .get_or_insert(at);
                }
                LogKind::ToolRequested { id, .. }
                | LogKind::ToolStarted { id, .. }
                | LogKind::ToolEnded { id, .. } => {
                    ToolRun::note(
                        &mut responses.entry(*id).or_default().tools,
                        &entry.kind,
                        at,
                    );
                }
                LogKind::Promoted { id } => responses.entry(*id).or_default().promoted = Some(at),
                LogKind::FirstFrameWritten { id } => {
                    responses
                        .entry(*id)
                        .or_default()
                        .first_frame
                        .get_or_insert(at);
                }
                LogKind::LastFrameWritten { id } => {
                    responses.entry(*id).or_default().last_frame = Some(at);
                }
                LogKind::Cancelled { id, reason } => {
                    responses.entry(*id).or_default().cancelled = Some((at, *reason));
                }
                LogKind::Ended {
                    id,
                    generated,
                    heard,
                    interrupted,
                    ..
                } => {
                    let r = responses.entry(*id).or_default();
                    r.generated = generated.clone();
                    r.heard = heard.clone();
                    r.interrupted = *interrupted;
                }
                _ => {}
            }
        }
        let mut summary = Summary::default();
        for r in responses.values().filter(|r| r.speculative) {
            summary.speculation.attempts += 1;
            if r.promoted.is_some() {
                summary.speculation.hits += 1;
            } else {
                summary.speculation.misses += 1;
                summary.speculation.wasted_llm_tokens += r.tokens;
                summary.speculation.wasted_tts_chars += r.tts_chars;
            }
        }
        let mut report_turns: Vec<TurnReport> = Vec::new();
        for (&index, turn) in &turns {
            let Some(end) = turn.end else { continue };
            let mine: Vec<(&ResponseId, &Response)> = responses
                .iter()
                .filter(|(id, r)| r.turn == index && !prompted_responses.contains(id))
                .collect();
            let attempts = mine.iter().filter(|(_, r)| r.speculative).count() as u64;
            let withdrawn = mine
                .iter()
                .filter(|(_, r)| r.speculative && r.promoted.is_none())
                .count() as u64;
            let answer = mine
                .iter()
                .find(|(_, r)| !r.speculative || r.promoted.is_some())
                .map(|(_, r)| *r);
            let hit = answer.is_some_and(|r| r.speculative);
            let speculation = match (attempts, hit) {
                (0, _) => Speculation::None,
                (_, true) => Speculation::Hit,
                _ => Speculation::Miss,
            };

            let lead_ms = answer.filter(|_| hit).and_then(|r| {
                let started = r.started?;
                let eager = turn.eagers.iter().rev().find(|e| **e <= started)?;
                Some(ms(*eager, end))
            });
            let first_frame = answer.and_then(|r| r.first_frame);
            let rel = |at: Instant| {
                if at >= end { ms(end, at) } else { -ms(at, end) }
            };
            let tool_span = answer
                .and_then(|r| r.tool_path())
                .map(|p| breakdown::ToolSpan {
                    requested: rel(p.requested),
                    started: rel(p.started),
                    until: rel(p.until),
                    next_llm: p.next_llm.map(|(sent, first)| (rel(sent), rel(first))),
                });
            let tool_engine_ms = answer.and_then(|r| {
                let gate_open = rel(r.promoted.or(r.started)?);
                tool_span.map(|t| t.engine_and_held(gate_open).0)
            });
            let engine_overhead_ms = answer.and_then(|r| {
                let trigger = r.trigger?;
                let gate_open = r.promoted.or(r.started)?;
                // Waiting for promotion is not our overhead: each hand-off is measured from
                // the later of "input ready" and "gate open".
                let sentence_ready = r.sentence0?.max(gate_open);
                let audio_ready = r.tts_first0?.max(gate_open);
                Some(
                    ms(trigger, r.llm_sent?)
                        + tool_engine_ms.unwrap_or(0.0)
                        + ms(sentence_ready, r.tts_sent0?)
                        + ms(audio_ready, r.first_frame?),
                )
            });
            let breakdown = answer.and_then(|r| {
                let path = CriticalPath {
                    speech_end: turn.speech_end_sent.map(rel),
                    trigger: rel(r.trigger?),
                    gate_open: rel(r.promoted.or(r.started)?),
                    llm_sent: rel(r.llm_sent?),
                    llm_first: rel(r.llm_first?),
                    tools: tool_span,
                    first_piece: rel(r.sentence0?),
                    tts_sent: rel(r.tts_sent0?),
                    tts_first: rel(r.tts_first0?),
                    first_frame: rel(r.first_frame?),
                };
                Some(Breakdown::of(&path))
            });
            let barge_in_stop_ms = turn.start.and_then(|start| {
                responses
                    .values()
                    .filter(|r| {
                        matches!(r.cancelled, Some((at, CancelReason::BargeIn)) if at >= start && at <= end)
                    })
                    .map(|r| r.last_frame.map_or(0.0, |last| ms(start, last)))
                    .reduce(f64::max)
            });
            let mut tool_calls: Vec<(Instant, ToolCallReport)> = mine
                .iter()
                .flat_map(|(_, r)| {
                    let withdrawn = r.speculative && r.promoted.is_none();
                    r.tools.iter().map(move |t| {
                        let outcome = match (t.started, t.ended) {
                            (None, _) => "not_sent",
                            (Some(_), None) => "cancelled",
                            (Some(_), Some((_, outcome))) => outcome,
                        };
                        (
                            t.requested,
                            ToolCallReport {
                                tool: t.tool.clone(),
                                effect: t.effect,
                                speculative: t.speculative,
                                withdrawn,
                                requested_ms: rel(t.requested),
                                start_ms: t.started.map(rel),
                                duration_ms: t
                                    .started
                                    .zip(t.ended)
                                    .filter(|(_, (_, outcome))| *outcome != "cancelled")
                                    .map(|(started, (at, _))| ms(started, at)),
                                outcome: outcome.to_owned(),
                            },
                        )
                    })
                })
                .collect();
            tool_calls.sort_by_key(|(at, _)| *at);
            let report = TurnReport {
                index,
                user_transcript: turn.transcript.clone(),
                speculation,
                speculation_attempts: attempts,
                speculation_withdrawn: withdrawn,
                lead_ms,
                response_latency_ms: first_frame.map(|f| ms(end, f)),
                voice_to_voice_ms: first_frame.zip(turn.speech_end_sent).map(|(f, s)| ms(s, f)),
                engine_overhead_ms,
                tool_engine_ms,
                llm_ttft_ms: answer.and_then(|r| Some(ms(r.llm_sent?, r.llm_first?))),
                tts_ttfb_ms: answer.and_then(|r| Some(ms(r.tts_sent0?, r.tts_first0?))),
                first_piece_tokens: answer.and_then(|r| r.sentence0_tokens),
                interrupted: answer.is_some_and(|r| {
                    r.interrupted
                        && r.cancelled
                            .is_some_and(|(_, why)| why == CancelReason::BargeIn)
                }),
                barge_in_stop_ms,
                breakdown,
                assistant_text: answer.map(|r| r.generated.clone()).unwrap_or_default(),
                assistant_heard: answer.map(|r| r.heard.clone()).unwrap_or_default(),
                tts_billed_characters: answer.and_then(|r| r.billed).map(|(chars, _)| chars),
                tts_audio_ms: answer.and_then(|r| r.billed).map(|(_, ms)| ms),
                tool_calls: tool_calls.into_iter().map(|(_, t)| t).collect(),
            };
            report_turns.push(report);
        }
        Report::from_turns(report_turns, summary.speculation)
    }

    /// A report over `turns` (possibly from many sessions) with their speculation accounting.
    pub fn from_turns(turns: Vec<TurnReport>, speculation: SpeculationSummary) -> Self {
        let collect =
            |f: fn(&TurnReport) -> Option<f64>| Stats::of(turns.iter().filter_map(f).collect());
        let summary = Summary {
            turns: turns.len(),
            response_latency_ms: collect(|t| t.response_latency_ms),
            voice_to_voice_ms: collect(|t| t.voice_to_voice_ms),
            engine_overhead_ms: collect(|t| t.engine_overhead_ms),
            tool_engine_ms: collect(|t| t.tool_engine_ms),
            llm_ttft_ms: collect(|t| t.llm_ttft_ms),
            tts_ttfb_ms: collect(|t| t.tts_ttfb_ms),
            barge_in_stop_ms: collect(|t| t.barge_in_stop_ms),
            lead_ms: collect(|t| t.lead_ms),
            speculation,
            breakdown_mean_ms: Breakdown::mean(turns.iter().filter_map(|t| t.breakdown.as_ref())),
        };
        Report { turns, summary }
    }

    /// Pools several reports (repeats, concurrent sessions) into one.
    pub fn pool(reports: impl IntoIterator<Item = Report>) -> Self {
        let mut turns = Vec::new();
        let mut speculation = SpeculationSummary::default();
        for r in reports {
            turns.extend(r.turns);
            let s = r.summary.speculation;
            speculation.attempts += s.attempts;
            speculation.hits += s.hits;
            speculation.misses += s.misses;
            speculation.wasted_llm_tokens += s.wasted_llm_tokens;
            speculation.wasted_tts_chars += s.wasted_tts_chars;
        }
        Report::from_turns(turns, speculation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Stats::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (s.p50, s.p90, s.p99, s.max, s.count),
            (50.0, 90.0, 99.0, 100.0, 100)
        );
        let one = Stats::of(vec![7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Stats::of(vec![]), Stats::default());
    }
}
