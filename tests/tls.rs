//! TLS is set up per client: connecting over `wss://` and `https://` works (here: fails
//! cleanly against a server that is not TLS) without a process-wide rustls provider, and
//! turnflow never installs one behind the application's back.

use std::sync::Arc;

use turnflow::flux::{Connector, WebSocketConnector};
use turnflow::llm::{LanguageModel, LlmRequest, Message, OpenAiCompatible};
use turnflow::ws::{ConnectError, ConnectRequest};

#[tokio::test]
async fn tls_needs_no_global_provider_and_installs_none() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and hangs up at once: not a TLS server.
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let ws = WebSocketConnector
        .connect(&ConnectRequest {
            url: format!("wss://127.0.0.1:{port}/v2/listen"),
            api_key: None,
        })
        .await;
    assert!(matches!(ws, Err(ConnectError::Io(_))), "a clean error");
    let llm: Arc<dyn LanguageModel> = Arc::new(
        OpenAiCompatible::new(format!("https://127.0.0.1:{port}/v1"), "m", None, "KEY").unwrap(),
    );
    let request = LlmRequest {
        messages: vec![Message::user("hi")],
        tools: vec![],
    };
    let Err(e) = llm.stream(request).await else {
        panic!("not a TLS server")
    };
    assert!(e.message.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "no process-wide provider was installed"
    );
}
