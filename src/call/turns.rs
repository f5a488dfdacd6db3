//! Each turn's figures, reported to the far end and the observer once its reply has ended.

/// Follows a conversation's turns to report each one's figures once its reply has ended.
#[derive(Debug, Default)]
pub(super) struct TurnReports {
    turn_of: std::collections::HashMap<crate::engine::ResponseId, u64>,
    reported: Option<u64>,
    started: u64,
}

impl TurnReports {
    /// User turns started so far.
    pub(super) fn started(&self) -> u64 {
        self.started
    }

    /// Notes `event`; returns the figures of the turns it completed.
    pub(super) fn on_event(
        &mut self,
        event: &crate::engine::EngineEvent,
        log: &crate::engine::log::EventLog,
    ) -> Vec<crate::report::TurnReport> {
        use crate::engine::EngineEvent;
        match event {
            EngineEvent::UserStarted { turn, .. } => self.started = self.started.max(*turn + 1),
            EngineEvent::Speculating { turn, response, .. }
            | EngineEvent::Responding { turn, response } => {
                self.turn_of.insert(*response, *turn);
            }
            EngineEvent::ResponseEnded { response, .. } => {
                if let Some(turn) = self.turn_of.remove(response) {
                    let report = crate::report::Report::from_log(&log.entries());
                    let done: Vec<_> = report
                        .turns
                        .into_iter()
                        .filter(|t| t.index <= turn && self.reported.is_none_or(|r| t.index > r))
                        .collect();
                    self.reported = Some(self.reported.map_or(turn, |r| r.max(turn)));
                    // Responses of turns already reported cannot report again.
                    self.turn_of.retain(|_, t| *t > turn);
                    return done;
                }
            }
            _ => {}
        }
        Vec::new()
    }
}
