//! `turnflow serve`: the agent for many callers at once, behind one HTTP port (the server
//! itself is [`turnflow::server`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use turnflow::emulator::MemoryEmulator;
use turnflow::engine::Backends;
use turnflow::flux::{ApiKey, Connector, FluxConfig, WebSocketConnector};
use turnflow::server::{Server, ServerConfig};

use crate::agent::{Agent, AgentArgs, Stt};

#[derive(Parser)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0 picks one; 0.0.0.0:8080 in a container).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    agent: AgentArgs,
    /// Sessions at once; more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 100)]
    max_sessions: usize,
    /// Require this bearer token of every session (Authorization: Bearer, or ?token=).
    #[arg(long, env = "TURNFLOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An origin browser pages may connect from (repeatable; `*` for any). Without it only
    /// the page this server serves may connect.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// On SIGTERM or Ctrl-C, how long running sessions may go on (e.g. 10m, 30s).
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    drain_timeout: Duration,
    /// Close a session that sends no audio for this long (control messages, pings and carrier
    /// marks do not count).
    #[arg(long, default_value = "15s", value_parser = crate::parse_duration)]
    idle_timeout: Duration,
    /// Close a connection that has not sent its start this long after connecting.
    #[arg(long, default_value = "15s", value_parser = crate::parse_duration)]
    start_timeout: Duration,
    /// After a client's stop, how long the reply in progress may go on.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    finish_timeout: Duration,
    /// Require this bearer token of /metrics (Authorization: Bearer); without it /metrics is
    /// open, for a port only the cluster reaches.
    #[arg(long, env = "TURNFLOW_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Where carriers reach this server (https://agent.example.com): Twilio's webhook
    /// (/twilio/voice) answers TwiML pointing the call's media at its /telephony.
    #[arg(long)]
    public_url: Option<String>,
    /// Twilio's auth token: requests to /twilio/voice and /telephony must then carry a valid
    /// X-Twilio-Signature.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    twilio_auth_token: Option<String>,
    /// Phone calls: offer the model `transfer_call`, which hands the caller to this number
    /// (E.164, e.g. +15551234567) once the agent has said so. Twilio signs in with
    /// --twilio-auth-token; Telnyx with TELNYX_API_KEY.
    #[arg(long, value_name = "NUMBER")]
    transfer_to: Option<String>,
    /// Telnyx's API key, for transfers on Telnyx calls.
    #[arg(long, env = "TELNYX_API_KEY", hide_env_values = true)]
    telnyx_api_key: Option<String>,
    /// Phone calls: what the agent says when a call connects.
    #[arg(long)]
    greeting: Option<String>,
    /// Phone calls: re-prompt a caller silent this long after the agent spoke, once; then say
    /// goodbye and hang up (e.g. 8s).
    #[arg(long, value_parser = crate::parse_duration)]
    reprompt_after: Option<Duration>,
    /// Record every session into DIR/<session id>/ for `turnflow replay`.
    #[arg(long, value_name = "DIR")]
    record: Option<std::path::PathBuf>,
    /// WebRTC's UDP port, one for every WebRTC session (default: the --listen address and
    /// port number, over UDP; `off` serves the WebSocket alone). Needs a build with the
    /// webrtc feature.
    #[arg(long, value_name = "ADDR|off")]
    webrtc_udp: Option<String>,
    /// The address WebRTC clients should send to when it is not the bound one (behind NAT or
    /// a load balancer; repeatable). Without a port, the bound port.
    #[arg(long = "webrtc-candidate", value_name = "IP[:PORT]")]
    webrtc_candidates: Vec<String>,
}

/// Parses `--webrtc-candidate` values: `IP:PORT`, `[IPv6]:PORT` or a bare IP (port 0: the
/// bound port).
fn webrtc_candidates(values: &[String]) -> Result<Vec<SocketAddr>> {
    values
        .iter()
        .map(|value| {
            value
                .parse::<SocketAddr>()
                .or_else(|_| value.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--webrtc-candidate {value}: expected IP or IP:PORT (203.0.113.7:3478, [2001:db8::7]:3478)"
                    )
                })
        })
        .collect()
}

/// The WebRTC port `serve` was asked for: `Some(address)` to bind, `None` for none.
/// Explicit means a failure to bind stops the start; the default only warns.
fn webrtc_address(args: &ServeArgs) -> Result<Option<(SocketAddr, bool)>> {
    match args.webrtc_udp.as_deref() {
        Some("off") => Ok(None),
        Some(value) => value
            .parse()
            .map(|address| Some((address, true)))
            .map_err(|_| anyhow::anyhow!("--webrtc-udp {value}: expected IP:PORT or off")),
        None => Ok(Some((args.listen, false))),
    }
}

/// Binds WebRTC's UDP port when asked (and built in).
#[cfg(feature = "webrtc")]
fn bind_webrtc(
    address: Option<(SocketAddr, bool)>,
    candidates: &[SocketAddr],
) -> Result<Option<turnflow::server::webrtc::WebRtcPort>> {
    let Some((address, explicit)) = address else {
        return Ok(None);
    };
    match turnflow::server::webrtc::WebRtcPort::bind(address, candidates) {
        Ok(port) => Ok(Some(port)),
        Err(e) if explicit => Err(e).context("--webrtc-udp: WebRTC cannot start"),
        Err(e) => {
            eprintln!("note: WebRTC is off ({e}); browsers use the WebSocket");
            Ok(None)
        }
    }
}

pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    let mut agent = Agent::resolve(&args.agent)?;
    if let Some(url) = &args.public_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        anyhow::bail!(
            "--public-url {url}: expected https://HOST (where carriers reach this server)"
        );
    }
    for (flag, limit) in [
        ("--idle-timeout", args.idle_timeout),
        ("--start-timeout", args.start_timeout),
        ("--finish-timeout", args.finish_timeout),
    ] {
        if limit.is_zero() {
            anyhow::bail!("{flag} 0 would end every session at once; give a duration such as 15s");
        }
    }
    if let Some(number) = &args.transfer_to
        && !turnflow::server::telephony::transfer::is_e164(number)
    {
        anyhow::bail!(
            "--transfer-to {number}: expected a phone number in E.164 form, + and 8 to 15 digits (+15551234567)"
        );
    }
    let webrtc_candidates = webrtc_candidates(&args.webrtc_candidates)?;
    let webrtc_address = webrtc_address(&args)?;
    #[cfg(not(feature = "webrtc"))]
    if webrtc_address.is_some_and(|(_, explicit)| explicit) || !webrtc_candidates.is_empty() {
        anyhow::bail!(
            "--webrtc-udp/--webrtc-candidate: this turnflow was built without WebRTC; build it \
             with --features webrtc (needs libopus-dev)"
        );
    }
    if args.max_sessions == 0 {
        anyhow::bail!("--max-sessions 0 would refuse everyone; give at least 1");
    }
    if let Some(dir) = &args.record {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--record {}: cannot create the directory", dir.display()))?;
    }
    #[cfg(feature = "otel")]
    let traces = crate::traces::Traces::from_env()?;
    #[cfg(feature = "otel")]
    let exporter = traces.as_ref().map(|t| t.exporter.clone());
    #[cfg(not(feature = "otel"))]
    crate::traces::warn_if_asked();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(async move {
        agent.keep_fallback_line().await;
        agent.start_tools().await?;
        let tool_servers = agent.tool_servers();
        let (flux, connector, stt): (FluxConfig, Arc<dyn Connector>, &str) = match agent.stt {
            Stt::Emulator(config) => (
                FluxConfig::new(agent.options.clone()).with_base_url("ws://emulator.invalid"),
                Arc::new(MemoryEmulator::new(config)),
                "emulator (voice activity; transcripts are the scenario's lines)",
            ),
            Stt::Flux(flux) => (*flux, Arc::new(WebSocketConnector), "Deepgram Flux"),
        };
        let backends = Backends {
            llm: agent.llm,
            tts: agent.tts,
            tools: agent.tools,
        };
        let (llm, tts) = (
            backends.llm.name().to_owned(),
            backends.tts.name().to_owned(),
        );
        let mut config = ServerConfig::new(flux, connector, backends);
        config.session.machine = agent.session.machine;
        config.session.response = agent.session.response;
        config.max_sessions = args.max_sessions;
        config.token = args.token.filter(|t| !t.is_empty()).map(ApiKey::new);
        config.allowed_origins = args.allowed_origins;
        config.drain_timeout = args.drain_timeout;
        config.idle_timeout = args.idle_timeout;
        config.start_timeout = args.start_timeout;
        config.finish_timeout = args.finish_timeout;
        config.metrics_token = args.metrics_token.filter(|t| !t.is_empty()).map(ApiKey::new);
        config.public_url = args.public_url;
        config.greeting = args.greeting.filter(|g| !g.trim().is_empty());
        config.reprompt_after = args.reprompt_after.filter(|d| !d.is_zero());
        config.record_dir = args.record;
        #[cfg(feature = "otel")]
        {
            config.traces = exporter;
        }
        config.transfer_to = args.transfer_to;
        config.carrier_api.telnyx_api_key = args
            .telnyx_api_key
            .filter(|k| !k.is_empty())
            .map(ApiKey::new);
        config.twilio_auth_token = args
            .twilio_auth_token
            .filter(|t| !t.is_empty())
            .map(ApiKey::new);
        #[cfg(feature = "webrtc")]
        {
            config.webrtc = bind_webrtc(webrtc_address, &webrtc_candidates)?;
        }
        #[cfg(feature = "webrtc")]
        let webrtc = config.webrtc.as_ref().map_or_else(String::new, |port| {
            format!(
                "\n  WebRTC offers at POST /webrtc, media on udp {} (clients told {:?})",
                port.local_addr(),
                port.candidates()
            )
        });
        #[cfg(not(feature = "webrtc"))]
        let webrtc = {
            let _ = (webrtc_address, webrtc_candidates);
            ""
        };
        let server = Server::bind(args.listen, config)
            .await
            .with_context(|| format!("--listen {}: cannot listen", args.listen))?;
        let addr = server.local_addr();
        // One write: a reader that takes the first line and goes away must not break a later one.
        println!(
            "turnflow serve: http://{addr}/  (stt: {stt}; llm: {llm}; voice: {tts})\n  sessions at ws://{addr}/session, phone calls at ws://{addr}/telephony (Twilio webhook: POST /twilio/voice); /healthz /readyz /metrics; Ctrl-C drains{webrtc}"
        );
        let report = server
            .serve(async {
                let signal = crate::shutdown_signal().await;
                eprintln!("{signal}: draining (new sessions refused; running ones go on)");
            })
            .await?;
        eprintln!(
            "drained: {} session(s) were running, {} stopped at the drain timeout",
            report.running, report.stopped
        );
        for server in tool_servers {
            server.close().await;
        }
        Ok(())
    });
    #[cfg(feature = "otel")]
    if let Some(traces) = traces {
        traces.finish();
    }
    served
}
