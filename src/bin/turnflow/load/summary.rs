//! What a load run measured, as JSON or as a table.

use serde::Serialize;
use turnflow::report::Stats;

#[derive(Serialize)]
pub(super) struct Summary {
    pub(super) url: String,
    pub(super) sessions: usize,
    pub(super) turns_per_session: u32,
    pub(super) turns: usize,
    pub(super) failed_sessions: usize,
    pub(super) failures: std::collections::BTreeMap<String, usize>,
    pub(super) seconds: f64,
    pub(super) response_latency_ms: Stats,
    pub(super) voice_to_voice_ms: Stats,
    pub(super) server_response_latency_ms: Stats,
    pub(super) engine_overhead_ms: Stats,
    pub(super) barge_in_stop_ms: Stats,
    pub(super) speculation: SpeculationSummary,
}

/// How speculation went over the turns whose report the caller received (browser sessions;
/// a carrier's stream carries no report).
#[derive(Serialize)]
pub(super) struct SpeculationSummary {
    /// Turns answered by a promoted speculative reply.
    pub(super) hits: usize,
    /// Turns that speculated and were answered by a fresh reply.
    pub(super) misses: usize,
    /// Turns without a speculative reply.
    pub(super) none: usize,
    /// Speculative replies withdrawn (the user resumed, the words changed).
    pub(super) withdrawn: u64,
    /// `EagerEndOfTurn` -> `EndOfTurn` of the hits.
    pub(super) lead_ms: Stats,
    /// The client's response latency of the hits.
    pub(super) hit_response_latency_ms: Stats,
}

pub(super) fn print_summary(s: &Summary) {
    println!(
        "load: {} sessions x {} turns against {}: {} turns measured, {} sessions failed, {:.1} s",
        s.sessions, s.turns_per_session, s.url, s.turns, s.failed_sessions, s.seconds
    );
    println!(
        "{:<34}{:>9}{:>9}{:>9}{:>9}{:>9}{:>7}",
        "(ms)", "p50", "p90", "p95", "p99", "max", "n"
    );
    for (name, stats) in [
        ("response latency (client)", &s.response_latency_ms),
        ("voice-to-voice (client)", &s.voice_to_voice_ms),
        ("response latency (server)", &s.server_response_latency_ms),
        ("engine overhead (server)", &s.engine_overhead_ms),
        ("barge-in stop (server)", &s.barge_in_stop_ms),
    ] {
        if stats.count > 0 {
            println!(
                "{name:<34}{:>9.1}{:>9.1}{:>9.1}{:>9.1}{:>9.1}{:>7}",
                stats.p50, stats.p90, stats.p95, stats.p99, stats.max, stats.count
            );
        }
    }
    let spec = &s.speculation;
    if spec.hits + spec.misses + spec.none > 0 {
        println!(
            "speculation: {} hits, {} misses, {} turns without ({} guesses withdrawn); lead p50 {:.0} ms, hits answered in {:.0} ms p50 (client)",
            spec.hits,
            spec.misses,
            spec.none,
            spec.withdrawn,
            spec.lead_ms.p50,
            spec.hit_response_latency_ms.p50
        );
    }
    for (failure, n) in &s.failures {
        println!("failed x{n}: {failure}");
    }
}
