//! `turnflow run`: a live agent on real audio.
//!
//! Input from a WAV file (paced in real time) or the microphone, output to a WAV file or the
//! speaker, turns from Deepgram Flux or the local emulator in voice-activity mode. Settings come
//! from flags, or from a `turnflow.toml` (see `turnflow.example.toml`) that flags override.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::time::Instant;
use turnflow::call::{
    AudioFormat, Call, CallObserver, EndError, Ending, Gone, Inbound, Outbound, Settings, Start,
    Transport,
};
use turnflow::emulator::{EmulatorServer, MemoryEmulator};
use turnflow::engine::log::EventLog;
use turnflow::engine::{AudioSink, Backends, EngineEvent};
use turnflow::flux::{Connector, Encoding, FluxConfig, WebSocketConnector};
use turnflow::recording::EventLine;
use turnflow::recording::{RecordedSettings, Recorder};
use turnflow::sim::{RecordingSink, place_frames};

use turnflow::report::Report;

use crate::Clock;
use crate::agent::{Agent, AgentArgs, SAMPLE_RATE, Stt};

#[derive(Parser)]
pub(crate) struct RunArgs {
    /// `mic` or a 16 kHz mono 16-bit WAV file.
    #[arg(long)]
    input: String,
    /// `speaker` or a WAV file to write the agent's audio to.
    #[arg(long)]
    output: String,
    #[command(flatten)]
    agent: AgentArgs,
    /// Record the session into this directory for `turnflow replay` (docs/recordings.md):
    /// the event log as it goes, the rest when the session ends.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Write the session's report (per-turn metrics, as `simulate --out` does) to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// `virtual` runs a WAV file through the local emulator on tokio's paused clock: the same
    /// session in milliseconds, the same every time (needs `--input FILE`, `--output FILE`,
    /// `--stt emulator` and a voice that is not a separate process).
    #[arg(long, value_enum, default_value = "real")]
    clock: Clock,
}

/// The microphone or a WAV file, as 16 kHz PCM in 20 ms chunks.
enum Input {
    File(Vec<i16>),
    #[cfg(feature = "audio-io")]
    Mic(crate::audio_io::Microphone),
}

fn open_input(spec: &str) -> Result<Input> {
    if spec == "mic" {
        #[cfg(feature = "audio-io")]
        return Ok(Input::Mic(crate::audio_io::Microphone::open(SAMPLE_RATE)?));
        #[cfg(not(feature = "audio-io"))]
        bail!(
            "--input mic needs the audio-io feature: cargo run --release --features audio-io -- run ..."
        );
    }
    Ok(Input::File(read_speech(spec, "--input")?))
}

/// Reads a 16 kHz mono 16-bit WAV file; errors name the file, the flag and what is needed.
pub(crate) fn read_speech(path: &str, flag: &str) -> Result<Vec<i16>> {
    let bytes = std::fs::read(path).with_context(|| format!("{path}: cannot read"))?;
    let (format, offset) = turnflow::audio::parse_wav_header(&bytes)
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
        .with_context(|| format!("{path}: truncated wav header"))?;
    if format.channels != 1
        || format.sample_rate != SAMPLE_RATE
        || format.encoding != Encoding::Linear16
    {
        bail!(
            "{path}: {} Hz, {} channel(s), {}; {flag} needs 16000 Hz mono 16-bit PCM (sox in.wav -r 16000 -c 1 -b 16 out.wav)",
            format.sample_rate,
            format.channels,
            format.encoding.as_str()
        );
    }
    let mut samples = Vec::new();
    turnflow::audio::decode_into(Encoding::Linear16, &bytes[offset..], &mut samples);
    Ok(samples)
}

/// The local emulator, over a loopback WebSocket (real time) or in memory (virtual time).
enum Emulator {
    Socket(EmulatorServer),
    Memory(MemoryEmulator),
}

enum Output {
    File(PathBuf, std::fs::File, RecordingSink),
    #[cfg(feature = "audio-io")]
    Speaker(crate::audio_io::Speaker),
}

#[cfg_attr(not(feature = "audio-io"), allow(unused_variables))]
fn open_output(spec: &str, sample_rate: u32) -> Result<Output> {
    if spec == "speaker" {
        #[cfg(feature = "audio-io")]
        return Ok(Output::Speaker(crate::audio_io::Speaker::open(
            sample_rate,
        )?));
        #[cfg(not(feature = "audio-io"))]
        bail!(
            "--output speaker needs the audio-io feature: cargo run --release --features audio-io -- run ..."
        );
    }
    let path = PathBuf::from(spec);
    // Created now, so a wrong path fails before the conversation, not after it.
    let file = std::fs::File::create(&path)
        .with_context(|| format!("--output {}: cannot create the file", path.display()))?;
    Ok(Output::File(path, file, RecordingSink::new()))
}

