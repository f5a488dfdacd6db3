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
    /// Every session's time from its connection to its end, summed: what a server's CPU
    /// time divides by for its cost per session-second.
    pub(super) session_seconds: f64,
    pub(super) response_latency_ms: Stats,
    pub(super) voice_to_voice_ms: Stats,
    pub(super) server_response_latency_ms: Stats,
    pub(super) engine_overhead_ms: Stats,
    pub(super) barge_in_stop_ms: Stats,
    pub(super) speculation: SpeculationSummary,
    /// The WebRTC callers' media (`--transport webrtc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) webrtc: Option<WebRtcMedia>,
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

/// The media of a run's WebRTC callers, summed.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(super) struct WebRtcMedia {
    /// Seconds the callers' connections were up, summed.
    pub(super) session_seconds: f64,
    /// The callers' Opus packets sent.
    pub(super) packets_sent: u64,
    /// The agent's packets decoded, lost, rebuilt from error correction, concealed, late.
    pub(super) packets_received: u64,
    pub(super) packets_lost: u64,
    pub(super) packets_recovered: u64,
    pub(super) frames_concealed: u64,
    pub(super) packets_late: u64,
    /// Media on the wire while it flows, each way: 50 RTP datagrams a second of the average
    /// size measured, with IP and UDP headers.
    pub(super) kbit_per_s_up: f64,
    pub(super) kbit_per_s_down: f64,
    /// Everything on the wire (media, checks, DTLS, the data channel, reports), each way,
    /// averaged over the connection's life.
    pub(super) average_kbit_per_s_up: f64,
    pub(super) average_kbit_per_s_down: f64,
}

impl WebRtcMedia {
    /// Sums `other` in (the rates are recomputed by [`WebRtcMedia::finish`]).
    pub(super) fn add(&mut self, other: &WebRtcMedia) {
        self.session_seconds += other.session_seconds;
        self.packets_sent += other.packets_sent;
        self.packets_received += other.packets_received;
        self.packets_lost += other.packets_lost;
        self.packets_recovered += other.packets_recovered;
        self.frames_concealed += other.frames_concealed;
        self.packets_late += other.packets_late;
        // Rates weighted by packets or seconds, so the sum's rate is their average.
        self.kbit_per_s_up += other.kbit_per_s_up * other.packets_sent as f64;
        self.kbit_per_s_down += other.kbit_per_s_down * other.packets_received as f64;
        self.average_kbit_per_s_up += other.average_kbit_per_s_up * other.session_seconds;
        self.average_kbit_per_s_down += other.average_kbit_per_s_down * other.session_seconds;
    }

    /// Turns the weighted sums of [`WebRtcMedia::add`] back into averages.
    pub(super) fn finish(&mut self) {
        if self.packets_sent > 0 {
            self.kbit_per_s_up /= self.packets_sent as f64;
        }
        if self.packets_received > 0 {
            self.kbit_per_s_down /= self.packets_received as f64;
        }
        if self.session_seconds > 0.0 {
            self.average_kbit_per_s_up /= self.session_seconds;
            self.average_kbit_per_s_down /= self.session_seconds;
        }
    }
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
    if let Some(m) = &s.webrtc {
        println!(
            "webrtc: {} packets sent, {} received; {} lost ({} rebuilt from error correction, {} frames concealed), {} late",
            m.packets_sent,
            m.packets_received,
            m.packets_lost,
            m.packets_recovered,
            m.frames_concealed,
            m.packets_late
        );
        println!(
            "webrtc: media {:.1} kbit/s up, {:.1} down while it flows; everything {:.1} up, {:.1} down on average",
            m.kbit_per_s_up, m.kbit_per_s_down, m.average_kbit_per_s_up, m.average_kbit_per_s_down
        );
    }
    for (failure, n) in &s.failures {
        println!("failed x{n}: {failure}");
    }
}
