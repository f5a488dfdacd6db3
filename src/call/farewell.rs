//! The agent's own end of a call: the reply that called `end_call` (its goodbye) or
//! `transfer_call`, heard to its end, ends the call or hands it on. A caller who talks over
//! that reply keeps the call as it is. Pure: fed the conversation's events.

use tracing::info;

use crate::engine::{EngineEvent, ResponseId};
use crate::tools::{END_CALL, TRANSFER_CALL};

/// How the agent leaves the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leave {
    /// Hang up.
    End,
    /// Hand the caller to the configured number.
    Transfer,
}

/// Watches for the reply that leaves the call.
#[derive(Debug, Default)]
pub(super) struct Farewell {
    leaving: Option<(ResponseId, Leave)>,
}

impl Farewell {
    /// Notes an event; the way to leave once the reply that asked for it has been heard.
    pub(super) fn on_event(&mut self, event: &EngineEvent) -> Option<Leave> {
        match event {
            EngineEvent::ToolStarted { response, tool, .. } => {
                let leave = match tool.as_str() {
                    END_CALL => Leave::End,
                    TRANSFER_CALL => Leave::Transfer,
                    _ => return None,
                };
                self.leaving = Some((*response, leave));
                None
            }
            EngineEvent::ResponseEnded {
                response,
                interrupted,
                ..
            } if self.leaving.is_some_and(|(r, _)| r == *response) => {
                let (_, leave) = self.leaving.take()?;
                if *interrupted {
                    info!(?leave, "the caller spoke over the reply; the call goes on");
                    return None;
                }
                Some(leave)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(id: u64, tool: &str) -> EngineEvent {
        EngineEvent::ToolStarted {
            response: ResponseId(id),
            tool: tool.into(),
            speculative: false,
        }
    }

    fn ended(id: u64, interrupted: bool) -> EngineEvent {
        EngineEvent::ResponseEnded {
            response: ResponseId(id),
            heard: "Goodbye!".into(),
            interrupted,
            error: None,
        }
    }

    #[test]
    fn the_goodbye_heard_to_its_end_ends_the_call() {
        let mut f = Farewell::default();
        assert_eq!(f.on_event(&started(1, "check_availability")), None);
        assert_eq!(
            f.on_event(&ended(1, false)),
            None,
            "another tool ends nothing"
        );
        assert_eq!(f.on_event(&started(2, END_CALL)), None);
        assert_eq!(
            f.on_event(&ended(3, false)),
            None,
            "another reply ends nothing"
        );
        assert_eq!(f.on_event(&ended(2, false)), Some(Leave::End));
        f.on_event(&started(6, TRANSFER_CALL));
        assert_eq!(f.on_event(&ended(6, false)), Some(Leave::Transfer));
    }

    #[test]
    fn a_caller_who_talks_over_the_goodbye_keeps_the_call() {
        let mut f = Farewell::default();
        f.on_event(&started(4, END_CALL));
        assert_eq!(f.on_event(&ended(4, true)), None);
        assert_eq!(f.on_event(&ended(5, false)), None, "forgotten once cut");
    }
}
