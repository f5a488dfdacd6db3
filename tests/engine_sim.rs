//! The engine end to end on tokio's paused clock: emulator (in memory) -> Flux client ->
//! session -> scripted LLM / synthetic TTS -> playout, with a simulated user.
//!
//! The clock is virtual, so latencies are exact and the assertions can be equalities.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::time::Instant;
use turnflow::engine::log::{LogEntry, LogKind};
use turnflow::engine::turn::CancelReason;
use turnflow::engine::{Backends, BargeInPolicy, EngineEvent, Presynthesis, ResponseId};
use turnflow::flux::TurnEvent;
use turnflow::llm::scripted::Fault;
use turnflow::llm::{
    LanguageModel, Message, ScriptedLlm, ScriptedReply, ToolCall, ToolEffect, ToolExecutor,
    ToolSpec,
};
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulationConfig, SimulationResult, Transport, run};
use turnflow::tts::SyntheticTts;
use turnflow::tts::synthetic::TtsFault;

fn load(path: &str) -> Arc<Scenario> {
    Arc::new(Scenario::load(path.as_ref()).unwrap())
}

fn inline(json: &str) -> Arc<Scenario> {
    Arc::new(Scenario::parse(json, "inline").unwrap())
}

async fn simulate(
    scenario: Arc<Scenario>,
    tweak: impl FnOnce(&mut SimulationConfig),
) -> SimulationResult {
    let mut config = SimulationConfig::new(scenario);
    config.transport = Transport::Memory;
    tweak(&mut config);
    run(config).await.unwrap()
}

