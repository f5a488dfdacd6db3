//! One setting over a range of values, replayed over many recordings (`turnflow replay
//! --sweep`): per value, response latency, speculation hit rate and waste, turns ended by the
//! timeout and premature ends, as rows and as an SVG chart.

use std::fmt::Write as _;
use std::str::FromStr;

use serde::Serialize;

use super::LabError;
use super::derive::TurnTaking;
use super::replay::{ReplaySettings, replay};
use crate::recording::Recording;
use crate::report::Report;

/// A setting a sweep can vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Knob {
    /// `eager`: Flux's `eager_eot_threshold` (a number, or `off`).
    Eager,
    /// `eot`: Flux's `eot_threshold`.
    Eot,
    /// `timeout`: Flux's `eot_timeout_ms`.
    Timeout,
    /// `barge-in`: `immediate` or `min-words=N`.
    BargeIn,
    /// `presynthesis`: `first-chunk`, `first-sentence` or `off`.
    Presynthesis,
    /// `speculation`: `on` or `off`.
    Speculation,
}

const KNOBS: [(&str, Knob); 6] = [
    ("eager", Knob::Eager),
    ("eot", Knob::Eot),
    ("timeout", Knob::Timeout),
    ("barge-in", Knob::BargeIn),
    ("presynthesis", Knob::Presynthesis),
    ("speculation", Knob::Speculation),
];

impl Knob {
    /// Its name in a sweep spec.
    pub fn name(self) -> &'static str {
        KNOBS
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("unknown", |(n, _)| n)
    }
}

/// A parsed sweep: `NAME=START..END:STEP` (numbers) or `NAME=V1,V2,...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// What varies.
    pub knob: Knob,
    /// The values, as spelled.
    pub values: Vec<String>,
}

fn setting_error(message: String) -> LabError {
    LabError::Setting(message)
}

impl FromStr for Sweep {
    type Err = LabError;

    fn from_str(spec: &str) -> Result<Self, LabError> {
        let names = "eager, eot, timeout, barge-in, presynthesis or speculation";
        let (name, values) = spec.split_once('=').ok_or_else(|| {
            setting_error(format!(
                "--sweep {spec:?}: expected NAME=START..END:STEP or NAME=V1,V2 with NAME one of {names}"
            ))
        })?;
        let knob = KNOBS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                setting_error(format!(
                    "--sweep {spec:?}: unknown setting {name:?}; expected {names}"
                ))
            })?;
        let values = match values.split_once("..") {
            Some((start, rest)) => range(spec, start, rest)?,
            None => values.split(',').map(str::to_owned).collect(),
        };
        let sweep = Sweep { knob, values };
        let mut probe = ReplaySettings::default();
        for value in &sweep.values {
            sweep.apply(value, &mut probe)?;
        }
        Ok(sweep)
    }
}

/// `START..END:STEP` as numbers spelled with the step's decimals.
fn range(spec: &str, start: &str, rest: &str) -> Result<Vec<String>, LabError> {
    let bad = || {
        setting_error(format!(
            "--sweep {spec:?}: a range is START..END:STEP with START <= END, STEP > 0 and at most 100 values"
        ))
    };
    let (end, step) = rest.split_once(':').ok_or_else(bad)?;
    let parse = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    let (start_v, end_v, step_v) = (
        parse(start).ok_or_else(bad)?,
        parse(end).ok_or_else(bad)?,
        parse(step).ok_or_else(bad)?,
    );
    if step_v <= 0.0 || end_v < start_v {
        return Err(bad());
    }
    let count = ((end_v - start_v) / step_v + 1e-9).floor() as usize + 1;
    if count > 100 {
        return Err(bad());
    }
    let decimals = step.trim().split_once('.').map_or(0, |(_, d)| d.len());
    Ok((0..count)
        .map(|i| format!("{:.*}", decimals, start_v + step_v * i as f64))
        .collect())
}

