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
use serde::Deserialize;
use tokio::time::Instant;
use turnflow::emulator::sim::{RecordingSink, place_frames};
use turnflow::emulator::{EmulatorConfig, EmulatorServer, TurnDetection};
use turnflow::engine::{
    AudioSink, Backends, BargeInPolicy, CancellationToken, EngineEvent, SessionConfig,
    start_session,
};
use turnflow::flux::client::API_KEY_ENV;
use turnflow::flux::{ApiKey, Thresholds};
use turnflow::flux::{
    Encoding, FluxConfig, FluxSender, ListenOptions, WebSocketConnector, connect,
};
use turnflow::llm::anthropic::{ANTHROPIC_API_KEY_ENV, ANTHROPIC_BASE_URL};
use turnflow::llm::openai::OPENAI_API_KEY_ENV;
use turnflow::llm::{Anthropic, FailoverLlm, LanguageModel, OpenAiCompatible, ScriptedLlm};
use turnflow::scenario::{Scenario, TtsTiming};
use turnflow::tts::aura::AURA_BASE_URL;
use turnflow::tts::{AuraTts, Espeak, FailoverTts, OpenAiSpeech, SpeechSynthesizer, SyntheticTts};

use crate::{ThresholdArgs, parse_barge_in};

const SAMPLE_RATE: u32 = 16000;

#[derive(Parser)]
pub(crate) struct RunArgs {
    /// `mic` or a 16 kHz mono 16-bit WAV file.
    #[arg(long)]
    input: String,
    /// `speaker` or a WAV file to write the agent's audio to.
    #[arg(long)]
    output: String,
    /// Settings file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `flux` (Deepgram, needs DEEPGRAM_API_KEY) or `emulator` (local, voice activity).
    #[arg(long)]
    stt: Option<String>,
    /// Language model: `scripted`, `openai` (any OpenAI-compatible server) or `anthropic`; a
    /// comma-separated list fails over in order before the first token; `provider:model` names
    /// each model (`openai:gpt-4o-mini,anthropic:claude-sonnet-4-5`).
    #[arg(long)]
    llm: Option<String>,
    /// Model name for the LLM provider.
    #[arg(long)]
    llm_model: Option<String>,
    /// Base URL of the LLM provider: an OpenAI-compatible server (e.g.
    /// http://127.0.0.1:11434/v1 for Ollama) or an Anthropic-compatible endpoint.
    #[arg(long)]
    llm_url: Option<String>,
    /// Voice: `synthetic`, `aura` (Deepgram, needs DEEPGRAM_API_KEY), `openai`
    /// (OpenAI-compatible speech) or `espeak` (local espeak-ng); a comma-separated list of
    /// voices with one sample rate (`aura,openai`) fails over before the first audio.
    #[arg(long)]
    tts: Option<String>,
    /// Scenario for the scripted LLM and the emulator's user lines (default: the demo).
    #[arg(long)]
    scenario: Option<PathBuf>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    /// `immediate` or `min-words=N`.
    #[arg(long, value_parser = parse_barge_in)]
    barge_in: Option<BargeInPolicy>,
    /// Another Flux endpoint (regional host, proxy, self-hosted).
    #[arg(long)]
    flux_url: Option<String>,
    /// Write the session's event log as JSON lines.
    #[arg(long)]
    record: Option<PathBuf>,
}

