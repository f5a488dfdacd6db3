//! Sends finished calls' spans ([`super::trace`]) to an OpenTelemetry collector over OTLP/HTTP
//! in its JSON encoding (feature `otel`), configured by the standard `OTEL_*` variables.
//!
//! Off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (or
//! `OTEL_TRACES_EXPORTER=otlp`, which sends to `http://localhost:4318`); `OTEL_SDK_DISABLED=true`
//! and `OTEL_TRACES_EXPORTER=none` turn it off. Read too: `..._HEADERS` (`key=value,...`,
//! percent-decoded; values are secrets, never logged), `..._TIMEOUT` (milliseconds, default
//! 10000), `..._PROTOCOL` (only `http/json`: the collector's port 4318 takes it; `grpc` and
//! `http/protobuf` are refused at start rather than sent wrongly), `OTEL_SERVICE_NAME`
//! (default `turnflow`) and `OTEL_RESOURCE_ATTRIBUTES`. Credentials over plain `http://` to
//! another host are refused, as everywhere in turnflow.
//!
//! A call's spans are built and sent off the call's task: [`TraceExporter::export_call`] only
//! queues the event log (at most [`QUEUE_CALLS`] calls; beyond that a call's trace is dropped
//! and counted, never waited for). The sender batches what is queued into one request, and a
//! collector that fails or is slow loses those spans with a warning, nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::trace::{CallInfo, ClockAnchor, TracedCall, call_spans, otlp_json};
use crate::engine::log::LogEntry;

/// Calls waiting to be sent, at most.
pub const QUEUE_CALLS: usize = 1024;
/// Calls sent in one request, at most.
const BATCH_CALLS: usize = 64;

/// A setting the exporter cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtlpError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error(
        "{variable}={value}: expected an http:// or https:// URL (a collector's OTLP/HTTP port, e.g. http://localhost:4318)"
    )]
    Endpoint {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// A protocol other than `http/json`.
    #[error(
        "{variable}={value}: turnflow exports http/json only (an OpenTelemetry collector takes it on port 4318); set it to http/json or leave it unset"
    )]
    Protocol {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// A header list that does not parse.
    #[error("{variable}: {reason} (expected key=value pairs separated by commas)")]
    Headers {
        /// The variable.
        variable: &'static str,
        /// What is wrong, without the values.
        reason: String,
    },
    /// A timeout that is not a whole number of milliseconds.
    #[error("{variable}={value}: expected a timeout in milliseconds")]
    Timeout {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// Headers (credentials) would travel unencrypted to another host.
    #[error(
        "{endpoint}: headers such as credentials would travel unencrypted to another host; use https:// or a collector on this machine"
    )]
    Insecure {
        /// The endpoint.
        endpoint: String,
    },
}

