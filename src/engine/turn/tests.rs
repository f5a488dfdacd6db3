use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;

use super::*;

fn user(event: UserEvent, transcript: &str) -> Input {
    Input::User {
        event,
        transcript: transcript.into(),
    }
}

fn starts(actions: &[Action]) -> Vec<(ResponseId, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start {
                id, speculative, ..
            } => Some((*id, *speculative)),
            _ => None,
        })
        .collect()
}

fn cancels(actions: &[Action]) -> Vec<(ResponseId, CancelReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Cancel(id, r) => Some((*id, *r)),
            _ => None,
        })
        .collect()
}

fn down(message: &str) -> crate::error::BackendError {
    crate::error::BackendError::new("llm", crate::error::ErrorKind::Server, message)
}

fn machine(barge_in: BargeInPolicy) -> TurnMachine {
    TurnMachine::new(MachineConfig {
        barge_in,
        system_prompt: Some("be brief".into()),
        ..MachineConfig::default()
    })
}

#[test]
fn eager_hit_promotes_the_speculation() {
    let mut m = machine(BargeInPolicy::Immediate);
    m.step(user(UserEvent::StartOfTurn, "Book"));
    let a = m.step(user(UserEvent::EagerEndOfTurn, "Book a table."));
    let [(spec, true)] = starts(&a)[..] else {
        panic!("{a:?}")
    };
    let Some(Action::Start { messages, .. }) = a.iter().find(|a| matches!(a, Action::Start { .. }))
    else {
        panic!("{a:?}")
    };
    assert_eq!(
        messages[0],
        Message::System {
            content: "be brief".into()
        }
    );
    assert_eq!(messages[1], Message::user("Book a table."));
    assert_eq!(m.audible(), None, "nothing audible before EndOfTurn");
    let a = m.step(user(UserEvent::EndOfTurn, "book a table"));
    assert!(a.contains(&Action::Promote(spec)));
    assert!(starts(&a).is_empty());
    assert_eq!(m.audible(), Some(spec));
    assert_eq!(m.history(), &[Message::user("book a table")]);
}

