//! The agent every live command runs: which speech to text, language model and voice, with
//! which thresholds and policies, from flags over a `turnflow.toml` (see
//! `turnflow.example.toml`). `run` puts one conversation on a file or the microphone; `serve`
//! gives one to every WebSocket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use turnflow::emulator::{EmulatorConfig, MemoryEmulator, TurnDetection};
use turnflow::engine::{BargeInPolicy, SessionConfig};
use turnflow::flux::client::API_KEY_ENV;
use turnflow::flux::{ApiKey, Encoding, FluxConfig, ListenOptions, Thresholds};
use turnflow::llm::ToolSpec;
use turnflow::llm::anthropic::{ANTHROPIC_API_KEY_ENV, ANTHROPIC_BASE_URL};
use turnflow::llm::openai::OPENAI_API_KEY_ENV;
use turnflow::llm::{
    Anthropic, FailoverLlm, LanguageModel, OpenAiCompatible, ScriptedLlm, ToolExecutor,
};
use turnflow::scenario::{Scenario, TtsTiming};
use turnflow::tools::mcp::McpTransport;
use turnflow::tools::webhook::Method;
use turnflow::tools::{
    CallControl, DemoRestaurant, McpServer, McpServerConfig, Toolbox, WebhookTool,
};
use turnflow::tts::aura::AURA_BASE_URL;
use turnflow::tts::flux::{FLUX_TTS_BASE_URL, FLUX_TTS_MODEL, FluxTts};
use turnflow::tts::{
    AuraTts, Espeak, FailoverTts, OpenAiSpeech, SpeechSynthesizer, StoredSpeech, SyntheticTts,
};

use crate::{ThresholdArgs, parse_barge_in, parse_presynthesis};

/// The sample rate of the local voices and of `run`'s audio.
pub(crate) const SAMPLE_RATE: u32 = 16000;

/// The eager threshold when none is set: Deepgram's guidance puts 0.3-0.5 at earlier ends
/// and more false starts, 0.6-0.8 at fewer of both.
const DEFAULT_EAGER_EOT_THRESHOLD: f64 = 0.5;

/// How much sooner than the engine's own limit a lone provider's chain gives up on a first
/// token or first audio, so that its breaker sees the timeout the engine acts on.
const LONE_PROVIDER_MARGIN: Duration = Duration::from_millis(250);

/// How long the voice has at start to render the fallback line before a local voice does.
const FALLBACK_RENDER_LIMIT: Duration = Duration::from_secs(5);

/// The agent's settings on the command line; each overrides `--config`.
#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// Settings file; flags override it.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
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
    /// Voice: `synthetic`, `aura` (Deepgram, needs DEEPGRAM_API_KEY), `flux` (Deepgram Flux
    /// TTS; with `--stt emulator` it is the emulator's, offline, and with `--stt flux`
    /// Deepgram's), `openai` (OpenAI-compatible speech) or `espeak` (local espeak-ng); a
    /// comma-separated list of voices with one sample rate (`flux,aura`) fails over before the
    /// first audio.
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
    /// How long a Flux outage may last before the session gives up (`30s`, `2m`): reconnects
    /// are retried with jittered backoff until then.
    #[arg(long, value_parser = crate::parse_duration)]
    flux_reconnect_budget: Option<Duration>,
}

/// Where the user's turns come from.
pub(crate) enum Stt {
    /// The local emulator in voice-activity mode (transcripts from the scenario's user lines).
    Emulator(EmulatorConfig),
    /// Deepgram Flux (or another endpoint speaking its protocol).
    Flux(Box<FluxConfig>),
}

