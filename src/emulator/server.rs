//! The emulator's I/O: the handshake rules, a WebSocket server, and an in-memory connector.
//!
//! `admit` applies the real service's upgrade rules (path, query validation shared with the
//! client, `Authorization: Token` or the `token, <key>` subprotocol) and is used by both
//! transports, so a rejection looks the same over a socket and in memory. `run_connection`
//! drives one [`EmulatorSession`] over any [`Connection`], with the 60 s idle close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::faults::{ConnectionFaults, Ending, refusal};
use super::session::{EmulatorSession, TurnDetection};
use super::speak::{SpeakBehaviour, SpeakSession, run_speak_connection};
use crate::flux::options::ListenOptions;
use crate::flux::speak::SpeakOptions;
use crate::scenario::FaultSpec;
use crate::scenario::Scenario;
use crate::ws::{
    ApiKey, ConnectError, ConnectRequest, Connection, Connector, FrameSink, WireFrame,
    channel_pair, websocket_connection,
};

/// How the emulator behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// The conversation every connection plays.
    pub scenario: Arc<Scenario>,
    /// When set, connections must authenticate with this key.
    pub api_key: Option<ApiKey>,
    /// Close after this long without audio or ping (Flux: 60 s).
    pub idle_timeout: Duration,
    /// Scripted timing or voice activity detection.
    pub turn_detection: TurnDetection,
    /// Faults to inject (the scenario's `faults`, plus any added).
    pub faults: Vec<FaultSpec>,
    /// The voice of `/v2/speak`: its pace, its limits, its faults.
    pub speak: SpeakBehaviour,
}

impl EmulatorConfig {
    /// A configuration playing `scenario`, without authentication.
    pub fn new(scenario: Arc<Scenario>) -> Self {
        Self {
            api_key: None,
            idle_timeout: Duration::from_secs(60),
            turn_detection: TurnDetection::Script,
            faults: scenario.faults.clone(),
            speak: SpeakBehaviour::default(),
            scenario,
        }
    }
}

/// Which half of Flux a connection asked for, with its validated options.
#[derive(Debug)]
pub(crate) enum Endpoint {
    /// `/v2/listen`: speech to text.
    Listen(ListenOptions),
    /// `/v2/speak`: text to speech.
    Speak(SpeakOptions),
}

/// An accepted upgrade.
#[derive(Debug)]
pub(crate) struct Admission {
    /// The endpoint and its options.
    pub endpoint: Endpoint,
    /// The subprotocol to echo (`token` or `bearer`) when the client authenticated that way.
    pub subprotocol: Option<String>,
}

/// A refused upgrade, as the HTTP response the real service sends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejection {
    /// HTTP status.
    pub status: u16,
    /// The `dg-error` header.
    pub dg_error: String,
    /// The JSON body.
    pub body: String,
}

fn reject(status: u16, code: &str, message: String, request_id: &str) -> Rejection {
    let body = serde_json::json!({"err_code": code, "err_msg": message, "request_id": request_id});
    Rejection {
        status,
        dg_error: message,
        body: body.to_string(),
    }
}

/// Applies the upgrade rules to a request target (`/v2/listen?...`) and its auth headers.
///
/// # Errors
/// A [`Rejection`]: 404 for another path, 401 for missing or wrong credentials (when a key is
/// configured), 400 for invalid options or an encoding the emulator cannot decode.
pub(crate) fn admit(
    target: &str,
    authorization: Option<&str>,
    subprotocols: Option<&str>,
    config: &EmulatorConfig,
    request_id: &str,
) -> Result<Admission, Rejection> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.trim_end_matches('/');
    if path != "/v2/listen" && path != "/v2/speak" {
        return Err(reject(
            404,
            "NOT_FOUND",
            format!("no such endpoint {path:?}; the emulator serves /v2/listen and /v2/speak"),
            request_id,
        ));
    }
    let offered: Vec<&str> = subprotocols
        .map(|p| p.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let mut subprotocol = None;
    if let Some(key) = &config.api_key {
        let header_ok = authorization.is_some_and(|a| {
            a.strip_prefix("Token ")
                .or_else(|| a.strip_prefix("token "))
                .is_some_and(|k| k == key.expose())
        });
        let protocol_ok = offered.len() >= 2
            && offered[0].eq_ignore_ascii_case("token")
            && offered[1] == key.expose();
        if protocol_ok {
            subprotocol = Some(offered[0].to_owned());
        }
        if !header_ok && !protocol_ok {
            let why = if authorization.is_some() || !offered.is_empty() {
                "invalid credentials"
            } else {
                "missing credentials: send Authorization: Token <key>"
            };
            return Err(reject(401, "INVALID_AUTH", why.into(), request_id));
        }
    }
    let endpoint = if path == "/v2/speak" {
        Endpoint::Speak(
            SpeakOptions::from_query(query)
                .map_err(|e| reject(400, e.code, e.detail.to_string(), request_id))?,
        )
    } else {
        let options = ListenOptions::from_query(query)
            .map_err(|e| reject(400, "Bad Request", e.to_string(), request_id))?;
        EmulatorSession::supports(&options, config.turn_detection)
            .map_err(|e| reject(400, "Bad Request", e, request_id))?;
        Endpoint::Listen(options)
    };
    Ok(Admission {
        endpoint,
        subprotocol,
    })
}

