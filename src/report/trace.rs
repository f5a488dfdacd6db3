//! A finished call as OpenTelemetry spans (feature `otel`), read from its event log: a span for
//! the call, one per user turn with the turn's figures and its latency breakdown as
//! attributes, one per reply (speculative or not, promoted, withdrawn or cut), and under each
//! reply one for the model request, one per tool call and one per sentence sent to the voice. Pure: the spans
//! are values with instants of the event log's clock; [`otlp_json`] writes them as an OTLP
//! `ExportTraceServiceRequest` in its JSON encoding, and `report::otlp` sends them.
//!
//! No span carries what anyone said: transcripts and replies stay in the event log.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value as Json, json};
use tokio::time::Instant;

use super::{Report, ToolRun, TurnReport};
use crate::engine::log::{LogEntry, LogKind};
use crate::engine::{CancelReason, ResponseId};
use crate::flux::TurnEvent;

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
    /// A measure.
    Float(f64),
    /// A flag.
    Bool(bool),
}

/// One span of a call.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSpan {
    /// `turnflow.call`, `turnflow.turn`, `turnflow.response`, `turnflow.llm`, `turnflow.tool`
    /// or `turnflow.tts`.
    pub name: &'static str,
    /// The index of its parent in the call's spans; `None` for the call.
    pub parent: Option<usize>,
    /// When it began.
    pub start: Instant,
    /// When it ended.
    pub end: Instant,
    /// What it measured.
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// The failure it ended with (the kind and a message fit for any reader).
    pub error: Option<String>,
}

impl TraceSpan {
    fn new(name: &'static str, parent: Option<usize>, start: Instant, end: Instant) -> Self {
        Self {
            name,
            parent,
            start,
            end: end.max(start),
            attributes: Vec::new(),
            error: None,
        }
    }

    fn set(&mut self, key: &'static str, value: AttributeValue) {
        self.attributes.push((key, value));
    }

    fn set_ms(&mut self, key: &'static str, value: Option<f64>) {
        if let Some(v) = value {
            self.set(key, AttributeValue::Float(v));
        }
    }

    /// The attribute named `key`.
    pub fn attribute(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(v))
    }
}

/// What the spans say about the call besides its event log.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo<'a> {
    /// The session id.
    pub session: &'a str,
    /// How it ended (`completed`, `stt_failed`, ...).
    pub outcome: &'a str,
    /// Where it came from: `browser`, `phone`, `simulation`, `run`.
    pub transport: &'a str,
    /// The model's name.
    pub llm: &'a str,
    /// The voice's name.
    pub tts: &'a str,
}

#[derive(Default)]
struct Sentence {
    sent: Option<Instant>,
    chars: u64,
    first_audio: Option<Instant>,
    billed: Option<u64>,
}

struct Reply {
    turn: u64,
    prompted: bool,
    speculative: bool,
    started: Instant,
    promoted: bool,
    llm_sent: Option<Instant>,
    llm_first: Option<Instant>,
    llm_done: Option<(Instant, u64)>,
    sentences: BTreeMap<usize, Sentence>,
    cancelled: Option<(Instant, CancelReason)>,
    ended: Option<Instant>,
    interrupted: bool,
    error: Option<crate::error::BackendError>,
    tools: Vec<ToolRun>,
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

fn cancel_name(reason: CancelReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{reason:?}"))
}

/// The spans of a call whose event log is `entries` (empty for an empty log).
pub fn call_spans(entries: &[LogEntry], call: &CallInfo<'_>) -> Vec<TraceSpan> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Vec::new();
    };
    let report = Report::from_log(entries);
    let mut turn_start: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut turn_end: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut replies: BTreeMap<ResponseId, Reply> = BTreeMap::new();
    for entry in entries {
        let at = entry.at;
        match &entry.kind {
            LogKind::Flux {
                event, turn_index, ..
            } => match event {
                TurnEvent::StartOfTurn => {
                    turn_start.entry(*turn_index).or_insert(at);
                }
                TurnEvent::EndOfTurn => {
                    turn_start.entry(*turn_index).or_insert(at);
                    turn_end.insert(*turn_index, at);
                }
                _ => {}
            },
            LogKind::ResponseStarted {
                id,
                speculative,
                turn,
                prompted,
            } => {
                replies.insert(
                    *id,
                    Reply {
                        turn: *turn,
                        prompted: *prompted,
                        speculative: *speculative,
                        started: at,
                        promoted: false,
                        llm_sent: None,
                        llm_first: None,
                        llm_done: None,
                        sentences: BTreeMap::new(),
                        cancelled: None,
                        ended: None,
                        interrupted: false,
                        error: None,
                        tools: Vec::new(),
                    },
                );
            }
            kind => {
                let Some(id) = response_of(kind) else {
                    continue;
                };
                let Some(r) = replies.get_mut(&id) else {
                    continue;
                };
                match kind {
                    LogKind::LlmRequestSent { .. } => r.llm_sent = Some(at),
                    LogKind::LlmFirstToken { .. } => r.llm_first = Some(at),
                    LogKind::LlmDone { tokens, .. } => r.llm_done = Some((at, *tokens)),
                    LogKind::TtsRequestSent { index, chars, .. } => {
                        let s = r.sentences.entry(*index).or_default();
                        s.sent = Some(at);
                        s.chars = *chars as u64;
                    }
                    LogKind::TtsFirstAudio { index, .. } => {
                        r.sentences.entry(*index).or_default().first_audio = Some(at);
                    }
                    LogKind::TtsBilled {
                        index, characters, ..
                    } => {
                        r.sentences.entry(*index).or_default().billed = Some(*characters);
                    }
                    LogKind::ToolRequested { .. }
                    | LogKind::ToolStarted { .. }
                    | LogKind::ToolEnded { .. } => {
                        ToolRun::note(&mut r.tools, kind, at);
                    }
                    LogKind::Promoted { .. } => r.promoted = true,
                    LogKind::Cancelled { reason, .. } => r.cancelled = Some((at, *reason)),
                    LogKind::Ended {
                        interrupted, error, ..
                    } => {
                        r.ended = Some(at);
                        r.interrupted = *interrupted;
                        r.error = error.clone();
                    }
                    _ => {}
                }
            }
        }
    }

