//! The server's shared state as an application mounts it ([`Service`], its [`Drain`]) or runs it
//! on a listener of its own ([`Server`]): the accept loop with its header deadline and capped
//! send buffers, and the drain that always ends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::routes::{metrics_text, readyz, session, telephony_stream, twilio_voice};
use super::{Metrics, ServerConfig, State, page};

/// The kernel's send buffer for a client's socket (Linux doubles it for its bookkeeping): about
/// 4 s of a browser's 16 kHz audio, 10 s of a phone line's. Left to itself the kernel grows it
/// to megabytes for a client that stops reading, so the stall would hide for minutes (holding
/// that much memory for one session) before a send waits long enough to end the session.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// After a session or an HTTP connection has been told to stop, how long it may take before it
/// is left behind, so that a drain always ends.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// turnflow's routes and the sessions they run, for an application's own axum server: nest
/// [`Service::router`] under any path, behind the application's own middleware, and drain
/// through [`Service::drain`] from the application's own signal handling. [`Server`] is this
/// on a listener of its own, as `turnflow serve` runs it.
///
/// Mounted in another server, two protections of [`Server`] are the application's to keep:
/// a deadline for request headers ([`ServerConfig::header_timeout`]; `axum::serve` has none,
/// so a client that never finishes a request holds its connection) and a capped send buffer
/// for each client socket.
#[derive(Clone)]
pub struct Service {
    state: Arc<State>,
}

impl Service {
    /// The routes and sessions of `config`; nothing runs until the router serves a request.
    pub fn new(config: ServerConfig) -> Self {
        let shutdown = CancellationToken::new();
        let (browser, phone) = config.call_settings();
        Self {
            state: Arc::new(State {
                browser: Arc::new(browser),
                phone: Arc::new(phone),
                #[cfg(feature = "webrtc")]
                webrtc: config.webrtc.clone().map(super::webrtc::WebRtc::new),
                config,
                metrics: Arc::new(Metrics::default()),
                admitted: AtomicUsize::new(0),
                draining: shutdown.child_token(),
                shutdown,
                sessions: TaskTracker::new(),
            }),
        }
    }

    /// Every route: the page (`/`, `/app.js`, `/worklets.js`), `/session`, `/telephony`,
    /// `/twilio/voice`, `/healthz`, `/readyz` and `/metrics`, relative to wherever the router is
    /// nested. Nested at `/voice`, the page is at `/voice` (axum's nesting matches no trailing
    /// slash) and finds its scripts and its WebSocket under `/voice/`; carriers need
    /// [`ServerConfig::public_url`] to end with `/voice`.
    pub fn router(&self) -> Router {
        let router = Router::new();
        #[cfg(feature = "webrtc")]
        let router = router
            .route("/webrtc", axum::routing::post(super::webrtc::offer))
            .route(
                "/webrtc/{id}",
                axum::routing::delete(super::webrtc::hang_up),
            );
        router
            .route("/", get(page::index))
            .route("/app.js", get(page::script))
            .route("/worklets.js", get(page::worklets))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route("/session", get(session))
            .route("/telephony", get(telephony_stream))
            .route("/twilio/voice", axum::routing::post(twilio_voice))
            .with_state(self.state.clone())
    }

    /// The metrics of every session (also at `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// The handle that drains this service's sessions.
    pub fn drain(&self) -> Drain {
        Drain {
            state: self.state.clone(),
        }
    }
}

/// Drains a [`Service`]: what a rolling update needs, started from the application's own
/// signal handling. Cloning gives another handle to the same drain.
#[derive(Clone)]
pub struct Drain {
    state: Arc<State>,
}

impl Drain {
    /// Starts draining (again is a no-op): readiness answers 503, new sessions are refused with
    /// 503 and `Retry-After`, connections still waiting for their `start` end at once; running
    /// sessions go on.
    pub fn start(&self) {
        if !self.state.draining.is_cancelled() {
            self.state.draining.cancel();
            self.state.sessions.close();
            info!(
                running = self.state.sessions.len(),
                "draining: new sessions are refused, running ones go on"
            );
        }
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.state.draining.is_cancelled()
    }

    /// Sessions running now (connections waiting for `start` included).
    pub fn running(&self) -> usize {
        self.state.sessions.len()
    }

