//! WebRTC sessions (feature `webrtc`): a browser or an app POSTs an SDP offer to `/webrtc`
//! (WHIP-style: one HTTP exchange, the same token, origin and admission rules as `/session`)
//! and gets the answer; media then flows on one UDP port shared by every session
//! ([`WebRtcPort`]), Opus both ways, with the session protocol (`docs/protocol.md`) on a data
//! channel labelled `turnflow`. `DELETE` on the session's resource (the answer's `Location`)
//! hangs up. The conversation is the runner's ([`crate::call`]), as for the WebSocket; this is
//! the codec (`session`), the port (`port`, routed by `demux`) and the signalling.
//!
//! The server is ICE-lite with host candidates: it answers connectivity checks on the port's
//! announced addresses and never checks itself. TURN is not offered: a client that cannot reach
//! the UDP port falls back to the WebSocket (the page does this on its own; see
//! `docs/webrtc.md`).

mod caller;
mod demux;
mod media;
mod pacing;
mod port;
mod session;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use str0m::Candidate;
use str0m::change::SdpOffer;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

pub use caller::{CALLER_RATE, CallerError, CallerEvent, CallerStats, WebRtcCaller, Wire};
pub use media::EncodedSpeech;
pub use port::{PortError, WebRtcPort};
pub use session::CHANNEL_LABEL;

use super::State;
use super::admission::{
    Admission, SessionQuery, admit, bearer, refusal, refuse_origin, token_matches, unavailable,
};
use super::metrics;
use session::{Accepted, WebRtcCall};

/// The largest offer taken: a browser's audio-and-data offer is 2 to 5 KiB.
const OFFER_LIMIT: usize = 64 * 1024;

/// What the WebRTC sessions of one server share.
pub(super) struct WebRtc {
    port: WebRtcPort,
    /// str0m's DTLS and SRTP, configured once and handed to every connection (never
    /// installed process-wide).
    crypto: Arc<str0m::config::CryptoProvider>,
    metrics: Arc<WebRtcMetrics>,
    /// Running sessions by id, to hang up on a `DELETE`.
    sessions: Mutex<HashMap<String, CancellationToken>>,
}