#[test]
fn turn_resumed_cancels_and_a_different_end_starts_fresh() {
    let mut m = machine(BargeInPolicy::Immediate);
    m.step(user(UserEvent::StartOfTurn, "Change"));
    let a = m.step(user(UserEvent::EagerEndOfTurn, "Change my flight."));
    let first = starts(&a)[0].0;
    let a = m.step(user(UserEvent::TurnResumed, "Change my flight to"));
    assert_eq!(cancels(&a), vec![(first, CancelReason::TurnResumed)]);
    m.step(Input::Ended(
        first,
        Outcome::Cancelled {
            heard: String::new(),
        },
    ));
    let a = m.step(user(
        UserEvent::EagerEndOfTurn,
        "Change my flight to Friday.",
    ));
    let second = starts(&a)[0].0;
    let a = m.step(user(UserEvent::EndOfTurn, "Change my flight to Sunday."));
    assert_eq!(cancels(&a), vec![(second, CancelReason::TranscriptChanged)]);
    let [(third, false)] = starts(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!(m.audible(), Some(third));
}

#[test]
fn speculation_budget_is_per_turn() {
    let mut m = TurnMachine::new(MachineConfig {
        max_speculations_per_turn: 2,
        ..MachineConfig::default()
    });
    m.step(user(UserEvent::StartOfTurn, "a"));
    let mut started = 0;
    for i in 0..4 {
        let a = m.step(user(UserEvent::EagerEndOfTurn, &format!("a {i}")));
        started += starts(&a).len();
        for (id, _) in cancels(&m.step(user(UserEvent::TurnResumed, &format!("a {i} b")))) {
            m.step(Input::Ended(
                id,
                Outcome::Cancelled {
                    heard: String::new(),
                },
            ));
        }
    }
    assert_eq!(started, 2);
    let a = m.step(user(UserEvent::EndOfTurn, "a b"));
    assert_eq!(
        starts(&a).len(),
        1,
        "the committed reply is not limited by the budget"
    );
}

#[test]
fn a_cut_reply_reaches_the_history_before_the_speculation_that_follows() {
    let mut m = machine(BargeInPolicy::MinWords(2));
    m.step(user(UserEvent::StartOfTurn, "Hi"));
    let first = starts(&m.step(user(UserEvent::EndOfTurn, "Hi there.")))[0].0;
    m.step(Input::AudioStarted(first));
    m.step(user(UserEvent::StartOfTurn, "What"));
    // The second word arrives with the eager end: cut, then speculate on the new history.
    let a = m.step(user(UserEvent::EagerEndOfTurn, "What time?"));
    assert_eq!(cancels(&a), vec![(first, CancelReason::BargeIn)]);
    assert!(
        starts(&a).is_empty(),
        "speculation waits for the heard text"
    );
    let a = m.step(Input::Ended(
        first,
        Outcome::Cancelled {
            heard: "Hello".into(),
        },
    ));
    let Some(Action::Start {
        id: spec,
        messages,
        speculative: true,
        ..
    }) = a
        .iter()
        .find(|a| matches!(a, Action::Start { .. }))
        .cloned()
    else {
        panic!("{a:?}")
    };
    assert_eq!(
        messages[1..],
        [
            Message::user("Hi there."),
            Message::Assistant {
                content: "Hello".into(),
                interrupted: true,
                tool_calls: vec![]
            },
            Message::user("What time?"),
        ]
    );
    let a = m.step(user(UserEvent::EndOfTurn, "What time?"));
    assert!(a.contains(&Action::Promote(spec)));
}

#[test]
fn immediate_barge_in_cuts_and_history_keeps_what_was_heard() {
    let mut m = machine(BargeInPolicy::Immediate);
    m.step(user(UserEvent::StartOfTurn, "Tell"));
    let reply = starts(&m.step(user(UserEvent::EndOfTurn, "Tell me a story.")))[0].0;
    m.step(Input::AudioStarted(reply));
    let a = m.step(user(UserEvent::StartOfTurn, "Stop"));
    assert_eq!(cancels(&a), vec![(reply, CancelReason::BargeIn)]);
    assert!(a.contains(&Action::Emit(EngineEvent::Interrupted { response: reply })));
    assert_eq!(m.audible(), None);
    m.step(Input::Ended(
        reply,
        Outcome::Cancelled {
            heard: "Once upon a".into(),
        },
    ));
    m.step(user(UserEvent::EndOfTurn, "Stop please."));
    assert_eq!(
        m.history(),
        &[
            Message::user("Tell me a story."),
            Message::Assistant {
                content: "Once upon a".into(),
                interrupted: true,
                tool_calls: vec![]
            },
            Message::user("Stop please."),
        ]
    );
}

#[test]
fn cut_before_any_sound_merges_the_user_messages() {
    let mut m = machine(BargeInPolicy::Immediate);
    m.step(user(UserEvent::StartOfTurn, "What"));
    let reply = starts(&m.step(user(UserEvent::EndOfTurn, "What time")))[0].0;
    m.step(user(UserEvent::StartOfTurn, "do"));
    m.step(Input::Ended(
        reply,
        Outcome::Cancelled {
            heard: String::new(),
        },
    ));
    let a = m.step(user(UserEvent::EndOfTurn, "do you close?"));
    let Action::Start { messages, .. } = &a
        .iter()
        .find(|a| matches!(a, Action::Start { .. }))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        messages.last(),
        Some(&Message::user("What time do you close?"))
    );
    assert_eq!(m.history(), &[Message::user("What time do you close?")]);
}

#[test]
fn min_words_pauses_then_cuts_or_resumes() {
    let mut m = machine(BargeInPolicy::MinWords(3));
    m.step(user(UserEvent::StartOfTurn, "Tell"));
    let reply = starts(&m.step(user(UserEvent::EndOfTurn, "Tell me more.")))[0].0;
    m.step(Input::AudioStarted(reply));
    // A backchannel: paused, then resumed when the turn ends short.
    let a = m.step(user(UserEvent::StartOfTurn, "Uh-huh"));
    assert!(a.contains(&Action::Pause(reply)));
    assert!(cancels(&a).is_empty());
    assert!(
        starts(&m.step(user(UserEvent::EagerEndOfTurn, "Uh-huh."))).is_empty(),
        "no speculation on a possible backchannel"
    );
    let a = m.step(user(UserEvent::EndOfTurn, "Uh-huh."));
    assert!(a.contains(&Action::Resume(reply)));
    assert!(starts(&a).is_empty());
    assert_eq!(m.audible(), Some(reply));
    assert_eq!(
        m.history(),
        &[Message::user("Tell me more.")],
        "backchannels are not history"
    );
    // A real interruption: cut once the third word arrives.
    m.step(user(UserEvent::StartOfTurn, "Wait"));
    let a = m.step(user(UserEvent::Update, "Wait a"));
    assert!(cancels(&a).is_empty());
    let a = m.step(user(UserEvent::Update, "Wait a second"));
    assert_eq!(cancels(&a), vec![(reply, CancelReason::BargeIn)]);
}