fn flux_at(log: &[LogEntry], event: TurnEvent, turn: u64) -> Instant {
    log.iter()
        .find_map(|e| match &e.kind {
            LogKind::Flux {
                event: ev,
                turn_index,
                ..
            } if *ev == event && *turn_index == turn => Some(e.at),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {event} for turn {turn}"))
}

fn cancelled(log: &[LogEntry], reason: CancelReason) -> Vec<ResponseId> {
    log.iter()
        .filter_map(|e| match e.kind {
            LogKind::Cancelled { id, reason: r } if r == reason => Some(id),
            _ => None,
        })
        .collect()
}

fn has(log: &[LogEntry], pred: impl Fn(&LogKind) -> bool) -> bool {
    log.iter().any(|e| pred(&e.kind))
}

fn first_frame(log: &[LogEntry], id: ResponseId) -> Option<Instant> {
    log.iter().find_map(|e| match e.kind {
        LogKind::FirstFrameWritten { id: i } if i == id => Some(e.at),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn eager_hit_answers_earlier_than_no_speculation_by_the_lead() {
    let off = simulate(load("scenarios/eager_hit.json"), |c| {
        c.session.machine.speculation = false;
    })
    .await;
    let plain = &off.report.turns[0];
    assert_eq!(plain.speculation, "none");
    // Without speculation: 350 ms to the first token, 20 ms to "course.", 150 ms of TTS.
    assert_eq!(plain.response_latency_ms, Some(520.0));

    // Pre-synthesized (the first chunk, the default, is the first sentence here): the whole
    // 520 ms head start is available, so the saving is the lead.
    let held = simulate(load("scenarios/eager_hit.json"), |_| {}).await;
    let hit = &held.report.turns[0];
    assert_eq!(hit.speculation, "hit");
    let lead = hit.lead_ms.unwrap();
    assert_eq!(lead, 480.0);
    assert_eq!(
        plain.response_latency_ms.unwrap() - hit.response_latency_ms.unwrap(),
        lead
    );

    // LLM-only speculation: TTS starts at promotion, so the saving is the lead capped by the
    // LLM's 370 ms to the first sentence.
    let on = simulate(load("scenarios/eager_hit.json"), |c| {
        c.session.response.presynthesis = Presynthesis::Off;
    })
    .await;
    let llm_only = &on.report.turns[0];
    assert_eq!(llm_only.speculation, "hit");
    assert_eq!(llm_only.response_latency_ms, Some(150.0));
    assert_eq!(
        llm_only.assistant_heard,
        "Of course. What time would you like the table for two?"
    );
    assert_eq!(llm_only.assistant_heard, plain.assistant_heard);
}

/// Issue 13's reference: LLM 200 ms + 20 ms per token, TTS 100 ms, one Flux tick of lead.
const QUICK_CHUNK: &str = r#"{"name":"quick-chunk","llm":{"ttft_ms":200,"token_interval_ms":20},
  "tts":{"ttfb_ms":100},"listen":{"eager_eot_threshold":0.5,"eot_threshold":0.7},
  "turns":[{"start":{"at_ms":500},
    "phrases":[{"text":"Can you book me a table for two tonight?","eot_confidence":0.95,"ramp_ms":200}],
    "reply":"Sure, I can book a table for two at eight tonight."}]}"#;

#[tokio::test(start_paused = true)]
async fn a_quick_first_chunk_speaks_at_the_limit_set_by_the_providers() {
    let chunk = simulate(inline(QUICK_CHUNK), |_| {}).await;
    let turn = &chunk.report.turns[0];
    assert_eq!(turn.speculation, "hit");
    let lead = turn.lead_ms.unwrap();
    assert_eq!(lead, 240.0, "one Flux tick");
    // "Sure," is one token: 200 ms to it, 100 ms of TTS, 240 ms of that before EndOfTurn.
    assert_eq!(turn.first_piece_tokens, Some(1));
    assert_eq!(turn.response_latency_ms, Some(200.0 + 100.0 - lead));
    assert_eq!(
        turn.assistant_heard,
        "Sure, I can book a table for two at eight tonight."
    );
    assert_eq!(chunk.report.summary.speculation.wasted_tts_chars, 0);

    // The first sentence (the comma comes before six words, so the whole sentence) needs all
    // eleven tokens: 200 + 10 x 20 + 100 - 240.
    let sentence = simulate(inline(QUICK_CHUNK), |c| {
        c.session.response.presynthesis = Presynthesis::FirstSentence;
    })
    .await;
    let turn = &sentence.report.turns[0];
    assert_eq!(turn.first_piece_tokens, Some(11));
    assert_eq!(turn.response_latency_ms, Some(260.0));
    assert_eq!(turn.assistant_heard, chunk.report.turns[0].assistant_heard);

    // Without speculation the quick chunk is not used: the first clause rule applies.
    let plain = simulate(inline(QUICK_CHUNK), |c| {
        c.session.machine.speculation = false;
    })
    .await;
    assert_eq!(plain.report.turns[0].first_piece_tokens, Some(11));
    assert_eq!(plain.report.turns[0].response_latency_ms, Some(500.0));
}

#[tokio::test(start_paused = true)]
async fn eager_miss_cancels_and_none_of_its_audio_is_ever_written() {
    for presynthesis in [Presynthesis::Off, Presynthesis::FirstChunk] {
        let presynthesize = presynthesis != Presynthesis::Off;
        let r = simulate(load("scenarios/eager_miss.json"), |c| {
            c.session.response.presynthesis = presynthesis;
        })
        .await;
        let resumed = cancelled(&r.log, CancelReason::TurnResumed);
        assert_eq!(resumed.len(), 1);
        let wasted = resumed[0];
        assert_eq!(
            first_frame(&r.log, wasted),
            None,
            "no frame of the cancelled speculation"
        );
        let end = flux_at(&r.log, TurnEvent::EndOfTurn, 0);
        assert!(
            r.agent_frames.iter().all(|(at, _)| *at >= end),
            "nothing audible before EndOfTurn"
        );
        let summary = r.report.summary.speculation;
        assert!(summary.wasted_llm_tokens > 0);
        assert_eq!(
            summary.wasted_tts_chars > 0,
            presynthesize,
            "presynthesize={presynthesize}"
        );
        assert_eq!(
            r.report.turns[0].assistant_heard,
            "Sure. I can move you to the Friday morning flight at nine forty."
        );
    }
}

const HESITANT: &str = r#"{"name":"hesitant","listen":{"eager_eot_threshold":0.5,"eot_threshold":0.7},
  "turns":[{"start":{"at_ms":500},"phrases":[
    {"text":"I want","pause_ms":900,"eot_confidence":0.6,"ramp_ms":400},
    {"text":"to fly","pause_ms":900,"eot_confidence":0.6,"ramp_ms":400},
    {"text":"to Lisbon","pause_ms":900,"eot_confidence":0.6,"ramp_ms":400},
    {"text":"next week.","eot_confidence":0.95}],
    "reply":"Lisbon next week, noted."}]}"#;

#[tokio::test(start_paused = true)]
async fn several_eager_resume_cycles_in_one_turn_respect_the_budget() {
    let r = simulate(inline(HESITANT), |_| {}).await;
    let turn = &r.report.turns[0];
    assert_eq!(
        r.report.summary.speculation.attempts, 3,
        "budget of 3 per turn"
    );
    assert_eq!(cancelled(&r.log, CancelReason::TurnResumed).len(), 3);
    assert_eq!(
        turn.speculation, "miss",
        "the fourth eager end is over budget"
    );
    assert_eq!(turn.user_transcript, "I want to fly to Lisbon next week.");
    assert_eq!(turn.assistant_heard, "Lisbon next week, noted.");

    let r = simulate(inline(HESITANT), |c| {
        c.session.machine.max_speculations_per_turn = 4
    })
    .await;
    assert_eq!(r.report.summary.speculation.attempts, 4);
    assert_eq!(r.report.turns[0].speculation, "hit");
}

#[tokio::test(start_paused = true)]
async fn barge_in_stops_output_at_once_and_history_keeps_the_heard_words() {
    let r = simulate(load("scenarios/barge_in.json"), |_| {}).await;
    let cut = cancelled(&r.log, CancelReason::BargeIn);
    assert_eq!(cut.len(), 1);
    let start = flux_at(&r.log, TurnEvent::StartOfTurn, 1);
    let last = r
        .log
        .iter()
        .find_map(|e| match e.kind {
            LogKind::LastFrameWritten { id } if id == cut[0] => Some(e.at),
            _ => None,
        })
        .expect("the cut reply had played");
    assert!(
        last <= start,
        "no frame written after StartOfTurn was received"
    );
    let first = &r.report.turns[0];
    assert!(first.interrupted);
    assert_eq!(r.report.turns[1].barge_in_stop_ms, Some(0.0));
    let generated = first.assistant_text.as_str();
    let heard = first.assistant_heard.as_str();
    assert!(!heard.is_empty() && heard.len() < generated.len());
    assert!(
        generated.starts_with(heard),
        "{heard:?} is a prefix of {generated:?}"
    );
    assert_eq!(
        r.history[1],
        Message::Assistant {
            content: heard.to_owned(),
            interrupted: true,
            tool_calls: vec![]
        }
    );
    assert_eq!(
        r.history[2],
        Message::user("Sorry, does that include sale items?")
    );
    // The user starts 1.5 s into the reply; StartOfTurn comes at the first 240 ms tick after
    // the first user word (0.375 s), 1.92 s or later: six words of 0.333 s were heard.
    assert_eq!(heard, "You can return any item within");
}

#[tokio::test(start_paused = true)]
async fn start_of_turn_while_the_reply_is_generating_cancels_it_silently() {
    let scenario = inline(
        r#"{"name":"early","llm":{"ttft_ms":3000,"token_interval_ms":20},
        "turns":[{"start":{"at_ms":500},"phrases":[{"text":"Hello there.","ramp_ms":200}],"reply":"Hi! How can I help?"},
                 {"start":{"at_ms":2200},"say":"Are you there?","reply":"Yes, I am here."}]}"#,
    );
    let r = simulate(scenario, |_| {}).await;
    let cut = cancelled(&r.log, CancelReason::BargeIn);
    assert_eq!(cut.len(), 1);
    assert_eq!(first_frame(&r.log, cut[0]), None, "it never made a sound");
    assert_eq!(r.report.turns[1].barge_in_stop_ms, Some(0.0));
    assert_eq!(
        r.history,
        vec![
            Message::user("Hello there. Are you there?"),
            // The merged words match no scripted reply: the rule-based greeting answers.
            Message::assistant("Hello! How can I help you today?")
        ],
        "the unanswered turn merges into the next"
    );
}

const LONG_REPLY: &str = "You can return any item within thirty days of delivery. Items must be unused and in their original packaging.";

#[tokio::test(start_paused = true)]
async fn a_backchannel_under_min_words_pauses_then_resumes_playback() {
    let scenario = inline(&format!(
        r#"{{"name":"backchannel","listen":{{"eot_threshold":0.7}},
        "turns":[{{"start":{{"at_ms":500}},"say":"What is your return policy?","reply":"{LONG_REPLY}"}},
                 {{"start":{{"barge_in_ms":1500}},"phrases":[{{"text":"Uh-huh.","ramp_ms":300}}]}}]}}"#
    ));
    let r = simulate(scenario, |c| {
        c.session.machine.barge_in = BargeInPolicy::MinWords(3)
    })
    .await;
    assert!(
        r.events
            .iter()
            .any(|e| matches!(e, EngineEvent::AgentPaused { .. }))
    );
    assert!(r.events.iter().any(
        |e| matches!(e, EngineEvent::Backchannel { transcript, .. } if transcript == "Uh-huh.")
    ));
    assert!(
        r.events
            .iter()
            .any(|e| matches!(e, EngineEvent::AgentResumed { .. }))
    );
    assert!(cancelled(&r.log, CancelReason::BargeIn).is_empty());
    assert_eq!(
        r.history,
        vec![
            Message::user("What is your return policy?"),
            Message::assistant(LONG_REPLY)
        ],
        "the reply finished whole and the backchannel is not history"
    );
}

