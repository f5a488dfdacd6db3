//! The conversation as a picture: an SVG timeline of one session, drawn from its event log and
//! the user's audio.
//!
//! Rows, top to bottom: user speech (from the audio sent), Flux turn events, LLM spans (with
//! each tool call over its reply's span, named), TTS spans, agent playback, and each turn's
//! latency breakdown as stacked bars. Speculative work
//! is drawn hatched-light, cancelled work red-edged, barge-in cuts as red lines, and each
//! turn's response latency as a labelled bracket from `EndOfTurn` to the first agent frame.

use std::collections::BTreeMap;
use std::fmt::Write;

use tokio::time::Instant;

use crate::engine::log::{LogEntry, LogKind};
use crate::engine::turn::ResponseId;
use crate::flux::TurnEvent;
use crate::report::{Breakdown, Report};

const PX_PER_SECOND: f64 = 100.0;
const LEFT: f64 = 110.0;
const ROW: f64 = 34.0;

fn x(result: &Conversation<'_>, at: Instant) -> f64 {
    LEFT + at.saturating_duration_since(result.start).as_secs_f64() * PX_PER_SECOND
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[derive(Default)]
struct Spans {
    speculative: bool,
    llm: Option<(Instant, Option<Instant>)>,
    tools: Vec<(String, Instant, Option<Instant>)>,
    tts: Vec<(Instant, Option<Instant>)>,
    playback: Option<(Instant, Option<Instant>)>,
    cancelled: Option<Instant>,
    promoted: bool,
}

/// One session as the timeline draws it.
#[derive(Debug, Clone, Copy)]
pub struct Conversation<'a> {
    /// The timeline's zero: when the user's first audio was sent.
    pub start: Instant,
    /// The session's event log.
    pub log: &'a [LogEntry],
    /// The turns' figures (from the same log).
    pub report: &'a Report,
    /// Every user sample sent, from `start`.
    pub user_audio: &'a [i16],
    /// Sample rate of the user's audio.
    pub sample_rate: u32,
}

