//! `turnflow`: simulate conversations and serve the Flux emulator.
//!
//! - `turnflow simulate [SCENARIO]`: a whole conversation on the embedded default (emulator +
//!   real Flux client + scripted LLM + synthetic TTS), with a per-turn report.
//! - `turnflow emulate`: the Flux `/v2/listen` emulator on a loopback port.
//! - `turnflow bench`: latency distributions over repeats and concurrent sessions.
//! - `turnflow run`: a live agent on a WAV file or the microphone (feature `audio-io`).
//! - `turnflow serve`: conversations for browsers, one per WebSocket, with health, metrics and
//!   a drain on SIGTERM.
//! - `turnflow load`: real-time callers against a running `serve`, measured at the client.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`).

/// Small allocations from two worker threads at a thousand sessions: mimalloc's per-thread
/// heaps halve the engine overhead's median there (BENCHMARKS.md, Serving).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use turnflow::emulator::{EmulatorConfig, EmulatorServer, SpeakFault, TurnDetection};
use turnflow::engine::{BargeInPolicy, EngineEvent, Presynthesis};
use turnflow::flux::{ApiKey, Thresholds};
use turnflow::report::{Breakdown, Report, Stats};
use turnflow::scenario::FaultSpec;
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulatedVoice, SimulationConfig, SimulationResult, Transport};

mod agent;
#[cfg(feature = "audio-io")]
mod audio_io;
mod bench;
mod load;
mod replay;
mod run;
mod serve;
mod traces;