/// A `refuse` fault turns an accepted upgrade into the refusal it names.
fn refuse_by_fault(
    admission: Admission,
    config: &EmulatorConfig,
    connection: u32,
    request_id: &str,
) -> Result<Admission, Rejection> {
    match refusal(&config.faults, connection) {
        Some(status) => Err(reject(
            status,
            "EMULATED_FAULT",
            format!("connection {connection} refused by an emulated fault"),
            request_id,
        )),
        None => Ok(admission),
    }
}

/// Longest the emulator waits for a client to take one message before it drops the
/// connection, as a server protects itself from a client that stopped reading.
const SEND_LIMIT: Duration = Duration::from_secs(10);

/// Sends `frame` unless `cancel` fires first or the client takes nothing for [`SEND_LIMIT`];
/// whether the connection can go on.
async fn send(sink: &mut FrameSink, frame: WireFrame, cancel: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        sent = tokio::time::timeout(SEND_LIMIT, sink.send(frame)) => match sent {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                warn!(limit = ?SEND_LIMIT, "the client stopped reading; dropping the connection");
                false
            }
        },
    }
}

/// Sends a last frame before closing, waiting at most a second: the connection ends either way.
async fn send_last(sink: &mut FrameSink, frame: WireFrame) {
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(frame)).await;
}

/// Drives one session over `connection` until either side closes, `cancel` fires, the
/// connection is idle for `config.idle_timeout`, or the client stops reading.
pub(crate) async fn run_connection(
    mut connection: Connection,
    mut session: EmulatorSession,
    faults: ConnectionFaults,
    idle_timeout: Duration,
    cancel: CancellationToken,
) {
    let connected = session.connected().to_json();
    if !send(&mut connection.sink, WireFrame::Text(connected), &cancel).await {
        return;
    }
    let mut deadline = tokio::time::Instant::now() + idle_timeout;
    loop {
        let frame = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                send_last(&mut connection.sink, WireFrame::Close(Some((1001, "emulator shutting down".into())))).await;
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                info!("idle timeout, closing");
                send_last(&mut connection.sink, WireFrame::Close(Some((1011, "NET-0001".into())))).await;
                return;
            }
            frame = connection.stream.next() => frame,
        };
        let output = match frame {
            Some(Ok(WireFrame::Binary(audio))) => {
                deadline = tokio::time::Instant::now() + idle_timeout;
                if audio.is_empty() {
                    continue;
                }
                session.on_audio(&audio)
            }
            Some(Ok(WireFrame::Text(text))) => session.on_text(&text),
            Some(Ok(WireFrame::Ping(_) | WireFrame::Pong(_))) => {
                deadline = tokio::time::Instant::now() + idle_timeout;
                continue;
            }
            Some(Ok(WireFrame::Close(_))) | None => return,
            Some(Err(e)) => {
                debug!(error = %e, "client connection failed");
                return;
            }
        };
        let close = output.close;
        let (messages, ending) = faults.apply(session.audio_time(), output);
        for message in messages {
            if !send(
                &mut connection.sink,
                WireFrame::Text(message.to_json()),
                &cancel,
            )
            .await
            {
                return;
            }
        }
        match ending {
            Some(Ending::Drop) => {
                info!("emulated fault: dropping the connection");
                return;
            }
            Some(Ending::Close(code, reason)) => {
                info!(code, %reason, "emulated fault: closing the connection");
                send_last(&mut connection.sink, WireFrame::Close(Some((code, reason)))).await;
                return;
            }
            None => {}
        }
        if close {
            send_last(&mut connection.sink, WireFrame::Close(None)).await;
            return;
        }
    }
}