    let mut spans = vec![TraceSpan::new("turnflow.call", None, first.at, last.at)];
    let root = &mut spans[0];
    root.set(
        "turnflow.session.id",
        AttributeValue::Text(call.session.into()),
    );
    root.set(
        "turnflow.call.outcome",
        AttributeValue::Text(call.outcome.into()),
    );
    root.set(
        "turnflow.call.transport",
        AttributeValue::Text(call.transport.into()),
    );
    root.set(
        "turnflow.call.turns",
        AttributeValue::Int(report.turns.len() as i64),
    );
    root.set("turnflow.llm", AttributeValue::Text(call.llm.into()));
    root.set("turnflow.tts", AttributeValue::Text(call.tts.into()));
    if call.outcome != "completed" {
        root.error = Some(format!("the call ended: {}", call.outcome));
    }

    let mut turn_span: BTreeMap<u64, usize> = BTreeMap::new();
    for turn in &report.turns {
        let start = turn_start.get(&turn.index).copied().unwrap_or(first.at);
        let replies_end = replies
            .values()
            .filter(|r| r.turn == turn.index && !r.prompted)
            .filter_map(|r| r.ended.or(r.cancelled.map(|c| c.0)))
            .max();
        let end = [turn_end.get(&turn.index).copied(), replies_end]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(start);
        turn_span.insert(turn.index, spans.len());
        spans.push(turn_attributes(
            TraceSpan::new("turnflow.turn", Some(0), start, end),
            turn,
        ));
    }