#[derive(Parser)]
#[command(
    name = "turnflow",
    version,
    about = "Voice-agent turn-taking on Deepgram Flux"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scripted conversation offline: emulator, Flux client, engine, scripted backends.
    Simulate(SimulateArgs),
    /// Serve the Flux emulator: /v2/listen and /v2/speak.
    Emulate(EmulateArgs),
    /// Measure latency distributions over many runs and concurrent sessions.
    Bench(bench::BenchArgs),
    /// A live agent on real audio: a WAV file or the microphone in, a WAV file or the speaker out.
    Run(Box<run::RunArgs>),
    /// Serve conversations: a browser page at /, one session per WebSocket at /session,
    /// /healthz, /readyz and /metrics; drains on SIGTERM or Ctrl-C.
    Serve(Box<serve::ServeArgs>),
    /// Load a running `turnflow serve` with many real-time callers and measure them.
    Load(Box<load::LoadArgs>),
    /// Replay recorded sessions offline with other thresholds and policies, or sweep one
    /// setting over many recordings.
    Replay(Box<replay::ReplayArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Clock {
    /// Real time over a loopback WebSocket.
    Real,
    /// tokio's paused clock over in-memory channels: same conversation, in milliseconds.
    Virtual,
}

impl Clock {
    /// A runtime on this clock: multi-threaded in real time, single-threaded and paused for
    /// virtual time (the paused clock needs a current-thread runtime).
    ///
    /// # Errors
    /// The runtime cannot be built, or this build has no virtual clock (built without the
    /// `virtual-clock` feature, as the container image is).
    pub(crate) fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Clock::Real => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
            #[cfg(feature = "virtual-clock")]
            Clock::Virtual => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build(),
            #[cfg(not(feature = "virtual-clock"))]
            Clock::Virtual => Err(std::io::Error::other(
                "this turnflow was built without the virtual clock (cargo feature \
                 `virtual-clock`, on by default; the container image leaves it out): \
                 use --clock real, or a default build",
            )),
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum OnOff {
    On,
    Off,
}

#[derive(Parser)]
struct SimulateArgs {
    /// Scenario file (JSON); the built-in demo when omitted.
    scenario: Option<PathBuf>,
    /// Which clock to run on.
    #[arg(long, value_enum, default_value = "real")]
    clock: Clock,
    /// Write report.json, timeline.svg and conversation.wav here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start replies on EagerEndOfTurn.
    #[arg(long, value_enum, default_value = "on")]
    speculation: OnOff,
    /// Barge-in policy: `immediate` or `min-words=N`.
    #[arg(long, default_value = "immediate", value_parser = parse_barge_in)]
    barge_in: BargeInPolicy,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    /// What a speculative reply synthesizes (and holds) before promotion: `first-chunk` (up to
    /// its first punctuation), `first-sentence` or `off`.
    #[arg(long, default_value = "first-chunk", value_parser = parse_presynthesis)]
    presynthesis: Presynthesis,
    /// Record the conversation into this directory for `turnflow replay`.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// The agent's voice: `synthetic` (in process) or `flux` (Flux TTS, `/v2/speak`, served by
    /// the same emulator as the listening half).
    #[arg(long, value_enum, default_value = "synthetic")]
    tts: SimVoice,
    /// Settings file whose `[tools]` (MCP servers, webhooks, `demo`, `end_call`) the agent uses
    /// instead of the demo restaurant's in memory; the model and voice stay the simulation's.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum SimVoice {
    Synthetic,
    Flux,
}

/// Flux thresholds from the command line; each overrides the scenario or settings file.
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct ThresholdArgs {
    /// Flux eager_eot_threshold (0.3-0.9).
    #[arg(long)]
    pub(crate) eager_eot_threshold: Option<f64>,
    /// Flux eot_threshold (0.5-1.0).
    #[arg(long)]
    pub(crate) eot_threshold: Option<f64>,
    /// Flux eot_timeout_ms (500-60000).
    #[arg(long)]
    pub(crate) eot_timeout_ms: Option<u64>,
}

impl ThresholdArgs {
    /// These flags over `base`.
    pub(crate) fn over(self, base: Thresholds) -> Thresholds {
        Thresholds {
            eager_eot_threshold: self.eager_eot_threshold.or(base.eager_eot_threshold),
            eot_threshold: self.eot_threshold.or(base.eot_threshold),
            eot_timeout_ms: self.eot_timeout_ms.or(base.eot_timeout_ms),
        }
    }
}

#[derive(Parser)]
struct EmulateArgs {
    /// Scenario the emulator plays (the built-in demo when omitted).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Address to listen on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// Require this API key (Authorization: Token <key>).
    #[arg(long, env = "TURNFLOW_EMULATOR_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// How turns are detected: the scenario's timing, or voice activity in the received audio
    /// (transcripts come from the scenario's user lines).
    #[arg(long, value_enum, default_value = "script")]
    turns: Turns,
    /// Inject a fault, repeatable: KIND[=ARG][@MS][/CONNECTION] with KIND one of stall, drop,
    /// close=CODE, refuse=STATUS, clock_jump=MS, duplicate (docs/scenarios.md, "Faults").
    #[arg(long = "fault", value_parser = FaultSpec::parse)]
    faults: Vec<FaultSpec>,
    /// Make /v2/speak misbehave, repeatable: error=CODE@TURN (a fatal error right after that
    /// turn's first audio, first connection), ignore-interrupts, slow-interrupts=MS
    /// (docs/flux-tts.md).
    #[arg(long = "speak-fault", value_parser = SpeakFault::parse)]
    speak_faults: Vec<SpeakFault>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Turns {
    Script,
    Vad,
}

pub(crate) fn parse_barge_in(value: &str) -> Result<BargeInPolicy, String> {
    value
        .parse()
        .map_err(|e: turnflow::engine::ParseSettingError| e.to_string())
}

/// `first-chunk`, `first-sentence` or `off`.
pub(crate) fn parse_presynthesis(value: &str) -> Result<Presynthesis, String> {
    value
        .parse()
        .map_err(|e: turnflow::engine::ParseSettingError| e.to_string())
}

/// `500ms`, `10s`, `2m` or `0`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let number = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    let (value, unit) = if let Some(v) = text.strip_suffix("ms") {
        (number(v), 0.001)
    } else if let Some(v) = text.strip_suffix('s') {
        (number(v), 1.0)
    } else if let Some(v) = text.strip_suffix('m') {
        (number(v), 60.0)
    } else if text == "0" {
        (Some(0.0), 1.0)
    } else {
        (None, 1.0)
    };
    value
        .map(|v| Duration::from_secs_f64(v * unit))
        .ok_or_else(|| format!("{text:?} is not a duration: use e.g. 500ms, 10s, 2m or 0"))
}

/// Ctrl-C, or SIGTERM where there is one: the run stops taking input and finishes cleanly.
pub(crate) async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return "interrupted";
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = term.recv() => "terminated",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    }
}

fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`turnflow replay ... | head`)
    // would panic; the default action ends the process quietly, as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; it only resets a signal
    // disposition to the system default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Simulate(args) => simulate(args),
        Command::Emulate(args) => emulate(args),
        Command::Bench(args) => bench::bench(args),
        Command::Run(args) => run::run(*args),
        Command::Serve(args) => serve::serve(*args),
        Command::Load(args) => load::load(*args),
        Command::Replay(args) => replay::replay_command(*args),
    }
}