/// Creates the `--record` directory and its event log now (a wrong path fails before the
/// conversation) and returns a writer for the log's lines.
fn open_record(dir: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--record {}: cannot create the directory", dir.display()))?;
    let path = dir.join("events.jsonl");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("--record {}: cannot create the file", path.display()))?;
    Ok(std::io::BufWriter::new(file))
}

pub(crate) fn run(args: RunArgs) -> Result<()> {
    let mut agent = Agent::resolve(&args.agent)?;
    let voice = agent.tts.clone();
    if matches!(args.clock, Clock::Virtual) {
        if args.input == "mic" || args.output == "speaker" {
            bail!(
                "--clock virtual needs --input FILE and --output FILE: a microphone and a speaker run in real time"
            );
        }
        if !matches!(agent.stt, Stt::Emulator(_)) {
            bail!("--clock virtual needs --stt emulator: Deepgram runs in real time");
        }
        if voice.name() == "espeak-ng" {
            bail!(
                "--clock virtual needs a voice inside the process (--tts synthetic): espeak-ng is a separate program running in real time"
            );
        }
    }
    let input = open_input(&args.input)?;
    let output = open_output(&args.output, voice.sample_rate())?;
    let report_file = args
        .report
        .as_deref()
        .map(|path| {
            std::fs::File::create(path)
                .with_context(|| format!("--report {}: cannot create the file", path.display()))
        })
        .transpose()?;
    let record = args.record.as_deref().map(open_record).transpose()?;
    let recorder = record.as_ref().map(|_| Recorder::new());
    let recorder_for_input = recorder.clone();
    let runtime = args.clock.runtime()?;
    runtime.block_on(async move {
        agent.keep_fallback_line().await;
        agent.start_tools().await?;
        let tool_servers = agent.tool_servers();
        let (emulator, flux_config, connector): (_, _, Arc<dyn Connector>) = match agent.stt {
            Stt::Emulator(config) if matches!(args.clock, Clock::Virtual) => {
                let memory = MemoryEmulator::new(config);
                let flux = FluxConfig::new(agent.options.clone()).with_base_url("ws://emulator");
                (Some(Emulator::Memory(memory.clone())), flux, Arc::new(memory))
            }
            Stt::Emulator(config) => {
                let server = EmulatorServer::bind("127.0.0.1:0".parse()?, config).await?;
                let flux = FluxConfig::new(agent.options.clone()).with_base_url(server.base_url());
                (Some(Emulator::Socket(server)), flux, Arc::new(WebSocketConnector))
            }
            Stt::Flux(flux) => (None, *flux, Arc::new(WebSocketConnector)),
        };
        let settings = RecordedSettings::of(
            &agent.session,
            &flux_config.options,
            agent.llm.name(),
            voice.name(),
        )
        .with_tools(&agent.tools.as_ref().map(|t| t.specs()).unwrap_or_default());
        let (connector, llm, tts, tools) = match &recorder {
            Some(r) => (
                r.connector(connector),
                r.llm(agent.llm),
                r.tts(voice),
                agent.tools.map(|t| r.tools(t)),
            ),
            None => (connector, agent.llm, voice, agent.tools),
        };
        let backends = Backends { llm, tts, tools };
        let output_rate = backends.tts.sample_rate();
        let start = recorder.as_ref().map_or_else(Instant::now, Recorder::origin);
        let (speaking_tx, speaking) = tokio::sync::watch::channel(false);
        let (log_tx, log_rx) = tokio::sync::oneshot::channel();
        let console = Arc::new(Console {
            speaking: speaking_tx,
            log: std::sync::Mutex::new(Some(log_tx)),
        });
        let mut call_settings = Settings::new(flux_config, connector, backends);
        call_settings.session = agent.session;
        let (chunks_tx, chunks) = tokio::sync::mpsc::channel(8);
        let mut transport = Local {
            started: false,
            stopped: false,
            chunks,
            output: match &output {
                Output::File(_, _, frames) => LocalOutput::File(frames.clone()),
                #[cfg(feature = "audio-io")]
                Output::Speaker(speaker) => LocalOutput::Speaker(speaker.sink()),
            },
        };
        // The event log is written as the session goes: an interrupted run leaves every line
        // up to the interruption.
        let clock = args.clock;
        let log_writer = record.map(|file| {
            tokio::spawn(async move {
                let Ok(log) = log_rx.await else { return Ok(0) };
                let entries = log.subscribe(4096);
                drop(log);
                match clock {
                    Clock::Real => tokio::task::spawn_blocking(move || {
                        write_record(file, entries, start, |entries| entries.blocking_recv())
                    })
                    .await
                    .context("the event log writer stopped")?,
                    // The paused clock cannot advance while a blocking task runs; on it the
                    // session takes milliseconds and these small writes block no one.
                    Clock::Virtual => {
                        let mut lines = 0;
                        let mut file = file;
                        let mut entries = entries;
                        while let Some(entry) = entries.recv().await {
                            write_line(&mut file, &entry, start)?;
                            lines += 1;
                        }
                        Ok(lines)
                    }
                }
            })
        });
        let speaking_user = tokio::spawn(async move {
            tokio::select! {
                () = stream_input(input, chunks_tx, speaking, recorder_for_input) => {}
                signal = crate::shutdown_signal() => eprintln!("{signal}: stopping; the files are being completed"),
            }
        });
        let ending = Call::new("run", call_settings)
            .observed_by(console)
            .run(&mut transport)
            .await;
        drop(transport);
        let _ = speaking_user.await;
        match emulator {
            Some(Emulator::Socket(server)) => server.shutdown().await,
            Some(Emulator::Memory(memory)) => memory.shutdown().await,
            None => {}
        }
        for server in tool_servers {
            server.close().await;
        }
        if let Some(error) = ending.flux_error {
            return Err(anyhow::Error::new(error).context("cannot connect to speech to text"));
        }
        let (Some(outcome), Some(log)) = (ending.session, ending.log) else {
            bail!("the conversation ended before it started: {}", ending.detail);
        };
        let report = Report::from_log(&log.entries());
        // The last handle on the log: its subscribers see it close, and the writer finishes.
        drop(log);
        crate::print_report(&report);
        if let (Some(file), Some(path)) = (report_file, &args.report) {
            let mut file = file;
            serde_json::to_writer_pretty(&mut file, &report)
                .map_err(std::io::Error::from)
                .and_then(|()| std::io::Write::write_all(&mut file, b"\n"))
                .with_context(|| format!("--report {}: cannot write", path.display()))?;
            println!("wrote {}", path.display());
        }
        if let Some(writer) = log_writer {
            let lines = writer.await.context("the event log writer stopped")??;
            if let (Some(dir), Some(recorder)) = (&args.record, &recorder) {
                recorder
                    .write(dir, "run", settings, SAMPLE_RATE, output_rate, None)
                    .with_context(|| format!("--record {}", dir.display()))?;
                println!("wrote {} ({lines} events)", dir.display());
            }
        }
        match output {
            Output::File(path, file, recorder) => {
                let pcm = place_frames(&recorder.take(), start, output_rate);
                turnflow::audio::write_wav_to(file, output_rate, 1, &pcm)
                    .with_context(|| format!("--output {}: cannot write", path.display()))?;
                println!(
                    "wrote {} ({:.1} s of agent audio timeline)",
                    path.display(),
                    pcm.len() as f64 / f64::from(output_rate)
                );
            }
            #[cfg(feature = "audio-io")]
            Output::Speaker(_) => {}
        }
        if let Some(error) = outcome.error {
            bail!("the session failed: {error}");
        }
        let replies = outcome.replies;
        if let Some(last) = replies.last_failure.filter(|_| replies.answered == 0) {
            let hint = if last.is_configuration() {
                " (a configuration error: it fails the same way until the key, model or url changes)"
            } else {
                ""
            };
            bail!(
                "every reply failed ({} of them); the last: {last}{hint}",
                replies.failed
            );
        }
        Ok(())
    })
}

