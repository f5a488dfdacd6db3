//! `turnflow bench`: scenarios run many times, optionally as concurrent sessions, under one or
//! more configurations, with pooled latency distributions, speculation accounting, CPU and RSS.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;
use turnflow::engine::Presynthesis;
use turnflow::report::{Breakdown, Report, Stats, Summary, TurnReport};
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulatedVoice, SimulationConfig, Transport};

use crate::{Clock, parse_barge_in};

#[derive(Parser)]
pub(crate) struct BenchArgs {
    /// Scenario files; the built-in demo when none is given.
    scenarios: Vec<PathBuf>,
    /// Runs of each scenario per configuration.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Concurrent sessions per run (each plays the scenario in real time).
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// Start the sessions at random moments over this window (`10s`, `500ms`), as callers
    /// arrive; `0` starts them all at once (lock step, the worst case for bursts). Default:
    /// 10s with more than one session.
    #[arg(long, value_parser = crate::parse_duration)]
    stagger: Option<Duration>,
    /// Seed of the start offsets, so a staggered run can be repeated exactly.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Compare configurations, e.g. `speculation=on,off`, `barge-in=immediate,min-words=2`,
    /// `eager=0.4,0.6`, `presynthesis=off,first-sentence,first-chunk`, `tts=synthetic,flux`
    /// (Flux TTS on the emulator's `/v2/speak`), `tools-on-guess=on,off` (read-only tools
    /// while a reply is a guess, or held until EndOfTurn as the peers do).
    #[arg(long)]
    compare: Option<String>,
    /// `real` measures engine overhead in wall time; `virtual` is exact and instant but
    /// reports zero overhead.
    #[arg(long, value_enum, default_value = "real")]
    clock: Clock,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a chart of the latency distributions as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write every turn's metrics as JSON lines (configuration, run, session, then the turn).
    #[arg(long)]
    turns_json: Option<PathBuf>,
}

