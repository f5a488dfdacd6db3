//! The agent's own end of a call: the reply that called `end_call` (its goodbye), heard to its
//! end, ends the call. A caller who talks over the goodbye keeps the call. Pure: fed the
//! conversation's events.

use tracing::info;

use crate::engine::{EngineEvent, ResponseId};
use crate::tools::END_CALL;

/// Watches for the agent's goodbye.
#[derive(Debug, Default)]
pub(super) struct Farewell {
    goodbye: Option<ResponseId>,
}

impl Farewell {
    /// Notes an event; true when the goodbye has been heard and the call should end.
    pub(super) fn on_event(&mut self, event: &EngineEvent) -> bool {
        match event {
            EngineEvent::ToolStarted { response, tool, .. } if tool == END_CALL => {
                self.goodbye = Some(*response);
                false
            }
            EngineEvent::ResponseEnded {
                response,
                interrupted,
                ..
            } if self.goodbye == Some(*response) => {
                self.goodbye = None;
                if *interrupted {
                    info!("the caller spoke over the goodbye; the call goes on");
                }
                !*interrupted
            }
            _ => false,
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
        assert!(!f.on_event(&started(1, "check_availability")));
        assert!(!f.on_event(&ended(1, false)), "another tool ends nothing");
        assert!(!f.on_event(&started(2, END_CALL)));
        assert!(!f.on_event(&ended(3, false)), "another reply ends nothing");
        assert!(f.on_event(&ended(2, false)));
    }

    #[test]
    fn a_caller_who_talks_over_the_goodbye_keeps_the_call() {
        let mut f = Farewell::default();
        f.on_event(&started(4, END_CALL));
        assert!(!f.on_event(&ended(4, true)));
        assert!(!f.on_event(&ended(5, false)), "forgotten once cut");
    }
}