/// What the console shows of the conversation, and what the input needs to know of it.
struct Console {
    /// Whether the agent is speaking: a file's input goes on until it has answered.
    speaking: tokio::sync::watch::Sender<bool>,
    /// Where the session's log goes once it starts (to the `--record` writer).
    log: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<EventLog>>>,
}

impl CallObserver for Console {
    fn session_started(&self, _call: &str, log: &EventLog) {
        if let Some(to_writer) = self.log.lock().expect("console lock").take() {
            let _ = to_writer.send(log.clone());
        }
    }

    fn event(&self, _call: &str, event: &EngineEvent) {
        match event {
            EngineEvent::AgentSpeaking { .. } => {
                let _ = self.speaking.send(true);
            }
            EngineEvent::ResponseEnded { .. } => {
                let _ = self.speaking.send(false);
            }
            _ => {}
        }
        print_live(event);
    }
}

/// Where the agent's voice goes.
enum LocalOutput {
    /// Kept with the instant each frame was played, for the WAV file.
    File(RecordingSink),
    #[cfg(feature = "audio-io")]
    Speaker(crate::audio_io::SpeakerSink),
}

/// The machine's own audio as the conversation's transport: the input's 20 ms chunks in, the
/// agent's voice to the file or the speaker; what was written counts as heard.
struct Local {
    started: bool,
    stopped: bool,
    chunks: tokio::sync::mpsc::Receiver<Vec<i16>>,
    output: LocalOutput,
}