/// A running WebSocket emulator. Dropping it does not stop it; call [`EmulatorServer::shutdown`].
pub struct EmulatorServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl EmulatorServer {
    /// Binds `addr` (port 0 picks a free port) and starts accepting connections.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: SocketAddr, config: EmulatorConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let config = Arc::new(config);
        tasks.spawn(accept_loop(listener, config, cancel.clone(), tasks.clone()));
        info!(%addr, "flux emulator listening");
        Ok(Self {
            addr,
            cancel,
            tasks,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give a Flux client (`ws://ADDR`).
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops accepting, closes every connection, and waits for all of them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<EmulatorConfig>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let mut connections = 0u32;
    let speaking = Arc::new(AtomicU32::new(0));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let config = config.clone();
                let cancel = cancel.child_token();
                let connection = Indices {
                    all: connections,
                    speak: speaking.clone(),
                };
                connections = connections.saturating_add(1);
                tasks.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    serve_socket(stream, peer, connection, config, cancel).await;
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Longest a connection may take to send its WebSocket handshake: one that never does (or
/// sends half of it) must not hold a task, nor [`EmulatorServer::shutdown`], forever.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

#[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
async fn serve_socket(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    connection_index: Indices,
    config: Arc<EmulatorConfig>,
    cancel: CancellationToken,
) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut admitted = None;
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        let target = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let request_id_value = HeaderValue::from_str(&request_id).expect("uuid is a valid header");
        match admit(
            target,
            header("authorization"),
            header("sec-websocket-protocol"),
            &config,
            &request_id,
        )
        .and_then(|admission| {
            refuse_by_fault(admission, &config, connection_index.all, &request_id)
        }) {
            Ok(admission) => {
                response
                    .headers_mut()
                    .insert("dg-request-id", request_id_value);
                if let Some(p) = &admission.subprotocol
                    && let Ok(v) = HeaderValue::from_str(p)
                {
                    response.headers_mut().insert("sec-websocket-protocol", v);
                }
                admitted = Some(admission.endpoint);
                Ok(response)
            }
            Err(rejection) => {
                let mut error = ErrorResponse::new(Some(rejection.body));
                *error.status_mut() =
                    StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST);
                error
                    .headers_mut()
                    .insert("dg-request-id", request_id_value);
                if let Ok(v) = HeaderValue::from_str(&rejection.dg_error) {
                    error.headers_mut().insert("dg-error", v);
                }
                error
                    .headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                Err(error)
            }
        }
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(crate::net::websocket_config()),
    );
    let ws = tokio::select! {
        biased;
        () = cancel.cancelled() => return,
        handshake = tokio::time::timeout(HANDSHAKE_LIMIT, handshake) => match handshake {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "handshake refused or failed");
                return;
            }
            Err(_) => {
                debug!(%peer, limit = ?HANDSHAKE_LIMIT, "no handshake in time; connection closed");
                return;
            }
        },
    };
    let Some(endpoint) = admitted else { return };
    let span = info_span!("emulator", request_id = %request_id, %peer);
    let connection = websocket_connection(ws, None);
    serve_endpoint(
        endpoint,
        connection,
        connection_index,
        &config,
        request_id,
        cancel,
    )
    .instrument(span)
    .await;
}

/// Runs the session an accepted connection asked for.
async fn serve_endpoint(
    endpoint: Endpoint,
    connection: Connection,
    index: Indices,
    config: &EmulatorConfig,
    request_id: String,
    cancel: CancellationToken,
) {
    match endpoint {
        Endpoint::Listen(options) => {
            let session = EmulatorSession::new(options, config.scenario.clone(), request_id)
                .with_turn_detection(config.turn_detection);
            run_connection(
                connection,
                session,
                ConnectionFaults::for_connection(&config.faults, index.all),
                config.idle_timeout,
                cancel,
            )
            .await;
        }
        Endpoint::Speak(options) => {
            let speaking = index.speak.fetch_add(1, Ordering::Relaxed);
            run_speak_connection(
                connection,
                SpeakSession::new(options, request_id),
                config.speak.clone(),
                speaking == 0,
                config.idle_timeout,
                cancel,
            )
            .await;
        }
    }
}