/// Start offsets of `sessions` sessions spread at random over `window`, reproducible from
/// `seed` (SplitMix64; no dependency for a benchmark's dice).
fn start_offsets(sessions: usize, window: Duration, seed: u64) -> Vec<Duration> {
    let mut state = seed;
    (0..sessions)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            window.mul_f64((z >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Variant {
    label: String,
    apply: fn(&mut SimulationConfig, &str),
    value: String,
}

fn variants(compare: Option<&str>) -> Result<Vec<Variant>> {
    let Some(spec) = compare else {
        return Ok(vec![Variant {
            label: "default".into(),
            apply: |_, _| {},
            value: String::new(),
        }]);
    };
    let (key, values) = spec
        .split_once('=')
        .with_context(|| format!("--compare {spec:?}: expected KEY=V1,V2"))?;
    let apply: fn(&mut SimulationConfig, &str) = match key {
        "speculation" => |c, v| c.session.machine.speculation = v == "on",
        "presynthesis" => |c, v| {
            c.session.response.presynthesis = crate::parse_presynthesis(v).expect("validated")
        },
        "barge-in" => |c, v| c.session.machine.barge_in = parse_barge_in(v).expect("validated"),
        "eager" => |c, v| c.thresholds.eager_eot_threshold = v.parse().ok(),
        "tools-on-guess" => |c, v| c.session.response.tools_on_guess = v == "on",
        "tts" => |c, v| {
            c.voice = if v == "flux" {
                SimulatedVoice::FluxTts
            } else {
                SimulatedVoice::Synthetic
            }
        },
        other => bail!(
            "--compare {other:?}: supported keys are speculation, presynthesis, barge-in, eager, tts, tools-on-guess"
        ),
    };
    let mut out = Vec::new();
    for value in values.split(',') {
        let valid = match key {
            "speculation" | "tools-on-guess" => matches!(value, "on" | "off"),
            "presynthesis" => crate::parse_presynthesis(value).is_ok(),
            "barge-in" => parse_barge_in(value).is_ok(),
            "tts" => matches!(value, "synthetic" | "flux"),
            _ => value.parse::<f64>().is_ok_and(|v| (0.3..=0.9).contains(&v)),
        };
        if !valid {
            bail!("--compare {key}={value:?}: not an allowed value for {key}");
        }
        out.push(Variant {
            label: format!("{key}={value}"),
            apply,
            value: value.to_owned(),
        });
    }
    Ok(out)
}

#[derive(Serialize)]
struct VariantResult {
    config: String,
    sessions: usize,
    repeats: usize,
    wall_seconds: f64,
    cpu_percent: f64,
    cpu_ms_per_session: f64,
    peak_rss_kib: u64,
    rss_kib_per_session: f64,
    hit_rate: f64,
    summary: Summary,
    /// Earliest possible first audio after `EndOfTurn` per turn, from the scripted latencies.
    first_audio_limit_ms: Stats,
    /// Response latency minus that limit: the peer's definition of engine overhead, which
    /// also catches a fake provider that is late against its own script.
    above_limit_ms: Stats,
}

/// The earliest a turn's first audio can follow `EndOfTurn` with the scenario's scripted
/// providers: the first piece's audio is due TTFT + (c - 1) x token interval + TTFB after
/// the request, and a promoted speculation sent its request `lead` before `EndOfTurn`.
/// Without presynthesis the voice cannot start before promotion, so never sooner than TTFB.
fn first_audio_limit_ms(
    scenario: &Scenario,
    presynthesis: Presynthesis,
    turn: &TurnReport,
) -> Option<f64> {
    let tokens = turn.first_piece_tokens.filter(|c| *c > 0)?;
    let ttfb = scenario.tts.ttfb_ms as f64;
    let text_due = scenario.llm.ttft_ms as f64
        + (tokens - 1) as f64 * scenario.llm.token_interval_ms as f64
        - turn.lead_ms.unwrap_or(0.0);
    Some(if presynthesis == Presynthesis::Off {
        text_due.max(0.0) + ttfb
    } else {
        (text_due + ttfb).max(0.0)
    })
}

/// CPU time of this process so far, in milliseconds.
fn cpu_ms() -> f64 {
    cpu_ms_from_stat(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// utime + stime of a `/proc/PID/stat` line, in milliseconds (100 ticks per second).
fn cpu_ms_from_stat(stat: &str) -> f64 {
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command name: utime is the 12th, stime the 13th (0-based 11, 12).
    (ticks(11) + ticks(12)) * 10.0
}

/// A /proc/self/status value in KiB (VmRSS, VmHWM).
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| {
            v.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub(crate) fn bench(args: BenchArgs) -> Result<()> {
    if args.sessions == 0 || args.repeat == 0 {
        bail!("--sessions and --repeat must be at least 1");
    }
    let scenarios: Vec<Arc<Scenario>> = if args.scenarios.is_empty() {
        vec![Arc::new(Scenario::demo())]
    } else {
        args.scenarios
            .iter()
            .map(|p| Scenario::load(p).map(Arc::new))
            .collect::<Result<_, _>>()?
    };
    let variants = variants(args.compare.as_deref())?;
    let stagger = args.stagger.unwrap_or(if args.sessions > 1 {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    });
    let mut turns_out = match &args.turns_json {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("--turns-json {}: cannot create", path.display()))?,
        )),
        None => None,
    };
    let runtime = args.clock.runtime()?;
    let baseline_rss = status_kib("VmRSS");
    let mut results = Vec::new();
    for variant in &variants {
        let wall = WallInstant::now();
        let cpu = cpu_ms();
        let mut reports = Vec::new();
        let (mut limits, mut above) = (Vec::new(), Vec::new());
        let presynthesis = {
            let mut probe = SimulationConfig::new(scenarios[0].clone());
            (variant.apply)(&mut probe, &variant.value);
            probe.session.response.presynthesis
        };
        for repeat in 0..args.repeat {
            for scenario in &scenarios {
                eprintln!(
                    "[{}] run {}/{} of {:?}: {} sessions{}",
                    variant.label,
                    repeat + 1,
                    args.repeat,
                    scenario.name,
                    args.sessions,
                    if stagger.is_zero() {
                        " in lock step".to_owned()
                    } else {
                        format!(" starting over {stagger:?}")
                    }
                );
                let offsets = start_offsets(args.sessions, stagger, args.seed ^ repeat as u64);
                let runs = runtime.block_on(async {
                    let mut tasks = Vec::new();
                    for offset in &offsets {
                        let mut config = SimulationConfig::new(scenario.clone());
                        config.transport = Transport::Memory;
                        config.record_audio = false;
                        (variant.apply)(&mut config, &variant.value);
                        let offset = *offset;
                        tasks.push(tokio::spawn(async move {
                            tokio::time::sleep(offset).await;
                            turnflow::sim::run(config).await
                        }));
                    }
                    let mut out = Vec::new();
                    for t in tasks {
                        out.push(t.await);
                    }
                    out
                });
                for (session, run) in runs.into_iter().enumerate() {
                    let report = run.context("session task panicked")??.report;
                    for turn in &report.turns {
                        let limit = first_audio_limit_ms(scenario, presynthesis, turn);
                        let excess = limit
                            .zip(turn.response_latency_ms)
                            .map(|(limit, latency)| latency - limit);
                        limits.extend(limit);
                        above.extend(excess);
                        if let Some(out) = &mut turns_out {
                            let row = serde_json::json!({
                                "config": variant.label,
                                "scenario": scenario.name,
                                "repeat": repeat,
                                "session": session,
                                "turn": turn,
                                "first_audio_limit_ms": limit,
                                "above_limit_ms": excess,
                            });
                            serde_json::to_writer(&mut *out, &row)?;
                            out.write_all(b"\n")?;
                        }
                    }
                    reports.push(report);
                }
            }
        }
        let wall_seconds = wall.elapsed().as_secs_f64();
        let cpu_used = cpu_ms() - cpu;
        let sessions = args.sessions * args.repeat * scenarios.len();
        let report = Report::pool(reports);
        let spec = report.summary.speculation;
        let peak = status_kib("VmHWM");
        results.push(VariantResult {
            config: variant.label.clone(),
            sessions: args.sessions,
            repeats: args.repeat,
            wall_seconds,
            cpu_percent: cpu_used / (wall_seconds * 10.0),
            cpu_ms_per_session: cpu_used / sessions as f64,
            peak_rss_kib: peak,
            rss_kib_per_session: peak.saturating_sub(baseline_rss) as f64 / args.sessions as f64,
            hit_rate: if spec.hits + spec.misses > 0 {
                spec.hits as f64 / (spec.hits + spec.misses) as f64
            } else {
                0.0
            },
            summary: report.summary,
            first_audio_limit_ms: Stats::of(limits),
            above_limit_ms: Stats::of(above),
        });
    }
    if let Some(mut out) = turns_out {
        out.flush()?;
    }
    print_table(&results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, chart(&results))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn print_table(results: &[VariantResult]) {
    println!(
        "{:<24} {:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5}",
        "config", "metric", "p50", "p90", "p95", "p99", "max", "n"
    );
    for r in results {
        let s = &r.summary;
        for (name, st) in [
            ("response_latency_ms", &s.response_latency_ms),
            ("voice_to_voice_ms", &s.voice_to_voice_ms),
            ("engine_overhead_ms", &s.engine_overhead_ms),
            ("tool_engine_ms", &s.tool_engine_ms),
            ("barge_in_stop_ms", &s.barge_in_stop_ms),
            ("lead_ms", &s.lead_ms),
            ("first_audio_limit_ms", &r.first_audio_limit_ms),
            ("above_limit_ms", &r.above_limit_ms),
        ] {
            println!(
                "{:<24} {:<20} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>5}",
                r.config, name, st.p50, st.p90, st.p95, st.p99, st.max, st.count
            );
        }
        if let Some(b) = &s.breakdown_mean_ms {
            let parts: Vec<String> = Breakdown::PART_NAMES
                .iter()
                .zip(b.parts())
                .map(|(name, ms)| format!("{name} {ms:.2}"))
                .collect();
            println!(
                "{:<24} mean breakdown (ms, adds up to the mean response latency {:.2}): {}; endpointing before it {}",
                r.config,
                b.response_latency_ms(),
                parts.join(", "),
                crate::fmt_ms(b.endpointing_ms)
            );
        }
        let spec = s.speculation;
        println!(
            "{:<24} speculation: hit rate {:.0}% ({} hits, {} misses, {} attempts), {} wasted LLM tokens, {} wasted TTS chars",
            r.config,
            r.hit_rate * 100.0,
            spec.hits,
            spec.misses,
            spec.attempts,
            spec.wasted_llm_tokens,
            spec.wasted_tts_chars
        );
        println!(
            "{:<24} {} sessions x {} repeats in {:.1} s: CPU {:.1}% ({:.1} ms per session), peak RSS {} KiB (~{:.0} KiB per session)",
            r.config,
            r.sessions,
            r.repeats,
            r.wall_seconds,
            r.cpu_percent,
            r.cpu_ms_per_session,
            r.peak_rss_kib,
            r.rss_kib_per_session
        );
    }
}

/// Box plots (p50 box to p90, whisker to max) of response latency and voice-to-voice per
/// configuration.
fn chart(results: &[VariantResult]) -> String {
    type Pick = fn(&Summary) -> &Stats;
    let metrics: [(&str, Pick); 2] = [
        ("response_latency_ms", |s| &s.response_latency_ms),
        ("voice_to_voice_ms", |s| &s.voice_to_voice_ms),
    ];
    let max = results
        .iter()
        .flat_map(|r| metrics.iter().map(|(_, f)| f(&r.summary).max))
        .fold(1.0_f64, f64::max);
    let scale = 700.0 / max;
    let row = 26.0;
    let height = 40.0 + row * (results.len() * metrics.len()) as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="{height:.0}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#
    );
    let mut y = 30.0;
    for r in results {
        for (name, f) in &metrics {
            let st = f(&r.summary);
            let x = |v: f64| 260.0 + v * scale;
            let _ = write!(
                svg,
                r##"<text x="8" y="{:.1}">{} {}</text><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#555"/><rect x="{:.1}" y="{:.1}" width="{:.1}" height="14" fill="#90caf9" stroke="#1565c0"/><text x="{:.1}" y="{:.1}" fill="#333">p50 {:.0} / p99 {:.0} ms</text>"##,
                y + 11.0,
                r.config,
                name,
                x(st.p50),
                y + 7.0,
                x(st.max),
                y + 7.0,
                x(st.p50),
                y,
                (x(st.p90) - x(st.p50)).max(1.0),
                x(st.max) + 6.0,
                y + 11.0,
                st.p50,
                st.p99
            );
            y += row;
        }
    }
    let _ = write!(
        svg,
        r##"<text x="260" y="{:.1}" fill="#777">0 ms</text><text x="940" y="{:.1}" fill="#777">{max:.0} ms</text></svg>"##,
        y + 4.0,
        y + 4.0
    );
    svg.push('\n');
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_duration;
    use turnflow::engine::BargeInPolicy;

    #[test]
    fn durations_and_start_offsets() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("500ms, 10s, 2m or 0")
        );
        assert!(parse_duration("-1s").is_err());
        let window = Duration::from_secs(10);
        let offsets = start_offsets(1000, window, 7);
        assert_eq!(offsets, start_offsets(1000, window, 7), "reproducible");
        assert_ne!(offsets, start_offsets(1000, window, 8));
        assert!(offsets.iter().all(|o| *o < window));
        // Spread over the window: every tenth of it gets a share near a tenth.
        for tenth in 0..10 {
            let n = offsets
                .iter()
                .filter(|o| o.as_secs_f64() as u32 == tenth)
                .count();
            assert!((60..=140).contains(&n), "second {tenth}: {n}");
        }
        assert!(
            start_offsets(5, Duration::ZERO, 1)
                .iter()
                .all(Duration::is_zero)
        );
    }

    #[test]
    fn compare_specs_are_validated() {
        assert_eq!(variants(None).unwrap().len(), 1);
        let v = variants(Some("speculation=on,off")).unwrap();
        assert_eq!(
            v.iter().map(|v| v.label.as_str()).collect::<Vec<_>>(),
            ["speculation=on", "speculation=off"]
        );
        assert!(
            variants(Some("speculation=maybe"))
                .unwrap_err()
                .to_string()
                .contains("maybe")
        );
        assert!(variants(Some("eager=0.95")).is_err());
        assert!(
            variants(Some("colour=red"))
                .unwrap_err()
                .to_string()
                .contains("supported keys")
        );
        assert!(variants(Some("speculation")).is_err());
        let mut c = SimulationConfig::new(Arc::new(Scenario::demo()));
        let v = variants(Some("barge-in=min-words=2")).unwrap();
        (v[0].apply)(&mut c, &v[0].value);
        assert_eq!(c.session.machine.barge_in, BargeInPolicy::MinWords(2));
        let v = variants(Some("tts=synthetic,flux")).unwrap();
        (v[1].apply)(&mut c, &v[1].value);
        assert_eq!(c.voice, SimulatedVoice::FluxTts);
        assert!(variants(Some("tts=aura")).is_err());
    }

    #[test]
    fn the_first_audio_limit_follows_the_scripted_latencies() {
        let scenario = Scenario::load("scenarios/quick_replies.json".as_ref()).unwrap();
        let turn = |tokens, lead| TurnReport {
            first_piece_tokens: Some(tokens),
            lead_ms: lead,
            ..TurnReport::default()
        };
        let limit = |p, t: &TurnReport| first_audio_limit_ms(&scenario, p, t).unwrap();
        // 200 ms to the first token, 20 ms a token, 100 ms of TTS.
        assert_eq!(limit(Presynthesis::FirstChunk, &turn(1, Some(240.0))), 60.0);
        assert_eq!(
            limit(Presynthesis::FirstChunk, &turn(3, Some(240.0))),
            100.0
        );
        assert_eq!(limit(Presynthesis::FirstChunk, &turn(1, Some(500.0))), 0.0);
        assert_eq!(limit(Presynthesis::FirstChunk, &turn(2, None)), 320.0);
        // The voice starts at promotion: never sooner than its 100 ms.
        assert_eq!(limit(Presynthesis::Off, &turn(1, Some(240.0))), 100.0);
        assert_eq!(limit(Presynthesis::Off, &turn(11, Some(240.0))), 260.0);
        let line = TurnReport {
            first_piece_tokens: Some(0),
            ..TurnReport::default()
        };
        assert_eq!(
            first_audio_limit_ms(&scenario, Presynthesis::Off, &line),
            None
        );
    }

    #[test]
    fn proc_readings_are_parsed() {
        assert!(status_kib("VmRSS") > 0);
        // A command name with spaces and parentheses must not shift the fields.
        let stat = "4242 (turn flow (x)) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3 0 99";
        assert_eq!(cpu_ms_from_stat(stat), 1750.0);
        assert_eq!(cpu_ms_from_stat(""), 0.0);
    }
}
