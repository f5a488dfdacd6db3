//! A running server's `/metrics`, read over plain HTTP/1.0 by the tests that start the binary.

/// The server's `/metrics` text (`url` is its `http://` address).
pub(crate) fn metrics(url: &str) -> String {
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    text
}
