//! WebSocket connections as frames, for every WebSocket turnflow opens (Flux's `/v2/listen`,
//! Aura's `/v1/speak`): a real WebSocket, or an in-memory channel.
//!
//! A client speaks [`WireFrame`]s through a [`Connection`] obtained from a [`Connector`].
//! [`WebSocketConnector`] does the real thing (TLS, `Authorization: Token`, handshake errors
//! with Deepgram's `dg-error` and `dg-request-id` headers); [`channel_pair`] builds the two ends
//! of an in-memory connection so the same client logic runs against an in-process emulator on
//! tokio's paused clock.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

pub use crate::net::ApiKey;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::Message};

/// One WebSocket frame, independent of the library that carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum WireFrame {
    /// A text frame (JSON control or server messages).
    Text(String),
    /// A binary frame (audio).
    Binary(Bytes),
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// A close frame, with code and reason when the peer sent them.
    Close(Option<(u16, String)>),
}

/// The transport failed after the connection was established.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transport error: {0}")]
pub struct TransportError(pub String);

/// What a connector needs to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Full URL including the query string.
    pub url: String,
    /// Sent as `Authorization: Token <key>` when present.
    pub api_key: Option<ApiKey>,
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server answered the upgrade with an HTTP error.
    #[error("handshake rejected with http {status}: {}{}", .dg_error.as_deref().unwrap_or(.body.as_str()), .request_id.as_ref().map(|r| format!(" (dg-request-id {r})")).unwrap_or_default())]
    Handshake {
        /// HTTP status, e.g. 400, 401, 403, 429.
        status: u16,
        /// The `dg-error` header, when present.
        dg_error: Option<String>,
        /// The response body (may hold `{"err_code","err_msg","request_id"}`).
        body: String,
        /// The `dg-request-id` header, when present.
        request_id: Option<String>,
        /// The `Retry-After` header in seconds, when present (a 429 or 503 may say when).
        retry_after: Option<std::time::Duration>,
    },
    /// The URL is not a usable WebSocket URL.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL (never contains the key).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TCP, TLS or protocol failure before the upgrade completed.
    #[error("could not connect: {0}")]
    Io(String),
}

impl ConnectError {
    /// Whether trying again later may succeed (rate limits, server errors, network).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::Handshake { status, .. } => *status == 429 || *status >= 500,
            ConnectError::InvalidUrl { .. } => false,
            ConnectError::Io(_) => true,
        }
    }
}

/// The sending half of a connection.
pub type FrameSink = Pin<Box<dyn Sink<WireFrame, Error = TransportError> + Send>>;
/// The receiving half of a connection; ends when the peer is gone.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<WireFrame, TransportError>> + Send>>;

/// An open connection, split into halves so reading and writing never wait for each other (the
/// Flux client writes from a task of its own and reads in its supervisor).
pub struct Connection {
    /// Frames to the server.
    pub sink: FrameSink,
    /// Frames from the server.
    pub stream: FrameStream,
    /// The `dg-request-id` of the upgrade response, when the server sent one.
    pub request_id: Option<String>,
}

/// Opens connections. Implemented for WebSockets and by the in-memory emulator.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Opens one connection.
    ///
    /// # Errors
    /// [`ConnectError`] for handshake rejections, bad URLs and network failures.
    ///
    /// # Cancellation safety
    /// Dropping the future abandons the attempt; nothing is left open.
    async fn connect(&self, request: &ConnectRequest) -> Result<Connection, ConnectError>;
}

/// Connects over real WebSockets (`ws://` or `wss://`).
#[derive(Debug, Default, Clone, Copy)]
pub struct WebSocketConnector;

fn to_message(frame: WireFrame) -> Message {
    match frame {
        WireFrame::Text(t) => Message::text(t),
        WireFrame::Binary(b) => Message::Binary(b),
        WireFrame::Ping(b) => Message::Ping(b),
        WireFrame::Pong(b) => Message::Pong(b),
        WireFrame::Close(c) => {
            Message::Close(c.map(|(code, reason)| tungstenite::protocol::CloseFrame {
                code: code.into(),
                reason: reason.into(),
            }))
        }
    }
}

fn from_message(message: Message) -> Option<WireFrame> {
    Some(match message {
        Message::Text(t) => WireFrame::Text(t.as_str().to_owned()),
        Message::Binary(b) => WireFrame::Binary(b),
        Message::Ping(b) => WireFrame::Ping(b),
        Message::Pong(b) => WireFrame::Pong(b),
        Message::Close(c) => WireFrame::Close(c.map(|f| (u16::from(f.code), f.reason.to_string()))),
        Message::Frame(_) => return None,
    })
}

/// Splits a tungstenite stream (client or server side) into a [`Connection`].
pub(crate) fn websocket_connection<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    request_id: Option<String>,
) -> Connection
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let sink = sink
        .sink_map_err(|e| TransportError(e.to_string()))
        .with(|f: WireFrame| futures_util::future::ready(Ok::<_, TransportError>(to_message(f))));
    let stream = stream.filter_map(|m| {
        futures_util::future::ready(match m {
            Ok(m) => from_message(m).map(Ok),
            Err(e) => Some(Err(TransportError(e.to_string()))),
        })
    });
    Connection {
        sink: Box::pin(sink),
        stream: Box::pin(stream),
        request_id,
    }
}