    for (id, r) in &replies {
        let parent = if r.prompted {
            0
        } else {
            turn_span.get(&r.turn).copied().unwrap_or(0)
        };
        let end = r
            .ended
            .into_iter()
            .chain(r.cancelled.map(|c| c.0))
            .max()
            .unwrap_or(last.at);
        let mut span = TraceSpan::new("turnflow.response", Some(parent), r.started, end);
        span.set("turnflow.response.id", AttributeValue::Text(id.to_string()));
        span.set(
            "turnflow.response.speculative",
            AttributeValue::Bool(r.speculative),
        );
        span.set(
            "turnflow.response.prompted",
            AttributeValue::Bool(r.prompted),
        );
        let outcome = match (&r.cancelled, &r.error, r.interrupted) {
            (Some((_, reason)), _, _) => format!("cancelled: {}", cancel_name(*reason)),
            (None, Some(_), _) => "failed".to_owned(),
            (None, None, true) => "interrupted".to_owned(),
            (None, None, false) if r.speculative && r.promoted => "promoted".to_owned(),
            (None, None, false) => "answered".to_owned(),
        };
        span.set("turnflow.response.outcome", AttributeValue::Text(outcome));
        if let Some(e) = &r.error {
            let e = e.for_caller();
            span.error = Some(format!(
                "{}: {} ({})",
                e.provider,
                e.message,
                e.kind.as_str()
            ));
        }
        let index = spans.len();
        spans.push(span);

        if let Some(sent) = r.llm_sent {
            let done = r.llm_done.map(|d| d.0).unwrap_or(end);
            let mut llm = TraceSpan::new("turnflow.llm", Some(index), sent, done);
            llm.set("gen_ai.operation.name", AttributeValue::Text("chat".into()));
            llm.set(
                "gen_ai.provider.name",
                AttributeValue::Text(call.llm.into()),
            );
            llm.set_ms("turnflow.llm.ttft_ms", r.llm_first.map(|f| ms(sent, f)));
            if let Some((_, tokens)) = r.llm_done {
                llm.set(
                    "gen_ai.usage.output_tokens",
                    AttributeValue::Int(tokens as i64),
                );
            }
            spans.push(llm);
        }
        for run in &r.tools {
            // A call that waited for EndOfTurn and never went out did nothing to trace.
            let Some(started) = run.started else {
                continue;
            };
            let ended = run.ended.map_or(end, |(at, _)| at);
            let mut tool = TraceSpan::new("turnflow.tool", Some(index), started, ended);
            tool.set(
                "gen_ai.operation.name",
                AttributeValue::Text("execute_tool".into()),
            );
            tool.set("gen_ai.tool.name", AttributeValue::Text(run.tool.clone()));
            tool.set(
                "gen_ai.tool.call.id",
                AttributeValue::Text(run.call_id.clone()),
            );
            tool.set(
                "turnflow.tool.read_only",
                AttributeValue::Bool(run.effect == crate::llm::ToolEffect::Pure),
            );
            tool.set(
                "turnflow.tool.speculative",
                AttributeValue::Bool(run.speculative),
            );
            let outcome = run.ended.map_or("cancelled", |(_, o)| o);
            tool.set(
                "turnflow.tool.outcome",
                AttributeValue::Text(outcome.into()),
            );
            if matches!(outcome, "error" | "timed_out") {
                tool.error = Some(format!("{} {outcome}", run.tool));
            }
            spans.push(tool);
        }
        let sentences: Vec<(&usize, &Sentence)> = r.sentences.iter().collect();
        for (k, (position, sentence)) in sentences.iter().enumerate() {
            let Some(sent) = sentence.sent else { continue };
            let next = sentences.get(k + 1).and_then(|(_, s)| s.sent);
            let mut tts = TraceSpan::new("turnflow.tts", Some(index), sent, next.unwrap_or(end));
            tts.set("turnflow.tts.voice", AttributeValue::Text(call.tts.into()));
            tts.set(
                "turnflow.tts.sentence",
                AttributeValue::Int(**position as i64),
            );
            tts.set(
                "turnflow.tts.characters",
                AttributeValue::Int(sentence.chars as i64),
            );
            tts.set_ms(
                "turnflow.tts.ttfb_ms",
                sentence.first_audio.map(|f| ms(sent, f)),
            );
            if let Some(billed) = sentence.billed {
                tts.set(
                    "turnflow.tts.billed_characters",
                    AttributeValue::Int(billed as i64),
                );
            }
            spans.push(tts);
        }
    }
    spans
}

fn response_of(kind: &LogKind) -> Option<ResponseId> {
    Some(match kind {
        LogKind::LlmRequestSent { id }
        | LogKind::LlmFirstToken { id }
        | LogKind::LlmDone { id, .. }
        | LogKind::SentenceReady { id, .. }
        | LogKind::TtsRequestSent { id, .. }
        | LogKind::TtsBilled { id, .. }
        | LogKind::TtsFirstAudio { id, .. }
        | LogKind::ToolRequested { id, .. }
        | LogKind::ToolStarted { id, .. }
        | LogKind::ToolEnded { id, .. }
        | LogKind::Promoted { id }
        | LogKind::FirstFrameWritten { id }
        | LogKind::LastFrameWritten { id }
        | LogKind::Paused { id }
        | LogKind::Resumed { id }
        | LogKind::Cancelled { id, .. }
        | LogKind::Ended { id, .. } => *id,
        _ => return None,
    })
}

fn turn_attributes(mut span: TraceSpan, turn: &TurnReport) -> TraceSpan {
    span.set(
        "turnflow.turn.index",
        AttributeValue::Int(turn.index as i64),
    );
    span.set(
        "turnflow.speculation",
        AttributeValue::Text(turn.speculation.as_str().into()),
    );
    span.set(
        "turnflow.speculation.attempts",
        AttributeValue::Int(turn.speculation_attempts as i64),
    );
    span.set(
        "turnflow.speculation.withdrawn",
        AttributeValue::Int(turn.speculation_withdrawn as i64),
    );
    span.set_ms("turnflow.speculation.lead_ms", turn.lead_ms);
    span.set_ms("turnflow.response_latency_ms", turn.response_latency_ms);
    span.set_ms("turnflow.voice_to_voice_ms", turn.voice_to_voice_ms);
    span.set_ms("turnflow.engine_overhead_ms", turn.engine_overhead_ms);
    span.set_ms("turnflow.llm_ttft_ms", turn.llm_ttft_ms);
    span.set_ms("turnflow.tts_ttfb_ms", turn.tts_ttfb_ms);
    span.set_ms("turnflow.barge_in_stop_ms", turn.barge_in_stop_ms);
    span.set(
        "turnflow.interrupted",
        AttributeValue::Bool(turn.interrupted),
    );
    if let Some(b) = &turn.breakdown {
        span.set_ms("turnflow.breakdown.endpointing_ms", b.endpointing_ms);
        // Sized by the breakdown's parts: a new part does not compile until it is named here.
        const PARTS: [&str; super::Breakdown::PART_NAMES.len()] = [
            "turnflow.breakdown.speculation_ms",
            "turnflow.breakdown.llm_ttft_ms",
            "turnflow.breakdown.first_piece_ms",
            "turnflow.breakdown.tool_ms",
            "turnflow.breakdown.tts_ttfb_ms",
            "turnflow.breakdown.held_ms",
            "turnflow.breakdown.engine_ms",
        ];
        for (name, value) in PARTS.into_iter().zip(b.parts()) {
            span.set_ms(name, Some(value));
        }
    }
    span
}

