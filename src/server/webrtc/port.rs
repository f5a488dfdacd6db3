//! The one UDP port every WebRTC session shares: a task that reads it and hands each datagram
//! to its session ([`super::demux`] decides which), and the sending half the sessions write
//! through. A datagram no session claims is dropped and counted, so a flood from an unknown
//! address costs a hash lookup and disturbs no one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

use super::demux::{self, Kind};

/// Datagrams waiting for one session: 64 is over a second of its audio; more means the
/// session's task is not keeping up, and UDP drops rather than queues.
const SESSION_QUEUE: usize = 64;
/// Addresses one session may be reached from: its host and reflexive candidates, over IPv4
/// and IPv6. Past this, a STUN request naming the session from a new address is still
/// routed, but the address is not learnt.
const ADDRESSES_PER_SESSION: usize = 8;
/// The largest datagram read; WebRTC keeps packets under the path MTU.
const DATAGRAM_MAX: usize = 2048;
/// The kernel's buffers for the port: a few hundred sessions' 50 packets a second each must
/// not overflow while the reading task waits for a core.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A datagram for a session.
#[derive(Debug)]
pub(super) struct Datagram {
    pub(super) at: Instant,
    pub(super) from: SocketAddr,
    pub(super) bytes: Vec<u8>,
}

#[derive(Clone)]
struct Route {
    session: u64,
    to: mpsc::Sender<Datagram>,
}

#[derive(Default)]
struct Routes {
    next_session: u64,
    by_ufrag: HashMap<String, Route>,
    by_address: HashMap<SocketAddr, Route>,
    addresses: HashMap<u64, Vec<SocketAddr>>,
}

impl Routes {
    fn route(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Route> {
        match demux::kind(datagram) {
            Kind::Stun => {
                let route = self.by_ufrag.get(demux::local_ufrag(datagram)?)?.clone();
                let known = self.addresses.entry(route.session).or_default();
                if !known.contains(&from)
                    && known.len() < ADDRESSES_PER_SESSION
                    && !self.by_address.contains_key(&from)
                {
                    known.push(from);
                    self.by_address.insert(from, route.clone());
                }
                Some(route)
            }
            Kind::Dtls | Kind::Rtp => self.by_address.get(&from).cloned(),
            Kind::Other => None,
        }
    }

    fn remove(&mut self, session: u64, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
        for address in self.addresses.remove(&session).unwrap_or_default() {
            self.by_address.remove(&address);
        }
    }
}

/// Counts of what arrived on the port and went nowhere.
#[derive(Debug, Default)]
pub(super) struct PortCounters {
    /// Datagrams no session claimed (an unknown fragment or address, not WebRTC).
    pub(super) unclaimed: AtomicU64,
    /// Datagrams dropped because their session's queue was full.
    pub(super) overflowed: AtomicU64,
}

struct Shared {
    /// The sending half (non-blocking: a full kernel buffer drops the datagram, as the
    /// network would).
    sender: std::net::UdpSocket,
    local: SocketAddr,
    candidates: Vec<SocketAddr>,
    routes: Mutex<Routes>,
    counters: PortCounters,
    /// Stops the reading task when the last handle goes.
    _stop: DropGuard,
}

/// WebRTC's UDP port: bound once, shared by every session of a server, read by one task.
/// Clones are handles to the same port; the reading task ends when the last one is dropped.
#[derive(Clone)]
pub struct WebRtcPort {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WebRtcPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcPort")
            .field("local", &self.shared.local)
            .field("candidates", &self.shared.candidates)
            .finish_non_exhaustive()
    }
}

/// Why the port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The address could not be bound.
    #[error("cannot bind the WebRTC UDP port {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// Bound to every interface with no address to tell clients.
    #[error(
        "the WebRTC UDP port is bound to {0}, which no client can reach; name the address \
         clients should use with --webrtc-candidate IP[:PORT]"
    )]
    NoCandidate(SocketAddr),
}

impl WebRtcPort {
    /// Binds `address` and starts reading it. Clients are told to send to `candidates` (a
    /// port of 0 in one means the bound port); with none, to the bound address, which must
    /// then name an interface rather than all of them.
    ///
    /// # Errors
    /// [`PortError`]: the address cannot be bound, or no address for clients is known.
    pub fn bind(address: SocketAddr, candidates: &[SocketAddr]) -> Result<Self, PortError> {
        let bind_error = |source| PortError::Bind { address, source };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(address),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(bind_error)?;
        // The kernel may cap these (net.core.rmem_max); what it grants is enough for fewer
        // sessions, so a refusal is not an error.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        socket.set_nonblocking(true).map_err(bind_error)?;
        socket.bind(&address.into()).map_err(bind_error)?;
        let socket: std::net::UdpSocket = socket.into();
        let local = socket.local_addr().map_err(bind_error)?;
        let candidates: Vec<SocketAddr> = if candidates.is_empty() {
            if local.ip().is_unspecified() {
                return Err(PortError::NoCandidate(local));
            }
            vec![local]
        } else {
            candidates
                .iter()
                .map(|c| match c.port() {
                    0 => SocketAddr::new(c.ip(), local.port()),
                    _ => *c,
                })
                .collect()
        };
        let sender = socket.try_clone().map_err(bind_error)?;
        let reader = tokio::net::UdpSocket::from_std(socket).map_err(bind_error)?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            sender,
            local,
            candidates,
            routes: Mutex::new(Routes::default()),
            counters: PortCounters::default(),
            _stop: stop.clone().drop_guard(),
        });
        // Holds the shared state weakly: the port's handles own it, not its reader.
        tokio::spawn(read(reader, Arc::downgrade(&shared), stop));
        Ok(Self { shared })
    }

    /// The address the port is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The addresses clients are told to send to.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.shared.candidates
    }

    pub(super) fn counters(&self) -> &PortCounters {
        &self.shared.counters
    }

    /// Sends a datagram; a full kernel buffer drops it, as a congested network would.
    pub(super) fn send(&self, to: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.shared.sender.send_to(bytes, to) {
            debug!(error = %e, %to, "a WebRTC datagram was not sent");
        }
    }

    /// Routes datagrams that name `ufrag` (and then their addresses) to the returned queue
    /// until the registration is dropped.
    pub(super) fn register(&self, ufrag: &str) -> (Registration, mpsc::Receiver<Datagram>) {
        let (to, from) = mpsc::channel(SESSION_QUEUE);
        let mut routes = self.shared.routes.lock().expect("routes lock");
        let session = routes.next_session;
        routes.next_session += 1;
        routes
            .by_ufrag
            .insert(ufrag.to_owned(), Route { session, to });
        drop(routes);
        let registration = Registration {
            port: self.clone(),
            session,
            ufrag: ufrag.to_owned(),
        };
        (registration, from)
    }
}

