//! The user's silence after the agent spoke: one re-prompt, then a goodbye and the end
//! ([`super::SilencePolicy`]). Pure: it is told the engine's events and asked what is due.

use std::time::Duration;

use tokio::time::Instant;

use crate::engine::{EngineEvent, ResponseId};

/// What to do about a silent caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Nudge {
    Reprompt,
    Goodbye,
}

/// The caller's silence after the agent spoke: one re-prompt, then a goodbye and a hang-up.
#[derive(Debug)]
pub(super) struct Silence {
    after: Option<Duration>,
    /// Since when nobody has spoken (`None` while someone speaks or a reply is live).
    quiet_since: Option<Instant>,
    /// Re-prompts given since the caller last spoke.
    nudged: u8,
    /// The goodbye's response, once it started.
    goodbye: Option<ResponseId>,
    /// A re-prompt or goodbye was asked for and has not started yet.
    pending: bool,
}

impl Silence {
    pub(super) fn new(after: Option<Duration>) -> Self {
        Silence {
            after,
            quiet_since: Some(Instant::now()),
            nudged: 0,
            goodbye: None,
            pending: false,
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.after.is_some()
    }

    /// Notes an engine event; true when the goodbye has been said and the call should end.
    pub(super) fn on_event(&mut self, event: &EngineEvent, now: Instant) -> bool {
        match event {
            EngineEvent::UserStarted { .. } => {
                self.quiet_since = None;
                self.nudged = 0;
                self.pending = false;
            }
            EngineEvent::Prompting { response } => {
                self.quiet_since = None;
                if self.pending && self.nudged == 2 {
                    self.goodbye = Some(*response);
                }
                self.pending = false;
            }
            EngineEvent::Responding { .. } | EngineEvent::Speculating { .. } => {
                self.quiet_since = None;
            }
            EngineEvent::ResponseEnded { response, .. } => {
                if self.goodbye == Some(*response) {
                    return true;
                }
                self.quiet_since = Some(now);
            }
            _ => {}
        }
        false
    }

    /// What to do now, if anything.
    pub(super) fn due(&mut self, now: Instant) -> Option<Nudge> {
        let after = self.after?;
        let since = self.quiet_since?;
        if self.pending || now.saturating_duration_since(since) < after || self.nudged >= 2 {
            return None;
        }
        self.nudged += 1;
        self.pending = true;
        self.quiet_since = None;
        Some(if self.nudged == 1 {
            Nudge::Reprompt
        } else {
            Nudge::Goodbye
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_caller_is_reprompted_once_then_told_goodbye() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut silence = Silence::new(Some(8 * s));
        let ended = |id| EngineEvent::ResponseEnded {
            response: ResponseId(id),
            heard: "words".into(),
            interrupted: false,
            error: None,
        };
        let prompting = |id| EngineEvent::Prompting {
            response: ResponseId(id),
        };
        // The greeting plays, then the caller says nothing.
        assert!(!silence.on_event(&prompting(1), t0));
        assert_eq!(
            silence.due(t0 + 20 * s),
            None,
            "not while the greeting plays"
        );
        assert!(!silence.on_event(&ended(1), t0 + 2 * s));
        assert_eq!(silence.due(t0 + 9 * s), None);
        assert_eq!(silence.due(t0 + 10 * s), Some(Nudge::Reprompt));
        assert_eq!(silence.due(t0 + 30 * s), None, "one nudge at a time");
        assert!(!silence.on_event(&prompting(2), t0 + 10 * s));
        assert!(!silence.on_event(&ended(2), t0 + 11 * s));
        // The caller answers the re-prompt: the count starts over.
        silence.on_event(
            &EngineEvent::UserStarted {
                turn: 0,
                over_agent: false,
            },
            t0 + 12 * s,
        );
        assert_eq!(
            silence.due(t0 + 40 * s),
            None,
            "not while the caller speaks"
        );
        silence.on_event(&ended(3), t0 + 15 * s);
        assert_eq!(silence.due(t0 + 23 * s), Some(Nudge::Reprompt));
        silence.on_event(&prompting(4), t0 + 23 * s);
        silence.on_event(&ended(4), t0 + 24 * s);
        assert_eq!(silence.due(t0 + 32 * s), Some(Nudge::Goodbye));
        silence.on_event(&prompting(5), t0 + 32 * s);
        assert!(
            silence.on_event(&ended(5), t0 + 34 * s),
            "after the goodbye, hang up"
        );
        let mut off = Silence::new(None);
        assert_eq!(off.due(t0 + 1000 * s), None);
    }
}
