//! A transport of your own: raw PCM over TCP, complete. Everything a conversation needs (Flux,
//! the engine, the deadlines and limits, barge-in, the ending) is turnflow's `Call`; the
//! transport only says what its bytes mean.
//!
//! The wire: a client connects and streams 16 kHz PCM16 little-endian mono, as captured; the
//! agent's voice comes back the same way. The client half-closes its side when the user is
//! done; the reply in progress finishes and the server closes. (Raw PCM has no way to say
//! "stop playing", so a barge-in stops the audio at once but cannot drop what the client
//! buffered: a transport with a clear message would send it in `Outbound::Clear`.)
//!
//! Run with: `cargo run --example custom_transport [-- --listen 127.0.0.1:4000]`. Offline: the
//! Flux emulator plays the plain scenario's turn, the scripted model answers and the synthetic
//! voice speaks. `tests/examples.rs` drives this binary.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use turnflow::call::{
    AudioFormat, Call, EndError, Ending, Gone, Inbound, Outbound, Settings, Start, Transport,
};
use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
use turnflow::engine::Backends;
use turnflow::flux::{Encoding, FluxConfig, ListenOptions};
use turnflow::llm::ScriptedLlm;
use turnflow::scenario::Scenario;
use turnflow::tts::SyntheticTts;

const RATE: u32 = 16000;

/// One TCP connection as a conversation's transport.
struct RawPcm {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    started: bool,
    stopped: bool,
    /// A byte of a sample whose other byte has not arrived yet.
    partial: BytesMut,
}

impl Transport for RawPcm {
    async fn recv(&mut self) -> Result<Option<Inbound>, EndError> {
        // Connecting is starting: the format is fixed by this wire.
        if !self.started {
            self.started = true;
            let format = AudioFormat {
                encoding: Encoding::Linear16,
                sample_rate: RATE,
            };
            return Ok(Some(Inbound::Start(Start::new(format))));
        }
        if self.stopped {
            // Nothing more will come; the call ends when the reply does.
            return std::future::pending().await;
        }
        let mut buffer = [0u8; 640];
        // `read` is cancel-safe: the call may drop this future whenever it likes.
        match self.reader.read(&mut buffer).await {
            Ok(0) => {
                self.stopped = true;
                Ok(Some(Inbound::Stop))
            }
            Ok(n) => {
                self.partial.extend_from_slice(&buffer[..n]);
                let whole = self.partial.len() & !1;
                Ok(Some(Inbound::Audio(self.partial.split_to(whole).freeze())))
            }
            Err(_) => Ok(None),
        }
    }

    async fn send(&mut self, item: Outbound<'_>) -> Result<(), Gone> {
        match item {
            Outbound::Audio(speech) => {
                let bytes: Bytes = turnflow::audio::encode(Encoding::Linear16, speech.pcm).into();
                self.writer.write_all(&bytes).await.map_err(|_| Gone)
            }
            // Events, clears and turn figures have no place on this wire.
            _ => Ok(()),
        }
    }

    async fn finish(&mut self, _ending: &Ending) {
        let _ = self.writer.shutdown().await;
    }
}

fn settings() -> Settings {
    let scenario = Arc::new(Scenario::load("scenarios/plain.json".as_ref()).expect("scenario"));
    let flux = FluxConfig::new(ListenOptions::raw(Encoding::Linear16, RATE))
        .with_base_url("ws://emulator.invalid");
    let emulator = MemoryEmulator::new(EmulatorConfig::new(scenario.clone()));
    let backends = Backends {
        llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
        tts: Arc::new(SyntheticTts::new(RATE, scenario.tts.clone())),
        tools: None,
    };
    Settings::new(flux, Arc::new(emulator), backends)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = match std::env::args().skip_while(|a| a != "--listen").nth(1) {
        Some(addr) => addr,
        None => "127.0.0.1:4000".to_owned(),
    };
    let settings = settings();
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let mut calls = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        calls += 1;
        let n = calls;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let mut transport = RawPcm {
            reader,
            writer,
            started: false,
            stopped: false,
            partial: BytesMut::new(),
        };
        let call = Call::new(format!("tcp-{n}"), settings.clone());
        tokio::spawn(async move {
            let ending = call.run(&mut transport).await;
            println!(
                "call {n} ended: {} ({}), {} turn(s)",
                ending.outcome.as_str(),
                ending.detail,
                ending.turns
            );
        });
    }
}