/// A session's place on the port; dropping it stops its routing.
pub(super) struct Registration {
    port: WebRtcPort,
    session: u64,
    ufrag: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.port
            .shared
            .routes
            .lock()
            .expect("routes lock")
            .remove(self.session, &self.ufrag);
    }
}

/// The reading task: every datagram to its session's queue, or dropped and counted.
async fn read(
    socket: tokio::net::UdpSocket,
    shared: std::sync::Weak<Shared>,
    stop: CancellationToken,
) {
    let mut buffer = vec![0u8; DATAGRAM_MAX];
    loop {
        let (length, from) = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                // An ICMP error from an earlier send (a client gone) surfaces on Linux as a
                // failed read; the port goes on.
                Err(e) => {
                    debug!(error = %e, "WebRTC port read");
                    continue;
                }
            },
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let datagram = &buffer[..length];
        let route = shared
            .routes
            .lock()
            .expect("routes lock")
            .route(datagram, from);
        let Some(route) = route else {
            shared.counters.unclaimed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let datagram = Datagram {
            at: Instant::now(),
            from,
            bytes: datagram.to_vec(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = route.to.try_send(datagram) {
            let before = shared.counters.overflowed.fetch_add(1, Ordering::Relaxed);
            if before.is_power_of_two() {
                warn!(
                    dropped = before + 1,
                    "a WebRTC session is not keeping up with its packets; dropping them"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(ufrag: &str) -> Vec<u8> {
        let username = format!("{ufrag}:client");
        let mut attribute = vec![0x00, 0x06];
        attribute.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attribute.extend_from_slice(username.as_bytes());
        attribute.resize(attribute.len().div_ceil(4) * 4, 0);
        let mut message = vec![0x00, 0x01];
        message.extend_from_slice(&(attribute.len() as u16).to_be_bytes());
        message.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        message.extend_from_slice(&[1; 12]);
        message.extend_from_slice(&attribute);
        message
    }

    fn routes_with(sessions: &[&str]) -> (Routes, Vec<mpsc::Receiver<Datagram>>) {
        let mut routes = Routes::default();
        let mut queues = Vec::new();
        for (session, ufrag) in sessions.iter().enumerate() {
            let (to, from) = mpsc::channel(1);
            routes.by_ufrag.insert(
                (*ufrag).to_owned(),
                Route {
                    session: session as u64,
                    to,
                },
            );
            queues.push(from);
        }
        (routes, queues)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn media_follows_the_address_its_session_was_checked_from() {
        let (mut routes, _queues) = routes_with(&["aaaa", "bbbb"]);
        let rtp = [0x80, 111, 0, 1];
        assert!(routes.route(&rtp, addr(1)).is_none(), "no check yet");
        assert_eq!(routes.route(&binding("bbbb"), addr(1)).unwrap().session, 1);
        assert_eq!(routes.route(&rtp, addr(1)).unwrap().session, 1);
        assert_eq!(routes.route(&[22, 254, 253], addr(1)).unwrap().session, 1);
        assert!(routes.route(&rtp, addr(2)).is_none(), "another address");
        assert!(
            routes.route(&binding("cccc"), addr(2)).is_none(),
            "an unknown fragment"
        );
        assert!(routes.route(&[0x40, 0, 0], addr(1)).is_none(), "not WebRTC");
    }

    #[test]
    fn an_address_belongs_to_the_first_session_that_claims_it_and_is_released_with_it() {
        let (mut routes, _queues) = routes_with(&["aaaa", "bbbb"]);
        routes.route(&binding("aaaa"), addr(1));
        // Another session's check from the same address is routed by its fragment, but the
        // address stays the first session's.
        assert_eq!(routes.route(&binding("bbbb"), addr(1)).unwrap().session, 1);
        assert_eq!(routes.route(&[0x80], addr(1)).unwrap().session, 0);
        routes.remove(0, "aaaa");
        assert!(routes.route(&[0x80], addr(1)).is_none());
        assert!(routes.route(&binding("aaaa"), addr(1)).is_none());
        assert_eq!(routes.route(&binding("bbbb"), addr(1)).unwrap().session, 1);
        assert_eq!(routes.route(&[0x80], addr(1)).unwrap().session, 1);
    }

    #[test]
    fn a_session_learns_a_bounded_number_of_addresses() {
        let (mut routes, _queues) = routes_with(&["aaaa"]);
        for port in 1..=100 {
            assert!(routes.route(&binding("aaaa"), addr(port)).is_some());
        }
        assert_eq!(routes.by_address.len(), ADDRESSES_PER_SESSION);
        assert!(routes.route(&[0x80], addr(100)).is_none());
        assert!(routes.route(&[0x80], addr(1)).is_some());
    }
}