#[test]
fn false_interruption_timer_resumes_only_for_its_generation() {
    let mut m = machine(BargeInPolicy::MinWords(3));
    m.step(user(UserEvent::StartOfTurn, "Go"));
    let reply = starts(&m.step(user(UserEvent::EndOfTurn, "Go on.")))[0].0;
    m.step(Input::AudioStarted(reply));
    let a = m.step(user(UserEvent::StartOfTurn, "Hmm"));
    let Some(Action::StartTimer {
        generation: g1,
        after,
    }) = a
        .iter()
        .find(|a| matches!(a, Action::StartTimer { .. }))
        .cloned()
    else {
        panic!("{a:?}")
    };
    assert_eq!(after, Duration::from_secs(2));
    let a = m.step(user(UserEvent::Update, "Hmm well"));
    let Some(Action::StartTimer { generation: g2, .. }) = a
        .iter()
        .find(|a| matches!(a, Action::StartTimer { .. }))
        .cloned()
    else {
        panic!("a new word restarts the timer: {a:?}")
    };
    assert!(
        m.step(Input::FalseInterruptionTimeout(g1)).is_empty(),
        "stale timer"
    );
    let a = m.step(Input::FalseInterruptionTimeout(g2));
    assert!(a.contains(&Action::Resume(reply)));
}

#[test]
fn a_promoted_speculation_that_failed_silently_is_answered_again() {
    let mut m = machine(BargeInPolicy::Immediate);
    m.step(user(UserEvent::StartOfTurn, "Hi"));
    let spec = starts(&m.step(user(UserEvent::EagerEndOfTurn, "Hi there.")))[0].0;
    m.step(user(UserEvent::EndOfTurn, "Hi there."));
    assert_eq!(m.audible(), Some(spec));
    let a = m.step(Input::Ended(
        spec,
        Outcome::Failed {
            heard: String::new(),
            error: down("llm down"),
        },
    ));
    let Some(Action::Start {
        id,
        messages,
        speculative: false,
        ..
    }) = a
        .iter()
        .find(|a| matches!(a, Action::Start { .. }))
        .cloned()
    else {
        panic!("a fresh committed reply: {a:?}")
    };
    assert_eq!(messages.last(), Some(&Message::user("Hi there.")));
    assert_eq!(m.audible(), Some(id));
    // A committed reply that fails is not retried: it speaks the fallback line instead.
    let a = m.step(Input::Ended(
        id,
        Outcome::Failed {
            heard: String::new(),
            error: down("still down"),
        },
    ));
    assert!(starts(&a).is_empty());
}

#[test]
fn shutdown_cancels_everything_live() {
    let mut m = machine(BargeInPolicy::Immediate);
    m.step(user(UserEvent::StartOfTurn, "a"));
    let reply = starts(&m.step(user(UserEvent::EndOfTurn, "a b")))[0].0;
    m.step(user(UserEvent::StartOfTurn, "c"));
    m.step(Input::Ended(
        reply,
        Outcome::Cancelled {
            heard: String::new(),
        },
    ));
    let spec = starts(&m.step(user(UserEvent::EagerEndOfTurn, "c d")))[0].0;
    assert_eq!(
        cancels(&m.step(Input::Shutdown)),
        vec![(spec, CancelReason::Shutdown)]
    );
}

