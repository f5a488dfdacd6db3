//! A recorded session's turns next to a what-if's, paired by what the user said (pure).
//!
//! A what-if can split a recorded turn (an earlier end of turn) or merge two (a later one), so
//! turns are paired by their final transcript, in order; a turn with no partner in the other
//! run stands alone.

use crate::report::TurnReport;

/// One row: the recorded turn and the what-if's turn with the same transcript, either absent
/// when the other run had no such turn.
pub type TurnPair<'a> = (Option<&'a TurnReport>, Option<&'a TurnReport>);

/// Pairs `recorded` and `what_if` turns by transcript, keeping both orders: each what-if turn
/// takes the next recorded turn with its transcript; recorded turns passed over stand alone.
pub fn pair_turns<'a>(recorded: &'a [TurnReport], what_if: &'a [TurnReport]) -> Vec<TurnPair<'a>> {
    let mut rows = Vec::with_capacity(recorded.len().max(what_if.len()));
    let mut next = 0;
    for turn in what_if {
        match recorded[next..]
            .iter()
            .position(|r| r.user_transcript == turn.user_transcript)
        {
            Some(offset) => {
                rows.extend(
                    recorded[next..next + offset]
                        .iter()
                        .map(|r| (Some(r), None)),
                );
                rows.push((Some(&recorded[next + offset]), Some(turn)));
                next += offset + 1;
            }
            None => rows.push((None, Some(turn))),
        }
    }
    rows.extend(recorded[next..].iter().map(|r| (Some(r), None)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(text: &str) -> TurnReport {
        TurnReport {
            user_transcript: text.into(),
            ..TurnReport::default()
        }
    }

    fn texts<'a>(rows: &[TurnPair<'a>]) -> Vec<(Option<&'a str>, Option<&'a str>)> {
        rows.iter()
            .map(|(a, b)| {
                (
                    a.map(|t| t.user_transcript.as_str()),
                    b.map(|t| t.user_transcript.as_str()),
                )
            })
            .collect()
    }

    #[test]
    fn a_split_turn_stands_next_to_the_recorded_whole_and_the_rest_pairs_up() {
        let recorded = [turn("Hi."), turn("Book a table for two."), turn("Thanks.")];
        let what_if = [
            turn("Hi."),
            turn("Book a table"),
            turn("for two."),
            turn("Thanks."),
        ];
        assert_eq!(
            texts(&pair_turns(&recorded, &what_if)),
            [
                (Some("Hi."), Some("Hi.")),
                (None, Some("Book a table")),
                (None, Some("for two.")),
                (Some("Book a table for two."), None),
                (Some("Thanks."), Some("Thanks.")),
            ]
        );
        // The other way round: the merge.
        assert_eq!(
            texts(&pair_turns(&what_if, &recorded)),
            [
                (Some("Hi."), Some("Hi.")),
                (None, Some("Book a table for two.")),
                (Some("Book a table"), None),
                (Some("for two."), None),
                (Some("Thanks."), Some("Thanks.")),
            ]
        );
    }

    #[test]
    fn every_turn_of_both_runs_appears_once_in_order() {
        let recorded = [turn("a"), turn("b"), turn("a"), turn("c")];
        let what_if = [turn("a"), turn("a"), turn("d"), turn("c")];
        let rows = pair_turns(&recorded, &what_if);
        let left: Vec<_> = rows
            .iter()
            .filter_map(|(a, _)| *a)
            .map(|t| t.user_transcript.as_str())
            .collect();
        let right: Vec<_> = rows
            .iter()
            .filter_map(|(_, b)| *b)
            .map(|t| t.user_transcript.as_str())
            .collect();
        assert_eq!(left, ["a", "b", "a", "c"]);
        assert_eq!(right, ["a", "a", "d", "c"]);
    }
}
