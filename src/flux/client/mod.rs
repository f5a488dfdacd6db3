//! The Flux `/v2/listen` client: one handle, one supervisor task that also reads the
//! connection, and a writer task per connection.
//!
//! ```text
//! FluxHandle / FluxSender --commands--> supervisor --frames--> writer task --> Connection.sink
//!                FluxEvents <--events-- supervisor <--------------------------- Connection.stream
//! ```
//!
//! The supervisor owns everything that must survive a reconnect: the audio timeline, the audio of
//! the open turn (replayed to a new connection so no words are lost), the configuration (the
//! latest one goes into the new URL), and the turn state the consumer has seen, so that a drop in
//! the middle of a turn never shows up as a premature `EndOfTurn` or a second `StartOfTurn`.
//!
//! It also keeps Flux's audio-driven clock running: WebSocket pings when no audio flows (Flux has
//! no `KeepAlive` message) and silence when the source stalls mid-turn. A server that stops
//! answering while audio flows is treated like a dropped socket.
//!
//! Continuity features need a sample-based raw encoding (linear16, linear32, mulaw, alaw), where
//! bytes map to audio time. With Opus or containerized audio, frames pass through unchanged and
//! reconnects start a fresh timeline without replay.
//!
//! Files: `config` (what to connect to and how to stay connected), `handle` (the handle, the
//! sender and the event stream the application holds), `link` (one connection: reading it, and its
//! writer task), `supervisor` (the task that owns the session across connections).

use std::time::Duration;

use super::messages::FatalError;
use super::options::OptionsError;
use crate::ws::ConnectError;

mod config;
mod handle;
mod link;
mod supervisor;

pub use config::{
    API_KEY_ENV, DEEPGRAM_BASE_URL, DEFAULT_HANDSHAKES_IN_FLIGHT, FluxConfig, HandshakeLimit,
    ReconnectPolicy,
};
pub use handle::{
    ClientStats, FluxEvent, FluxEventKind, FluxEvents, FluxHandle, FluxSender, TurnUpdate,
};
pub use supervisor::connect;

/// Errors of the Flux client.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FluxError {
    /// The options would be refused by the server; nothing was sent.
    #[error(transparent)]
    InvalidOptions(#[from] OptionsError),
    /// Opening the connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server accepted the upgrade but sent no `Connected` in time.
    #[error("no Connected message within {0:?} of the upgrade")]
    ConnectedTimeout(Duration),
    /// The server sent `Error` and closed the connection.
    #[error("server error {}: {}", .0.code, .0.description)]
    Server(FatalError),
    /// The connection dropped and every reconnect attempt failed.
    #[error("connection lost ({reason}); {attempts} reconnect attempts failed, last: {last_error}")]
    ReconnectFailed {
        /// Why the connection was lost.
        reason: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },
    /// The client is closed.
    #[error("the flux client is closed")]
    Closed,
    /// The API key would travel unencrypted to another machine.
    #[error(
        "refusing to send the api key over unencrypted {url} (not this machine): use wss://, or allow it explicitly (FluxConfig::allow_insecure)"
    )]
    InsecureTransport {
        /// The base URL refused.
        url: String,
    },
    /// The base URL cannot be used as given.
    #[error("flux url {url:?} is not usable: {reason}")]
    InvalidBaseUrl {
        /// The base URL.
        url: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flux::options::ListenOptions;

    #[test]
    fn urls_for_deepgram_and_emulators() {
        let c = FluxConfig::new(ListenOptions::default());
        assert_eq!(
            c.url_for(&c.options),
            "wss://api.deepgram.com/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000"
        );
        let e = c.clone().with_base_url("http://127.0.0.1:9000/");
        assert!(
            e.url_for(&e.options)
                .starts_with("ws://127.0.0.1:9000/v2/listen?model=")
        );
        let full = c
            .clone()
            .with_base_url("wss://api.eu.deepgram.com/v2/listen");
        assert!(
            full.url_for(&full.options)
                .starts_with("wss://api.eu.deepgram.com/v2/listen?")
        );
    }

    #[test]
    fn delays_are_drawn_below_a_ceiling_that_doubles_up_to_the_cap() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(30), Duration::from_secs(5));
        assert_eq!(p.delay(4, 0, None), Duration::ZERO);
        assert_eq!(p.delay(4, u64::MAX, None), Duration::from_millis(800));
        assert_eq!(p.delay(4, u64::MAX / 2, None).as_millis(), 400);
        // What the server asked for is the least.
        assert_eq!(
            p.delay(1, u64::MAX, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn sessions_that_lose_flux_together_come_back_spread_out() {
        // 200 sessions' sixth attempts (ceiling 3.2 s), from the real dice: spread over the
        // window, not bunched (a fixed doubling put all of them in the same millisecond).
        let p = ReconnectPolicy::default();
        let mut delays: Vec<u128> = (0..200)
            .map(|_| p.delay(6, config::dice(), None).as_millis())
            .collect();
        delays.sort_unstable();
        assert!(delays.iter().all(|d| *d <= 3200));
        let distinct = {
            let mut d = delays.clone();
            d.dedup();
            d.len()
        };
        // 200 draws over 3201 milliseconds: about 6 collide by chance; 30 would be a herd.
        assert!(distinct >= 170, "{distinct} distinct of 200");
        let in_each_quarter: Vec<usize> = (0..4)
            .map(|q| delays.iter().filter(|d| **d / 801 == q).count())
            .collect();
        assert!(
            // 50 expected in each; 20 is five standard deviations below.
            in_each_quarter.iter().all(|n| *n >= 20),
            "{in_each_quarter:?}"
        );
    }

    #[test]
    fn frame_size_is_80_ms_of_the_declared_format() {
        let c = FluxConfig::new(ListenOptions::default());
        assert_eq!(c.bytes_per_second(), Some(32000.0));
        let mulaw = FluxConfig::new(ListenOptions::raw(
            super::super::options::Encoding::Mulaw,
            8000,
        ));
        assert_eq!(mulaw.bytes_per_second(), Some(8000.0));
        assert_eq!(
            FluxConfig::new(ListenOptions::containerized()).bytes_per_second(),
            None
        );
    }
}
