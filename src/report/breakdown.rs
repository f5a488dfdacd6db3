//! Where a reply's milliseconds went: a turn's voice-to-voice latency split into consecutive
//! parts that add up exactly.
//!
//! The parts follow the critical path of the reply the user heard, from the end of their
//! speech to its first frame written: waiting for Flux's `EndOfTurn`, the head start a
//! promoted speculation had (negative), the LLM's time to first token, streaming the first
//! piece, the voice's time to first audio, time held for `EndOfTurn`, and our own code. Each
//! part is one difference of instants stamped in the event log, so the parts sum to the total
//! by construction; the property test below checks it over any timing. Output after the frame
//! is written (a browser's jitter buffer, a carrier) is not ours to see here: `serve`'s
//! clients measure it on their side.

use serde::Serialize;

/// The instants on the critical path of the reply a user heard, in milliseconds from the
/// `EndOfTurn` it answered (negative: before it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CriticalPath {
    /// The audio with the end of the user's last word was sent.
    pub speech_end: Option<f64>,
    /// The Flux event that started the reply (`EagerEndOfTurn` for a promoted speculation).
    pub trigger: f64,
    /// The reply could be heard from here on: its promotion, or its start if it never waited.
    pub gate_open: f64,
    /// Request sent to the LLM.
    pub llm_sent: f64,
    /// First LLM chunk received.
    pub llm_first: f64,
    /// The tool calls before the first piece, when the model made any.
    pub tools: Option<ToolSpan>,
    /// First piece of text released to the voice.
    pub first_piece: f64,
    /// Request for the first piece sent to the voice.
    pub tts_sent: f64,
    /// First audio of the first piece received.
    pub tts_first: f64,
    /// First frame written to the output.
    pub first_frame: f64,
}

/// The tool calls on a reply's critical path, in milliseconds from `EndOfTurn`: the model's
/// first call received, the first call sent, the end of the wait for them (the last result,
/// or the first piece when a filler line came first), and the model's next round (request,
/// first chunk) when it began before the first piece. Rounds between are in the span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ToolSpan {
    pub requested: f64,
    pub started: f64,
    pub until: f64,
    pub next_llm: Option<(f64, f64)>,
}

impl ToolSpan {
    /// Our own time around the calls (call received -> sent, last result -> the model's next
    /// request), and the time a call sent only after promotion waited for it (held).
    pub(crate) fn engine_and_held(&self, gate_open: f64) -> (f64, f64) {
        let step = |from: f64, to: f64| (to - from).max(0.0);
        let after_result = self
            .next_llm
            .map_or(0.0, |(sent, _)| step(self.until, sent));
        if self.started < gate_open {
            // Sent while the reply was a guess: it never waited for the gate.
            (step(self.requested, self.started) + after_result, 0.0)
        } else {
            (
                step(self.requested.max(gate_open), self.started) + after_result,
                step(self.requested, gate_open),
            )
        }
    }
}

/// A turn's latency in consecutive parts; see the module docs. All in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Breakdown {
    /// End of the user's speech sent -> `EndOfTurn` received (governed by `eot_threshold` and
    /// `eot_timeout_ms`); `None` when the speech end is unknown.
    pub endpointing_ms: Option<f64>,
    /// Minus the head start of a promoted speculation: its trigger `EagerEndOfTurn` ->
    /// `EndOfTurn` (governed by `eager_eot_threshold`); 0 without speculation.
    pub speculation_ms: f64,
    /// LLM request -> first chunk (the model).
    pub llm_ttft_ms: f64,
    /// First chunk -> first piece released to the voice (the model's token rate and where the
    /// first piece ends: `presynthesis`); with tool calls, the model's streaming before its
    /// call and after its next round's first chunk.
    pub first_piece_ms: f64,
    /// The tool calls on the way: first call sent -> last result received (rounds between
    /// included); 0 without tools.
    #[serde(default)]
    pub tool_ms: f64,
    /// Voice request -> first audio (the voice).
    pub tts_ttfb_ms: f64,
    /// Ready but held until promotion: the speculation's work finished before `EndOfTurn`.
    pub held_ms: f64,
    /// Our own code on the critical path; equals `engine_overhead_ms`.
    pub engine_ms: f64,
}

impl Breakdown {
    /// Names of the parts after `EndOfTurn`, in the order of [`Breakdown::parts`].
    pub const PART_NAMES: [&'static str; 7] = [
        "speculation",
        "llm ttft",
        "first piece",
        "tool",
        "tts ttfb",
        "held",
        "engine",
    ];

    /// The parts after `EndOfTurn`, in order (named by [`Breakdown::PART_NAMES`]): they add
    /// up to the response latency.
    pub fn parts(&self) -> [f64; 7] {
        [
            self.speculation_ms,
            self.llm_ttft_ms,
            self.first_piece_ms,
            self.tool_ms,
            self.tts_ttfb_ms,
            self.held_ms,
            self.engine_ms,
        ]
    }

