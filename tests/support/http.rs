//! An HTTP/1.1 server on a loopback port that writes down every request (its head and body)
//! and answers as the test says: a stand-in for a collector, a carrier's API or a tool's
//! backend.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every request received: its head (request line and headers) and its body.
pub(crate) type Requests = Arc<Mutex<Vec<(String, String)>>>;

/// Starts the server: `answer` gets each request's path and gives the status line and body,
/// or `None` to never answer. Returns its `http://` URL and what it received.
pub(crate) async fn recorder(
    answer: impl Fn(&str) -> Option<(&'static str, String)> + Send + Sync + 'static,
) -> (String, Requests) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Requests::default();
    let kept = requests.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (kept, answer) = (kept.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 16384];
                // Keep-alive: one connection may carry many requests.
                loop {
                    let head_end = loop {
                        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buffer.len() < head_end + 4 + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buffer.drain(..head_end + 4 + length).collect();
                    let body = String::from_utf8_lossy(&body[head_end + 4..]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    kept.lock().unwrap().push((head, body));
                    let Some((status, reply)) = answer(&path) else {
                        std::future::pending::<()>().await;
                        return;
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if socket.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, requests)
}