#[tokio::test(start_paused = true)]
async fn min_words_cuts_once_the_turn_has_enough_words_and_answers_it() {
    let scenario = inline(&format!(
        r#"{{"name":"cut","listen":{{"eot_threshold":0.7}},
        "turns":[{{"start":{{"at_ms":500}},"say":"What is your return policy?","reply":"{LONG_REPLY}"}},
                 {{"start":{{"barge_in_ms":1500}},"say":"Wait, what about sale items?","reply":"Sale items too."}}]}}"#
    ));
    let r = simulate(scenario, |c| {
        c.session.machine.barge_in = BargeInPolicy::MinWords(3)
    })
    .await;
    let cut = cancelled(&r.log, CancelReason::BargeIn);
    assert_eq!(cut.len(), 1);
    let start = flux_at(&r.log, TurnEvent::StartOfTurn, 1);
    let cut_at = r
        .log
        .iter()
        .find_map(|e| {
            matches!(
                e.kind,
                LogKind::Cancelled {
                    reason: CancelReason::BargeIn,
                    ..
                }
            )
            .then_some(e.at)
        })
        .unwrap();
    assert!(cut_at > start, "paused first, cut at the third word");
    assert!(matches!(
        &r.history[1],
        Message::Assistant {
            interrupted: true,
            ..
        }
    ));
    assert_eq!(r.history[3], Message::assistant("Sale items too."));
}

