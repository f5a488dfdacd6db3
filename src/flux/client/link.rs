//! One connection: opening it (upgrade, `Connected`), reading its messages, and its writer task.
//!
//! The supervisor reads the connection itself ([`next_inbound`]) rather than through a reader
//! task: a Flux event on the way to the engine then waits for one task to be scheduled, not
//! two. Under load the supervisor is often already queued (audio every 80 ms), and a second hop
//! behind it was most of the engine overhead's tail (BENCHMARKS.md, Serving). Writes keep a
//! task of their own, so a server that stops reading can never block the supervisor.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use crate::flux::messages::ServerMessage;
use crate::flux::options::ListenOptions;
use crate::flux::repair::Parsed;
use crate::ws::{ConnectError, ConnectRequest, Connection, Connector, FrameStream, WireFrame};

use super::{FluxConfig, FluxError};

pub(super) enum FromFlux {
    /// A message, when it arrived, and whether parsing had to repair it.
    Message(Box<ServerMessage>, Instant, bool),
    /// A text frame that could not be parsed (already logged).
    Malformed(Instant),
    Closed(String),
}

pub(super) struct Link {
    pub(super) to_writer: mpsc::Sender<WireFrame>,
    stream: FrameStream,
    token: CancellationToken,
    writer: JoinHandle<()>,
}

impl Link {
    pub(super) async fn shutdown(self) {
        self.token.cancel();
        let _ = self.writer.await;
    }
}

/// Opens one connection and starts its writer under a child of `parent`. Takes
/// its inputs by value so a reconnect can run as a task of its own.
pub(super) async fn open_link(
    config: FluxConfig,
    connector: Arc<dyn Connector>,
    options: ListenOptions,
    parent: CancellationToken,
) -> Result<(Link, String), FluxError> {
    let request = ConnectRequest {
        url: config.url_for(&options),
        api_key: config.api_key.clone(),
    };
    // Held until `Connected`: the upgrade and the wait are the handshake the limit bounds.
    let _place = config.handshakes.enter().await;
    let mut connection = tokio::time::timeout(config.connect_timeout, connector.connect(&request))
        .await
        .map_err(|_| {
            ConnectError::Io(format!("no upgrade within {:?}", config.connect_timeout))
        })??;
    let request_id = wait_connected(&mut connection, config.connected_timeout).await?;
    let token = parent.child_token();
    let (to_writer, writer_rx) = mpsc::channel(32);
    let Connection { sink, stream, .. } = connection;
    let writer = tokio::spawn(write_loop(sink, writer_rx, token.clone()).in_current_span());
    Ok((
        Link {
            to_writer,
            stream,
            token,
            writer,
        },
        request_id,
    ))
}

async fn wait_connected(connection: &mut Connection, limit: Duration) -> Result<String, FluxError> {
    let wait = async {
        while let Some(frame) = connection.stream.next().await {
            match frame {
                Ok(WireFrame::Text(text)) => match ServerMessage::parse(&text) {
                    Ok(ServerMessage::Connected { request_id, .. }) => return Ok(request_id),
                    Ok(ServerMessage::Error(e)) => return Err(FluxError::Server(e)),
                    Ok(other) => {
                        debug!(message_type = other.type_name(), "message before Connected")
                    }
                    Err(e) => {
                        warn!(error = %crate::text::Untrusted(&e.to_string()), "malformed message before Connected")
                    }
                },
                Ok(WireFrame::Close(reason)) => {
                    return Err(ConnectError::Io(format!(
                        "server closed before Connected: {reason:?}"
                    ))
                    .into());
                }
                Ok(_) => {}
                Err(e) => return Err(ConnectError::Io(e.0).into()),
            }
        }
        Err(ConnectError::Io("server closed before Connected".into()).into())
    };
    tokio::time::timeout(limit, wait)
        .await
        .map_err(|_| FluxError::ConnectedTimeout(limit))?
}

async fn write_loop(
    mut sink: crate::ws::FrameSink,
    mut frames: mpsc::Receiver<WireFrame>,
    token: CancellationToken,
) {
    let mut cancelled = std::pin::pin!(token.cancelled());
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut cancelled => break,
            frame = frames.recv() => frame,
        };
        let Some(frame) = frame else { break };
        // A server that stops reading leaves the send pending forever; the supervisor then
        // cancels this connection and must not wait on it.
        let sent = tokio::select! {
            biased;
            () = &mut cancelled => break,
            sent = sink.send(frame) => sent,
        };
        if let Err(e) = sent {
            debug!(error = %e, "writer stopped");
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), sink.close()).await;
}

pub(super) struct Connecting {
    pub(super) token: CancellationToken,
    pub(super) task: JoinHandle<Result<(Link, String), FluxError>>,
}

impl Connecting {
    pub(super) async fn abandon(self) {
        self.token.cancel();
        if let Ok(Ok((link, _))) = self.task.await {
            link.shutdown().await;
        }
    }
}

pub(super) async fn connect_result(
    connecting: &mut Option<Connecting>,
) -> Result<(Link, String), FluxError> {
    match connecting {
        Some(c) => match (&mut c.task).await {
            Ok(result) => result,
            Err(e) => Err(ConnectError::Io(format!("connect task failed: {e}")).into()),
        },
        None => std::future::pending().await,
    }
}

/// Room for one frame in the writer's queue (never resolves without a writer).
pub(super) async fn writer_room(
    writer: Option<mpsc::Sender<WireFrame>>,
) -> Result<mpsc::OwnedPermit<WireFrame>, mpsc::error::SendError<()>> {
    match writer {
        Some(writer) => writer.reserve_owned().await,
        None => std::future::pending().await,
    }
}

/// The next message of the connection, stamped when it was read; never resolves without one.
///
/// # Cancellation safety
///
/// Cancel-safe: a frame is taken from the stream only in the poll that returns it, and frames
/// skipped on the way (binary, ping, pong) carry nothing for the session.
pub(super) async fn next_inbound(link: &mut Option<Link>) -> FromFlux {
    let Some(link) = link else {
        return std::future::pending().await;
    };
    loop {
        let frame = link.stream.next().await;
        let received_at = Instant::now();
        return match frame {
            Some(Ok(WireFrame::Text(text))) => match ServerMessage::parse_repairing(&text) {
                Ok(Parsed { message, repairs }) => {
                    if !repairs.is_empty() {
                        warn!(
                            message_type = message.type_name(),
                            repairs = %repairs.join("; "),
                            "server message repaired"
                        );
                    }
                    FromFlux::Message(Box::new(message), received_at, !repairs.is_empty())
                }
                Err(error) => {
                    warn!(error = %crate::text::Untrusted(&error.to_string()), "skipping malformed server message");
                    FromFlux::Malformed(received_at)
                }
            },
            Some(Ok(WireFrame::Binary(b))) => {
                warn!(bytes = b.len(), "unexpected binary frame from server");
                continue;
            }
            Some(Ok(WireFrame::Ping(_) | WireFrame::Pong(_))) => continue,
            Some(Ok(WireFrame::Close(reason))) => FromFlux::Closed(match reason {
                Some((code, text)) => format!("server closed the connection ({code} {text})"),
                None => "server closed the connection".to_owned(),
            }),
            Some(Err(e)) => FromFlux::Closed(format!("connection failed: {}", e.0)),
            None => FromFlux::Closed("connection lost".to_owned()),
        };
    }
}