impl Sweep {
    /// Sets this sweep's setting to `value` in `settings`.
    ///
    /// # Errors
    /// [`LabError::Setting`] naming the value and what the setting allows.
    pub fn apply(&self, value: &str, settings: &mut ReplaySettings) -> Result<(), LabError> {
        let wrong = |allowed: &str| {
            setting_error(format!(
                "--sweep {}: {value:?} is not allowed; expected {allowed}",
                self.knob.name()
            ))
        };
        let number = |lo: f64, hi: f64| value.parse::<f64>().ok().filter(|v| (lo..=hi).contains(v));
        match self.knob {
            Knob::Eager => {
                settings.thresholds.eager_eot_threshold = if value == "off" {
                    None
                } else {
                    Some(number(0.3, 0.9).ok_or_else(|| wrong("off or 0.3 to 0.9"))?)
                };
            }
            Knob::Eot => {
                settings.thresholds.eot_threshold =
                    Some(number(0.5, 1.0).ok_or_else(|| wrong("0.5 to 1.0"))?);
            }
            Knob::Timeout => {
                settings.thresholds.eot_timeout_ms =
                    Some(number(500.0, 60000.0).ok_or_else(|| wrong("500 to 60000 (ms)"))? as u64);
            }
            Knob::BargeIn => {
                settings.barge_in = value
                    .parse()
                    .map_err(|e| setting_error(format!("--sweep barge-in: {e}")))?;
            }
            Knob::Presynthesis => {
                settings.presynthesis = value
                    .parse()
                    .map_err(|e| setting_error(format!("--sweep presynthesis: {e}")))?;
            }
            Knob::Speculation => {
                settings.speculation = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(wrong("on or off")),
                };
            }
        }
        Ok(())
    }
}

/// One value of a sweep, over every recording.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepRow {
    /// The value, as spelled.
    pub value: String,
    /// Answered user turns (with a response latency).
    pub turns: usize,
    /// Response latency p50 (ms).
    pub response_p50_ms: f64,
    /// Response latency p90 (ms).
    pub response_p90_ms: f64,
    /// Voice-to-voice latency p50 (ms): from the end of the user's last word, so the wait for
    /// the end of turn counts (response latency starts at `EndOfTurn`).
    pub voice_to_voice_p50_ms: f64,
    /// Voice-to-voice latency p90 (ms).
    pub voice_to_voice_p90_ms: f64,
    /// Speculative replies started.
    pub speculation_attempts: u64,
    /// Of them, promoted.
    pub speculation_hits: u64,
    /// LLM tokens of withdrawn speculation.
    pub wasted_llm_tokens: u64,
    /// Replies the user cut off (barge-ins that stopped the agent).
    pub cut_replies: usize,
    /// Barge-in stop time p50 (ms): from the user's `StartOfTurn` to the agent's last frame.
    pub barge_in_stop_p50_ms: f64,
    /// How the user's turns were taken (ends, timeouts, premature ends).
    pub turn_taking: TurnTaking,
    /// Requests the recordings never made, answered by the scripted model.
    pub generated_replies: usize,
}

impl SweepRow {
    /// Hits per attempt, 0 to 1 (0 without attempts).
    pub fn hit_rate(&self) -> f64 {
        if self.speculation_attempts == 0 {
            0.0
        } else {
            self.speculation_hits as f64 / self.speculation_attempts as f64
        }
    }
}