#[test]
fn updates_between_turns_and_empty_turns_do_nothing() {
    let mut m = machine(BargeInPolicy::Immediate);
    assert!(m.step(user(UserEvent::Update, "")).is_empty());
    m.step(user(UserEvent::StartOfTurn, "um"));
    let a = m.step(user(UserEvent::EndOfTurn, ""));
    assert!(starts(&a).is_empty());
    assert!(m.history().is_empty());
}

#[test]
fn a_repeated_end_of_turn_neither_cancels_nor_doubles() {
    for policy in [BargeInPolicy::Immediate, BargeInPolicy::MinWords(2)] {
        let mut m = machine(policy);
        m.step(user(UserEvent::StartOfTurn, "Book it"));
        let reply = starts(&m.step(user(UserEvent::EndOfTurn, "Book it.")))[0].0;
        m.step(Input::AudioStarted(reply));
        let again = m.step(user(UserEvent::EndOfTurn, "book it"));
        assert!(again.is_empty(), "{policy:?}: {again:?}");
        assert_eq!(m.audible(), Some(reply));
        assert_eq!(m.history(), &[Message::user("Book it.")]);
        // After a real new turn, the same words are a new turn.
        m.step(Input::Ended(
            reply,
            Outcome::Finished {
                spoken: "Done.".into(),
            },
        ));
        m.step(user(UserEvent::StartOfTurn, "Book"));
        let a = m.step(user(UserEvent::EndOfTurn, "Book it."));
        assert_eq!(starts(&a).len(), 1, "{policy:?}");
    }
}

#[test]
fn requests_carry_a_bounded_context_starting_at_a_user_message() {
    let mut m = TurnMachine::new(MachineConfig {
        context_messages: 3,
        history_limit: 5,
        system_prompt: Some("be brief".into()),
        ..MachineConfig::default()
    });
    for turn in 0..6 {
        m.step(user(UserEvent::StartOfTurn, "q"));
        let a = m.step(user(UserEvent::EndOfTurn, &format!("question {turn}")));
        let Some(Action::Start { id, messages, .. }) =
            a.iter().find(|a| matches!(a, Action::Start { .. }))
        else {
            panic!("{a:?}")
        };
        assert!(messages.len() <= 1 + 3 + 1, "{messages:?}");
        assert_eq!(
            messages[0],
            Message::System {
                content: "be brief".into()
            }
        );
        assert!(matches!(messages[1], Message::User { .. }), "{messages:?}");
        assert_eq!(
            messages.last(),
            Some(&Message::user(format!("question {turn}")))
        );
        m.step(Input::Ended(
            *id,
            Outcome::Finished {
                spoken: format!("answer {turn}"),
            },
        ));
        assert!(m.history().len() <= 5);
    }
    assert_eq!(m.history().last(), Some(&Message::assistant("answer 5")));
}

/// A model of the session driver: executes actions, reports progress, checks invariants.
#[derive(Default)]
struct Driver {
    live: BTreeMap<ResponseId, Resp>,
    ended: HashSet<ResponseId>,
    spoken_texts: HashSet<String>,
    speculations_this_turn: u32,
    depth: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Resp {
    gate_open: bool,
    audio: bool,
}

impl Driver {
    fn apply(&mut self, m: &mut TurnMachine, input: Input, from_end_of_turn: bool) {
        self.depth += 1;
        let actions = m.step(input);
        for action in actions {
            match action {
                Action::Start {
                    id, speculative, ..
                } => {
                    assert!(
                        !self.live.contains_key(&id) && !self.ended.contains(&id),
                        "id reused"
                    );
                    if speculative {
                        self.speculations_this_turn += 1;
                        assert!(self.speculations_this_turn <= 3, "budget exceeded");
                    }
                    self.live.insert(
                        id,
                        Resp {
                            gate_open: !speculative,
                            audio: false,
                        },
                    );
                }
                Action::Promote(id) => {
                    assert!(from_end_of_turn, "promotion only on EndOfTurn");
                    let r = self.live.get_mut(&id).expect("promote a live response");
                    assert!(!r.gate_open, "promote a speculative response");
                    r.gate_open = true;
                }
                Action::Cancel(id, _) => {
                    let r = self
                        .live
                        .remove(&id)
                        .expect("cancel a live response exactly once");
                    let heard = if r.audio {
                        format!("heard {id}")
                    } else {
                        String::new()
                    };
                    if r.audio {
                        assert!(r.gate_open);
                        self.spoken_texts.insert(heard.clone());
                    }
                    self.ended.insert(id);
                    self.apply(m, Input::Ended(id, Outcome::Cancelled { heard }), false);
                }
                Action::Pause(id) | Action::Resume(id) => {
                    assert!(self.live.contains_key(&id), "pause/resume a live response");
                }
                Action::StartTimer { .. } | Action::Emit(_) => {}
            }
        }
        self.depth -= 1;
        // Invariants hold between inputs, once every action of the step was executed.
        if self.depth == 0 {
            self.check(m);
        }
    }

