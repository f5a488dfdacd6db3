//! `turnflow replay`: recorded sessions run again offline, on the virtual clock, with other
//! thresholds and policies; one what-if side by side with the recorded settings, or a sweep of
//! one setting over many recordings.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use turnflow::engine::{BargeInPolicy, Presynthesis};
use turnflow::lab::{
    Derivation, ReplayOutcome, ReplaySettings, Sweep, Timeline, TurnTaking, import_eot_bench,
    pair_turns, replay, run_sweep, sweep_chart, sweep_table,
};
use turnflow::recording::Recording;
use turnflow::report::Report;

use crate::{Clock, OnOff, ThresholdArgs, parse_barge_in, parse_presynthesis};

#[derive(Parser)]
pub(crate) struct ReplayArgs {
    /// Recording directories (`run --record`, `simulate --record`), directories of them
    /// (`serve --record`), or eot-bench JSON-lines files (docs/recordings.md).
    #[arg(required = true, value_name = "RECORDING")]
    recordings: Vec<PathBuf>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    /// Start replies on EagerEndOfTurn (default: as recorded).
    #[arg(long, value_enum)]
    speculation: Option<OnOff>,
    /// Barge-in policy: `immediate` or `min-words=N` (default: as recorded).
    #[arg(long, value_parser = parse_barge_in)]
    barge_in: Option<BargeInPolicy>,
    /// `first-chunk`, `first-sentence` or `off` (default: as recorded).
    #[arg(long, value_parser = parse_presynthesis)]
    presynthesis: Option<Presynthesis>,
    /// Vary one setting: `eager=0.3..0.8:0.1`, `eot=0.5..0.9:0.1`, `timeout=1000..5000:1000`,
    /// `barge-in=immediate,min-words=2`, `presynthesis=off,first-chunk`, `speculation=on,off`.
    #[arg(long, value_parser = parse_sweep)]
    sweep: Option<Sweep>,
    /// An EndOfTurn followed by the user's next word within this many ms is premature.
    #[arg(long, default_value_t = 1000)]
    premature_window_ms: u64,
    /// Write here: for one recording, report.json, timeline.svg, conversation.wav and
    /// comparison.json of the what-if; for a sweep, sweep.json and sweep.svg.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_sweep(value: &str) -> Result<Sweep, String> {
    value
        .parse()
        .map_err(|e: turnflow::lab::LabError| e.to_string())
}

/// The recordings named: directories are read (a directory of recordings, as `serve --record`
/// writes, gives all of them), eot-bench files imported.
fn load(paths: &[PathBuf]) -> Result<Vec<Recording>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() && !path.join("recording.json").exists() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{}: cannot read the directory", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.join("recording.json").exists())
                .collect();
            if inner.is_empty() {
                bail!(
                    "{}: no recording.json in it or in the directories in it",
                    path.display()
                );
            }
            inner.sort();
            for dir in inner {
                out.push(Recording::load(&dir)?);
            }
        } else if path.is_dir() {
            out.push(Recording::load(path)?);
        } else {
            let imported = import_eot_bench(path)?;
            if imported.is_empty() {
                bail!("{}: no rows", path.display());
            }
            out.extend(imported);
        }
    }
    Ok(out)
}

impl ReplayArgs {
    /// A recording's own settings with the flags over them.
    fn what_if(&self, recorded: &ReplaySettings) -> ReplaySettings {
        let mut s = recorded.clone();
        s.thresholds = self.thresholds.over(s.thresholds);
        if let Some(on) = self.speculation {
            s.speculation = on == OnOff::On;
        }
        if let Some(p) = self.barge_in {
            s.barge_in = p;
        }
        if let Some(p) = self.presynthesis {
            s.presynthesis = p;
        }
        s.premature_window = self.premature_window_ms as f64 / 1000.0;
        s
    }
}