    /// Starts the drain if it has not started, waits until every session has ended or
    /// `timeout` has passed, then stops those still running (the reply in progress cut, the
    /// client told `server_shutdown`) and waits for them, a few seconds at most.
    ///
    /// # Cancellation safety
    /// Dropping the future leaves the sessions running; the drain, once started, stays on.
    pub async fn wait(&self, timeout: Duration) -> DrainReport {
        let state = &self.state;
        self.start();
        let running = state.sessions.len();
        let drained = async {
            let deadline = tokio::time::sleep(timeout);
            let mut deadline = std::pin::pin!(deadline);
            let mut progress = tokio::time::interval(Duration::from_secs(10));
            progress.tick().await;
            loop {
                tokio::select! {
                    () = state.sessions.wait() => return true,
                    () = &mut deadline => return false,
                    _ = progress.tick() => info!(running = state.sessions.len(), "draining"),
                }
            }
        };
        let mut stopped = 0;
        if !drained.await {
            stopped = state.sessions.len();
            warn!(
                stopped,
                "drain timeout: stopping the sessions still running"
            );
            state.shutdown.cancel();
            // Each session ends within a few seconds of being stopped (its sends and its
            // closing handshake are bounded); this bounds the drain even so.
            if tokio::time::timeout(STOP_GRACE, state.sessions.wait())
                .await
                .is_err()
            {
                warn!(
                    left = state.sessions.len(),
                    "sessions still ending after being stopped; leaving them"
                );
            }
        }
        info!(running, stopped, "drained");
        DrainReport { running, stopped }
    }
}

/// A [`Service`] on a listener of its own, not yet serving: its own accept loop, with the
/// header deadline and the capped send buffers.
pub struct Server {
    listener: TcpListener,
    service: Service,
}

/// How a drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Sessions running when the drain began.
    pub running: usize,
    /// Sessions stopped at the drain timeout.
    pub stopped: usize,
}

impl Server {
    /// Binds the listener (port 0 picks a free one).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::on(listener, config))
    }

    /// Serves on a listener the caller made (a socket handed over by systemd, a port chosen
    /// elsewhere).
    pub fn on(listener: TcpListener, config: ServerConfig) -> Self {
        Self {
            listener,
            service: Service::new(config),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The server's metrics (also at `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.service.metrics()
    }

    /// The handle that drains this server's sessions; [`Server::serve`] drains by it too.
    pub fn drain(&self) -> Drain {
        self.service.drain()
    }

    /// Serves until `signal` completes or [`Drain::start`] is called, then drains (see the
    /// module docs) and returns.
    ///
    /// # Errors
    /// The HTTP server failed.
    ///
    /// # Cancellation safety
    /// Dropping the future stops accepting at once and cancels every session.
    pub async fn serve(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> std::io::Result<DrainReport> {
        let drain = self.service.drain();
        let state = self.service.state.clone();
        let _stop_sessions_on_drop = state.shutdown.clone().drop_guard();
        let stop_http = CancellationToken::new();
        let http = serve_http(
            self.listener,
            self.service.router(),
            state.config.header_timeout,
            stop_http.clone(),
        );
        let mut http = std::pin::pin!(http);
        tokio::select! {
            result = &mut http => {
                result?;
                return Ok(DrainReport { running: 0, stopped: 0 });
            }
            () = signal => {}
            () = state.draining.cancelled() => {}
        }
        // The HTTP side keeps answering probes (readiness 503) while sessions drain.
        let report = tokio::select! {
            result = &mut http => {
                result?;
                return Ok(DrainReport { running: 0, stopped: 0 });
            }
            report = drain.wait(state.config.drain_timeout) => report,
        };
        stop_http.cancel();
        http.await?;
        Ok(report)
    }
}

/// Accepts HTTP/1 connections until `stop`, then lets each finish the request it is on and
/// waits for them, [`STOP_GRACE`] at most: a client that never finishes its request or never
/// reads its response does not hold the process. Upgraded connections (sessions) are not
/// waited for: they belong to the session tasks. Each connection must send its request headers within `header_timeout`,
/// so a client that opens connections and never finishes a request (slowloris) cannot hold
/// them; `axum::serve` sets no such timer.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let abandon = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            // One connection failed on its way in: the listener is fine.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue;
            }
            // Out of file descriptors, most likely: wait rather than spin.
            Err(e) => {
                warn!(error = %e, "accepting a connection failed; retrying in 1 s");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Agent audio, `clear` and events go out as written: Nagle's algorithm would hold a
        // small message while the previous one is unacknowledged (a clear behind a frame,
        // until the client's ACK).
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY not set");
        }
        if let Err(e) = socket2::SockRef::from(&tcp).set_send_buffer_size(SEND_BUFFER_BYTES) {
            debug!(error = %e, "SO_SNDBUF not set");
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (stop, abandon) = (stop.clone(), abandon.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        debug!(error = %e, "http connection ended");
                    }
                    return;
                }
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                _ = connection => {}
                () = abandon.cancelled() => debug!("an http connection still open at shutdown closed"),
            }
        });
    }
    connections.close();
    if tokio::time::timeout(STOP_GRACE, connections.wait())
        .await
        .is_err()
    {
        warn!(
            left = connections.len(),
            "http connections still open after shutdown; closing them"
        );
        abandon.cancel();
        connections.wait().await;
    }
    Ok(())
}
