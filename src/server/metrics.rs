//! The server's Prometheus metrics: fixed names, low cardinality (no session id in any label;
//! providers and error kinds are bounded by the configuration), rendered in the text
//! exposition format at `/metrics`. Counters and histogram buckets are atomics, so recording
//! never waits for a scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::BackendError;
use crate::failover::ProviderHealth;
use crate::report::TurnReport;

/// Latency buckets in seconds: from a fast local reply to a slow provider.
/// Tool names kept as labels; more count as `other`.
const TOOL_LABELS: usize = 64;
const LATENCY_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];
/// Engine overhead and barge-in stop: milliseconds matter.
const FAST_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5,
];

/// One histogram with fixed buckets.
#[derive(Debug)]
pub(super) struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; summed when rendered).
    buckets: Vec<AtomicU64>,
    /// Observations above the last bound.
    overflow: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(super) fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            overflow: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(super) fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        match self.bounds.iter().position(|b| seconds <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    pub(super) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// How a session ended, for `turnflow_sessions_total{outcome}`.
pub use crate::call::SessionEnd;

/// Why a connection was refused before it became a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// `--max-sessions` reached.
    Full,
    /// The server is draining.
    Draining,
    /// No or a wrong bearer token.
    Unauthorized,
    /// A browser page from an origin not allowed.
    Origin,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::Draining => "draining",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Origin => "origin",
        }
    }
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    active: AtomicU64,
    sessions: Mutex<BTreeMap<SessionEnd, u64>>,
    refused: Mutex<BTreeMap<Refusal, u64>>,
    turns: AtomicU64,
    audio_after_stop: AtomicU64,
    flux_reconnected: AtomicU64,
    flux_reconnect_failed: AtomicU64,
    flux_offline_ms: AtomicU64,
    speculation: Mutex<BTreeMap<&'static str, u64>>,
    provider_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    tool_calls: Mutex<BTreeMap<(String, String), u64>>,
    tool_duration: Histogram,
    heard_clock: Mutex<BTreeMap<&'static str, u64>>,
    response_latency: Histogram,
    voice_to_voice: Histogram,
    engine_overhead: Histogram,
    barge_in_stop: Histogram,
    llm_ttft: Histogram,
    tts_ttfb: Histogram,
    clear_sent: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            active: AtomicU64::new(0),
            sessions: Mutex::default(),
            refused: Mutex::default(),
            turns: AtomicU64::new(0),
            audio_after_stop: AtomicU64::new(0),
            flux_reconnected: AtomicU64::new(0),
            flux_reconnect_failed: AtomicU64::new(0),
            flux_offline_ms: AtomicU64::new(0),
            speculation: Mutex::default(),
            provider_errors: Mutex::default(),
            tool_calls: Mutex::default(),
            tool_duration: Histogram::new(&LATENCY_BUCKETS),
            heard_clock: Mutex::default(),
            response_latency: Histogram::new(&LATENCY_BUCKETS),
            voice_to_voice: Histogram::new(&LATENCY_BUCKETS),
            engine_overhead: Histogram::new(&FAST_BUCKETS),
            barge_in_stop: Histogram::new(&FAST_BUCKETS),
            llm_ttft: Histogram::new(&LATENCY_BUCKETS),
            tts_ttfb: Histogram::new(&LATENCY_BUCKETS),
            clear_sent: Histogram::new(&FAST_BUCKETS),
        }
    }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock().expect("metrics lock").entry(key).or_default() += 1;
}