const TWO_TURNS: &str = r#"{"name":"two","turns":[
    {"start":{"at_ms":500},"phrases":[{"text":"When do you open?","ramp_ms":300}],"reply":"We open at nine in the morning."},
    {"start":{"after_agent_ms":500},"phrases":[{"text":"Thanks.","ramp_ms":300}],"reply":"You're welcome."}]}"#;

#[tokio::test(start_paused = true)]
async fn llm_failure_mid_reply_ends_with_the_fallback_and_the_session_goes_on() {
    let scenario = inline(TWO_TURNS);
    let llm = ScriptedLlm::from_scenario(&scenario).fail_call(0, Fault::FailAfterTokens(3));
    let tts = SyntheticTts::new(16000, scenario.tts.clone());
    let r = simulate(scenario, |c| {
        c.backends = Some(Backends {
            llm: Arc::new(llm),
            tts: Arc::new(tts),
            tools: None,
        });
    })
    .await;
    let fallback = "Sorry, I'm having trouble right now. Could you say that again?";
    assert!(r.events.iter().any(|e| matches!(e, EngineEvent::ResponseEnded { error: Some(_), heard, .. } if heard == fallback)));
    assert_eq!(
        r.history,
        vec![
            Message::user("When do you open?"),
            Message::assistant(fallback),
            Message::user("Thanks."),
            Message::assistant("You're welcome."),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_tts_times_out_into_the_fallback() {
    let scenario = inline(TWO_TURNS);
    let llm = ScriptedLlm::from_scenario(&scenario);
    let tts = SyntheticTts::new(16000, scenario.tts.clone()).fail_call(0, TtsFault::Stall);
    let r = simulate(scenario, |c| {
        c.session.machine.speculation = false;
        c.backends = Some(Backends {
            llm: Arc::new(llm),
            tts: Arc::new(tts),
            tools: None,
        });
    })
    .await;
    let error = r
        .events
        .iter()
        .find_map(|e| match e {
            EngineEvent::ResponseEnded { error: Some(e), .. } => Some(e.clone()),
            _ => None,
        })
        .expect("the first reply failed");
    assert!(
        error.message.contains("no first audio within 3s"),
        "{error}"
    );
    let first = &r.report.turns[0];
    assert_eq!(
        first.assistant_heard,
        "Sorry, I'm having trouble right now. Could you say that again?"
    );
    assert_eq!(r.report.turns[1].assistant_heard, "You're welcome.");
}

#[derive(Default)]
struct Tools {
    calls: Mutex<Vec<(String, Instant)>>,
}

#[async_trait]
impl ToolExecutor for Tools {
    fn specs(&self) -> Vec<ToolSpec> {
        let spec = |name: &str, effect| ToolSpec {
            name: name.into(),
            description: name.into(),
            parameters: serde_json::json!({"type": "object"}),
            effect,
        };
        vec![
            spec("check_availability", ToolEffect::Pure),
            spec("hold_table", ToolEffect::SideEffecting),
            spec("book_table", ToolEffect::SideEffecting),
        ]
    }

    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        self.calls
            .lock()
            .unwrap()
            .push((call.name.clone(), Instant::now()));
        Ok("ok".into())
    }
}

#[tokio::test(start_paused = true)]
async fn tools_under_speculation_pure_runs_side_effects_wait_and_are_dropped_on_cancel() {
    let scenario = inline(
        r#"{"name":"tools","listen":{"eager_eot_threshold":0.5,"eot_threshold":0.7},
        "turns":[{"start":{"at_ms":500},"phrases":[
          {"text":"Is there a table","pause_ms":1200,"eot_confidence":0.6,"ramp_ms":300},
          {"text":"for two","pause_ms":1200,"eot_confidence":0.6,"ramp_ms":300},
          {"text":"at eight?","eot_confidence":0.9,"ramp_ms":1200}]}]}"#,
    );
    let reply = |tool: &str, text: &str| ScriptedReply {
        text: text.into(),
        tool_calls: vec![(tool.into(), serde_json::json!({}))],
    };
    let llm: Arc<dyn LanguageModel> = Arc::new(ScriptedLlm::new(
        [
            (
                "Is there a table".to_owned(),
                reply("check_availability", "Let me see."),
            ),
            (
                "Is there a table for two".to_owned(),
                reply("hold_table", "Holding one."),
            ),
            (
                "Is there a table for two at eight?".to_owned(),
                reply("book_table", "Booked for eight."),
            ),
        ],
        scenario.llm.clone(),
    ));
    let tools = Arc::new(Tools::default());
    let tts = Arc::new(SyntheticTts::new(16000, scenario.tts.clone()));
    let r = simulate(scenario, |c| {
        c.backends = Some(Backends {
            llm,
            tts,
            tools: Some(tools.clone()),
        });
    })
    .await;
    let calls = tools.calls.lock().unwrap().clone();
    let names: Vec<&str> = calls.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec!["check_availability", "book_table"],
        "hold_table was never made"
    );
    let first_eager_resumed = r
        .log
        .iter()
        .find_map(|e| {
            matches!(
                &e.kind,
                LogKind::Flux {
                    event: TurnEvent::TurnResumed,
                    ..
                }
            )
            .then_some(e.at)
        })
        .unwrap();
    assert!(
        calls[0].1 < first_eager_resumed,
        "the pure tool ran while speculative"
    );
    let promoted = r
        .log
        .iter()
        .find_map(|e| matches!(e.kind, LogKind::Promoted { .. }).then_some(e.at))
        .expect("the last speculation was promoted");
    assert!(
        calls[1].1 >= promoted,
        "the side-effecting tool waited for promotion"
    );
    assert!(calls[1].1 > flux_at(&r.log, TurnEvent::EagerEndOfTurn, 0));
    assert_eq!(r.report.turns[0].assistant_heard, "Booked for eight.");
    assert!(has(&r.log, |k| matches!(
        k,
        LogKind::Cancelled {
            reason: CancelReason::TurnResumed,
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn a_reply_past_its_length_limit_ends_on_its_last_whole_sentence() {
    let scenario = inline(
        r#"{"name":"long","listen":{"eot_threshold":0.7},
        "turns":[{"start":{"at_ms":500},"say":"Tell me everything."}]}"#,
    );
    let llm: Arc<dyn LanguageModel> = Arc::new(ScriptedLlm::new(
        [(
            "Tell me everything.".to_owned(),
            ScriptedReply::text("The model goes on and on. ".repeat(50)),
        )],
        scenario.llm.clone(),
    ));
    let tts = Arc::new(SyntheticTts::new(16000, scenario.tts.clone()));
    let r = simulate(scenario, |c| {
        c.session.response.max_reply_chars = 100;
        c.backends = Some(Backends {
            llm,
            tts,
            tools: None,
        });
    })
    .await;
    let sentences: Vec<&str> = r
        .log
        .iter()
        .filter_map(|e| match &e.kind {
            LogKind::SentenceReady { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sentences, vec!["The model goes on and on."; 3]);
    assert_eq!(
        r.report.turns[0].assistant_heard,
        "The model goes on and on. The model goes on and on. The model goes on and on."
    );
}

/// A voice whose stream never ends: 20 ms of audio every 20 ms, forever.
struct EndlessVoice;

#[async_trait]
impl turnflow::tts::SpeechSynthesizer for EndlessVoice {
    fn name(&self) -> &str {
        "endless"
    }

    fn sample_rate(&self) -> u32 {
        16000
    }

    async fn synthesize(
        &self,
        _text: &str,
    ) -> Result<turnflow::tts::SpeechStream, turnflow::tts::TtsError> {
        Ok(Box::pin(futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let chunk = turnflow::tts::SpeechChunk {
                samples: vec![1000; 320],
                words: Vec::new(),
                billed: None,
            };
            Some((Ok(chunk), ()))
        })))
    }
}

#[tokio::test(start_paused = true)]
async fn a_voice_that_never_ends_its_sentence_is_cut_at_the_sentences_longest() {
    let scenario = inline(
        r#"{"name":"endless","listen":{"eot_threshold":0.7},
        "turns":[{"start":{"at_ms":500},"say":"Hello?"}]}"#,
    );
    let llm: Arc<dyn LanguageModel> = Arc::new(ScriptedLlm::new(
        [("Hello?".to_owned(), ScriptedReply::text("Hi there."))],
        scenario.llm.clone(),
    ));
    let r = simulate(scenario, |c| {
        c.backends = Some(Backends {
            llm,
            tts: Arc::new(EndlessVoice),
            tools: None,
        });
    })
    .await;
    let at = |want: fn(&LogKind) -> bool| {
        r.log
            .iter()
            .find_map(|e| want(&e.kind).then_some(e.at))
            .expect("logged")
    };
    let first = at(|k| matches!(k, LogKind::FirstFrameWritten { .. }));
    let last = at(|k| matches!(k, LogKind::LastFrameWritten { .. }));
    // "Hi there." is 9 characters: 10 s + 1.8 s of audio at the most.
    let played = last - first;
    assert!(
        played >= std::time::Duration::from_millis(11_700)
            && played <= std::time::Duration::from_millis(11_800),
        "played {played:?}"
    );
    assert_eq!(r.report.turns[0].assistant_heard, "Hi there.");
}

/// Tools whose calls never answer.
struct HangingTools;

#[async_trait]
impl ToolExecutor for HangingTools {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "check_availability".into(),
            description: "check".into(),
            parameters: serde_json::json!({"type": "object"}),
            effect: ToolEffect::Pure,
        }]
    }

    async fn call(&self, _call: &ToolCall) -> Result<String, String> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_tool_that_never_answers_is_given_up_on_and_the_reply_is_spoken() {
    let scenario = inline(
        r#"{"name":"hang","listen":{"eot_threshold":0.7},
        "turns":[{"start":{"at_ms":500},"say":"Is there a table for two?"},
                 {"start":{"at_ms":20000},"say":"Thanks."}]}"#,
    );
    let llm: Arc<dyn LanguageModel> = Arc::new(ScriptedLlm::new(
        [(
            "Is there a table for two?".to_owned(),
            ScriptedReply {
                text: "Let me see.".into(),
                tool_calls: vec![("check_availability".into(), serde_json::json!({}))],
            },
        )],
        scenario.llm.clone(),
    ));
    let tts = Arc::new(SyntheticTts::new(16000, scenario.tts.clone()));
    let r = simulate(scenario, |c| {
        c.backends = Some(Backends {
            llm,
            tts,
            tools: Some(Arc::new(HangingTools)),
        });
    })
    .await;
    assert_eq!(
        r.report.turns[0].assistant_heard, "One moment. Let me see.",
        "the filler line while the tool hangs, then the reply"
    );
    let call_started = r
        .log
        .iter()
        .find_map(|e| matches!(e.kind, LogKind::ToolStarted { .. }).then_some(e.at))
        .expect("the call started");
    let filler = r
        .log
        .iter()
        .find_map(|e| match &e.kind {
            LogKind::SentenceReady { text, .. } if text == "One moment." => Some(e.at),
            _ => None,
        })
        .expect("the filler line");
    assert_eq!(filler - call_started, std::time::Duration::from_millis(700));
    let requests: Vec<Instant> = r
        .log
        .iter()
        .filter(|e| matches!(e.kind, LogKind::LlmRequestSent { .. }))
        .map(|e| e.at)
        .collect();
    assert!(
        requests.len() >= 2,
        "the model was asked again after the tool"
    );
    let waited = requests[1] - requests[0];
    assert!(
        waited >= std::time::Duration::from_secs(10) && waited < std::time::Duration::from_secs(11),
        "the second round began {waited:?} after the first"
    );
}

