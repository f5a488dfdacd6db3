//! turnflow inside an application's own axum server: the voice agent under `/voice`, behind the
//! application's own authentication, beside the application's own routes, drained on SIGTERM
//! by the application's own signal handling.
//!
//! Run with: `cargo run --example embed_axum [-- --listen 127.0.0.1:3000]`, then open
//! `http://127.0.0.1:3000/login?key=let-me-in` (it sets the cookie and sends you to the page,
//! at `/voice`).
//!
//! Offline: the agent is the embedded default (the Flux emulator playing the demo scenario's
//! turns, the scripted model, the synthetic voice). `tests/examples.rs` drives this binary.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
use turnflow::engine::Backends;
use turnflow::flux::{Encoding, FluxConfig, ListenOptions};
use turnflow::llm::ScriptedLlm;
use turnflow::scenario::Scenario;
use turnflow::server::{ServerConfig, Service};
use turnflow::tts::SyntheticTts;

/// The application's one credential; a real application checks its own sessions.
const KEY: &str = "let-me-in";

/// The application's authentication, in front of everything turnflow serves: a bearer token
/// (for programs) or the cookie `/login` sets (for the browser page and its WebSocket).
async fn authenticated(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.split(';').any(|c| c.trim() == format!("app_key={KEY}")));
    if bearer == Some(KEY) || cookie {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, "log in first: /login?key=...\n").into_response()
    }
}

#[derive(serde::Deserialize)]
struct Login {
    key: String,
}

async fn login(Query(login): Query<Login>) -> Response {
    if login.key != KEY {
        return (StatusCode::UNAUTHORIZED, "wrong key\n").into_response();
    }
    let cookie = format!("app_key={KEY}; Path=/; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/voice")).into_response()
}

fn agent() -> ServerConfig {
    let scenario = Arc::new(Scenario::demo());
    let options = ListenOptions::raw(Encoding::Linear16, 16000);
    ServerConfig::new(
        FluxConfig::new(options).with_base_url("ws://emulator.invalid"),
        Arc::new(MemoryEmulator::new(EmulatorConfig::new(scenario.clone()))),
        Backends {
            llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
            tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
            tools: None,
        },
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = match std::env::args().skip_while(|a| a != "--listen").nth(1) {
        Some(addr) => addr,
        None => "127.0.0.1:3000".to_owned(),
    };
    let voice = Service::new(agent());
    let app = Router::new()
        .route("/", get(|| async { "the application's own page\n" }))
        .route("/login", get(login))
        .nest(
            "/voice",
            voice.router().layer(middleware::from_fn(authenticated)),
        );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Readiness turns 503 and new sessions are refused while the HTTP side keeps answering;
    // running conversations get 30 s to finish.
    let report = voice.drain().wait(Duration::from_secs(30)).await;
    println!(
        "drained: {} session(s) were running, {} stopped",
        report.running, report.stopped
    );
    let _ = stop_http.send(());
    http.await??;
    Ok(())
}