/// Where and how to send traces.
#[derive(Clone)]
pub struct OtlpConfig {
    /// The full URL spans are posted to (`.../v1/traces`).
    pub endpoint: String,
    headers: Vec<(String, String)>,
    /// How long one request may take.
    pub timeout: Duration,
    /// The resource's attributes (`service.name` first).
    pub resource: Vec<(String, String)>,
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("resource", &self.resource)
            .finish()
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let pair = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(pair, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `key=value,key=value`, percent-decoded, trimmed; errors name `variable` and the item.
fn pairs(variable: &'static str, text: &str) -> Result<Vec<(String, String)>, OtlpError> {
    let mut out = Vec::new();
    for (n, item) in text.split(',').enumerate() {
        if item.trim().is_empty() {
            continue;
        }
        let error = |reason: &str| OtlpError::Headers {
            variable,
            reason: format!("item {}: {reason}", n + 1),
        };
        let (key, value) = item.split_once('=').ok_or_else(|| error("no '='"))?;
        let key = percent_decode(key.trim()).ok_or_else(|| error("a bad %-escape in the key"))?;
        let value =
            percent_decode(value.trim()).ok_or_else(|| error("a bad %-escape in the value"))?;
        if key.is_empty() {
            return Err(error("an empty key"));
        }
        out.push((key, value));
    }
    Ok(out)
}

impl OtlpConfig {
    /// The settings from the process's environment; `None` when tracing is off.
    ///
    /// # Errors
    /// [`OtlpError`] naming the variable that cannot be used.
    pub fn from_env() -> Result<Option<Self>, OtlpError> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// The settings from `get` (a variable's value by name).
    ///
    /// # Errors
    /// [`OtlpError`] naming the variable that cannot be used.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, OtlpError> {
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let exporter = get("OTEL_TRACES_EXPORTER");
        if exporter
            .as_deref()
            .is_some_and(|e| e.split(',').all(|e| e.trim() != "otlp"))
        {
            return Ok(None);
        }
        // The signal's own variable wins over the general one.
        let pick = |specific: &'static str, general: &'static str| {
            get(specific)
                .map(|v| (specific, v))
                .or_else(|| get(general).map(|v| (general, v)))
        };
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
            (None, Some(base)) => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim().trim_end_matches('/')),
            ),
            (None, None) if exporter.is_some() => (
                "OTEL_TRACES_EXPORTER",
                "http://localhost:4318/v1/traces".to_owned(),
            ),
            (None, None) => return Ok(None),
        };
        let (variable, url) = (endpoint.0, endpoint.1.trim().to_owned());
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https"))
            || crate::net::host_of(&url).is_none_or(str::is_empty)
        {
            return Err(OtlpError::Endpoint {
                variable,
                value: url,
            });
        }
        if let Some((variable, protocol)) = pick(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) && protocol.trim() != "http/json"
        {
            return Err(OtlpError::Protocol {
                variable,
                value: protocol,
            });
        }
        let headers = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            Some((variable, text)) => pairs(variable, &text)?,
            None => Vec::new(),
        };
        if !headers.is_empty() && crate::net::insecure_remote(&url) {
            return Err(OtlpError::Insecure { endpoint: url });
        }
        let timeout = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            Some((variable, value)) => match value.trim().parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => return Err(OtlpError::Timeout { variable, value }),
            },
            None => Duration::from_secs(10),
        };
        let mut resource = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(text) => pairs("OTEL_RESOURCE_ATTRIBUTES", &text)?,
            None => Vec::new(),
        };
        let service = get("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "turnflow".to_owned());
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(0, ("service.name".to_owned(), service));
        Ok(Some(Self {
            endpoint: url,
            headers,
            timeout,
            resource,
        }))
    }
}

/// A call waiting to be traced.
struct Job {
    entries: Vec<LogEntry>,
    session: String,
    outcome: String,
    transport: String,
    llm: String,
    tts: String,
    clock: ClockAnchor,
}

/// Sends calls' spans to a collector; cheap to clone, one sender task behind all clones.
#[derive(Clone)]
pub struct TraceExporter {
    queue: mpsc::Sender<Job>,
    /// Calls whose trace was dropped at a full queue, shared by the clones.
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for TraceExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceExporter")
            .field("dropped", &self.dropped)
            .finish()
    }
}

/// The sender task of a [`TraceExporter`]; await it after dropping every exporter clone to
/// send what is queued.
pub struct ExporterTask(tokio::task::JoinHandle<()>);

impl ExporterTask {
    /// Waits (at most `limit`) for the queued calls to be sent.
    pub async fn finish(self, limit: Duration) {
        let mut task = self.0;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            warn!(?limit, "traces still unsent at exit are dropped");
            task.abort();
        }
    }
}

impl TraceExporter {
    /// Starts the sender on the current runtime.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn start(config: OtlpConfig) -> Result<(Self, ExporterTask), String> {
        Self::start_on(config, &tokio::runtime::Handle::current())
    }

    /// Starts the sender on `runtime`, which must run on the real clock: calls may be traced
    /// from a runtime whose clock is paused, but requests sent there would time out at once.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn start_on(
        config: OtlpConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(Self, ExporterTask), String> {
        let client = crate::net::http_client(config.timeout)?;
        let (queue, jobs) = mpsc::channel(QUEUE_CALLS);
        let task = runtime.spawn(send_loop(config, client, jobs));
        Ok((
            Self {
                queue,
                dropped: Arc::default(),
            },
            ExporterTask(task),
        ))
    }

    /// Queues a finished call's trace: its event log and what the spans say besides. Its
    /// clock is read now, on the caller's runtime (so a call on a paused clock is placed at the
    /// wall-clock time it ended). Never waits: with the queue full the call's trace is dropped
    /// and counted.
    pub fn export_call(&self, entries: Vec<LogEntry>, call: &CallInfo<'_>) {
        if entries.is_empty() {
            return;
        }
        let job = Job {
            entries,
            session: call.session.to_owned(),
            outcome: call.outcome.to_owned(),
            transport: call.transport.to_owned(),
            llm: call.llm.to_owned(),
            tts: call.tts.to_owned(),
            clock: ClockAnchor::now(),
        };
        if self.queue.try_send(job).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "the trace queue is full; calls' traces are being dropped"
                );
            }
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(16) {
        let id = uuid::Uuid::new_v4();
        chunk.copy_from_slice(&id.as_bytes()[..chunk.len()]);
    }
    out
}