/// `turnflow.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// First message of every LLM request.
    pub system_prompt: Option<String>,
    /// Speech to text.
    #[serde(default)]
    pub stt: SttConfig,
    /// Language model.
    #[serde(default)]
    pub llm: ProviderConfig,
    /// Voice.
    #[serde(default)]
    pub tts: TtsConfig,
    /// Turn-taking policies.
    #[serde(default)]
    pub engine: EngineConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SttConfig {
    pub provider: Option<String>,
    pub url: Option<String>,
    pub eager_eot_threshold: Option<f64>,
    pub eot_threshold: Option<f64>,
    pub eot_timeout_ms: Option<u64>,
    #[serde(default)]
    pub keyterms: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderConfig {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TtsConfig {
    pub provider: Option<String>,
    pub words_per_minute: Option<f64>,
    pub model: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EngineConfig {
    pub speculation: Option<bool>,
    pub barge_in: Option<String>,
    pub max_speculations_per_turn: Option<u32>,
    pub false_interruption_timeout_ms: Option<u64>,
    pub fallback_line: Option<String>,
    pub presynthesize_first_sentence: Option<bool>,
}

/// Reads and checks `turnflow.toml`.
pub(crate) fn load_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let config: FileConfig = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
        .with_context(|| format!("{}: invalid settings", path.display()))?;
    if let Some(policy) = &config.engine.barge_in {
        parse_barge_in(policy)
            .map_err(|e| anyhow::anyhow!("{}: engine.barge_in: {e}", path.display()))?;
    }
    Ok(config)
}

fn check_provider(role: &str, chosen: &str, available: &[&str]) -> Result<()> {
    if available.contains(&chosen) {
        Ok(())
    } else {
        bail!(
            "{role} provider {chosen:?} is not available in this build; available: {}",
            available.join(", ")
        )
    }
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
    let bytes = std::fs::read(spec).with_context(|| format!("{spec}: cannot read"))?;
    let (format, offset) = turnflow::audio::parse_wav_header(&bytes)
        .map_err(|e| anyhow::anyhow!("{spec}: {e}"))?
        .with_context(|| format!("{spec}: truncated wav header"))?;
    if format.channels != 1
        || format.sample_rate != SAMPLE_RATE
        || format.encoding != Encoding::Linear16
    {
        bail!(
            "{spec}: {} Hz, {} channel(s), {}; --input needs 16000 Hz mono 16-bit PCM (sox in.wav -r 16000 -c 1 -b 16 out.wav)",
            format.sample_rate,
            format.channels,
            format.encoding.as_str()
        );
    }
    let mut samples = Vec::new();
    turnflow::audio::decode_into(Encoding::Linear16, &bytes[offset..], &mut samples);
    Ok(Input::File(samples))
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

/// Creates the `--record` file now (a wrong path fails before the conversation) and returns a
/// writer for its lines.
fn open_record(path: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("--record {}: cannot create the file", path.display()))?;
    Ok(std::io::BufWriter::new(file))
}

pub(crate) fn run(args: RunArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => load_config(path)?,
        None => FileConfig::default(),
    };
    let stt = args
        .stt
        .clone()
        .or(file.stt.provider.clone())
        .unwrap_or_else(|| "emulator".into());
    check_provider("stt", &stt, &["flux", "emulator"])?;
    let llm = args
        .llm
        .clone()
        .or(file.llm.provider.clone())
        .unwrap_or_else(|| "scripted".into());
    for one in llm.split(',') {
        let provider = one.split_once(':').map_or(one, |(p, _)| p);
        check_provider("llm", provider, &["scripted", "openai", "anthropic"])?;
    }
    let tts = args
        .tts
        .clone()
        .or(file.tts.provider.clone())
        .unwrap_or_else(|| "synthetic".into());
    for one in tts.split(',') {
        check_provider("tts", one, &["synthetic", "aura", "openai", "espeak"])?;
    }
    let api_key = if stt == "flux" || tts.split(',').any(|t| t == "aura") {
        let key = std::env::var(API_KEY_ENV).unwrap_or_default();
        if key.is_empty() {
            bail!(
                "{API_KEY_ENV} is not set: --stt flux needs a Deepgram API key (or use --stt emulator)"
            );
        }
        Some(key)
    } else {
        None
    };
    let scenario = Arc::new(match &args.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::demo(),
    });
    let thresholds = args.thresholds.over(Thresholds {
        eager_eot_threshold: file.stt.eager_eot_threshold,
        eot_threshold: file.stt.eot_threshold,
        eot_timeout_ms: file.stt.eot_timeout_ms,
    });
    let mut options =
        ListenOptions::raw(Encoding::Linear16, SAMPLE_RATE).with_thresholds(thresholds);
    options.keyterms = file.stt.keyterms.clone();
    options.validate()?;
    let mut session = SessionConfig::default();
    session.machine.system_prompt = file
        .system_prompt
        .clone()
        .or(scenario.system_prompt.clone());
    if let Some(v) = file.engine.speculation {
        session.machine.speculation = v;
    }
    if let Some(v) = file.engine.max_speculations_per_turn {
        session.machine.max_speculations_per_turn = v;
    }
    if let Some(v) = file.engine.false_interruption_timeout_ms {
        session.machine.false_interruption_timeout = Duration::from_millis(v);
    }
    if let Some(v) = &file.engine.fallback_line {
        session.response.fallback_line = v.clone();
    }
    if let Some(v) = file.engine.presynthesize_first_sentence {
        session.response.presynthesize_first_sentence = v;
    }
    if let Some(p) = args.barge_in.or(file
        .engine
        .barge_in
        .as_deref()
        .map(|p| parse_barge_in(p).expect("checked on load")))
    {
        session.machine.barge_in = p;
    }
    let timing = TtsTiming {
        words_per_minute: file
            .tts
            .words_per_minute
            .unwrap_or(scenario.tts.words_per_minute),
        ..scenario.tts.clone()
    };
    let voices = tts
        .split(',')
        .map(|one| voice_backend(one, &file.tts, timing.clone(), api_key.clone()))
        .collect::<Result<Vec<_>>>()?;
    let voice: Arc<dyn SpeechSynthesizer> = if voices.len() == 1 {
        voices.into_iter().next().expect("one voice")
    } else {
        Arc::new(FailoverTts::new(voices)?)
    };
    let input = open_input(&args.input)?;
    let output = open_output(&args.output, voice.sample_rate())?;
    let record = args.record.as_deref().map(open_record).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let emulator = if stt == "emulator" {
            let mut config = EmulatorConfig::new(scenario.clone());
            config.turn_detection = TurnDetection::Vad;
            Some(EmulatorServer::bind("127.0.0.1:0".parse()?, config).await?)
        } else {
            None
        };
        let mut flux_config = FluxConfig::new(options);
        flux_config.api_key = api_key.clone().map(ApiKey::new);
        if let Some(server) = &emulator {
            flux_config = flux_config.with_base_url(server.base_url());
        } else if let Some(url) = args.flux_url.clone().or(file.stt.url.clone()) {
            flux_config = flux_config.with_base_url(url);
        }
        let (flux, events) = connect(flux_config, Arc::new(WebSocketConnector)).await?;
        let backends = Backends {
            llm: {
                let chain = llm
                    .split(',')
                    .map(|one| language_model(one, &file.llm, &args, &scenario))
                    .collect::<Result<Vec<_>>>()?;
                if chain.len() == 1 {
                    chain.into_iter().next().expect("one provider")
                } else {
                    Arc::new(FailoverLlm::new(chain))
                }
            },
            tts: voice,
            tools: None,
        };
        let sink: Box<dyn AudioSink> = match &output {
            Output::File(_, _, recorder) => Box::new(recorder.clone()),
            #[cfg(feature = "audio-io")]
            Output::Speaker(speaker) => Box::new(speaker.sink()),
        };
        let output_rate = backends.tts.sample_rate();
        let (handle, mut engine_events) = start_session(session, events, backends, sink, CancellationToken::new());
        let start = Instant::now();
        // The event log is written as the session goes: an interrupted run leaves every line
        // up to the interruption.
        let recorder = record.map(|file| {
            let entries = handle.log().subscribe(4096);
            tokio::task::spawn_blocking(move || write_record(file, entries, start))
        });
        let (speaking_tx, speaking) = tokio::sync::watch::channel(false);
        let printer = tokio::spawn(async move {
            while let Some(event) = engine_events.recv().await {
                match &event {
                    EngineEvent::AgentSpeaking { .. } => {
                        let _ = speaking_tx.send(true);
                    }
                    EngineEvent::ResponseEnded { .. } => {
                        let _ = speaking_tx.send(false);
                    }
                    _ => {}
                }
                print_live(&event);
            }
        });
        tokio::select! {
            _ = stream_input(input, flux.sender(), speaking) => {}
            signal = shutdown_signal() => eprintln!("{signal}: stopping; the files are being completed"),
        }
        flux.close().await?;
        let outcome = handle.finished().await;
        let _ = printer.await;
        if let Some(server) = emulator {
            server.shutdown().await;
        }
        if let Some(writer) = recorder {
            let lines = writer.await.context("the event log writer stopped")??;
            if let Some(path) = &args.record {
                println!("wrote {} ({lines} events)", path.display());
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

/// Ctrl-C, or SIGTERM where there is one: the run stops taking input and finishes cleanly.
async fn shutdown_signal() -> &'static str {
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

fn voice_backend(
    kind: &str,
    config: &TtsConfig,
    timing: TtsTiming,
    deepgram_key: Option<String>,
) -> Result<Arc<dyn SpeechSynthesizer>> {
    Ok(match kind {
        // Aura's default rate, which OpenAI speech shares, so the two can form a chain.
        "aura" => Arc::new(AuraTts::new(
            config.url.as_deref().unwrap_or(AURA_BASE_URL),
            config.model.as_deref().unwrap_or("aura-2-thalia-en"),
            24000,
            deepgram_key.map(ApiKey::new),
        )?),
        "openai" => {
            let base = config.url.as_deref().unwrap_or("https://api.openai.com/v1");
            let key = key_from(OPENAI_API_KEY_ENV);
            if key.is_none()
                && !base.starts_with("http://127.")
                && !base.starts_with("http://localhost")
            {
                bail!("{OPENAI_API_KEY_ENV} is not set: --tts openai needs an API key for {base}");
            }
            Arc::new(OpenAiSpeech::new(
                base,
                config.model.as_deref().unwrap_or("gpt-4o-mini-tts"),
                "alloy",
                key,
                OPENAI_API_KEY_ENV,
            )?)
        }
        "espeak" => {
            if !Espeak::available() {
                bail!("--tts espeak needs espeak-ng: apt-get install espeak-ng");
            }
            Arc::new(Espeak::new("en-us", timing.words_per_minute as u32))
        }
        _ => Arc::new(SyntheticTts::new(SAMPLE_RATE, timing)),
    })
}

fn key_from(env: &str) -> Option<ApiKey> {
    std::env::var(env)
        .ok()
        .filter(|k| !k.is_empty())
        .map(ApiKey::new)
}

/// Builds one provider from `kind`, `provider` or `provider:model`.
fn language_model(
    kind: &str,
    config: &ProviderConfig,
    args: &RunArgs,
    scenario: &Scenario,
) -> Result<Arc<dyn LanguageModel>> {
    let (kind, model) = match kind.split_once(':') {
        Some((kind, model)) => (kind, Some(model.to_owned())),
        None => (kind, args.llm_model.clone().or(config.model.clone())),
    };
    Ok(match kind {
        "openai" => {
            let base = args
                .llm_url
                .clone()
                .or(config.base_url.clone())
                .unwrap_or_else(|| "https://api.openai.com/v1".into());
            let env = config
                .api_key_env
                .clone()
                .unwrap_or_else(|| OPENAI_API_KEY_ENV.into());
            let key = key_from(&env);
            let local = base.starts_with("http://127.") || base.starts_with("http://localhost");
            if key.is_none() && !local {
                bail!(
                    "{env} is not set: --llm openai needs an API key for {base} (set api_key_env in turnflow.toml for other providers)"
                );
            }
            let model =
                model.context("--llm openai needs a model: --llm-model NAME or [llm] model")?;
            Arc::new(OpenAiCompatible::new(base, model, key, env)?)
        }
        "anthropic" => {
            let key = key_from(ANTHROPIC_API_KEY_ENV).with_context(|| {
                format!("{ANTHROPIC_API_KEY_ENV} is not set: --llm anthropic needs an API key")
            })?;
            let base = args
                .llm_url
                .clone()
                .or(config.base_url.clone())
                .unwrap_or_else(|| ANTHROPIC_BASE_URL.into());
            let model =
                model.context("--llm anthropic needs a model: --llm-model NAME or [llm] model")?;
            Arc::new(Anthropic::new(base, model, key)?)
        }
        _ => Arc::new(ScriptedLlm::from_scenario(scenario)),
    })
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
    flux: FluxSender,
    mut speaking: tokio::sync::watch::Receiver<bool>,
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
                if flux
                    .send_audio(turnflow::audio::encode(Encoding::Linear16, &piece))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        #[cfg(feature = "audio-io")]
        Input::Mic(mic) => crate::audio_io::stream_microphone(mic, flux).await,
    }
}

#[derive(serde::Serialize)]
struct RecordLine<'a> {
    t_ms: f64,
    #[serde(flatten)]
    kind: &'a turnflow::engine::log::LogKind,
}

/// Writes each entry as one JSON line as it arrives, flushing after each, until the log
/// closes. Returns the number of lines.
fn write_record(
    mut file: std::io::BufWriter<std::fs::File>,
    mut entries: tokio::sync::mpsc::Receiver<turnflow::engine::log::LogEntry>,
    start: Instant,
) -> Result<u64> {
    use std::io::Write;
    let mut lines = 0;
    while let Some(e) = entries.blocking_recv() {
        let line = RecordLine {
            t_ms: e.at.saturating_duration_since(start).as_secs_f64() * 1000.0,
            kind: &e.kind,
        };
        serde_json::to_writer(&mut file, &line)?;
        file.write_all(b"\n")?;
        file.flush()?;
        lines += 1;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("turnflow.example.toml");
        let config = load_config(&path).unwrap();
        assert_eq!(config.stt.provider.as_deref(), Some("emulator"));
        assert_eq!(config.engine.barge_in.as_deref(), Some("min-words=2"));
    }

    #[test]
    fn config_errors_name_the_file_and_field() {
        let dir = std::env::temp_dir().join(format!("turnflow-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[engine]\ncolour = \"red\"\n").unwrap();
        let e = format!("{:#}", load_config(&path).unwrap_err());
        assert!(e.contains("bad.toml") && e.contains("colour"), "{e}");
        std::fs::write(&path, "[engine]\nbarge_in = \"sometimes\"\n").unwrap();
        let e = format!("{:#}", load_config(&path).unwrap_err());
        assert!(
            e.contains("engine.barge_in") && e.contains("min-words=N"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unavailable_providers_are_named() {
        let e = check_provider("llm", "openai", &["scripted"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "llm provider \"openai\" is not available in this build; available: scripted"
        );
    }
}