/// Replays every recording at every value of `sweep`, each over its own `base` settings.
///
/// # Errors
/// The first [`LabError`] of a setting or a replay.
pub async fn run_sweep(
    recordings: &[(Recording, ReplaySettings)],
    sweep: &Sweep,
) -> Result<Vec<SweepRow>, LabError> {
    for value in &sweep.values {
        for (recording, base) in recordings {
            let mut settings = base.clone();
            sweep.apply(value, &mut settings)?;
            crate::flux::ListenOptions::default()
                .with_thresholds(settings.thresholds)
                .validate()
                .map_err(|e| {
                    setting_error(format!(
                        "--sweep {}={value} with {}: {e}",
                        sweep.knob.name(),
                        recording.dir.display()
                    ))
                })?;
        }
    }
    let mut rows = Vec::with_capacity(sweep.values.len());
    for value in &sweep.values {
        let mut reports = Vec::new();
        let mut row = SweepRow {
            value: value.clone(),
            ..SweepRow::default()
        };
        for (recording, base) in recordings {
            let mut settings = base.clone();
            sweep.apply(value, &mut settings)?;
            let outcome = replay(recording, &settings).await?;
            row.turn_taking += outcome.derivation.turn_taking;
            row.generated_replies += outcome.generated_replies.len();
            reports.push(outcome.result.report);
        }
        let pooled = Report::pool(reports);
        let s = &pooled.summary;
        row.turns = s.response_latency_ms.count;
        row.response_p50_ms = s.response_latency_ms.p50;
        row.response_p90_ms = s.response_latency_ms.p90;
        row.voice_to_voice_p50_ms = s.voice_to_voice_ms.p50;
        row.voice_to_voice_p90_ms = s.voice_to_voice_ms.p90;
        row.speculation_attempts = s.speculation.attempts;
        row.speculation_hits = s.speculation.hits;
        row.wasted_llm_tokens = s.speculation.wasted_llm_tokens;
        row.cut_replies = pooled.turns.iter().filter(|t| t.interrupted).count();
        row.barge_in_stop_p50_ms = s.barge_in_stop_ms.p50;
        rows.push(row);
    }
    Ok(rows)
}

/// The rows as a fixed-width table.
pub fn sweep_table(knob: Knob, rows: &[SweepRow]) -> String {
    let mut out = format!(
        "{:>14} {:>6} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>9} {:>10} {:>5} {:>9}\n",
        knob.name(),
        "turns",
        "resp p50",
        "resp p90",
        "v2v p50",
        "v2v p90",
        "spec hit",
        "wasted",
        "timeouts",
        "premature",
        "cut",
        "generated"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>14} {:>6} {:>9.0} {:>9.0} {:>8.0} {:>8.0} {:>5}/{:<3} {:>7} {:>9} {:>10} {:>5} {:>9}",
            r.value,
            r.turns,
            r.response_p50_ms,
            r.response_p90_ms,
            r.voice_to_voice_p50_ms,
            r.voice_to_voice_p90_ms,
            r.speculation_hits,
            r.speculation_attempts,
            r.wasted_llm_tokens,
            r.turn_taking.timeouts,
            r.turn_taking.premature_ends,
            r.cut_replies,
            r.generated_replies
        );
    }
    out
}