async fn send_loop(config: OtlpConfig, client: reqwest::Client, mut jobs: mpsc::Receiver<Job>) {
    let mut warned = false;
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_CALLS {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let calls: Vec<TracedCall> = batch
            .iter()
            .map(|job| {
                let spans = call_spans(
                    &job.entries,
                    &CallInfo {
                        session: &job.session,
                        outcome: &job.outcome,
                        transport: &job.transport,
                        llm: &job.llm,
                        tts: &job.tts,
                    },
                );
                TracedCall {
                    trace_id: random_bytes(),
                    span_ids: spans.iter().map(|_| random_bytes()).collect(),
                    spans,
                    clock: job.clock,
                }
            })
            .collect();
        let body = otlp_json(&calls, &config.resource);
        let mut request = client
            .post(&config.endpoint)
            .timeout(config.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        for (key, value) in &config.headers {
            if let Some(value) = crate::net::secret_header(value) {
                request = request.header(key.as_str(), value);
            }
        }
        let outcome = match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("the collector answered {}", response.status())),
            Err(e) => Err(crate::net::describe_http_error(&e)),
        };
        match outcome {
            Ok(()) => debug!(calls = calls.len(), "traces sent"),
            Err(reason) => {
                // Once at warn, then at debug: a collector that is down would otherwise
                // write a warning per batch for as long as it is.
                if warned {
                    debug!(%reason, calls = calls.len(), "traces not sent");
                } else {
                    warn!(%reason, calls = calls.len(), endpoint = %config.endpoint, "traces not sent; later failures are logged at debug");
                    warned = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let list: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| list.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn off_unless_an_endpoint_or_the_exporter_is_named() {
        assert!(OtlpConfig::from_vars(vars(&[])).unwrap().is_none());
        assert!(
            OtlpConfig::from_vars(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ]))
            .unwrap()
            .is_none()
        );
        assert!(
            OtlpConfig::from_vars(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_TRACES_EXPORTER", "none")
            ]))
            .unwrap()
            .is_none()
        );
        let default = OtlpConfig::from_vars(vars(&[("OTEL_TRACES_EXPORTER", "otlp")]))
            .unwrap()
            .unwrap();
        assert_eq!(default.endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn the_endpoint_headers_timeout_and_resource_are_read() {
        let config = OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example/"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cret, x-team = voice",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=ignored",
            ),
            ("OTEL_SERVICE_NAME", "agents"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.endpoint, "https://otel.example/v1/traces");
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert_eq!(
            config.headers,
            [
                ("authorization".to_owned(), "Bearer s3cret".to_owned()),
                ("x-team".to_owned(), "voice".to_owned())
            ]
        );
        assert_eq!(
            config.resource,
            [
                ("service.name".to_owned(), "agents".to_owned()),
                ("deployment.environment".to_owned(), "prod".to_owned())
            ]
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let own = OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://a.example"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://b.example/custom",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(own.endpoint, "https://b.example/custom", "used as given");
    }

    #[test]
    fn settings_it_cannot_use_are_named() {
        let error =
            |list: &[(&str, &str)]| OtlpConfig::from_vars(vars(list)).unwrap_err().to_string();
        let e = error(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc") && e.contains("http/json"),
            "{e}"
        );
        let e = error(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")]);
        assert!(e.contains("expected an http:// or https:// URL"), "{e}");
        let e = error(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key"),
        ]);
        assert!(e.contains("item 1: no '='"), "{e}");
        let e = error(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector.example:4318",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret"),
        ]);
        assert!(e.contains("unencrypted") && !e.contains("secret"), "{e}");
        let e = error(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
        ]);
        assert!(e.contains("OTEL_EXPORTER_OTLP_TIMEOUT=10s"), "{e}");
    }
}