    fn check(&self, m: &TurnMachine) {
        let audible = self.live.values().filter(|r| r.gate_open).count();
        assert!(audible <= 1, "at most one response with an open gate");
        if let Some(id) = m.audible() {
            assert!(self.live.get(&id).is_some_and(|r| r.gate_open));
        }
        for pair in m.history().windows(2) {
            let same = matches!(
                (&pair[0], &pair[1]),
                (Message::User { .. }, Message::User { .. })
                    | (Message::Assistant { .. }, Message::Assistant { .. })
            );
            assert!(!same, "history alternates: {:?}", m.history());
        }
        for message in m.history() {
            if let Message::Assistant { content, .. } = message {
                assert!(
                    self.spoken_texts.contains(content),
                    "only heard text: {content}"
                );
            }
        }
    }
}

const WORDS: [&str; 6] = ["book", "a", "table", "for", "two", "please"];

fn run(ops: &[(u8, u8)], policy: BargeInPolicy) {
    let mut m = TurnMachine::new(MachineConfig {
        barge_in: policy,
        ..MachineConfig::default()
    });
    let mut d = Driver::default();
    let mut state = UserState::Idle;
    let mut words: Vec<&str> = Vec::new();
    let mut eager_transcript = String::new();
    for &(kind, arg) in ops {
        if kind % 3 == 0 {
            // Driver progress on a random live response.
            let ids: Vec<ResponseId> = d.live.keys().copied().collect();
            if ids.is_empty() {
                continue;
            }
            let id = ids[arg as usize % ids.len()];
            let r = d.live[&id];
            if !r.gate_open {
                continue;
            }
            match (r.audio, arg % 4) {
                (false, _) => {
                    d.live.get_mut(&id).unwrap().audio = true;
                    d.apply(&mut m, Input::AudioStarted(id), false);
                }
                (true, 0) => {
                    d.live.remove(&id);
                    d.ended.insert(id);
                    let spoken = format!("spoken {id}");
                    d.spoken_texts.insert(spoken.clone());
                    d.apply(
                        &mut m,
                        Input::Ended(id, Outcome::Finished { spoken }),
                        false,
                    );
                }
                (true, 1) => {
                    d.live.remove(&id);
                    d.ended.insert(id);
                    let heard = format!("partial {id}");
                    d.spoken_texts.insert(heard.clone());
                    d.apply(
                        &mut m,
                        Input::Ended(
                            id,
                            Outcome::Failed {
                                heard,
                                error: down("x"),
                            },
                        ),
                        false,
                    );
                }
                _ => d.apply(
                    &mut m,
                    Input::FalseInterruptionTimeout(u64::from(arg)),
                    false,
                ),
            }
            continue;
        }
        let word = WORDS[arg as usize % WORDS.len()];
        match (state, arg % 4) {
            (UserState::Idle, 0) => d.apply(&mut m, user(UserEvent::Update, ""), false),
            (UserState::Idle, _) => {
                words = vec![word];
                state = UserState::Speaking;
                d.speculations_this_turn = 0;
                d.apply(
                    &mut m,
                    user(UserEvent::StartOfTurn, &words.join(" ")),
                    false,
                );
            }
            (UserState::Speaking, 0) => {
                words.push(word);
                d.apply(&mut m, user(UserEvent::Update, &words.join(" ")), false);
            }
            (UserState::Speaking, 1) => {
                eager_transcript = format!("{}.", words.join(" "));
                state = UserState::AwaitingEnd;
                d.apply(
                    &mut m,
                    user(UserEvent::EagerEndOfTurn, &eager_transcript),
                    false,
                );
            }
            (UserState::Speaking, _) => {
                state = UserState::Idle;
                d.apply(&mut m, user(UserEvent::EndOfTurn, &words.join(" ")), true);
            }
            (UserState::AwaitingEnd, 0) => {
                d.apply(&mut m, user(UserEvent::Update, &eager_transcript), false);
            }
            (UserState::AwaitingEnd, 1) => {
                words.push(word);
                state = UserState::Speaking;
                d.apply(
                    &mut m,
                    user(UserEvent::TurnResumed, &words.join(" ")),
                    false,
                );
            }
            (UserState::AwaitingEnd, 2) => {
                state = UserState::Idle;
                d.apply(
                    &mut m,
                    user(UserEvent::EndOfTurn, &eager_transcript.to_uppercase()),
                    true,
                );
            }
            (UserState::AwaitingEnd, _) => {
                // Flux promises the same words; check we survive when it does not.
                state = UserState::Idle;
                words.push(word);
                d.apply(&mut m, user(UserEvent::EndOfTurn, &words.join(" ")), true);
            }
        }
    }
    d.apply(&mut m, Input::Shutdown, false);
    assert!(
        d.live.is_empty(),
        "responses left live after shutdown: {:?}",
        d.live
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_for_random_legal_sequences_immediate(
        ops in proptest::collection::vec((any::<u8>(), any::<u8>()), 0..200)
    ) {
        run(&ops, BargeInPolicy::Immediate);
    }

    #[test]
    fn invariants_hold_for_random_legal_sequences_min_words(
        ops in proptest::collection::vec((any::<u8>(), any::<u8>()), 0..200)
    ) {
        run(&ops, BargeInPolicy::MinWords(2));
    }
}

#[test]
fn an_interim_transcript_is_emitted_once_per_change() {
    let mut m = machine(BargeInPolicy::Immediate);
    let interim = |actions: Vec<Action>| -> Vec<String> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Emit(EngineEvent::UserTranscript { transcript, .. }) => Some(transcript),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        interim(m.step(user(UserEvent::StartOfTurn, "Book"))),
        ["Book"]
    );
    assert!(interim(m.step(user(UserEvent::Update, "Book"))).is_empty());
    assert!(interim(m.step(user(UserEvent::Update, "Book"))).is_empty());
    assert_eq!(
        interim(m.step(user(UserEvent::Update, "Book a"))),
        ["Book a"]
    );
    m.step(user(UserEvent::EndOfTurn, "Book a"));
    // The next turn starts afresh, even with the same words.
    assert_eq!(
        interim(m.step(user(UserEvent::StartOfTurn, "Book"))),
        ["Book"]
    );
}

#[test]
fn a_prompt_speaks_first_only_when_nobody_speaks() {
    let mut m = machine(BargeInPolicy::Immediate);
    let a = m.step(Input::Prompt(Prompt::Line("Hello, how can I help?".into())));
    let Some(Action::Start {
        id,
        line,
        prompted: true,
        speculative: false,
        ..
    }) = a
        .iter()
        .find(|a| matches!(a, Action::Start { .. }))
        .cloned()
    else {
        panic!("{a:?}")
    };
    assert_eq!(line.as_deref(), Some("Hello, how can I help?"));
    assert!(a.contains(&Action::Emit(EngineEvent::Prompting { response: id })));
    // While the greeting is live, another prompt is ignored.
    assert!(m.step(Input::Prompt(Prompt::Reply)).is_empty());
    m.step(Input::AudioStarted(id));
    // The caller interrupts the greeting: it is cut like any reply, and kept as heard.
    let a = m.step(user(UserEvent::StartOfTurn, "Hi"));
    assert_eq!(cancels(&a), [(id, CancelReason::BargeIn)]);
    m.step(Input::Ended(
        id,
        Outcome::Cancelled {
            heard: "Hello,".into(),
        },
    ));
    // While the user speaks, prompts are ignored.
    assert!(m.step(Input::Prompt(Prompt::Reply)).is_empty());
    assert!(matches!(
        m.history().first(),
        Some(Message::Assistant { content, interrupted: true, .. }) if content == "Hello,"
    ));
    m.step(user(UserEvent::EndOfTurn, "Hi, book a table."));
    assert_eq!(m.history().len(), 2);
}

#[test]
fn a_notice_is_said_over_the_user_but_not_over_a_reply() {
    let mut m = machine(BargeInPolicy::Immediate);
    m.step(user(UserEvent::StartOfTurn, "I would like"));
    let notice = || Input::Prompt(Prompt::Notice("One moment.".into()));
    let a = m.step(notice());
    let Some(Action::Start { id, line, .. }) = a
        .iter()
        .find(|a| matches!(a, Action::Start { .. }))
        .cloned()
    else {
        panic!("{a:?}")
    };
    assert_eq!(line.as_deref(), Some("One moment."));
    // While it is live, a second one waits its turn (it is dropped).
    assert!(m.step(notice()).is_empty());
    m.step(Input::AudioStarted(id));
    m.step(Input::Ended(
        id,
        Outcome::Finished {
            spoken: "One moment.".into(),
        },
    ));
    assert!(matches!(
        m.history().last(),
        Some(Message::Assistant { content, .. }) if content == "One moment."
    ));
}

fn lookup(id: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: "check_availability".into(),
        arguments: serde_json::json!({"people": 2}),
    }
}