impl Transport for Local {
    async fn recv(&mut self) -> Result<Option<Inbound>, EndError> {
        if !std::mem::replace(&mut self.started, true) {
            let format = AudioFormat {
                encoding: Encoding::Linear16,
                sample_rate: SAMPLE_RATE,
            };
            return Ok(Some(Inbound::Start(Start::new(format))));
        }
        if self.stopped {
            return std::future::pending().await;
        }
        Ok(Some(match self.chunks.recv().await {
            Some(pcm) => Inbound::Audio(turnflow::audio::encode(Encoding::Linear16, &pcm).into()),
            None => {
                self.stopped = true;
                Inbound::Stop
            }
        }))
    }

    async fn send(&mut self, item: Outbound<'_>) -> Result<(), Gone> {
        match (item, &mut self.output) {
            (Outbound::Audio(speech), LocalOutput::File(frames)) => frames.write(speech.pcm),
            #[cfg(feature = "audio-io")]
            (Outbound::Audio(speech), LocalOutput::Speaker(speaker)) => speaker.write(speech.pcm),
            #[cfg(feature = "audio-io")]
            (Outbound::Clear, LocalOutput::Speaker(speaker)) => speaker.clear(),
            _ => {}
        }
        Ok(())
    }

    async fn finish(&mut self, _ending: &Ending) {}
}

fn print_live(event: &EngineEvent) {
    match event {
        EngineEvent::UserFinished { turn, transcript } => {
            println!("turn {turn}  user: {transcript}")
        }
        EngineEvent::Interrupted { response } => println!("        agent {response} interrupted"),
        EngineEvent::ResponseEnded {
            response,
            heard,
            interrupted,
            ..
        } if !heard.is_empty() => {
            println!(
                "        agent {response}: {heard}{}",
                if *interrupted { " [cut]" } else { "" }
            );
        }
        _ => {}
    }
}

/// Streams the input in real time; a file is followed by silence until the agent has answered
/// (at most 15 s), as a microphone would go on listening.
async fn stream_input(
    input: Input,
    to_call: tokio::sync::mpsc::Sender<Vec<i16>>,
    mut speaking: tokio::sync::watch::Receiver<bool>,
    recorder: Option<Recorder>,
) {
    match input {
        Input::File(samples) => {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            let chunk = (SAMPLE_RATE / 50) as usize;
            let mut sent = 0;
            let mut quiet_after_end = 0u32;
            loop {
                ticker.tick().await;
                let piece: Vec<i16> = if sent < samples.len() {
                    let end = (sent + chunk).min(samples.len());
                    let p = samples[sent..end].to_vec();
                    sent = end;
                    p
                } else {
                    quiet_after_end += 1;
                    let agent_done = !*speaking.borrow_and_update() && quiet_after_end > 150;
                    if agent_done || quiet_after_end > 750 {
                        break;
                    }
                    vec![0; chunk]
                };
                if let Some(recorder) = &recorder {
                    recorder.user_audio(&piece);
                }
                if to_call.send(piece).await.is_err() {
                    break;
                }
            }
        }
        #[cfg(feature = "audio-io")]
        Input::Mic(mic) => crate::audio_io::stream_microphone(mic, to_call, recorder).await,
    }
}

type LogReceiver = tokio::sync::mpsc::Receiver<turnflow::engine::log::LogEntry>;

/// Writes each entry `next` gives as one JSON line, until the log closes. Returns the number
/// of lines.
fn write_record(
    mut file: std::io::BufWriter<std::fs::File>,
    mut entries: LogReceiver,
    start: Instant,
    next: impl Fn(&mut LogReceiver) -> Option<turnflow::engine::log::LogEntry>,
) -> Result<u64> {
    let mut lines = 0;
    while let Some(entry) = next(&mut entries) {
        write_line(&mut file, &entry, start)?;
        lines += 1;
    }
    Ok(lines)
}

/// One event-log line, flushed: an interrupted run keeps every line up to the interruption.
fn write_line(
    file: &mut std::io::BufWriter<std::fs::File>,
    entry: &turnflow::engine::log::LogEntry,
    start: Instant,
) -> Result<()> {
    use std::io::Write;
    serde_json::to_writer(&mut *file, &EventLine::new(entry, start))?;
    file.write_all(b"\n")?;
    file.flush()?;
    Ok(())
}