    /// The parts of a critical path. Instants out of order (which the engine never logs)
    /// count as zero-length steps rather than negative ones.
    pub(crate) fn of(path: &CriticalPath) -> Self {
        let step = |from: f64, to: f64| (to - from).max(0.0);
        let p = path;
        let piece_held = step(p.first_piece, p.gate_open.min(p.tts_sent));
        let audio_held = step(p.tts_first, p.gate_open.min(p.first_frame));
        // Without tools: the model streams from its first chunk to the first piece.
        let mut llm_ttft_ms = step(p.llm_sent, p.llm_first);
        let mut first_piece_ms = step(p.llm_first, p.first_piece);
        let (mut tool_ms, mut call_held, mut tool_engine) = (0.0, 0.0, 0.0);
        if let Some(t) = &p.tools {
            (tool_engine, call_held) = t.engine_and_held(p.gate_open);
            tool_ms = step(t.started, t.until);
            let streaming_from = match t.next_llm {
                Some((sent, first)) => {
                    llm_ttft_ms += step(sent, first);
                    first
                }
                None => t.until,
            };
            first_piece_ms = step(p.llm_first, t.requested) + step(streaming_from, p.first_piece);
        }
        Self {
            endpointing_ms: p.speech_end.map(|end| step(end, 0.0)),
            speculation_ms: p.trigger.min(0.0),
            llm_ttft_ms,
            first_piece_ms,
            tool_ms,
            tts_ttfb_ms: step(p.tts_sent, p.tts_first),
            held_ms: piece_held + audio_held + call_held,
            engine_ms: step(p.trigger, p.llm_sent)
                + tool_engine
                + (step(p.first_piece, p.tts_sent) - piece_held)
                + (step(p.tts_first, p.first_frame) - audio_held),
        }
    }

    /// The parts after `EndOfTurn`: the response latency.
    pub fn response_latency_ms(&self) -> f64 {
        self.parts().iter().sum()
    }

    /// Every part: the voice-to-voice latency, when the speech end is known.
    pub fn voice_to_voice_ms(&self) -> Option<f64> {
        self.endpointing_ms
            .map(|wait| wait + self.response_latency_ms())
    }