#[test]
fn a_promoted_reply_keeps_its_tool_calls_and_a_withdrawn_guess_leaves_none() {
    let mut m = machine(BargeInPolicy::Immediate);
    m.step(user(UserEvent::StartOfTurn, "A table"));
    let a = m.step(user(UserEvent::EagerEndOfTurn, "A table"));
    let guess = starts(&a)[0].0;
    m.step(Input::Tool {
        id: guess,
        call: lookup("c1"),
        result: None,
    });
    m.step(Input::Tool {
        id: guess,
        call: lookup("c1"),
        result: Some("2 free".into()),
    });
    // The user goes on: the guess and its lookup are thrown away.
    m.step(user(UserEvent::TurnResumed, "A table for two"));
    m.step(Input::Ended(
        guess,
        Outcome::Cancelled {
            heard: String::new(),
        },
    ));
    let a = m.step(user(UserEvent::EagerEndOfTurn, "A table for two"));
    let hit = starts(&a)[0].0;
    m.step(Input::Tool {
        id: hit,
        call: lookup("c2"),
        result: Some("1 free".into()),
    });
    m.step(user(UserEvent::EndOfTurn, "A table for two"));
    m.step(Input::Ended(
        hit,
        Outcome::Finished {
            spoken: "One is free.".into(),
        },
    ));
    assert_eq!(
        m.history(),
        &[
            Message::user("A table for two"),
            Message::Assistant {
                content: String::new(),
                interrupted: false,
                tool_calls: vec![lookup("c2")],
            },
            Message::Tool {
                call_id: "c2".into(),
                content: "1 free".into(),
            },
            Message::assistant("One is free."),
        ]
    );
}