/// A resolved agent: everything a session needs but the audio.
pub(crate) struct Agent {
    pub(crate) stt: Stt,
    /// Listen options for 16 kHz PCM16 (`serve` sets the rate per session).
    pub(crate) options: ListenOptions,
    pub(crate) session: SessionConfig,
    pub(crate) llm: Arc<dyn LanguageModel>,
    pub(crate) tts: Arc<dyn SpeechSynthesizer>,
    /// The tools offered to the model: the demo restaurant's beside the scripted model, the
    /// webhooks, and (once [`Agent::start_tools`] has run) the MCP servers'.
    pub(crate) tools: Option<Arc<dyn ToolExecutor>>,
    /// The tools known before any server is started, and the MCP servers to start.
    pending_tools: Option<ToolSetup>,
    /// The MCP servers started, to close at the end.
    mcp_servers: Vec<Arc<McpServer>>,
}

/// One `[[tools.mcp]]`, checked.
struct McpEntry {
    config: McpServerConfig,
    prefixed: bool,
}

/// `[tools]` checked, nothing started yet.
pub(crate) struct ToolSetup {
    toolbox: Toolbox,
    mcp: Vec<McpEntry>,
    /// Whether a tool lives outside the process (a webhook or an MCP server).
    outside: bool,
}

impl ToolSetup {
    /// Checks `config` (the demo restaurant's tools by default when `scripted`).
    ///
    /// # Errors
    /// A setting that cannot work, named.
    pub(crate) fn from_config(config: &ToolsConfig, scripted: bool) -> Result<Self> {
        Ok(Self {
            toolbox: toolbox(config, scripted)?,
            mcp: config
                .mcp
                .iter()
                .map(mcp_entry)
                .collect::<Result<Vec<_>>>()?,
            outside: !config.mcp.is_empty() || !config.webhook.is_empty(),
        })
    }

    /// Whether a tool runs outside this process, in real time.
    pub(crate) fn has_outside_tools(&self) -> bool {
        self.outside
    }

    /// Starts the MCP servers, lists their tools and puts every tool in one toolbox (`None`
    /// when there is no tool); the servers are returned to be closed at the end.
    ///
    /// # Errors
    /// A server that does not start or list its tools, or tools whose names clash.
    pub(crate) async fn start(
        self,
    ) -> Result<(Option<Arc<dyn ToolExecutor>>, Vec<Arc<McpServer>>)> {
        let mut toolbox = self.toolbox;
        let mut servers = Vec::new();
        for entry in self.mcp {
            let name = entry.config.name.clone();
            let server = Arc::new(McpServer::start(entry.config).await?);
            servers.push(server.clone());
            toolbox.add(
                &format!("mcp server {name}"),
                entry.prefixed.then_some(name.as_str()),
                server,
            )?;
        }
        let tools = (!toolbox.is_empty()).then(|| Arc::new(toolbox) as Arc<dyn ToolExecutor>);
        Ok((tools, servers))
    }
}