pub(crate) fn replay_command(args: ReplayArgs) -> Result<()> {
    let recordings = load(&args.recordings)?;
    let mut pairs = Vec::with_capacity(recordings.len());
    for recording in recordings {
        let recorded = ReplaySettings::recorded(&recording.meta.settings)
            .with_context(|| format!("{}", recording.dir.display()))?;
        pairs.push((recording, recorded));
    }
    let runtime = Clock::Virtual.runtime()?;
    if let Some(sweep) = &args.sweep {
        let bases: Vec<_> = pairs
            .into_iter()
            .map(|(r, recorded)| {
                let s = args.what_if(&recorded);
                (r, s)
            })
            .collect();
        let rows = runtime.block_on(run_sweep(&bases, sweep))?;
        println!(
            "sweep over {} recording(s), every other setting as recorded or given",
            bases.len()
        );
        print!("{}", sweep_table(sweep.knob, &rows));
        println!(
            "premature: an EndOfTurn followed by the user's next word within {} ms",
            args.premature_window_ms
        );
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(
                dir.join("sweep.json"),
                serde_json::to_string_pretty(&rows)? + "\n",
            )
            .with_context(|| format!("cannot write {}", dir.join("sweep.json").display()))?;
            std::fs::write(dir.join("sweep.svg"), sweep_chart(sweep.knob, &rows))
                .with_context(|| format!("cannot write {}", dir.join("sweep.svg").display()))?;
            println!("wrote {}", dir.display());
        }
        return Ok(());
    }
    if args.out.is_some() && pairs.len() != 1 {
        bail!(
            "--out writes one replay's files; give one recording (or --sweep for many), not {}",
            pairs.len()
        );
    }
    let mut originals = Vec::new();
    let mut what_ifs = Vec::new();
    let mut last = None;
    for (recording, recorded) in &pairs {
        let mut baseline_settings = recorded.clone();
        baseline_settings.premature_window = args.premature_window_ms as f64 / 1000.0;
        let what_if_settings = args.what_if(recorded);
        let (baseline, what_if) = runtime.block_on(async {
            let baseline = replay(recording, &baseline_settings).await?;
            let what_if = replay(recording, &what_if_settings).await?;
            anyhow::Ok((baseline, what_if))
        })?;
        report_fidelity(recording, &baseline.timeline, &baseline.derivation);
        report_stand_ins(recording, &what_if);
        originals.push((
            baseline.result.report.clone(),
            baseline.derivation.turn_taking,
        ));
        what_ifs.push((
            what_if.result.report.clone(),
            what_if.derivation.turn_taking,
        ));
        last = Some((baseline, what_if));
    }
    let (original, original_turns) = pool(originals);
    let (changed, changed_turns) = pool(what_ifs);
    crate::print_report(&changed);
    println!();
    let table = side_by_side(&original, &original_turns, &changed, &changed_turns);
    print!("{table}");
    if pairs.len() == 1 {
        println!();
        print!("{}", per_turn(&original, &changed));
    }
    if let (Some(dir), Some((baseline, what_if))) = (&args.out, last) {
        crate::write_outputs(dir, &what_if.result)?;
        let turns: Vec<_> = pair_turns(&baseline.result.report.turns, &what_if.result.report.turns)
            .into_iter()
            .map(|(recorded, changed)| {
                let side = |t: Option<&turnflow::report::TurnReport>| {
                    t.map(|t| {
                        serde_json::json!({
                            "index": t.index,
                            "speculation": t.speculation,
                            "response_latency_ms": t.response_latency_ms,
                            "voice_to_voice_ms": t.voice_to_voice_ms,
                            "interrupted": t.interrupted,
                        })
                    })
                };
                serde_json::json!({
                    "user": recorded.or(changed).map(|t| t.user_transcript.clone()),
                    "recorded": side(recorded),
                    "what_if": side(changed),
                })
            })
            .collect();
        let comparison = serde_json::json!({
            "original": {"summary": baseline.result.report.summary, "turn_taking": baseline.derivation.turn_taking},
            "what_if": {"summary": what_if.result.report.summary, "turn_taking": what_if.derivation.turn_taking},
            "turns": turns,
            "generated_replies": what_if.generated_replies,
            "generated_speech": what_if.generated_speech,
            "cut_short_replies": what_if.cut_short_replies,
        });
        std::fs::write(
            dir.join("comparison.json"),
            serde_json::to_string_pretty(&comparison)? + "\n",
        )
        .with_context(|| format!("cannot write {}", dir.join("comparison.json").display()))?;
        println!("wrote {}", dir.display());
    }
    Ok(())
}

fn pool(items: Vec<(Report, TurnTaking)>) -> (Report, TurnTaking) {
    let mut total = TurnTaking::default();
    for (_, t) in &items {
        total += *t;
    }
    (Report::pool(items.into_iter().map(|(r, _)| r)), total)
}

