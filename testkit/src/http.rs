//! A raw HTTP/1.1 client for tests: one request per connection, enough to
//! read a status and a body without pulling in an HTTP client crate.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sends one request; `None` if connecting, writing or reading fails or
/// takes more than five seconds.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    request_with(addr, method, path, &[], body).await
}

/// [`request`] with extra header lines `(name, value)`.
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    let head = headers.iter().fold(head, |head, (name, value)| {
        format!("{head}{name}: {value}\r\n")
    });
    tokio::time::timeout(Duration::from_secs(5), exchange(addr, &head, body))
        .await
        .ok()
        .flatten()
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(addr, "GET", path, "").await
}

async fn exchange(addr: SocketAddr, head: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