impl Agent {
    /// Resolves flags over the settings file, checking every choice before any I/O.
    pub(crate) fn resolve(args: &AgentArgs) -> Result<Self> {
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
            check_provider(
                "tts",
                one,
                &["synthetic", "aura", "flux", "openai", "espeak"],
            )?;
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
        let mut thresholds = args.thresholds.over(Thresholds {
            eager_eot_threshold: file.stt.eager_eot_threshold,
            eot_threshold: file.stt.eot_threshold,
            eot_timeout_ms: file.stt.eot_timeout_ms,
        });
        // Speculation is what makes an agent answer soon after the end of a turn, so eager
        // mode is on unless the settings turn speculation off.
        if thresholds.eager_eot_threshold.is_none() && file.engine.speculation != Some(false) {
            thresholds.eager_eot_threshold = Some(DEFAULT_EAGER_EOT_THRESHOLD);
        }
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
        if let Some(v) = &file.engine.presynthesis {
            session.response.presynthesis = parse_presynthesis(v).expect("checked on load");
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
        // Flux TTS goes where the listening half goes: the emulator's unless Flux is real.
        let flux_tts = match (&*stt, file.tts.url.as_deref()) {
            (_, Some(url)) => FluxTtsAt::Url(url.to_owned()),
            ("flux", None) => FluxTtsAt::Url(FLUX_TTS_BASE_URL.to_owned()),
            _ => FluxTtsAt::Emulator(EmulatorConfig::new(scenario.clone())),
        };
        let voices = tts
            .split(',')
            .map(|one| voice_backend(one, &file.tts, timing.clone(), api_key.clone(), &flux_tts))
            .collect::<Result<Vec<_>>>()?;
        // Even one provider goes in a chain, for the breaker every session shares. Alone, it
        // may take nearly as long as the engine allows before its breaker counts a timeout;
        // in a longer chain, the next provider must have time to answer.
        let lone_voice = voices.len() == 1;
        let mut voice = FailoverTts::new(voices)?;
        if lone_voice {
            voice.first_audio_timeout = session
                .response
                .tts_ttfb_timeout
                .saturating_sub(LONE_PROVIDER_MARGIN);
        }
        let llm_names: Vec<String> = llm
            .split(',')
            .map(|one| one.split_once(':').map_or(one, |(p, _)| p).to_owned())
            .collect();
        let chain = llm
            .split(',')
            .map(|one| language_model(one, &file.llm, args, &scenario))
            .collect::<Result<Vec<_>>>()?;
        let lone_model = chain.len() == 1;
        let mut llm = FailoverLlm::new(chain);
        if lone_model {
            llm.first_token_timeout = session
                .response
                .llm_ttft_timeout
                .saturating_sub(LONE_PROVIDER_MARGIN);
        }
        let (llm, voice): (Arc<dyn LanguageModel>, Arc<dyn SpeechSynthesizer>) =
            (Arc::new(llm), Arc::new(voice));
        let stt = if stt == "emulator" {
            let mut config = EmulatorConfig::new(scenario.clone());
            config.turn_detection = TurnDetection::Vad;
            Stt::Emulator(config)
        } else {
            let mut flux = FluxConfig::new(options.clone());
            flux.api_key = api_key.map(ApiKey::new);
            if let Some(budget) = args
                .flux_reconnect_budget
                .or(file.stt.reconnect_budget_ms.map(Duration::from_millis))
            {
                flux.reconnect.budget = budget;
            }
            if let Some(url) = args.flux_url.clone().or(file.stt.url.clone()) {
                flux = flux.with_base_url(url);
            }
            Stt::Flux(Box::new(flux))
        };
        let tools = ToolSetup::from_config(&file.tools, llm_names.iter().all(|p| p == "scripted"))?;
        Ok(Agent {
            stt,
            options,
            session,
            llm,
            tts: voice,
            tools: None,
            pending_tools: Some(tools),
            mcp_servers: Vec::new(),
        })
    }

    /// Starts the MCP servers, lists their tools and puts every tool in one toolbox.
    ///
    /// # Errors
    /// A server that does not start or list its tools, or tools whose names clash.
    pub(crate) async fn start_tools(&mut self) -> Result<()> {
        if let Some(setup) = self.pending_tools.take() {
            (self.tools, self.mcp_servers) = setup.start().await?;
        }
        Ok(())
    }

    /// What ends the MCP servers: each is closed (a child process asked to end).
    pub(crate) fn tool_servers(&self) -> Vec<Arc<McpServer>> {
        self.mcp_servers.clone()
    }

    /// Renders the fallback line with the voice (or a local one, when the voice is down now)
    /// and keeps it, so the apology plays even when the voice is what failed.
    pub(crate) async fn keep_fallback_line(&mut self) {
        let response = &mut self.session.response;
        response.stored_fallback =
            StoredSpeech::render(&*self.tts, &response.fallback_line, FALLBACK_RENDER_LIMIT)
                .await
                .map(Arc::new);
    }
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
    /// What the agent can do.
    #[serde(default)]
    pub tools: ToolsConfig,
}

/// `[tools]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolsConfig {
    /// The demo restaurant's tools; on by default beside the scripted model, off otherwise.
    pub demo: Option<bool>,
    /// `end_call`: the model may end the call after its goodbye.
    #[serde(default)]
    pub end_call: bool,
    /// `[[tools.webhook]]`: tools behind HTTP endpoints.
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    /// `[[tools.mcp]]`: MCP servers whose tools the agent gets.
    #[serde(default)]
    pub mcp: Vec<McpConfig>,
}