fn load_scenario(path: Option<&PathBuf>) -> Result<Arc<Scenario>> {
    Ok(Arc::new(match path {
        Some(p) => Scenario::load(p)?,
        None => Scenario::demo(),
    }))
}

fn simulate(args: SimulateArgs) -> Result<()> {
    let scenario = load_scenario(args.scenario.as_ref())?;
    let tool_setup = args
        .config
        .as_deref()
        .map(|path| agent::ToolSetup::from_config(&agent::load_config(path)?.tools, true))
        .transpose()?;
    if let (Clock::Virtual, Some(path)) = (args.clock, &args.config)
        && tool_setup.as_ref().is_some_and(|t| t.has_outside_tools())
    {
        bail!(
            "--clock virtual cannot wait for an MCP server or a webhook, which answer in real time: use --clock real with --config {}",
            path.display()
        );
    }
    let mut config = SimulationConfig::new(scenario.clone());
    config.transport = match args.clock {
        Clock::Real => Transport::Socket,
        Clock::Virtual => Transport::Memory,
    };
    config.session.machine.speculation = args.speculation == OnOff::On;
    config.session.machine.barge_in = args.barge_in;
    config.session.response.presynthesis = args.presynthesis;
    config.thresholds = args.thresholds.over(config.thresholds);
    config.voice = match args.tts {
        SimVoice::Synthetic => SimulatedVoice::Synthetic,
        SimVoice::Flux => SimulatedVoice::FluxTts,
    };
    let (observer, mut events) = tokio::sync::mpsc::unbounded_channel();
    config.observer = Some(observer);
    let recorder = args
        .record
        .as_ref()
        .map(|_| turnflow::recording::Recorder::new());
    config.recorder.clone_from(&recorder);
    let recorded_settings = turnflow::recording::RecordedSettings::of(
        &config.session,
        &turnflow::flux::ListenOptions::default().with_thresholds(config.thresholds),
        "scripted",
        match args.tts {
            SimVoice::Synthetic => "synthetic",
            SimVoice::Flux => "flux-tts",
        },
    );
    let sample_rate = config.sample_rate;
    let settings = BreakdownSettings {
        endpointing: format!(
            "eot_threshold {}, eot_timeout_ms {}",
            config
                .thresholds
                .eot_threshold
                .map_or_else(|| "(Flux default)".into(), |v| v.to_string()),
            config
                .thresholds
                .eot_timeout_ms
                .map_or_else(|| "(Flux default)".into(), |v| v.to_string()),
        ),
        speculation: match (
            config.session.machine.speculation,
            config.thresholds.eager_eot_threshold,
        ) {
            (true, Some(eager)) => format!("eager_eot_threshold {eager}"),
            (true, None) => "no eager_eot_threshold: Flux sends no eager ends".into(),
            (false, _) => "speculation off".into(),
        },
        first_piece: format!("presynthesis {}", args.presynthesis),
    };
    let runtime = args.clock.runtime()?;
    println!(
        "simulating {:?} ({} turns, {} clock)",
        scenario.name,
        scenario.turns.len(),
        match args.clock {
            Clock::Real => "real",
            Clock::Virtual => "virtual",
        }
    );
    #[cfg(feature = "otel")]
    let traces = traces::Traces::from_env()?;
    #[cfg(feature = "otel")]
    let exporter = traces.as_ref().map(|t| t.exporter.clone());
    #[cfg(not(feature = "otel"))]
    traces::warn_if_asked();
    let (result, tool_specs) = runtime.block_on(async move {
        let (tools, servers) = match tool_setup {
            // No tool at all is an empty toolbox: the demo restaurant's stay out.
            Some(setup) => {
                let (tools, servers) = setup.start().await?;
                let tools = tools.unwrap_or_else(|| Arc::new(turnflow::tools::Toolbox::new()) as _);
                (Some(tools), servers)
            }
            None => (None, Vec::new()),
        };
        let tool_specs = tools.as_ref().map_or_else(
            || turnflow::llm::ToolExecutor::specs(&turnflow::tools::DemoRestaurant::default()),
            |t| t.specs(),
        );
        config.tools = tools;
        let printer = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                print_event(&event);
            }
        });
        let result = turnflow::sim::run(config).await;
        let _ = printer.await;
        for server in servers {
            server.close().await;
        }
        // Queued here, on the simulation's clock, so that its spans keep their durations.
        #[cfg(feature = "otel")]
        if let (Ok(r), Some(exporter)) = (&result, exporter) {
            exporter.export_call(
                r.log.clone(),
                &turnflow::report::trace::CallInfo {
                    session: "simulation",
                    outcome: "completed",
                    transport: "simulation",
                    llm: "scripted",
                    tts: "synthetic",
                },
            );
        }
        anyhow::Ok((result?, tool_specs))
    })?;
    let recorded_settings = recorded_settings.with_tools(&tool_specs);
    #[cfg(feature = "otel")]
    if let Some(traces) = traces {
        traces.finish();
    }
    print_report(&result.report);
    print_breakdown(&result.report, &settings);
    if let Some(counts) = &result.flux_tts {
        println!(
            "flux tts: {} socket(s), {} turns, {} characters billed, {} interrupts ({} heard as the engine heard, {} differed, {} ignored, {} unanswered), {} warnings",
            counts.sockets,
            counts.turns,
            counts.billable_characters,
            counts.interrupts,
            counts.heard_matched,
            counts.heard_differed,
            counts.interrupts_ignored,
            counts.interrupts_unanswered,
            counts.warnings
        );
    }
    if let Some(dir) = &args.out {
        write_outputs(dir, &result)?;
        println!("wrote {}", dir.display());
    }
    if let (Some(dir), Some(recorder)) = (&args.record, recorder) {
        recorder
            .write(
                dir,
                "simulate",
                recorded_settings,
                sample_rate,
                sample_rate,
                Some(&result.log),
            )
            .with_context(|| format!("--record {}", dir.display()))?;
        println!("recorded {}", dir.display());
    }
    Ok(())
}