#[tokio::test(start_paused = true)]
async fn the_demo_report_is_exact_on_the_virtual_clock() {
    let r = simulate(Arc::new(Scenario::demo()), |_| {}).await;
    let t = &r.report.turns;
    assert_eq!(t.len(), 5);
    let spec: Vec<&str> = t.iter().map(|t| t.speculation.as_str()).collect();
    assert_eq!(spec, vec!["hit", "hit", "hit", "hit", "none"]);
    let latency: Vec<f64> = t.iter().map(|t| t.response_latency_ms.unwrap()).collect();
    // LLM 350 ms to first token + 20 ms a token to the end of the first piece + TTS 150 ms,
    // minus the eager lead on hits. A speculative reply's first piece is its quick first
    // chunk ("Yes," one token; "No problem," two); the timeout turn is not speculative and
    // waits for its whole first sentence (seven tokens). Turn 1 looks the table up while its
    // reply is a guess: the call 350 ms after the eager end, 300 ms of lookup, 350 ms to the
    // next round's "Great,", 150 ms of voice, less its 480 ms lead. Turn 2's booking waits
    // for `EndOfTurn` and runs 800 ms: the filler line goes out 700 ms in, heard 150 ms later.
    assert_eq!(latency, vec![260.0, 670.0, 850.0, 280.0, 620.0]);
    let leads: Vec<Option<f64>> = t.iter().map(|t| t.lead_ms).collect();
    assert_eq!(
        leads,
        [Some(240.0), Some(480.0), Some(480.0), Some(240.0), None]
    );
    let tokens: Vec<Option<u64>> = t.iter().map(|t| t.first_piece_tokens).collect();
    // Turn 2's first piece is the filler line, which waits for no token.
    assert_eq!(tokens, [Some(1), Some(1), Some(0), Some(2), Some(7)]);
    assert!(t[2].interrupted);
    assert_eq!(t[3].barge_in_stop_ms, Some(0.0));
    let s = r.report.summary.speculation;
    assert_eq!(
        (s.attempts, s.hits, s.misses),
        (5, 4, 1),
        "every attempt is one outcome"
    );
    assert_eq!(s.wasted_llm_tokens, 3);
    let per_turn: Vec<(u64, u64)> = t
        .iter()
        .map(|t| (t.speculation_attempts, t.speculation_withdrawn))
        .collect();
    assert_eq!(per_turn, vec![(1, 0), (2, 1), (1, 0), (1, 0), (0, 0)]);
    assert!(
        t.iter()
            .all(|t| t.llm_ttft_ms == Some(350.0) && t.tts_ttfb_ms == Some(150.0))
    );
}

