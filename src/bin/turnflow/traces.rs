//! OpenTelemetry traces for the commands that hold calls (`serve`, `simulate`): an exporter
//! when the build has the `otel` feature and the `OTEL_*` variables ask for one, and a
//! warning when they ask for one from a build without it.

#[cfg(feature = "otel")]
use anyhow::Result;

/// How long an exiting command waits for the traces still queued.
#[cfg(feature = "otel")]
const FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The exporter the environment asks for, with the runtime its sender runs on (its own, on
/// the real clock, so that a simulation on the paused clock can be traced too).
#[cfg(feature = "otel")]
pub(crate) struct Traces {
    pub(crate) exporter: turnflow::report::otlp::TraceExporter,
    task: turnflow::report::otlp::ExporterTask,
    runtime: tokio::runtime::Runtime,
}

#[cfg(feature = "otel")]
impl Traces {
    /// The exporter `OTEL_*` configures; `None` when tracing is off.
    pub(crate) fn from_env() -> Result<Option<Self>> {
        let Some(config) = turnflow::report::otlp::OtlpConfig::from_env()? else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("turnflow-traces")
            .enable_all()
            .build()?;
        eprintln!("traces: every call's spans go to {}", config.endpoint);
        let (exporter, task) =
            turnflow::report::otlp::TraceExporter::start_on(config, runtime.handle())
                .map_err(anyhow::Error::msg)?;
        Ok(Some(Self {
            exporter,
            task,
            runtime,
        }))
    }

    /// Sends what is queued (waiting at most a few seconds) once every other handle to the
    /// exporter is gone.
    pub(crate) fn finish(self) {
        let Self {
            exporter,
            task,
            runtime,
        } = self;
        drop(exporter);
        runtime.block_on(task.finish(FLUSH_LIMIT));
    }
}

/// Without the `otel` feature: says so when the environment asks for traces.
#[cfg(not(feature = "otel"))]
pub(crate) fn warn_if_asked() {
    let asked = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if asked {
        eprintln!(
            "traces: OTEL_EXPORTER_OTLP_ENDPOINT is set but this turnflow was built without the `otel` feature; no traces are sent (cargo build --release --features otel)"
        );
    }
}