impl WebRtc {
    pub(super) fn new(port: WebRtcPort) -> Self {
        Self {
            port,
            crypto: Arc::new(str0m::crypto::from_feature_flags()),
            metrics: Arc::new(WebRtcMetrics::default()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The WebRTC part of `/metrics`.
    pub(super) fn render_metrics(&self, out: &mut String) {
        self.metrics.render(out, self.port.counters());
    }
}

/// Round trips: a loopback's fraction of a millisecond to a bad mobile link's second.
const RTT_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0];

/// Counters of the WebRTC sessions.
#[derive(Debug)]
pub(super) struct WebRtcMetrics {
    /// Round trips measured from the clients' receiver reports.
    rtt: metrics::Histogram,
    active: AtomicU64,
    connected: AtomicU64,
    failed_no_connection: AtomicU64,
    failed_no_channel: AtomicU64,
    offers_refused: AtomicU64,
    packets_received: AtomicU64,
    packets_lost: AtomicU64,
    packets_recovered: AtomicU64,
    frames_concealed: AtomicU64,
    packets_late: AtomicU64,
    packets_sent: AtomicU64,
}

impl Default for WebRtcMetrics {
    fn default() -> Self {
        Self {
            rtt: metrics::Histogram::new(&RTT_BUCKETS),
            active: AtomicU64::default(),
            connected: AtomicU64::default(),
            failed_no_connection: AtomicU64::default(),
            failed_no_channel: AtomicU64::default(),
            offers_refused: AtomicU64::default(),
            packets_received: AtomicU64::default(),
            packets_lost: AtomicU64::default(),
            packets_recovered: AtomicU64::default(),
            frames_concealed: AtomicU64::default(),
            packets_late: AtomicU64::default(),
            packets_sent: AtomicU64::default(),
        }
    }
}

impl WebRtcMetrics {
    fn round_trip(&self, rtt: std::time::Duration) {
        self.rtt.observe(rtt.as_secs_f64());
    }

    fn connected(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    fn ended(&self, call: &WebRtcCall) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        if !call.is_connected() {
            self.failed_no_connection.fetch_add(1, Ordering::Relaxed);
        } else if !call.has_channel() {
            self.failed_no_channel.fetch_add(1, Ordering::Relaxed);
        }
        let loss = call.loss();
        self.packets_received
            .fetch_add(loss.decoded + loss.malformed, Ordering::Relaxed);
        self.packets_lost.fetch_add(loss.lost, Ordering::Relaxed);
        self.packets_recovered
            .fetch_add(loss.recovered, Ordering::Relaxed);
        self.frames_concealed
            .fetch_add(loss.concealed, Ordering::Relaxed);
        self.packets_late.fetch_add(loss.late, Ordering::Relaxed);
        self.packets_sent
            .fetch_add(call.packets_sent(), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, port: &port::PortCounters) {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP turnflow_webrtc_sessions_active WebRTC sessions running now.\n\
             # TYPE turnflow_webrtc_sessions_active gauge\n\
             turnflow_webrtc_sessions_active {}\n\
             # HELP turnflow_webrtc_connected_total WebRTC sessions whose ICE and DTLS completed.\n\
             # TYPE turnflow_webrtc_connected_total counter\n\
             turnflow_webrtc_connected_total {}\n\
             # HELP turnflow_webrtc_failures_total WebRTC sessions that ended before they could talk, by reason.\n\
             # TYPE turnflow_webrtc_failures_total counter\n\
             turnflow_webrtc_failures_total{{reason=\"offer_refused\"}} {}\n\
             turnflow_webrtc_failures_total{{reason=\"ice_or_dtls\"}} {}\n\
             turnflow_webrtc_failures_total{{reason=\"no_data_channel\"}} {}\n\
             # HELP turnflow_webrtc_packets_total Opus packets of ended sessions: received, lost on the way in, rebuilt from error correction, arrived late, sent.\n\
             # TYPE turnflow_webrtc_packets_total counter\n\
             turnflow_webrtc_packets_total{{kind=\"received\"}} {}\n\
             turnflow_webrtc_packets_total{{kind=\"lost\"}} {}\n\
             turnflow_webrtc_packets_total{{kind=\"recovered\"}} {}\n\
             turnflow_webrtc_packets_total{{kind=\"late\"}} {}\n\
             turnflow_webrtc_packets_total{{kind=\"sent\"}} {}\n\
             # HELP turnflow_webrtc_frames_concealed_total User audio frames invented by loss concealment, in ended sessions.\n\
             # TYPE turnflow_webrtc_frames_concealed_total counter\n\
             turnflow_webrtc_frames_concealed_total {}\n\
             # HELP turnflow_webrtc_datagrams_dropped_total Datagrams on the WebRTC port that went to no session, by reason.\n\
             # TYPE turnflow_webrtc_datagrams_dropped_total counter\n\
             turnflow_webrtc_datagrams_dropped_total{{reason=\"unclaimed\"}} {}\n\
             turnflow_webrtc_datagrams_dropped_total{{reason=\"session_behind\"}} {}",
            get(&self.active),
            get(&self.connected),
            get(&self.offers_refused),
            get(&self.failed_no_connection),
            get(&self.failed_no_channel),
            get(&self.packets_received),
            get(&self.packets_lost),
            get(&self.packets_recovered),
            get(&self.packets_late),
            get(&self.packets_sent),
            get(&self.frames_concealed),
            get(&port.unclaimed),
            get(&port.overflowed),
        );
        self.rtt.render(
            out,
            "turnflow_webrtc_rtt_seconds",
            "Round trips to WebRTC clients, from their receiver reports (one every few seconds per session).",
        );
    }
}

/// Why an offer was refused; each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not SDP str0m can read.
    #[error("the offer is not valid SDP: {0}")]
    Malformed(String),
    /// No audio section with Opus.
    #[error(
        "the offer has no audio with Opus (an m=audio section offering opus/48000/2); \
         turnflow talks Opus"
    )]
    NoAudio,
    /// No data channel.
    #[error(
        "the offer has no data channel (an m=application section with webrtc-datachannel); \
         the session protocol travels on one labelled \"turnflow\""
    )]
    NoDataChannel,
    /// str0m could not answer it.
    #[error("the offer cannot be answered: {0}")]
    Unanswerable(String),
}