/// Which connection this is: of all of them (listen faults count these), and the counter of
/// `/v2/speak` connections (speak faults count those).
#[derive(Clone)]
struct Indices {
    all: u32,
    speak: Arc<AtomicU32>,
}

/// The emulator as an in-memory [`Connector`]: each `connect` starts a session task over
/// channels. Runs on tokio's paused clock; used by `simulate --clock virtual` and tests.
#[derive(Clone)]
pub struct MemoryEmulator {
    config: Arc<EmulatorConfig>,
    connections: Arc<AtomicU32>,
    speaking: Arc<AtomicU32>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl MemoryEmulator {
    /// An in-memory emulator with `config`.
    pub fn new(config: EmulatorConfig) -> Self {
        Self {
            config: Arc::new(config),
            connections: Arc::new(AtomicU32::new(0)),
            speaking: Arc::new(AtomicU32::new(0)),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Closes every connection and waits for the session tasks.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[async_trait]
impl Connector for MemoryEmulator {
    async fn connect(&self, request: &ConnectRequest) -> Result<Connection, ConnectError> {
        let target = request
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("/");
        let request_id = uuid::Uuid::new_v4().to_string();
        let authorization = request
            .api_key
            .as_ref()
            .map(|k| format!("Token {}", k.expose()));
        let connection = self.connections.fetch_add(1, Ordering::Relaxed);
        let admission = admit(
            target,
            authorization.as_deref(),
            None,
            &self.config,
            &request_id,
        )
        .and_then(|admission| refuse_by_fault(admission, &self.config, connection, &request_id))
        .map_err(|r| ConnectError::Handshake {
            status: r.status,
            dg_error: Some(r.dg_error),
            body: r.body,
            request_id: Some(request_id.clone()),
            retry_after: None,
        })?;
        let (client, server) = channel_pair(64, Some(request_id.clone()));
        let span = info_span!("emulator", request_id = %request_id);
        let index = Indices {
            all: connection,
            speak: self.speaking.clone(),
        };
        let config = self.config.clone();
        let cancel = self.cancel.child_token();
        self.tasks.spawn(
            async move {
                serve_endpoint(
                    admission.endpoint,
                    server,
                    index,
                    &config,
                    request_id,
                    cancel,
                )
                .await;
            }
            .instrument(span),
        );
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key: Option<&str>) -> EmulatorConfig {
        let mut c = EmulatorConfig::new(Arc::new(Scenario::demo()));
        c.api_key = key.map(ApiKey::new);
        c
    }

    const OK: &str = "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000";

    #[test]
    fn admission_rules() {
        let c = config(None);
        assert!(admit(OK, None, None, &c, "r").is_ok());
        let e = admit("/v1/listen?model=nova-3", None, None, &c, "r").unwrap_err();
        assert_eq!(e.status, 404);
        let e = admit(
            "/v2/listen?model=nova-3&encoding=linear16&sample_rate=16000",
            None,
            None,
            &c,
            "r",
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.dg_error.contains("flux-general-en or flux-general-multi"));
        let body: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(body["request_id"], "r");
        let e = admit(
            "/v2/listen?model=flux-general-en&encoding=opus&sample_rate=16000",
            None,
            None,
            &c,
            "r",
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.dg_error.contains("opus"));
    }

    #[test]
    fn authentication_by_header_or_subprotocol() {
        let c = config(Some("secret"));
        assert_eq!(admit(OK, None, None, &c, "r").unwrap_err().status, 401);
        assert_eq!(
            admit(OK, Some("Token wrong"), None, &c, "r")
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            admit(OK, Some("Bearer secret"), None, &c, "r")
                .unwrap_err()
                .status,
            401
        );
        assert!(admit(OK, Some("Token secret"), None, &c, "r").is_ok());
        let a = admit(OK, None, Some("token, secret"), &c, "r").unwrap();
        assert_eq!(a.subprotocol.as_deref(), Some("token"));
        let e = admit(OK, Some("Token wrong"), None, &c, "r").unwrap_err();
        assert!(!e.body.contains("secret") && !e.dg_error.contains("wrong"));
    }
}