/// One `[[tools.mcp]]`: a `command` (stdio) or a `url` (Streamable HTTP).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct McpConfig {
    pub name: String,
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// The child's added variables; `${NAME}` is taken from the environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub url: Option<String>,
    /// Header values; `${NAME}` is taken from the environment.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// `auto` (the default), `2026-07-28` or `2025-11-25`.
    pub protocol: Option<String>,
    /// Believe its read-only annotations (a lookup may then run while a reply is a guess).
    #[serde(default)]
    pub trusted: bool,
    /// Tools read-only whatever the server says.
    #[serde(default)]
    pub read_only: Vec<String>,
    /// Tools side-effecting whatever the server says.
    #[serde(default)]
    pub side_effecting: Vec<String>,
    /// Name its tools `NAME__tool`, for servers whose tool names clash.
    #[serde(default)]
    pub prefix: bool,
    /// Per call (default 10 s).
    pub timeout_ms: Option<u64>,
    /// To start and list its tools (default 20 s).
    pub start_timeout_ms: Option<u64>,
}

/// One `[[tools.webhook]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookConfig {
    pub name: String,
    pub description: String,
    pub url: String,
    /// `POST` (the default), `PUT` or `GET`.
    pub method: Option<String>,
    /// Per call; the engine's own 10 s limit applies as well.
    pub timeout_ms: Option<u64>,
    /// `read_only` or `side_effecting`.
    pub effect: String,
    /// The arguments' JSON Schema (an object with no parameters when absent).
    pub parameters: Option<toml::Value>,
    /// Header values; `${NAME}` is taken from the environment.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SttConfig {
    pub provider: Option<String>,
    pub url: Option<String>,
    pub eager_eot_threshold: Option<f64>,
    pub eot_threshold: Option<f64>,
    pub eot_timeout_ms: Option<u64>,
    pub reconnect_budget_ms: Option<u64>,
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
    pub presynthesis: Option<String>,
}

/// The tools of `[tools]` known without starting anything: the demo restaurant's (beside the
/// scripted model, which acts out the scenario's calls, unless `demo = false`), call control
/// and the webhooks.
fn toolbox(config: &ToolsConfig, scripted: bool) -> Result<Toolbox> {
    let mut toolbox = Toolbox::new();
    if config.demo.unwrap_or(scripted) {
        toolbox.add(
            "the demo restaurant",
            None,
            Arc::new(DemoRestaurant::default()),
        )?;
    }
    if config.end_call {
        toolbox.add("call control", None, Arc::new(CallControl::ending()))?;
    }
    for hook in &config.webhook {
        let at = |what: &str| format!("tools.webhook {:?}: {what}", hook.name);
        let effect = WebhookTool::effect(&hook.effect).map_err(|e| anyhow::anyhow!(at(&e)))?;
        let method: Method = hook
            .method
            .as_deref()
            .unwrap_or("POST")
            .parse()
            .map_err(|e: String| anyhow::anyhow!(at(&e)))?;
        let parameters = match &hook.parameters {
            Some(p) => serde_json::to_value(p)
                .map_err(|e| anyhow::anyhow!(at(&format!("parameters: {e}"))))?,
            None => serde_json::json!({"type": "object", "properties": {}}),
        };
        let mut headers = Vec::new();
        for (name, value) in &hook.headers {
            let value = from_environment(value).map_err(|var| {
                anyhow::anyhow!(at(&format!(
                    "header {name} needs the environment variable {var}, which is not set"
                )))
            })?;
            headers.push((name.clone(), value));
        }
        let spec = ToolSpec {
            name: hook.name.clone(),
            description: hook.description.clone(),
            parameters,
            effect,
        };
        let timeout = Duration::from_millis(hook.timeout_ms.unwrap_or(10_000));
        let tool = WebhookTool::new(spec, &hook.url, method, timeout, &headers)?;
        toolbox.add(&format!("webhook {}", hook.name), None, Arc::new(tool))?;
    }
    Ok(toolbox)
}