/// Checks an offer's text for what a session needs before any state is made for it.
///
/// # Errors
/// [`OfferError::NoAudio`] or [`OfferError::NoDataChannel`].
pub fn check_offer(sdp: &str) -> Result<(), OfferError> {
    let mut audio = false;
    let mut opus = false;
    let mut channel = false;
    let mut section = "";
    for line in sdp.lines().map(str::trim) {
        if let Some(media) = line.strip_prefix("m=") {
            section = media.split(' ').next().unwrap_or("");
            audio |= section == "audio";
            channel |= section == "application" && media.contains("webrtc-datachannel");
        } else if section == "audio"
            && let Some(map) = line.strip_prefix("a=rtpmap:")
        {
            opus |= map
                .split_once(' ')
                .is_some_and(|(_, codec)| codec.to_ascii_lowercase().starts_with("opus/48000"));
        }
    }
    if !(audio && opus) {
        return Err(OfferError::NoAudio);
    }
    if !channel {
        return Err(OfferError::NoDataChannel);
    }
    Ok(())
}

/// What the SDP parser says is wrong, without its positions in our memory.
fn sdp_reason(error: &impl std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.contains("PointerOffset"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Answers an offer for a new connection on `webrtc`'s port.
fn answer(webrtc: &WebRtc, sdp: &str) -> Result<(String, Accepted), OfferError> {
    check_offer(sdp)?;
    let offer =
        SdpOffer::from_sdp_string(sdp).map_err(|e| OfferError::Malformed(sdp_reason(&e)))?;
    let mut rtc = media::rtc_config(webrtc.crypto.clone())
        .set_ice_lite(true)
        .build(Instant::now());
    for address in webrtc.port.candidates() {
        let candidate = Candidate::host(*address, "udp")
            .map_err(|e| OfferError::Unanswerable(format!("candidate {address}: {e}")))?;
        rtc.add_local_candidate(candidate);
    }
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| OfferError::Unanswerable(e.to_string()))?;
    let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
    let (registration, datagrams) = webrtc.port.register(&ufrag);
    Ok((
        answer.to_sdp_string(),
        Accepted {
            rtc,
            registration,
            datagrams,
        },
    ))
}

/// `POST /webrtc`: an SDP offer in, the answer out (`201 Created`, `application/sdp`, the
/// session's resource in `Location`).
pub(super) async fn offer(
    AxumState(state): AxumState<Arc<State>>,
    Query(query): Query<SessionQuery>,
    request: axum::extract::Request,
) -> Response {
    let Some(webrtc) = &state.webrtc else {
        return (
            StatusCode::NOT_FOUND,
            "WebRTC is not enabled on this server (serve --webrtc-udp ADDR); use the WebSocket at /session\n",
        )
            .into_response();
    };
    let headers = request.headers().clone();
    if let Some(refused) = admission_refused(&state, &query, &headers) {
        return refused;
    }
    let sdp_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/sdp"));
    if !sdp_type {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be sent as Content-Type: application/sdp\n",
        )
            .into_response();
    }
    let body = match super::routes::body_within_limits(&state, request, OFFER_LIMIT).await {
        Ok((_, body)) => body,
        Err(refused) => return refused,
    };
    let Ok(sdp) = std::str::from_utf8(&body) else {
        webrtc
            .metrics
            .offers_refused
            .fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_REQUEST, "the offer is not UTF-8 text\n").into_response();
    };
    let admission = match admit(&state) {
        Ok(admission) => admission,
        Err(why) => return unavailable(&state, why),
    };
    let (answer, accepted) = match answer(webrtc, sdp) {
        Ok(answered) => answered,
        Err(e) => {
            webrtc
                .metrics
                .offers_refused
                .fetch_add(1, Ordering::Relaxed);
            // The reason can quote the offer: the client's words, escaped and cut short.
            warn!(error = %crate::text::Untrusted(&e.to_string()), "a WebRTC offer refused");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    start(&state, webrtc, id.clone(), accepted, admission);
    let mut response = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/sdp")],
        answer,
    )
        .into_response();
    // Relative to the offer's URL, so it holds wherever the router is nested.
    if let Ok(location) = HeaderValue::from_str(&format!("webrtc/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `DELETE /webrtc/{id}`: the client hangs up.
pub(super) async fn hang_up(
    AxumState(state): AxumState<Arc<State>>,
    Query(query): Query<SessionQuery>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(webrtc) = &state.webrtc else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(refused) = token_refused(&state, &query, &headers) {
        return refused;
    }
    let token = webrtc
        .sessions
        .lock()
        .expect("sessions lock")
        .get(&id)
        .cloned();
    match token {
        Some(token) => {
            token.cancel();
            StatusCode::OK.into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such WebRTC session\n").into_response(),
    }
}

fn token_refused(state: &State, query: &SessionQuery, headers: &HeaderMap) -> Option<Response> {
    let expected = state.config.token.as_ref()?;
    let given = bearer(headers).or(query.token.as_deref());
    (!given.is_some_and(|g| token_matches(expected.expose(), g))).then(|| {
        refusal(
            state,
            StatusCode::UNAUTHORIZED,
            metrics::Refusal::Unauthorized,
            "a bearer token is required (Authorization: Bearer TOKEN, or ?token=)",
        )
    })
}

/// The WebSocket's rules before anything is read: draining, the token, the origin.
fn admission_refused(
    state: &Arc<State>,
    query: &SessionQuery,
    headers: &HeaderMap,
) -> Option<Response> {
    if state.draining.is_cancelled() {
        return Some(unavailable(state, metrics::Refusal::Draining));
    }
    token_refused(state, query, headers).or_else(|| refuse_origin(state, headers))
}

/// Runs the session as a tracked task holding its admission.
fn start(
    state: &Arc<State>,
    webrtc: &WebRtc,
    id: String,
    accepted: Accepted,
    admission: Admission,
) {
    let hang_up = CancellationToken::new();
    webrtc
        .sessions
        .lock()
        .expect("sessions lock")
        .insert(id.clone(), hang_up.clone());
    let task_state = state.clone();
    let span = info_span!("connection", session = %id, transport = "webrtc");
    // The server's tracker owns the task: the drain waits for it.
    state.sessions.spawn(
        async move {
            serve(task_state, id, accepted, hang_up).await;
            drop(admission);
        }
        .instrument(span),
    );
}

async fn serve(state: Arc<State>, id: String, accepted: Accepted, hang_up: CancellationToken) {
    let webrtc = state
        .webrtc
        .as_ref()
        .expect("a WebRTC session has its port");
    webrtc.metrics.active.fetch_add(1, Ordering::Relaxed);
    state.metrics.session_started();
    let mut call = match WebRtcCall::new(
        accepted,
        webrtc.port.clone(),
        hang_up,
        webrtc.metrics.clone(),
    ) {
        Ok(call) => call,
        Err(e) => {
            warn!(error = %e, "the session's Opus codec could not be made");
            webrtc.metrics.active.fetch_sub(1, Ordering::Relaxed);
            state
                .metrics
                .session_ended(crate::call::SessionEnd::ProtocolError);
            webrtc.sessions.lock().expect("sessions lock").remove(&id);
            return;
        }
    };
    let ending = state
        .call(&id, &state.browser, state.reporting())
        .run(&mut call)
        .await;
    webrtc.sessions.lock().expect("sessions lock").remove(&id);
    webrtc.metrics.ended(&call);
    state.call_ended(&id, "webrtc", &ending);
    let loss = call.loss();
    info!(
        outcome = ending.outcome.as_str(),
        turns = ending.turns,
        detail = %ending.detail,
        connected = call.is_connected(),
        packets = loss.decoded,
        lost = loss.lost,
        recovered = loss.recovered,
        concealed = loss.concealed,
        "session ended"
    );
}