    /// The mean of each part over `parts` (means add up, percentiles would not); `None` for
    /// none. The endpointing mean is over the turns that have one.
    pub fn mean<'a>(parts: impl IntoIterator<Item = &'a Breakdown>) -> Option<Self> {
        let mut sum = Breakdown::default();
        let (mut n, mut ends, mut end_sum) = (0.0, 0.0, 0.0);
        for b in parts {
            n += 1.0;
            if let Some(wait) = b.endpointing_ms {
                ends += 1.0;
                end_sum += wait;
            }
            sum.speculation_ms += b.speculation_ms;
            sum.llm_ttft_ms += b.llm_ttft_ms;
            sum.first_piece_ms += b.first_piece_ms;
            sum.tool_ms += b.tool_ms;
            sum.tts_ttfb_ms += b.tts_ttfb_ms;
            sum.held_ms += b.held_ms;
            sum.engine_ms += b.engine_ms;
        }
        (n > 0.0).then(|| Breakdown {
            endpointing_ms: (ends > 0.0).then(|| end_sum / ends),
            speculation_ms: sum.speculation_ms / n,
            llm_ttft_ms: sum.llm_ttft_ms / n,
            first_piece_ms: sum.first_piece_ms / n,
            tool_ms: sum.tool_ms / n,
            tts_ttfb_ms: sum.tts_ttfb_ms / n,
            held_ms: sum.held_ms / n,
            engine_ms: sum.engine_ms / n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_promoted_speculation_with_its_first_chunk_requested_in_the_lead() {
        // Eager end 240 ms before EndOfTurn; the first chunk went to the voice 200 ms in, its
        // audio came 60 ms after EndOfTurn.
        let path = CriticalPath {
            speech_end: Some(-700.0),
            trigger: -240.0,
            gate_open: 0.2,
            llm_sent: -239.9,
            llm_first: -39.9,
            tools: None,
            first_piece: -39.9,
            tts_sent: -39.8,
            tts_first: 60.2,
            first_frame: 60.4,
        };
        let b = Breakdown::of(&path);
        assert_eq!(b.speculation_ms, -240.0);
        assert!((b.llm_ttft_ms - 200.0).abs() < 1e-9);
        assert!((b.tts_ttfb_ms - 100.0).abs() < 1e-9);
        // The hand-off to the voice happened inside the lead, so it is held time, not on the
        // critical path; the audio itself came after promotion.
        assert!((b.held_ms - 0.1).abs() < 1e-9, "{b:?}");
        assert!((b.engine_ms - 0.3).abs() < 1e-9, "{b:?}");
        assert!((b.response_latency_ms() - 60.4).abs() < 1e-9);
        assert!((b.voice_to_voice_ms().unwrap() - 760.4).abs() < 1e-9);
    }

    #[test]
    fn llm_only_speculation_holds_the_first_piece() {
        let path = CriticalPath {
            speech_end: None,
            trigger: -240.0,
            gate_open: 0.0,
            llm_sent: -240.0,
            llm_first: -40.0,
            tools: None,
            first_piece: -20.0,
            tts_sent: 0.1,
            tts_first: 100.1,
            first_frame: 100.3,
        };
        let b = Breakdown::of(&path);
        assert_eq!(b.held_ms, 20.0, "the piece waited for EndOfTurn");
        assert!((b.engine_ms - 0.3).abs() < 1e-9);
        assert!((b.response_latency_ms() - 100.3).abs() < 1e-9);
        assert_eq!(b.voice_to_voice_ms(), None);
        let mean = Breakdown::mean([&b, &Breakdown::of(&path)]).unwrap();
        assert!((mean.response_latency_ms() - 100.3).abs() < 1e-9);
        assert_eq!(Breakdown::mean([]), None);
    }

    proptest! {
        #[test]
        fn the_parts_add_up_to_the_latency_for_any_timing(
            steps in proptest::collection::vec(0.0f64..500.0, 11),
            trigger in -800.0f64..0.0,
            speculative in any::<bool>(),
            with_tools in any::<bool>(),
            gate_at in 0.0f64..1.0,
            endpointing in 0.0f64..3000.0,
        ) {
            let trigger = if speculative { trigger } else { 0.0 };
            let mut at = trigger;
            let mut next = |i: usize| { at += steps[i]; at };
            let (llm_sent, llm_first) = (next(0), next(1));
            let tools = with_tools.then(|| ToolSpan {
                requested: next(6),
                started: next(7),
                until: next(8),
                next_llm: (steps[9] > 100.0).then(|| (next(9), next(10))),
            });
            let first_piece = next(2);
            let (tts_sent, tts_first) = (next(3), next(4));
            // The first frame is never written before EndOfTurn, nor before promotion.
            let first_frame = next(5).max(0.0);
            let gate_open = if speculative { gate_at * first_frame } else { trigger };
            let path = CriticalPath {
                speech_end: Some(-endpointing),
                trigger, gate_open, llm_sent, llm_first, tools, first_piece, tts_sent, tts_first,
                first_frame,
            };
            let b = Breakdown::of(&path);
            prop_assert!((b.response_latency_ms() - first_frame).abs() < 1e-6, "{b:?}");
            prop_assert!((b.voice_to_voice_ms().unwrap() - (first_frame + endpointing)).abs() < 1e-6);
            for part in [b.llm_ttft_ms, b.first_piece_ms, b.tool_ms, b.tts_ttfb_ms, b.held_ms, b.engine_ms] {
                prop_assert!(part >= -1e-9, "{b:?}");
            }
            prop_assert!(b.speculation_ms <= 0.0);
            prop_assert_eq!(b.tool_ms > 0.0, with_tools && steps[8] > 0.0);
        }
    }

    #[test]
    fn a_lookup_made_during_the_guess_and_one_that_waited() {
        let path = |requested: f64, started: f64| CriticalPath {
            speech_end: None,
            trigger: -400.0,
            gate_open: 0.0,
            llm_sent: -400.0,
            llm_first: -50.0,
            tools: Some(ToolSpan {
                requested,
                started,
                until: started + 300.0,
                next_llm: Some((started + 300.1, started + 650.1)),
            }),
            first_piece: started + 700.1,
            tts_sent: started + 700.2,
            tts_first: started + 800.2,
            first_frame: started + 800.3,
        };
        // Read-only: sent 0.1 ms after the model asked, during the guess.
        let guessed = Breakdown::of(&path(-40.0, -39.9));
        assert!((guessed.tool_ms - 300.0).abs() < 1e-9);
        assert_eq!(guessed.held_ms, 0.0);
        assert!((guessed.engine_ms - 0.4).abs() < 1e-9, "{guessed:?}");
        // Side-effecting: asked for during the guess, sent 0.1 ms after EndOfTurn.
        let waited = Breakdown::of(&path(-40.0, 0.1));
        assert!((waited.held_ms - 40.0).abs() < 1e-9, "{waited:?}");
        assert!((waited.engine_ms - 0.4).abs() < 1e-9, "{waited:?}");
        assert!((waited.response_latency_ms() - 800.4).abs() < 1e-9);
        assert!(
            (waited.response_latency_ms() - guessed.response_latency_ms() - 40.0).abs() < 1e-9,
            "the lookup made during the guess saved the 40 ms it would have waited"
        );
    }
}