/// Renders the timeline of `result` as an SVG document.
pub fn render(result: &Conversation<'_>) -> String {
    let rate = f64::from(result.sample_rate);
    let end_seconds =
        (result.user_audio.len() as f64 / rate).max(result.log.last().map_or(0.0, |e| {
            e.at.saturating_duration_since(result.start).as_secs_f64()
        })) + 0.5;
    let width = LEFT + end_seconds * PX_PER_SECOND + 20.0;
    let height = ROW * 7.0 + 56.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    svg.push_str(r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    for (i, label) in ["user", "flux", "llm", "tts", "agent", "", "breakdown"]
        .iter()
        .enumerate()
    {
        let y = 20.0 + ROW * i as f64;
        let _ = write!(
            svg,
            r##"<text x="8" y="{:.1}" fill="#333">{label}</text><line x1="{LEFT}" y1="{:.1}" x2="{width:.0}" y2="{:.1}" stroke="#eee"/>"##,
            y + 16.0,
            y + ROW - 2.0,
            y + ROW - 2.0
        );
    }
    for s in 0..=(end_seconds as u64) {
        let px = LEFT + s as f64 * PX_PER_SECOND;
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="14" x2="{px:.1}" y2="{:.1}" stroke="#f3f3f3"/><text x="{px:.1}" y="12" fill="#999">{s}s</text>"##,
            ROW * 5.0 + 20.0
        );
    }
    // User speech: runs of non-silent 20 ms blocks.
    let block = (rate / 50.0) as usize;
    let mut run_start: Option<usize> = None;
    let blocks = result.user_audio.len().div_ceil(block.max(1));
    for b in 0..=blocks {
        let loud = result
            .user_audio
            .get(b * block..((b + 1) * block).min(result.user_audio.len()))
            .is_some_and(|s| s.iter().any(|v| v.unsigned_abs() > 500));
        match (loud, run_start) {
            (true, None) => run_start = Some(b),
            (false, Some(a)) => {
                let x0 = LEFT + (a * block) as f64 / rate * PX_PER_SECOND;
                let x1 = LEFT + (b * block) as f64 / rate * PX_PER_SECOND;
                let _ = write!(
                    svg,
                    r##"<rect x="{x0:.1}" y="24" width="{:.1}" height="20" fill="#4a90d9"/>"##,
                    x1 - x0
                );
                run_start = None;
            }
            _ => {}
        }
    }
    let mut spans: BTreeMap<ResponseId, Spans> = BTreeMap::new();
    let mut flux_y = 0;
    for entry in result.log {
        let at = entry.at;
        match &entry.kind {
            LogKind::Flux { event, .. } if *event != TurnEvent::Update => {
                let px = x(result, at);
                let color = match event {
                    TurnEvent::StartOfTurn => "#2e7d32",
                    TurnEvent::EagerEndOfTurn => "#f9a825",
                    TurnEvent::TurnResumed => "#ef6c00",
                    TurnEvent::EndOfTurn => "#1565c0",
                    _ => "#777",
                };
                let label = match event {
                    TurnEvent::StartOfTurn => "Start",
                    TurnEvent::EagerEndOfTurn => "Eager",
                    TurnEvent::TurnResumed => "Resumed",
                    TurnEvent::EndOfTurn => "End",
                    other => other.as_str(),
                };
                flux_y = (flux_y + 1) % 2;
                let ty = 20.0 + ROW + 12.0 + 12.0 * f64::from(flux_y);
                let _ = write!(
                    svg,
                    r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{ty:.1}" fill="{color}">{label}</text>"#,
                    20.0 + ROW,
                    20.0 + ROW * 2.0 - 4.0,
                    px + 3.0
                );
            }
            LogKind::ResponseStarted {
                id, speculative, ..
            } => {
                spans.entry(*id).or_default().speculative = *speculative;
            }
            LogKind::LlmRequestSent { id } => {
                let s = spans.entry(*id).or_default();
                if s.llm.is_none() {
                    s.llm = Some((at, None));
                }
            }
            LogKind::LlmDone { id, .. } => {
                if let Some((_, end)) = &mut spans.entry(*id).or_default().llm {
                    *end = Some(at);
                }
            }
            LogKind::TtsRequestSent { id, .. } => {
                spans.entry(*id).or_default().tts.push((at, None))
            }
            LogKind::ToolStarted { id, tool, .. } => {
                spans
                    .entry(*id)
                    .or_default()
                    .tools
                    .push((tool.clone(), at, None));
            }
            LogKind::ToolEnded { id, .. } => {
                if let Some((_, _, end)) = spans
                    .entry(*id)
                    .or_default()
                    .tools
                    .iter_mut()
                    .find(|(_, _, end)| end.is_none())
                {
                    *end = Some(at);
                }
            }
            LogKind::TtsFirstAudio { id, .. } => {
                if let Some((_, end)) = spans.entry(*id).or_default().tts.last_mut() {
                    *end = Some(at);
                }
            }
            LogKind::FirstFrameWritten { id } => {
                spans.entry(*id).or_default().playback = Some((at, None));
            }
            LogKind::LastFrameWritten { id } => {
                if let Some((_, end)) = &mut spans.entry(*id).or_default().playback {
                    *end = Some(at);
                }
            }
            LogKind::Promoted { id } => spans.entry(*id).or_default().promoted = true,
            LogKind::Cancelled { id, .. } => spans.entry(*id).or_default().cancelled = Some(at),
            _ => {}
        }
    }
    let fallback_end = result.log.last().map_or(result.start, |e| e.at);
    for (id, s) in &spans {
        let fill = if s.speculative && !s.promoted {
            "#ffe0b2"
        } else if s.speculative {
            "#c8e6c9"
        } else {
            "#bbdefb"
        };
        let stroke = if s.cancelled.is_some() {
            "#c62828"
        } else {
            "#555"
        };
        let mut bar = |row: f64, from: Instant, to: Option<Instant>, label: &str| {
            let x0 = x(result, from);
            let x1 = x(result, to.or(s.cancelled).unwrap_or(fallback_end)).max(x0 + 2.0);
            let y = 20.0 + ROW * row + 6.0;
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="18" fill="{fill}" stroke="{stroke}"/><text x="{:.1}" y="{:.1}" fill="#333">{}</text>"##,
                x1 - x0,
                x0 + 2.0,
                y + 13.0,
                escape(label)
            );
        };
        if let Some((from, to)) = s.llm {
            bar(2.0, from, to, &id.to_string());
        }
        for (from, to) in &s.tts {
            bar(3.0, *from, *to, "");
        }
        if let Some((from, to)) = s.playback {
            bar(4.0, from, to, &id.to_string());
        }
        for (tool, from, to) in &s.tools {
            let x0 = x(result, *from);
            let x1 = x(result, to.unwrap_or(fallback_end)).max(x0 + 2.0);
            let y = 20.0 + ROW * 2.0 + 12.0;
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="12" fill="#7e57c2" opacity="0.85"><title>tool {}</title></rect><text x="{:.1}" y="{:.1}" fill="#4527a0" font-size="9">{}</text>"##,
                x1 - x0,
                escape(tool),
                x0 + 2.0,
                y - 1.0,
                escape(tool)
            );
        }
        if let Some(cut) = s.cancelled
            && s.playback.is_some()
        {
            let px = x(result, cut);
            let _ = write!(
                svg,
                r##"<line x1="{px:.1}" y1="20" x2="{px:.1}" y2="{:.1}" stroke="#c62828" stroke-dasharray="4 2"/><text x="{:.1}" y="{:.1}" fill="#c62828">cut</text>"##,
                20.0 + ROW * 5.0,
                px + 2.0,
                20.0 + ROW * 5.0 + 12.0
            );
        }
    }
    // Response latency brackets: EndOfTurn -> first agent frame.
    let mut ends: Vec<Instant> = Vec::new();
    for entry in result.log {
        if let LogKind::Flux {
            event: TurnEvent::EndOfTurn,
            ..
        } = &entry.kind
        {
            ends.push(entry.at);
        }
    }
    for (turn, end) in result.report.turns.iter().zip(ends) {
        if let Some(b) = &turn.breakdown {
            breakdown_bars(&mut svg, x(result, end), b);
        }
        if let Some(latency) = turn.response_latency_ms {
            let x0 = x(result, end);
            let x1 = x0 + latency / 1000.0 * PX_PER_SECOND;
            let y = 20.0 + ROW * 5.0 + 4.0;
            let _ = write!(
                svg,
                r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}" stroke="#6a1b9a"/><line x1="{x1:.1}" y1="{:.1}" x2="{x1:.1}" y2="{:.1}" stroke="#6a1b9a"/><text x="{x0:.1}" y="{:.1}" fill="#6a1b9a">{latency:.0} ms</text>"##,
                y - 4.0,
                y + 4.0,
                y + 14.0
            );
        }
    }
    let legend_y = 20.0 + ROW * 7.0 + 14.0;
    let mut legend_x = LEFT;
    let drawn = std::iter::once("endpointing").chain(Breakdown::PART_NAMES[1..].iter().copied());
    for (label, color) in drawn.zip(BREAKDOWN_COLORS) {
        let _ = write!(
            svg,
            r##"<rect x="{legend_x:.1}" y="{:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{legend_y:.1}" fill="#333">{label}</text>"##,
            legend_y - 9.0,
            legend_x + 13.0
        );
        legend_x += 14.0 + 6.5 * label.len() as f64 + 12.0;
    }
    svg.push_str("</svg>\n");
    svg
}