fn print_event(event: &EngineEvent) {
    match event {
        EngineEvent::UserFinished { turn, transcript } => {
            println!("turn {turn}  user: {transcript}");
        }
        EngineEvent::SpeculationCancelled {
            turn,
            response,
            reason,
        } => {
            println!("turn {turn}  speculation {response} cancelled ({reason:?})");
        }
        EngineEvent::Interrupted { response } => println!("        agent {response} interrupted"),
        EngineEvent::ToolStarted {
            response,
            tool,
            speculative,
        } => {
            let when = if *speculative {
                " (while the reply is a guess)"
            } else {
                ""
            };
            println!("        agent {response} calls {tool}{when}");
        }
        EngineEvent::ToolFinished {
            response,
            tool,
            outcome,
            duration_ms,
        } => {
            println!("        agent {response}: {tool} {outcome} in {duration_ms:.0} ms");
        }
        EngineEvent::Backchannel { turn, transcript } => {
            println!("turn {turn}  backchannel ignored: {transcript}");
        }
        EngineEvent::ResponseEnded {
            response,
            heard,
            interrupted,
            error,
        } if !heard.is_empty() || error.is_some() => {
            let cut = if *interrupted { " [cut]" } else { "" };
            let failed = error
                .as_ref()
                .map(|e| format!(" [failed: {e}]"))
                .unwrap_or_default();
            println!("        agent {response}: {heard}{cut}{failed}");
        }
        _ => {}
    }
}

/// The settings that govern the parts of a latency breakdown, as the run used them.
struct BreakdownSettings {
    endpointing: String,
    speculation: String,
    first_piece: String,
}

fn print_breakdown(report: &Report, settings: &BreakdownSettings) {
    let Some(mean) = report.summary.breakdown_mean_ms else {
        return;
    };
    println!();
    println!("where the time went (ms; the parts add up to voice-to-voice)");
    let mut header = format!("{:>4}  {:>11}", "turn", "endpointing");
    for name in Breakdown::PART_NAMES {
        let _ = write!(header, " {name:>11}");
    }
    println!("{header}  {:>8}", "response");
    let row = |label: String, b: &Breakdown| {
        let mut line = format!("{label:>4}  {:>11}", fmt_ms(b.endpointing_ms));
        for part in b.parts() {
            let _ = write!(line, " {part:>11.2}");
        }
        println!("{line}  {:>8.1}", b.response_latency_ms());
    };
    for t in &report.turns {
        if let Some(b) = &t.breakdown {
            row(t.index.to_string(), b);
        }
    }
    row("mean".into(), &mean);
    println!("  endpointing: {}", settings.endpointing);
    println!("  speculation: {}", settings.speculation);
    println!("  ttft, ttfb: the model and the voice; held: ready before EndOfTurn");
    println!(
        "  tool: the calls the reply waited for (first sent -> last result); our time around them is in engine"
    );
    println!("  first piece: {}", settings.first_piece);
}

