//! A conversation's recording, when its settings ask for one ([`super::Settings::record_dir`]).

use std::sync::Arc;

use tracing::{info, warn};

use super::Settings;
use crate::engine::Backends;
use crate::flux::Connector;

/// A conversation's recording.
pub(super) struct CallRecording {
    recorder: crate::recording::Recorder,
    dir: std::path::PathBuf,
    settings: crate::recording::RecordedSettings,
    user_rate: u32,
}

impl CallRecording {
    /// A recording for call `id` listening with `options`, when the settings ask for one.
    pub(super) fn start(
        config: &Settings,
        id: &str,
        options: &crate::flux::ListenOptions,
    ) -> Option<Self> {
        let dir = config.record_dir.as_ref()?.join(id);
        Some(Self {
            recorder: crate::recording::Recorder::new(),
            dir,
            settings: crate::recording::RecordedSettings::of(
                &config.session,
                options,
                config.backends.llm.name(),
                config.backends.tts.name(),
            )
            .with_tools(
                &config
                    .backends
                    .tools
                    .as_ref()
                    .map(|t| t.specs())
                    .unwrap_or_default(),
            ),
            user_rate: options.sample_rate.unwrap_or(16000),
        })
    }

    pub(super) fn connector(&self, inner: Arc<dyn Connector>) -> Arc<dyn Connector> {
        self.recorder.connector(inner)
    }

    pub(super) fn backends(&self, inner: &Backends) -> Backends {
        Backends {
            llm: self.recorder.llm(inner.llm.clone()),
            tts: self.recorder.tts(inner.tts.clone()),
            tools: inner.tools.clone().map(|t| self.recorder.tools(t)),
        }
    }

    /// Keeps the caller's audio, in the session's `encoding`.
    pub(super) fn user_audio(&self, encoding: crate::flux::Encoding, bytes: &[u8]) {
        self.recorder.user_audio_encoded(encoding, bytes);
    }

    /// Writes the recording (off the runtime's threads); a failure is logged, never fatal.
    pub(super) async fn finish(self, log: &crate::engine::log::EventLog, voice_rate: u32) {
        let entries = log.entries();
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            self.recorder.write(
                &self.dir,
                "serve",
                self.settings,
                self.user_rate,
                voice_rate,
                Some(&entries),
            )
        })
        .await;
        match written {
            Ok(Ok(())) => info!(dir = %dir.display(), "session recorded"),
            Ok(Err(e)) => warn!(error = %e, "the session's recording could not be written"),
            Err(e) => warn!(error = %e, "the session's recording writer stopped"),
        }
    }
}