/// Colours of what a breakdown draws: endpointing, then every part after `EndOfTurn` but the
/// speculation (which is where the path starts, not a bar).
const BREAKDOWN_COLORS: [&str; Breakdown::PART_NAMES.len()] = [
    "#bdbdbd", "#1565c0", "#90caf9", "#8d6e63", "#2e7d32", "#ffca28", "#e53935",
];

/// One turn's breakdown: endpointing as a thin bar ending at `EndOfTurn` (x = `eot`), and
/// the reply's critical path stacked from its trigger (before `EndOfTurn` when speculative:
/// the overlap is what speculation saved) to the first frame.
fn breakdown_bars(svg: &mut String, eot: f64, b: &Breakdown) {
    let y = 20.0 + ROW * 6.0;
    let px = |ms: f64| ms / 1000.0 * PX_PER_SECOND;
    if let Some(wait) = b.endpointing_ms {
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="6" fill="{}"><title>endpointing {wait:.1} ms</title></rect>"##,
            eot - px(wait),
            y + 2.0,
            px(wait),
            BREAKDOWN_COLORS[0]
        );
    }
    let mut at = eot + px(b.speculation_ms);
    let parts = b.parts().into_iter().zip(Breakdown::PART_NAMES).skip(1);
    for ((ms, label), color) in parts.zip(&BREAKDOWN_COLORS[1..]) {
        let _ = write!(
            svg,
            r##"<rect x="{at:.1}" y="{:.1}" width="{:.2}" height="12" fill="{color}"><title>{label} {ms:.1} ms</title></rect>"##,
            y + 10.0,
            px(ms)
        );
        at += px(ms);
    }
}