/// Whether the recorded thresholds re-derive the recorded events (the check that the curve
/// model fits this recording).
fn report_fidelity(recording: &Recording, timeline: &Timeline, baseline: &Derivation) {
    if timeline.unreadable_ticks > 0 {
        println!(
            "{}: {} TurnInfo message(s) in flux.jsonl could not be read and were skipped",
            recording.dir.display(),
            timeline.unreadable_ticks
        );
    }
    if timeline.repeated_ticks > 0 {
        println!(
            "{}: {} tick(s) repeated after a reconnect were dropped",
            recording.dir.display(),
            timeline.repeated_ticks
        );
    }
    let differences = baseline.differences(timeline);
    if differences.is_empty() {
        println!(
            "{}: {} Flux ticks; the recorded thresholds re-derive every recorded event",
            recording.dir.display(),
            timeline.ticks.len()
        );
    } else {
        println!(
            "{}: {} of {} ticks re-derive differently from the recording (Flux decided otherwise than its confidence and the thresholds say):",
            recording.dir.display(),
            differences.len(),
            timeline.ticks.len()
        );
        for (at, recorded, derived) in differences.iter().take(5) {
            println!(
                "  at {at:.2} s: recorded {}, derived {}",
                recorded.as_str(),
                derived.as_str()
            );
        }
    }
}

fn report_stand_ins(recording: &Recording, what_if: &ReplayOutcome) {
    let name = recording.dir.display();
    for user in &what_if.generated_replies {
        println!("{name}: never asked in the recording, answered by the scripted model: {user:?}");
    }
    for text in &what_if.generated_speech {
        println!(
            "{name}: never synthesized in the recording, spoken by the synthetic voice: {text:?}"
        );
    }
    for user in &what_if.cut_short_replies {
        println!(
            "{name}: the recorded reply to {user:?} was cancelled early; it ends where the recording did"
        );
    }
}

/// Each turn next to its partner, paired by what the user said: a turn the what-if split or
/// merged stands alone on its side.
fn per_turn(original: &Report, changed: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{:<40} {:>23}   {:>23}\n", "", "recorded", "what-if");
    let _ = writeln!(
        out,
        "{:<40} {:>5} {:>8} {:>8}   {:>5} {:>8} {:>8}",
        "user", "spec", "resp", "v2v", "spec", "resp", "v2v"
    );
    let side = |t: Option<&turnflow::report::TurnReport>| match t {
        Some(t) => format!(
            "{:>5} {:>8} {:>8}",
            t.speculation,
            crate::fmt_ms(t.response_latency_ms),
            crate::fmt_ms(t.voice_to_voice_ms)
        ),
        None => format!("{:>5} {:>8} {:>8}", "", "-", "-"),
    };
    for (recorded, changed) in pair_turns(&original.turns, &changed.turns) {
        let user: String = recorded
            .or(changed)
            .map(|t| t.user_transcript.chars().take(40).collect())
            .unwrap_or_default();
        let _ = writeln!(out, "{user:<40} {}   {}", side(recorded), side(changed));
    }
    out
}

fn side_by_side(
    original: &Report,
    original_turns: &TurnTaking,
    changed: &Report,
    changed_turns: &TurnTaking,
) -> String {
    use std::fmt::Write as _;
    let (a, b) = (&original.summary, &changed.summary);
    let mut out = format!(
        "{:<28} {:>12} {:>12} {:>10}\n",
        "", "recorded", "what-if", "change"
    );
    let count = |n: u64| n as f64;
    let rows: [(&str, f64, f64, usize); 10] = [
        (
            "answered turns",
            count(a.response_latency_ms.count as u64),
            count(b.response_latency_ms.count as u64),
            0,
        ),
        (
            "response p50 (ms)",
            a.response_latency_ms.p50,
            b.response_latency_ms.p50,
            1,
        ),
        (
            "response p90 (ms)",
            a.response_latency_ms.p90,
            b.response_latency_ms.p90,
            1,
        ),
        (
            "voice-to-voice p50 (ms)",
            a.voice_to_voice_ms.p50,
            b.voice_to_voice_ms.p50,
            1,
        ),
        (
            "speculation hits",
            count(a.speculation.hits),
            count(b.speculation.hits),
            0,
        ),
        (
            "speculation misses",
            count(a.speculation.misses),
            count(b.speculation.misses),
            0,
        ),
        (
            "wasted LLM tokens",
            count(a.speculation.wasted_llm_tokens),
            count(b.speculation.wasted_llm_tokens),
            0,
        ),
        (
            "end of turns",
            count(original_turns.ends as u64),
            count(changed_turns.ends as u64),
            0,
        ),
        (
            "ended by timeout",
            count(original_turns.timeouts as u64),
            count(changed_turns.timeouts as u64),
            0,
        ),
        (
            "premature ends",
            count(original_turns.premature_ends as u64),
            count(changed_turns.premature_ends as u64),
            0,
        ),
    ];
    for (name, x, y, digits) in rows {
        let _ = writeln!(
            out,
            "{name:<28} {x:>12.digits$} {y:>12.digits$} {:>+10.digits$}",
            y - x
        );
    }
    out
}