#[async_trait]
impl Connector for WebSocketConnector {
    async fn connect(&self, request: &ConnectRequest) -> Result<Connection, ConnectError> {
        let mut http =
            request
                .url
                .as_str()
                .into_client_request()
                .map_err(|e| ConnectError::InvalidUrl {
                    url: request.url.clone(),
                    reason: e.to_string(),
                })?;
        if let Some(key) = &request.api_key {
            let value =
                crate::net::secret_header(&format!("Token {}", key.expose())).ok_or_else(|| {
                    ConnectError::InvalidUrl {
                        url: request.url.clone(),
                        reason: "the api key contains characters not allowed in an http header"
                            .into(),
                    }
                })?;
            http.headers_mut().insert("authorization", value);
        }
        let tls = tokio_tungstenite::Connector::Rustls(crate::net::websocket_tls());
        // Nagle's algorithm off: an 80 ms chunk ends in a short segment, which would wait
        // while the previous chunk's short tail is unacknowledged (a round trip over 80 ms,
        // or the peer's delayed ACK); so would a CloseStream right behind audio.
        match tokio_tungstenite::connect_async_tls_with_config(
            http.clone(),
            Some(crate::net::websocket_config()),
            true,
            Some(tls),
        )
        .await
        {
            Ok((ws, response)) => {
                let request_id = header(response.headers(), "dg-request-id");
                Ok(websocket_connection(ws, request_id))
            }
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(ConnectError::Handshake {
                    status: response.status().as_u16(),
                    dg_error: header(response.headers(), "dg-error"),
                    body,
                    request_id: header(response.headers(), "dg-request-id"),
                    retry_after: header(response.headers(), "retry-after")
                        .and_then(|s| s.trim().parse().ok())
                        .map(std::time::Duration::from_secs),
                })
            }
            Err(tungstenite::Error::Url(e)) => Err(ConnectError::InvalidUrl {
                url: request.url.clone(),
                reason: e.to_string(),
            }),
            Err(e) => {
                let host = http
                    .uri()
                    .authority()
                    .map_or_else(|| request.url.clone(), ToString::to_string);
                let reason = match e {
                    tungstenite::Error::Io(io) => io.to_string(),
                    other => other.to_string(),
                };
                Err(ConnectError::Io(format!("{host}: {reason}")))
            }
        }
    }
}

fn header(headers: &tungstenite::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn channel_end(
    tx: mpsc::Sender<WireFrame>,
    rx: mpsc::Receiver<WireFrame>,
    request_id: Option<String>,
) -> Connection {
    let sink = futures_util::sink::unfold(tx, |tx, frame: WireFrame| async move {
        tx.send(frame)
            .await
            .map_err(|_| TransportError("in-memory peer is gone".into()))?;
        Ok::<_, TransportError>(tx)
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (Ok(frame), rx))
    });
    Connection {
        sink: Box::pin(sink),
        stream: Box::pin(stream),
        request_id,
    }
}

/// Builds an in-memory connection: the client's end and the server's end. `capacity` bounds
/// each direction, as a socket buffer would. Dropping one end ends the other's stream.
pub fn channel_pair(capacity: usize, request_id: Option<String>) -> (Connection, Connection) {
    let (to_server, from_client) = mpsc::channel::<WireFrame>(capacity);
    let (to_client, from_server) = mpsc::channel::<WireFrame>(capacity);
    (
        channel_end(to_server, from_server, request_id),
        channel_end(to_client, from_client, None),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_error_message_names_status_error_and_request_id() {
        let e = ConnectError::Handshake {
            status: 403,
            dg_error: Some("Project does not have access to the requested model".into()),
            body: String::new(),
            request_id: Some("abc".into()),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "handshake rejected with http 403: Project does not have access to the requested model (dg-request-id abc)"
        );
        assert!(!e.is_retryable());
        let limited = ConnectError::Handshake {
            status: 429,
            dg_error: None,
            body: "too many".into(),
            request_id: None,
            retry_after: None,
        };
        assert!(limited.is_retryable());
        assert_eq!(
            limited.to_string(),
            "handshake rejected with http 429: too many"
        );
    }

    #[tokio::test]
    async fn channel_pair_carries_frames_both_ways() {
        let (mut client, mut server) = channel_pair(4, None);
        client
            .sink
            .send(WireFrame::Binary(Bytes::from_static(b"ab")))
            .await
            .unwrap();
        assert_eq!(
            server.stream.next().await.unwrap().unwrap(),
            WireFrame::Binary(Bytes::from_static(b"ab"))
        );
        server
            .sink
            .send(WireFrame::Text("hi".into()))
            .await
            .unwrap();
        assert_eq!(
            client.stream.next().await.unwrap().unwrap(),
            WireFrame::Text("hi".into())
        );
        drop(server);
        assert!(client.stream.next().await.is_none());
        assert!(client.sink.send(WireFrame::Text("x".into())).await.is_err());
    }
}