/// Where the event log's clock stands against the wall clock: `wall` was the time at
/// `instant`.
#[derive(Debug, Clone, Copy)]
pub struct ClockAnchor {
    /// An instant of the event log's clock.
    pub instant: Instant,
    /// The wall-clock time then.
    pub wall: SystemTime,
}

impl ClockAnchor {
    /// Now on both clocks.
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `at` in nanoseconds since the Unix epoch.
    fn unix_nanos(&self, at: Instant) -> u128 {
        let wall = if at <= self.instant {
            self.wall - self.instant.duration_since(at)
        } else {
            self.wall + at.duration_since(self.instant)
        };
        wall.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos()
    }
}

/// One call's spans ready to send: the ids are drawn by the caller (random in production).
#[derive(Debug, Clone)]
pub struct TracedCall {
    /// The call's trace id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// One span id per span (8 bytes, not all zero).
    pub span_ids: Vec<[u8; 8]>,
    /// The spans.
    pub spans: Vec<TraceSpan>,
    /// Where the spans' clock stood against the wall clock.
    pub clock: ClockAnchor,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn json_value(value: &AttributeValue) -> Json {
    match value {
        AttributeValue::Text(s) => json!({ "stringValue": s }),
        // OTLP's JSON encoding carries 64-bit integers as decimal strings.
        AttributeValue::Int(i) => json!({ "intValue": i.to_string() }),
        AttributeValue::Float(f) => json!({ "doubleValue": f }),
        AttributeValue::Bool(b) => json!({ "boolValue": b }),
    }
}

fn attributes<'a>(pairs: impl IntoIterator<Item = (&'a str, Json)>) -> Json {
    Json::Array(
        pairs
            .into_iter()
            .map(|(key, value)| json!({ "key": key, "value": value }))
            .collect(),
    )
}

/// OTLP span kinds.
const KIND_INTERNAL: u8 = 1;
const KIND_SERVER: u8 = 2;
const KIND_CLIENT: u8 = 3;
/// OTLP status codes.
const STATUS_ERROR: u8 = 2;

/// The calls as one OTLP `ExportTraceServiceRequest` in the JSON encoding (ids in hex, 64-bit
/// numbers as strings), under a resource with `resource` attributes.
pub fn otlp_json(calls: &[TracedCall], resource: &[(String, String)]) -> Json {
    let mut spans = Vec::new();
    for call in calls {
        let clock = call.clock;
        for (i, span) in call.spans.iter().enumerate() {
            let kind = match (span.parent, span.name) {
                (None, _) => KIND_SERVER,
                (_, "turnflow.llm" | "turnflow.tts" | "turnflow.tool") => KIND_CLIENT,
                _ => KIND_INTERNAL,
            };
            let mut out = json!({
                "traceId": hex(&call.trace_id),
                "spanId": hex(&call.span_ids[i]),
                "name": span.name,
                "kind": kind,
                "startTimeUnixNano": clock.unix_nanos(span.start).to_string(),
                "endTimeUnixNano": clock.unix_nanos(span.end).to_string(),
                "attributes": attributes(span.attributes.iter().map(|(k, v)| (*k, json_value(v)))),
            });
            if let Some(parent) = span.parent {
                out["parentSpanId"] = json!(hex(&call.span_ids[parent]));
            }
            if let Some(message) = &span.error {
                out["status"] = json!({ "code": STATUS_ERROR, "message": message });
            }
            spans.push(out);
        }
    }
    json!({
        "resourceSpans": [{
            "resource": {
                "attributes": attributes(resource.iter().map(|(k, v)| (k.as_str(), json!({ "stringValue": v })))),
            },
            "scopeSpans": [{
                "scope": { "name": "turnflow", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}