#[test]
fn a_call_still_running_when_its_reply_is_cut_gets_its_result_later() {
    let mut m = machine(BargeInPolicy::Immediate);
    m.step(user(UserEvent::StartOfTurn, "Book it"));
    let a = m.step(user(UserEvent::EndOfTurn, "Book it"));
    let reply = starts(&a)[0].0;
    let booking = ToolCall {
        id: "b1".into(),
        name: "book_table".into(),
        arguments: serde_json::json!({}),
    };
    m.step(Input::AudioStarted(reply));
    m.step(Input::Tool {
        id: reply,
        call: booking.clone(),
        result: None,
    });
    let a = m.step(user(UserEvent::StartOfTurn, "Wait"));
    assert_eq!(cancels(&a), [(reply, CancelReason::BargeIn)]);
    m.step(Input::Ended(
        reply,
        Outcome::Cancelled {
            heard: "One moment.".into(),
        },
    ));
    let pending = Message::Tool {
        call_id: "b1".into(),
        content: TOOL_STILL_RUNNING.into(),
    };
    assert!(m.history().contains(&pending), "{:?}", m.history());
    m.step(Input::Tool {
        id: reply,
        call: booking,
        result: Some("booked".into()),
    });
    assert!(m.history().contains(&Message::Tool {
        call_id: "b1".into(),
        content: "booked".into(),
    }));
    assert!(!m.history().contains(&pending));
}