impl Metrics {
    /// Sessions running now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn session_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_ended(&self, outcome: SessionEnd) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        bump(&self.sessions, outcome);
    }

    /// Sessions that ended with `outcome` so far.
    pub fn sessions(&self, outcome: SessionEnd) -> u64 {
        self.sessions
            .lock()
            .expect("metrics lock")
            .get(&outcome)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn refused(&self, why: Refusal) {
        bump(&self.refused, why);
    }

    pub(crate) fn turn(&self, turn: &TurnReport) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        bump(&self.speculation, turn.speculation.as_str());
        let seconds = |ms: Option<f64>| ms.map(|ms| ms / 1000.0);
        let pairs = [
            (&self.response_latency, seconds(turn.response_latency_ms)),
            (&self.voice_to_voice, seconds(turn.voice_to_voice_ms)),
            (&self.engine_overhead, seconds(turn.engine_overhead_ms)),
            (&self.barge_in_stop, seconds(turn.barge_in_stop_ms)),
            (&self.llm_ttft, seconds(turn.llm_ttft_ms)),
            (&self.tts_ttfb, seconds(turn.tts_ttfb_ms)),
        ];
        for (histogram, value) in pairs {
            if let Some(v) = value {
                histogram.observe(v);
            }
        }
    }

    /// `n` interrupted replies whose heard part was decided by `clock` (`carrier_marks`,
    /// `client_reports` or `server_clock`).
    pub(crate) fn cuts_decided_by(&self, clock: &'static str, n: u64) {
        if n > 0 {
            *self
                .heard_clock
                .lock()
                .expect("metrics lock")
                .entry(clock)
                .or_default() += n;
        }
    }

    /// `frames` of a client's audio that came after its `stop` were dropped.
    pub(crate) fn audio_after_stop(&self, frames: u64) {
        self.audio_after_stop.fetch_add(frames, Ordering::Relaxed);
    }

    /// A call's Flux connection reconnected `reconnected` times, failed `failed_attempts`
    /// attempts, and was away for `offline` over the outages it rode through.
    pub(crate) fn flux_outages(
        &self,
        reconnected: u64,
        failed_attempts: u64,
        offline: std::time::Duration,
    ) {
        self.flux_reconnected
            .fetch_add(reconnected, Ordering::Relaxed);
        self.flux_reconnect_failed
            .fetch_add(failed_attempts, Ordering::Relaxed);
        self.flux_offline_ms
            .fetch_add(offline.as_millis() as u64, Ordering::Relaxed);
    }

    /// Audio frames clients sent after their `stop`, dropped, so far.
    pub fn audio_dropped_after_stop(&self) -> u64 {
        self.audio_after_stop.load(Ordering::Relaxed)
    }

    /// A `clear` reached the client's socket `seconds` after the StartOfTurn that caused it.
    pub(crate) fn clear_sent(&self, seconds: f64) {
        self.clear_sent.observe(seconds);
    }

    /// A tool call returned (or failed, or timed out) after `seconds`. Tool names come from
    /// the configuration, but a model may call one that does not exist: past
    /// [`TOOL_LABELS`] names, the rest count as `other`.
    pub(crate) fn tool_call(&self, tool: &str, outcome: &str, seconds: f64) {
        self.tool_duration.observe(seconds);
        let mut calls = self.tool_calls.lock().expect("metrics lock");
        let known = calls.keys().any(|(t, _)| t == tool);
        let distinct = calls
            .keys()
            .map(|(t, _)| t)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let tool = if known || distinct < TOOL_LABELS {
            tool
        } else {
            "other"
        };
        *calls
            .entry((tool.to_owned(), outcome.to_owned()))
            .or_default() += 1;
    }

    pub(crate) fn provider_error(&self, error: &BackendError) {
        bump(
            &self.provider_errors,
            (error.provider.clone(), error.kind.as_str()),
        );
    }

    /// The Prometheus text exposition of every metric; `providers` are the breakers of the
    /// model and voice chains.
    pub fn render(&self, ready: bool, providers: &[ProviderHealth]) -> String {
        let mut out = String::with_capacity(8192);
        let _ = writeln!(
            out,
            "# HELP turnflow_sessions_active Sessions running now.\n# TYPE turnflow_sessions_active gauge\nturnflow_sessions_active {}",
            self.active()
        );
        let _ = writeln!(
            out,
            "# HELP turnflow_ready Whether the server takes new sessions (0 while draining or full).\n# TYPE turnflow_ready gauge\nturnflow_ready {}",
            u8::from(ready)
        );
        if !providers.is_empty() {
            out.push_str("# HELP turnflow_provider_up Whether a model or voice provider is being asked (0 while its breaker is open: it failed every request for a while).\n# TYPE turnflow_provider_up gauge\n");
            for p in providers {
                let _ = writeln!(
                    out,
                    "turnflow_provider_up{{kind=\"{}\",provider=\"{}\"}} {}",
                    p.kind,
                    escape_label(&p.provider),
                    u8::from(p.up)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP turnflow_sessions_total Sessions ended, by outcome.\n# TYPE turnflow_sessions_total counter"
        );
        let sessions = self.sessions.lock().expect("metrics lock").clone();
        for outcome in [
            SessionEnd::Completed,
            SessionEnd::ClientClosed,
            SessionEnd::ProtocolError,
            SessionEnd::SttFailed,
            SessionEnd::Shutdown,
        ] {
            let n = sessions.get(&outcome).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "turnflow_sessions_total{{outcome=\"{}\"}} {n}",
                outcome.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP turnflow_connections_refused_total Connections refused before a session, by reason.\n# TYPE turnflow_connections_refused_total counter"
        );
        let refused = self.refused.lock().expect("metrics lock").clone();
        for why in [
            Refusal::Full,
            Refusal::Draining,
            Refusal::Unauthorized,
            Refusal::Origin,
        ] {
            let n = refused.get(&why).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "turnflow_connections_refused_total{{reason=\"{}\"}} {n}",
                why.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP turnflow_audio_dropped_after_stop_total Audio frames a client sent after its stop, dropped.\n# TYPE turnflow_audio_dropped_after_stop_total counter\nturnflow_audio_dropped_after_stop_total {}",
            self.audio_dropped_after_stop()
        );
        let _ = writeln!(
            out,
            "# HELP turnflow_flux_reconnects_total Flux reconnect attempts of ended calls, by outcome.\n# TYPE turnflow_flux_reconnects_total counter\nturnflow_flux_reconnects_total{{outcome=\"reconnected\"}} {}\nturnflow_flux_reconnects_total{{outcome=\"failed\"}} {}",
            self.flux_reconnected.load(Ordering::Relaxed),
            self.flux_reconnect_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP turnflow_flux_offline_seconds_total Time ended calls spent without Flux, over the outages they rode through.\n# TYPE turnflow_flux_offline_seconds_total counter\nturnflow_flux_offline_seconds_total {:.3}",
            self.flux_offline_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "# HELP turnflow_turns_total User turns answered or cut.\n# TYPE turnflow_turns_total counter\nturnflow_turns_total {}",
            self.turns.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP turnflow_speculation_total Turns by speculation outcome (hit: an eager reply was promoted; miss: every one was withdrawn; none: no eager end).\n# TYPE turnflow_speculation_total counter"
        );
        let speculation = self.speculation.lock().expect("metrics lock").clone();
        for outcome in ["hit", "miss", "none"] {
            let n = speculation.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "turnflow_speculation_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP turnflow_provider_errors_total Replies a language model or voice failed, by provider and kind.\n# TYPE turnflow_provider_errors_total counter"
        );
        for ((provider, kind), n) in self.provider_errors.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "turnflow_provider_errors_total{{provider=\"{}\",kind=\"{kind}\"}} {n}",
                escape_label(provider)
            );
        }
        let _ = writeln!(
            out,
            "# HELP turnflow_tool_calls_total Tool calls that ended, by tool and outcome (ok, error, timed_out).\n# TYPE turnflow_tool_calls_total counter"
        );
        for ((tool, outcome), n) in self.tool_calls.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "turnflow_tool_calls_total{{tool=\"{}\",outcome=\"{}\"}} {n}",
                escape_label(tool),
                escape_label(outcome)
            );
        }
        self.tool_duration.render(
            &mut out,
            "turnflow_tool_call_seconds",
            "How long tool calls took, from the call to its result.",
        );
        let _ = writeln!(
            out,
            "# HELP turnflow_heard_clock_total Replies cut (by the user, or by the end of the session) by the clock that decided what was heard (carrier_marks: the carrier's echoed marks; client_reports: the browser's playback reports; server_clock: what the server wrote).\n# TYPE turnflow_heard_clock_total counter"
        );
        let clocks = self.heard_clock.lock().expect("metrics lock").clone();
        for clock in ["carrier_marks", "client_reports", "server_clock"] {
            let n = clocks.get(clock).copied().unwrap_or(0);
            let _ = writeln!(out, "turnflow_heard_clock_total{{clock=\"{clock}\"}} {n}");
        }
        self.response_latency.render(
            &mut out,
            "turnflow_response_latency_seconds",
            "From the user's end of turn (Flux EndOfTurn) to the first agent audio written.",
        );
        self.voice_to_voice.render(
            &mut out,
            "turnflow_voice_to_voice_seconds",
            "From the end of the user's last word sent to Flux to the first agent audio written.",
        );
        self.engine_overhead.render(
            &mut out,
            "turnflow_engine_overhead_seconds",
            "Time turnflow itself adds to a reply, providers excluded.",
        );
        self.barge_in_stop.render(
            &mut out,
            "turnflow_barge_in_stop_seconds",
            "From the user's StartOfTurn over the agent to the last agent frame written.",
        );
        self.llm_ttft.render(
            &mut out,
            "turnflow_llm_time_to_first_token_seconds",
            "From the language model request to its first token.",
        );
        self.tts_ttfb.render(
            &mut out,
            "turnflow_tts_time_to_first_byte_seconds",
            "From the first sentence sent to the voice to its first audio.",
        );
        self.clear_sent.render(
            &mut out,
            "turnflow_clear_sent_seconds",
            "From the StartOfTurn that interrupted the agent to the clear written to the browser or carrier.",
        );
        out
    }
}