/// Passes connections through, but ends the first one after it delivered 8 server messages:
/// a socket dropped in the middle of the first user turn.
struct DropFirstConnection {
    inner: Arc<dyn turnflow::flux::Connector>,
}

/// Connections opened through [`DropFirstConnection`] (one test uses it).
static CONNECTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[async_trait]
impl turnflow::flux::Connector for DropFirstConnection {
    async fn connect(
        &self,
        request: &turnflow::ws::ConnectRequest,
    ) -> Result<turnflow::ws::Connection, turnflow::ws::ConnectError> {
        use futures_util::StreamExt;
        let mut connection = self.inner.connect(request).await?;
        if CONNECTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            connection.stream = Box::pin(connection.stream.take(8));
        }
        Ok(connection)
    }
}

#[tokio::test(start_paused = true)]
async fn a_flux_reconnect_mid_turn_does_not_lose_the_conversation() {
    let clean = simulate(Arc::new(Scenario::demo()), |_| {}).await;
    let dropped = simulate(Arc::new(Scenario::demo()), |c| {
        c.wrap_connector = Some(|inner| Arc::new(DropFirstConnection { inner }));
    })
    .await;
    let starts = dropped
        .log
        .iter()
        .filter(|e| {
            matches!(
                &e.kind,
                LogKind::Flux {
                    event: TurnEvent::StartOfTurn,
                    turn_index: 0,
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        CONNECTS.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "dropped once, reconnected once"
    );
    assert_eq!(starts, 1, "the replayed turn is not started twice");
    assert_eq!(
        dropped.history, clean.history,
        "same conversation despite the drop"
    );
    let transcripts = |r: &SimulationResult| -> Vec<String> {
        r.report
            .turns
            .iter()
            .map(|t| t.user_transcript.clone())
            .collect()
    };
    assert_eq!(transcripts(&dropped), transcripts(&clean));
}

#[tokio::test(start_paused = true)]
async fn applications_see_interim_transcripts_and_sentences_in_order() {
    let r = simulate(Arc::new(Scenario::demo()), |_| {}).await;
    let position = |pred: &dyn Fn(&EngineEvent) -> bool| r.events.iter().position(pred).unwrap();
    let partial = position(
        &|e| matches!(e, EngineEvent::UserTranscript { turn: 0, transcript } if transcript == "Hi,"),
    );
    let finished = position(&|e| matches!(e, EngineEvent::UserFinished { turn: 0, .. }));
    let speaking = position(&|e| {
        matches!(
            e,
            EngineEvent::AgentSpeaking {
                response: ResponseId(1)
            }
        )
    });
    let sentence = position(
        &|e| matches!(e, EngineEvent::AgentSentence { response: ResponseId(1), text } if text == "Yes,"),
    );
    assert!(partial < finished && finished < speaking && speaking < sentence);
}

#[tokio::test(start_paused = true)]
async fn synthesis_is_paced_to_stay_about_a_second_ahead_of_playout() {
    // One 45-word sentence: 15 s of speech at 180 wpm, 150 chunks of 100 ms.
    let reply = vec!["word"; 44].join(" ") + " end.";
    let scenario = inline(&format!(
        r#"{{"name":"long","turns":[{{"start":{{"at_ms":500}},"phrases":[{{"text":"Talk to me.","ramp_ms":200}}],"reply":"{reply}"}}]}}"#
    ));
    let tts = Arc::new(SyntheticTts::new(16000, scenario.tts.clone()));
    let llm = Arc::new(ScriptedLlm::from_scenario(&scenario));
    let (observer, mut events) = tokio::sync::mpsc::unbounded_channel();
    let voice = tts.clone();
    let run = tokio::spawn(simulate(scenario, move |c| {
        c.backends = Some(Backends {
            llm,
            tts: voice,
            tools: None,
        });
        c.observer = Some(observer);
    }));
    while let Some(event) = events.recv().await {
        if matches!(event, EngineEvent::AgentSpeaking { .. }) {
            break;
        }
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let served = tts.chunks_served();
    // 2 s played + 1 s ahead = 30 chunks, plus the chunk waiting to be delivered.
    assert!(
        (20..=32).contains(&served),
        "{served} of 150 chunks pulled after 2 s of playback"
    );
    let result = run.await.unwrap();
    assert_eq!(tts.chunks_served(), 150);
    assert_eq!(result.report.turns[0].assistant_heard, reply);
}

#[tokio::test(start_paused = true)]
async fn every_turn_of_every_scenario_breaks_down_into_parts_that_add_up() {
    let mut scenarios = vec![Arc::new(Scenario::demo())];
    for entry in std::fs::read_dir("scenarios").unwrap() {
        scenarios.push(load(entry.unwrap().path().to_str().unwrap()));
    }
    let mut turns = 0;
    for scenario in scenarios {
        let name = scenario.name.clone();
        for presynthesis in [Presynthesis::FirstChunk, Presynthesis::Off] {
            let r = simulate(scenario.clone(), |c| {
                c.session.response.presynthesis = presynthesis
            })
            .await;
            for t in &r.report.turns {
                let Some(latency) = t.response_latency_ms else {
                    continue;
                };
                let b = t
                    .breakdown
                    .unwrap_or_else(|| panic!("{name} turn {}: no breakdown", t.index));
                let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
                assert!(
                    close(b.response_latency_ms(), latency),
                    "{name} turn {}: {b:?} vs {latency}",
                    t.index
                );
                assert!(
                    close(b.engine_ms, t.engine_overhead_ms.unwrap()),
                    "{name}: {b:?}"
                );
                assert_eq!(
                    b.voice_to_voice_ms().map(|v| (v * 1e3).round()),
                    t.voice_to_voice_ms.map(|v| (v * 1e3).round()),
                    "{name}"
                );
                assert_eq!(b.speculation_ms, -t.lead_ms.unwrap_or(0.0), "{name}");
                turns += 1;
            }
        }
    }
    assert!(turns > 30, "{turns} turns checked");
}