/// An SVG chart: response and voice-to-voice latency p50 as lines (left axis), premature ends
/// and timeouts as bars and the speculation hit rate as a dashed line (right axis, 0-100 % of
/// ends or attempts), one column per value.
pub fn sweep_chart(knob: Knob, rows: &[SweepRow]) -> String {
    let (width, height) = (720.0, 360.0);
    let (left, right, top, bottom) = (60.0, 60.0, 40.0, 70.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max_ms = rows
        .iter()
        .map(|r| r.response_p50_ms.max(r.voice_to_voice_p50_ms))
        .fold(100.0_f64, f64::max);
    let max_ms = (max_ms / 100.0).ceil() * 100.0;
    let n = rows.len().max(1) as f64;
    let x = |i: usize| left + plot_w * (i as f64 + 0.5) / n;
    let y_ms = |v: f64| top + plot_h * (1.0 - v / max_ms);
    let y_pct = |v: f64| top + plot_h * (1.0 - v);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="20" font-size="14">replay sweep over {}</text>
"##,
        knob.name()
    );
    for k in 0..=4 {
        let v = max_ms * f64::from(k) / 4.0;
        let y = y_ms(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0} ms</text><text x="{}" y="{:.1}">{}%</text>"##,
            width - right,
            left - 6.0,
            y + 4.0,
            width - right + 6.0,
            y + 4.0,
            k * 25,
        );
    }
    let bar = (plot_w / n / 5.0).min(18.0);
    for (i, r) in rows.iter().enumerate() {
        let ends = r.turn_taking.ends.max(1) as f64;
        for (offset, count, color) in [
            (-bar, r.turn_taking.premature_ends, "#d62728"),
            (0.0, r.turn_taking.timeouts, "#ff7f0e"),
        ] {
            let share = count as f64 / ends;
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{bar:.1}" height="{:.1}" fill="{color}" opacity="0.7"/>"##,
                x(i) + offset,
                y_pct(share),
                plot_h * share
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x(i),
            height - bottom + 18.0,
            r.value
        );
    }
    let line = |values: Vec<(usize, f64)>, color: &str, dash: &str| {
        let points: Vec<String> = values
            .iter()
            .map(|(i, y)| format!("{:.1},{y:.1}", x(*i)))
            .collect();
        format!(
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"##,
            points.join(" ")
        )
    };
    let p50: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (i, y_ms(r.response_p50_ms)))
        .collect();
    let v2v: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (i, y_ms(r.voice_to_voice_p50_ms)))
        .collect();
    let hits: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (i, y_pct(r.hit_rate())))
        .collect();
    svg += &line(p50, "#1f77b4", "");
    svg += &line(v2v, "#9467bd", "");
    svg += &line(hits, "#2ca02c", r#" stroke-dasharray="5 4""#);
    let legend = [
        ("#1f77b4", "response p50"),
        ("#9467bd", "voice-to-voice p50"),
        ("#2ca02c", "speculation hits %"),
        ("#d62728", "premature ends %"),
        ("#ff7f0e", "timeouts %"),
    ];
    for (k, (color, label)) in legend.iter().enumerate() {
        let lx = left + 130.0 * k as f64;
        let ly = height - 22.0;
        let _ = write!(
            svg,
            r##"<rect x="{lx}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{ly}" font-size="10">{label}</text>"##,
            ly - 9.0,
            lx + 14.0
        );
    }
    svg + "\n</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_values_and_bad_ones_say_what_is_allowed() {
        let eager: Sweep = "eager=0.3..0.8:0.1".parse().unwrap();
        assert_eq!(eager.knob, Knob::Eager);
        assert_eq!(eager.values, ["0.3", "0.4", "0.5", "0.6", "0.7", "0.8"]);
        let timeout: Sweep = "timeout=1000..3000:1000".parse().unwrap();
        assert_eq!(timeout.values, ["1000", "2000", "3000"]);
        let barge: Sweep = "barge-in=immediate,min-words=2".parse().unwrap();
        assert_eq!(barge.values, ["immediate", "min-words=2"]);
        let mut settings = ReplaySettings::default();
        eager.apply("0.4", &mut settings).unwrap();
        assert_eq!(settings.thresholds.eager_eot_threshold, Some(0.4));
        for (spec, expected) in [
            ("colour=1..2:1", "unknown setting \"colour\""),
            ("eager", "expected NAME=START..END:STEP"),
            ("eager=0.8..0.3:0.1", "START <= END"),
            (
                "eager=0.1..0.5:0.1",
                "\"0.1\" is not allowed; expected off or 0.3 to 0.9",
            ),
            ("eot=0.5..0.9:0", "STEP > 0"),
            (
                "barge-in=sometimes",
                "expected `immediate` or `min-words=N`",
            ),
            ("speculation=maybe", "expected on or off"),
        ] {
            let error = spec.parse::<Sweep>().unwrap_err().to_string();
            assert!(error.contains(expected), "{spec}: {error}");
        }
    }

    #[test]
    fn the_chart_has_a_column_per_value_and_its_legend() {
        let rows: Vec<SweepRow> = ["0.4", "0.5"]
            .iter()
            .map(|v| SweepRow {
                value: (*v).into(),
                response_p50_ms: 300.0,
                response_p90_ms: 450.0,
                ..SweepRow::default()
            })
            .collect();
        let svg = sweep_chart(Knob::Eager, &rows);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">0.4</text>") && svg.contains(">0.5</text>"));
        assert!(svg.contains("premature ends"));
        assert_eq!(svg.matches("<polyline").count(), 3);
    }
}