/// A provider name as a label value: backslash, quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_everything() {
        let h = Histogram::new(&FAST_BUCKETS);
        for v in [0.0001, 0.0007, 0.003, 2.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.5\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert!(out.contains("x_sum 2.0038"), "{out}");
    }

    #[test]
    fn labels_are_escaped_and_bounded() {
        let m = Metrics::default();
        m.provider_error(&BackendError::new(
            "open\"ai",
            crate::error::ErrorKind::Timeout,
            "slow",
        ));
        let text = m.render(true, &[]);
        assert!(
            text.contains(
                "turnflow_provider_errors_total{provider=\"open\\\"ai\",kind=\"timeout\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("session="), "no per-session label");
    }

    #[test]
    fn tool_calls_are_counted_by_tool_and_outcome_with_the_names_bounded() {
        let m = Metrics::default();
        m.tool_call("check_availability", "ok", 0.3);
        m.tool_call("check_availability", "ok", 0.3);
        m.tool_call("book_table", "timed_out", 10.0);
        for n in 0..100 {
            m.tool_call(&format!("invented_{n}"), "error", 0.001);
        }
        let text = m.render(true, &[]);
        assert!(
            text.contains(
                "turnflow_tool_calls_total{tool=\"check_availability\",outcome=\"ok\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "turnflow_tool_calls_total{tool=\"book_table\",outcome=\"timed_out\"} 1\n"
            )
        );
        assert!(
            text.contains("turnflow_tool_calls_total{tool=\"other\",outcome=\"error\"} 38\n"),
            "{text}"
        );
        assert_eq!(text.matches("turnflow_tool_calls_total{").count(), 65);
        assert!(text.contains("turnflow_tool_call_seconds_count 103\n"));
    }

    #[test]
    fn each_provider_of_a_chain_has_its_gauge() {
        let providers = [
            ProviderHealth {
                kind: "llm",
                provider: "openai".into(),
                up: false,
            },
            ProviderHealth {
                kind: "tts",
                provider: "flux-tts".into(),
                up: true,
            },
        ];
        let text = Metrics::default().render(true, &providers);
        assert!(
            text.contains("# TYPE turnflow_provider_up gauge\n"),
            "{text}"
        );
        assert!(text.contains("turnflow_provider_up{kind=\"llm\",provider=\"openai\"} 0\n"));
        assert!(text.contains("turnflow_provider_up{kind=\"tts\",provider=\"flux-tts\"} 1\n"));
        assert!(
            !Metrics::default()
                .render(true, &[])
                .contains("turnflow_provider_up")
        );
    }
}
