//! What an application learns of the server's sessions as they happen ([`SessionObserver`]),
//! and each session's reporting to it and to the metrics, guarded against an observer that
//! panics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::warn;

use super::Metrics;
use crate::call::CallObserver;

/// What an application learns of the server's sessions, as they happen: every engine event,
/// and for phone calls who is calling and the keys pressed. Called on the session's task, so
/// an implementation must return quickly (hand the work to a channel). An observer that
/// panics is logged and not called again for that session; the conversation goes on.
pub trait SessionObserver: Send + Sync {
    /// A conversation event of session `session`.
    fn event(&self, session: &str, event: &crate::engine::EngineEvent) {
        let _ = (session, event);
    }

    /// A phone call started: its carrier, ids and custom parameters (the caller's number
    /// among them when the call was set up with it). Never logged by turnflow.
    fn call_started(&self, session: &str, call: &super::telephony::carrier::StreamStart) {
        let _ = (session, call);
    }

    /// The caller pressed a key (`0`-`9`, `*`, `#`, `A`-`D`).
    fn dtmf(&self, session: &str, digit: &str) {
        let _ = (session, digit);
    }
}

/// A session's reporting: the server's metrics, and the application's observer guarded so
/// that a panic in the application's code is logged once and ends the observing, not the
/// conversation.
pub(crate) struct Reporting {
    metrics: Arc<Metrics>,
    application: Option<Arc<dyn SessionObserver>>,
    panicked: AtomicBool,
}

impl Reporting {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        application: Option<Arc<dyn SessionObserver>>,
    ) -> Self {
        Reporting {
            metrics,
            application,
            panicked: AtomicBool::new(false),
        }
    }

    /// Calls `notify` with the application's observer, if there is one still observing.
    fn notify(&self, notify: impl FnOnce(&dyn SessionObserver)) {
        let Some(observer) = &self.application else {
            return;
        };
        if self.panicked.load(Ordering::Relaxed) {
            return;
        }
        let call = std::panic::AssertUnwindSafe(|| notify(observer.as_ref()));
        if let Err(panic) = std::panic::catch_unwind(call) {
            let message = crate::engine::response::panic_message(&*panic);
            warn!(panic = %message, "the session observer panicked; it is not called again for this session");
            self.panicked.store(true, Ordering::Relaxed);
        }
    }

    /// A phone call started.
    pub(crate) fn call_started(
        &self,
        session: &str,
        call: &super::telephony::carrier::StreamStart,
    ) {
        self.notify(|o| o.call_started(session, call));
    }
}

impl CallObserver for Reporting {
    fn event(&self, call: &str, event: &crate::engine::EngineEvent) {
        if let crate::engine::EngineEvent::ToolFinished {
            tool,
            outcome,
            duration_ms,
            ..
        } = event
        {
            self.metrics.tool_call(tool, outcome, duration_ms / 1000.0);
        }
        self.notify(|o| o.event(call, event));
    }

    fn turn(&self, _call: &str, turn: &crate::report::TurnReport) {
        self.metrics.turn(turn);
    }

    fn provider_error(&self, error: &crate::error::BackendError) {
        self.metrics.provider_error(error);
    }

    fn dtmf(&self, call: &str, digit: &str) {
        self.notify(|o| o.dtmf(call, digit));
    }

    fn clear_sent(&self, after: Duration) {
        self.metrics.clear_sent(after.as_secs_f64());
    }

    fn cut_decided_by(&self, clock: &'static str) {
        self.metrics.cuts_decided_by(clock, 1);
    }

    fn audio_after_stop(&self, frames: u64) {
        self.metrics.audio_after_stop(frames);
    }

    fn flux_outages(&self, reconnected: u64, failed_attempts: u64, offline: Duration) {
        self.metrics
            .flux_outages(reconnected, failed_attempts, offline);
    }
}