pub(crate) fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn print_report(report: &Report) {
    println!();
    println!(
        "{:>4}  {:<5} {:>6} {:>9} {:>9} {:>8} {:>6} {:>6} {:>8}  heard",
        "turn", "spec", "lead", "response", "v2v", "overhead", "ttft", "ttfb", "barge-in"
    );
    for t in &report.turns {
        let heard = if t.interrupted {
            format!("{} [cut]", t.assistant_heard)
        } else {
            t.assistant_heard.clone()
        };
        println!(
            "{:>4}  {:<5} {:>6} {:>9} {:>9} {:>8} {:>6} {:>6} {:>8}  {}",
            t.index,
            t.speculation,
            fmt_ms(t.lead_ms),
            fmt_ms(t.response_latency_ms),
            fmt_ms(t.voice_to_voice_ms),
            t.engine_overhead_ms
                .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            fmt_ms(t.llm_ttft_ms),
            fmt_ms(t.tts_ttfb_ms),
            fmt_ms(t.barge_in_stop_ms),
            heard
        );
    }
    let s = &report.summary;
    println!();
    let line = |name: &str, st: &Stats| {
        if st.count > 0 {
            println!(
                "{name:<20} p50 {:>7.1}  p90 {:>7.1}  p99 {:>7.1}  max {:>7.1}  (n={})",
                st.p50, st.p90, st.p99, st.max, st.count
            );
        }
    };
    line("response_latency_ms", &s.response_latency_ms);
    line("voice_to_voice_ms", &s.voice_to_voice_ms);
    line("engine_overhead_ms", &s.engine_overhead_ms);
    line("tool_engine_ms", &s.tool_engine_ms);
    line("barge_in_stop_ms", &s.barge_in_stop_ms);
    line("lead_ms", &s.lead_ms);
    println!(
        "speculation: {} attempts, {} hits, {} misses, {} wasted LLM tokens, {} wasted TTS chars",
        s.speculation.attempts,
        s.speculation.hits,
        s.speculation.misses,
        s.speculation.wasted_llm_tokens,
        s.speculation.wasted_tts_chars
    );
}

fn write_outputs(dir: &PathBuf, result: &SimulationResult) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let report = serde_json::to_string_pretty(&result.report)?;
    std::fs::write(dir.join("report.json"), report + "\n")
        .with_context(|| format!("cannot write {}", dir.join("report.json").display()))?;
    std::fs::write(
        dir.join("timeline.svg"),
        turnflow::report::timeline::render(&result.conversation()),
    )
    .with_context(|| format!("cannot write {}", dir.join("timeline.svg").display()))?;
    turnflow::audio::write_wav(
        &dir.join("conversation.wav"),
        result.sample_rate,
        2,
        &result.stereo(),
    )
    .with_context(|| format!("cannot write {}", dir.join("conversation.wav").display()))?;
    Ok(())
}

fn emulate(args: EmulateArgs) -> Result<()> {
    let scenario = load_scenario(args.scenario.as_ref())?;
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on {} (not loopback); anyone who can reach it can connect",
            args.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut config = EmulatorConfig::new(scenario.clone());
        config.api_key = args.api_key.filter(|k| !k.is_empty()).map(ApiKey::new);
        config.turn_detection = match args.turns {
            Turns::Script => TurnDetection::Script,
            Turns::Vad => TurnDetection::Vad,
        };
        config.faults.extend(args.faults);
        config.speak.faults = args.speak_faults;
        let faults = config.faults.len() + config.speak.faults.len();
        let server = EmulatorServer::bind(args.listen, config)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let base = server.base_url();
        println!(
            "flux emulator playing {:?}: listening on {base}/v2/listen and speaking on {base}/v2/speak{} (Ctrl-C to stop)",
            scenario.name,
            match faults {
                0 => String::new(),
                n => format!(" with {n} fault(s)"),
            }
        );
        if tokio::signal::ctrl_c().await.is_err() {
            bail!("cannot wait for Ctrl-C");
        }
        server.shutdown().await;
        Ok(())
    })
}
