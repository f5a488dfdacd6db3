//! The HTTP routes: the session and telephony upgrades (admission first), Twilio's webhook
//! (its body within its deadline and size), readiness and metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::warn;

use super::admission::{
    SessionQuery, admit, bearer, refusal, refuse_origin, token_matches, unavailable, upgrade_into,
};
use super::{State, browser, metrics, telephony};

/// Largest request body taken (Twilio's webhook is a form of a few hundred bytes).
const BODY_LIMIT: usize = 64 * 1024;

pub(super) async fn session(
    AxumState(state): AxumState<Arc<State>>,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.draining.is_cancelled() {
        return unavailable(&state, metrics::Refusal::Draining);
    }
    if let Some(expected) = &state.config.token {
        let given = bearer(&headers).or(query.token.as_deref());
        if !given.is_some_and(|g| token_matches(expected.expose(), g)) {
            return refusal(
                &state,
                StatusCode::UNAUTHORIZED,
                metrics::Refusal::Unauthorized,
                "a bearer token is required (Authorization: Bearer TOKEN, or ?token=)",
            );
        }
    }
    if let Some(refused) = refuse_origin(&state, &headers) {
        return refused;
    }
    match admit(&state) {
        Ok(admission) => upgrade_into(upgrade, admission, browser::serve),
        Err(why) => unavailable(&state, why),
    }
}

/// The public URL of one of our paths, in the scheme a carrier uses for it.
fn public(state: &State, path: &str, websocket: bool) -> Option<String> {
    let base = state.config.public_url.as_deref()?.trim_end_matches('/');
    let base = if websocket {
        base.replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    } else {
        base.to_owned()
    };
    Some(format!("{base}{path}"))
}

fn twilio_signature_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
}

/// A carrier's media stream: Twilio's signature when an auth token is configured, else the
/// bearer token (as `?token=`, which carriers can put in a stream URL) when one is. Carriers
/// send no `Origin`; a browser page must pass the same origin policy as on `/session`, or any
/// site could run calls on the operator's provider keys.
pub(super) async fn telephony_stream(
    AxumState(state): AxumState<Arc<State>>,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.draining.is_cancelled() {
        return unavailable(&state, metrics::Refusal::Draining);
    }
    if let Some(refused) = refuse_origin(&state, &headers) {
        return refused;
    }
    if let Some(auth) = &state.config.twilio_auth_token {
        let url = public(&state, "/telephony", true).unwrap_or_default();
        if !telephony::signature_valid(auth.expose(), &url, &[], twilio_signature_header(&headers))
        {
            warn!("a media stream without a valid X-Twilio-Signature refused");
            return refusal(
                &state,
                StatusCode::UNAUTHORIZED,
                metrics::Refusal::Unauthorized,
                "a valid X-Twilio-Signature is required",
            );
        }
    } else if let Some(expected) = &state.config.token
        && !query
            .token
            .as_deref()
            .is_some_and(|g| token_matches(expected.expose(), g))
    {
        return refusal(
            &state,
            StatusCode::UNAUTHORIZED,
            metrics::Refusal::Unauthorized,
            "a token is required (?token= in the stream URL)",
        );
    }
    match admit(&state) {
        Ok(admission) => upgrade_into(upgrade, admission, telephony::serve),
        Err(why) => unavailable(&state, why),
    }
}

/// Reads a request's body whole within [`ServerConfig::body_timeout`] and `size_limit`
/// bytes: a body sent a byte at a time, or one without end, is answered 408 or 413 instead of
/// holding the connection.
pub(super) async fn body_within_limits(
    state: &State,
    request: axum::extract::Request,
    size_limit: usize,
) -> Result<(axum::http::request::Parts, axum::body::Bytes), Response> {
    let (parts, body) = request.into_parts();
    let limit = state.config.body_timeout;
    let bytes = match tokio::time::timeout(limit, axum::body::to_bytes(body, size_limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {size_limit} bytes, or broke off\n"),
            )
                .into_response());
        }
        Err(_) => {
            warn!(limit = ?limit, "a request body that did not arrive in time refused");
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {limit:?}\n"),
            )
                .into_response());
        }
    };
    Ok((parts, bytes))
}

/// Reads a request's form body whole within [`ServerConfig::body_timeout`] and [`BODY_LIMIT`].
async fn form_within_limits(
    state: &State,
    request: axum::extract::Request,
) -> Result<(HeaderMap, Vec<(String, String)>), Response> {
    use axum::extract::FromRequest as _;
    let (parts, bytes) = body_within_limits(state, request, BODY_LIMIT).await?;
    let headers = parts.headers.clone();
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    match axum::Form::<Vec<(String, String)>>::from_request(request, &()).await {
        Ok(axum::Form(params)) => Ok((headers, params)),
        Err(rejection) => Err(rejection.into_response()),
    }
}

/// Twilio's voice webhook: answers TwiML that connects the call's media to `/telephony`.
pub(super) async fn twilio_voice(
    AxumState(state): AxumState<Arc<State>>,
    request: axum::extract::Request,
) -> Response {
    let (headers, params) = match form_within_limits(&state, request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let (Some(webhook), Some(stream)) = (
        public(&state, "/twilio/voice", false),
        public(&state, "/telephony", true),
    ) else {
        warn!("a Twilio call arrived but no public URL is configured (--public-url)");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server has no public URL configured (--public-url)\n",
        )
            .into_response();
    };
    if let Some(auth) = &state.config.twilio_auth_token
        && !telephony::signature_valid(
            auth.expose(),
            &webhook,
            &params,
            twilio_signature_header(&headers),
        )
    {
        warn!("a Twilio webhook without a valid X-Twilio-Signature refused");
        return refusal(
            &state,
            StatusCode::UNAUTHORIZED,
            metrics::Refusal::Unauthorized,
            "a valid X-Twilio-Signature is required",
        );
    }
    if state.draining.is_cancelled() {
        return refusal(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            metrics::Refusal::Draining,
            "the server is shutting down",
        );
    }
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        telephony::twiml(&stream),
    )
        .into_response()
}

pub(super) async fn readyz(AxumState(state): AxumState<Arc<State>>) -> Response {
    if state.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if state.admitted.load(Ordering::SeqCst) >= state.config.max_sessions {
        (StatusCode::SERVICE_UNAVAILABLE, "full\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

pub(super) async fn metrics_text(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
) -> Response {
    if let Some(expected) = &state.config.metrics_token
        && !bearer(&headers).is_some_and(|given| token_matches(expected.expose(), given))
    {
        return (
            StatusCode::UNAUTHORIZED,
            "the metrics token is required (Authorization: Bearer TOKEN)\n",
        )
            .into_response();
    }
    let ready = !state.draining.is_cancelled()
        && state.admitted.load(Ordering::SeqCst) < state.config.max_sessions;
    let backends = &state.config.backends;
    let mut providers = backends.llm.health();
    providers.extend(backends.tts.health());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            #[cfg_attr(not(feature = "webrtc"), allow(unused_mut))]
            let mut text = state.metrics.render(ready, &providers);
            #[cfg(feature = "webrtc")]
            if let Some(webrtc) = &state.webrtc {
                webrtc.render_metrics(&mut text);
            }
            text
        },
    )
        .into_response()
}
