//! What an application learns of the server's sessions as they happen ([`SessionObserver`]),
//! and the session's guard against an observer that panics.

use std::sync::Arc;

use tracing::warn;

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

/// A session's view of the application's observer: a panic in the application's code is
/// logged once and ends the observing, not the conversation.
pub(crate) struct Observing(Option<Arc<dyn SessionObserver>>);

impl Observing {
    pub(crate) fn new(observer: Option<Arc<dyn SessionObserver>>) -> Self {
        Self(observer)
    }

    /// Calls `notify` with the observer, if there is one still observing.
    pub(crate) fn notify(&mut self, notify: impl FnOnce(&dyn SessionObserver)) {
        let Some(observer) = &self.0 else { return };
        let call = std::panic::AssertUnwindSafe(|| notify(observer.as_ref()));
        if let Err(panic) = std::panic::catch_unwind(call) {
            let message = crate::engine::response::panic_message(&*panic);
            warn!(panic = %message, "the session observer panicked; it is not called again for this session");
            self.0 = None;
        }
    }
}