/// A `[[tools.mcp]]` checked: one transport, the protocol spelled right, secrets taken from
/// the environment.
fn mcp_entry(config: &McpConfig) -> Result<McpEntry> {
    let at = |what: &str| anyhow::anyhow!("tools.mcp {:?}: {what}", config.name);
    let from_env = |what: &str, values: &std::collections::BTreeMap<String, String>| {
        values
            .iter()
            .map(|(name, value)| {
                from_environment(value)
                    .map(|value| (name.clone(), value))
                    .map_err(|var| {
                        at(&format!(
                            "{what} {name} needs the environment variable {var}, which is not set"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()
    };
    let transport = match (&config.command, &config.url) {
        (Some(command), None) => McpTransport::Stdio {
            command: command.clone(),
            args: config.args.clone(),
            env: from_env("env", &config.env)?,
        },
        (None, Some(url)) => McpTransport::Http {
            url: url.clone(),
            headers: from_env("header", &config.headers)?,
        },
        _ => {
            return Err(at(
                "give either command (a server run as a child process) or url (Streamable HTTP), not both or neither",
            ));
        }
    };
    let mut server = McpServerConfig::new(&config.name, transport);
    if let Some(protocol) = &config.protocol {
        server.protocol = protocol.parse().map_err(|e: String| at(&e))?;
    }
    server.trusted = config.trusted;
    server.read_only = config.read_only.clone();
    server.side_effecting = config.side_effecting.clone();
    if let Some(ms) = config.timeout_ms {
        server.call_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = config.start_timeout_ms {
        server.start_timeout = Duration::from_millis(ms);
    }
    Ok(McpEntry {
        config: server,
        prefixed: config.prefix,
    })
}

/// `text` with every `${NAME}` replaced by that environment variable.
///
/// # Errors
/// The name of a variable that is not set.
fn from_environment(text: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| name.to_owned())?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
    if let Some(value) = &config.engine.presynthesis {
        parse_presynthesis(value)
            .map_err(|e| anyhow::anyhow!("{}: engine.presynthesis: {e}", path.display()))?;
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

/// Where `--tts flux` speaks.
enum FluxTtsAt {
    /// In process, on the embedded emulator.
    Emulator(EmulatorConfig),
    /// At this base URL (Deepgram's by default, `[tts] url` otherwise).
    Url(String),
}

fn voice_backend(
    kind: &str,
    config: &TtsConfig,
    timing: TtsTiming,
    deepgram_key: Option<String>,
    flux_tts: &FluxTtsAt,
) -> Result<Arc<dyn SpeechSynthesizer>> {
    Ok(match kind {
        "flux" => {
            let model = config.model.as_deref().unwrap_or(FLUX_TTS_MODEL);
            // Aura's rate, so the two can form a chain either way round.
            match flux_tts {
                FluxTtsAt::Emulator(emulator) => Arc::new(
                    FluxTts::new("ws://emulator.invalid", model, 24000, None)?
                        .with_connector(Arc::new(MemoryEmulator::new(emulator.clone()))),
                ),
                FluxTtsAt::Url(url) => {
                    let key = deepgram_key
                        .or_else(|| std::env::var(API_KEY_ENV).ok())
                        .filter(|k| !k.is_empty());
                    if key.is_none() && url.starts_with("wss://") {
                        bail!(
                            "{API_KEY_ENV} is not set: --tts flux at {url} needs a Deepgram API key (or use --stt emulator for the offline voice)"
                        );
                    }
                    Arc::new(FluxTts::new(url, model, 24000, key.map(ApiKey::new))?)
                }
            }
        }
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
    args: &AgentArgs,
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
