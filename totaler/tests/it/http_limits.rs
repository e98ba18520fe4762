//! The HTTP server's limits against slow and hostile clients: half-sent
//! requests are closed after the header timeout, and connections past the
//! limit wait until one closes while the first ones keep working.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use totaler::Config;

use crate::support::{config, spawn_totaler, temp_dir};

fn limited_config(test: &str) -> (Config, String) {
    let queue = testkit::unique_queue(test);
    let config = config(
        &testkit::amqp_url(),
        &queue,
        &temp_dir(test).join("sum.txt"),
    );
    (config, queue)
}

/// Whether the server closes `stream` within `within` (EOF or reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `GET path` on a kept-alive connection and reads one response.
async fn get_on(stream: &mut TcpStream, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    read_response(stream).await
}

/// Reads one response head and its Content-Length body.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })?
        .parse()
        .ok()?;
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).to_string();
    Some((status, body))
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

#[tokio::test]
async fn half_sent_requests_are_closed_after_the_header_timeout() {
    let (mut config, queue) = limited_config("header-timeout");
    config.limits.http_header_timeout_ms = 500;
    let totaler = spawn_totaler(config).await;
    let mut half_sent = Vec::new();
    for _ in 0..200 {
        let mut stream = connect(totaler.http).await;
        stream
            .write_all(b"GET /su")
            .await
            .expect("send half a line");
        half_sent.push(stream);
    }
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect(totaler.http).await);
    }
    let started = std::time::Instant::now();
    for stream in half_sent.iter_mut().chain(silent.iter_mut()) {
        let left = Duration::from_secs(3).saturating_sub(started.elapsed());
        assert!(
            closed_within(stream, left).await,
            "a half-sent or silent connection is still open {:?} after the last was opened",
            started.elapsed()
        );
    }
    let mut fresh = connect(totaler.http).await;
    assert_eq!(get_on(&mut fresh, "/healthz").await.map(|r| r.0), Some(200));
    totaler.stop().await;
    testkit::Broker::connect(&queue).await.delete().await;
}

#[tokio::test]
async fn kept_alive_connections_are_closed_when_idle_past_the_header_timeout() {
    let (mut config, queue) = limited_config("idle-timeout");
    config.limits.http_header_timeout_ms = 500;
    let totaler = spawn_totaler(config).await;
    let mut stream = connect(totaler.http).await;
    assert_eq!(get_on(&mut stream, "/sum").await.map(|r| r.0), Some(200));
    assert_eq!(get_on(&mut stream, "/sum").await.map(|r| r.0), Some(200));
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);
    totaler.stop().await;
    testkit::Broker::connect(&queue).await.delete().await;
}

#[tokio::test]
async fn connections_past_the_limit_wait_while_the_first_ones_work() {
    let (mut config, queue) = limited_config("max-connections");
    config.limits.http_max_connections = 3;
    let totaler = spawn_totaler(config).await;
    // spawn_totaler's readiness probes have closed; wait until their slots are free.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut first = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(totaler.http).await;
        assert_eq!(get_on(&mut stream, "/sum").await.map(|r| r.0), Some(200));
        first.push(stream);
    }
    let mut excess = connect(totaler.http).await;
    excess
        .write_all(b"GET /sum HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send");
    let early = tokio::time::timeout(Duration::from_millis(700), read_response(&mut excess)).await;
    assert!(
        early.is_err(),
        "the fourth connection is served past the limit: {early:?}"
    );
    for stream in &mut first {
        assert_eq!(
            get_on(stream, "/sum").await.map(|r| r.0),
            Some(200),
            "the first ones keep working"
        );
    }
    drop(first.pop());
    let late = tokio::time::timeout(Duration::from_secs(5), read_response(&mut excess))
        .await
        .expect("served once a slot is free");
    assert_eq!(late.map(|r| r.0), Some(200));
    drop(first);
    totaler.stop().await;
    testkit::Broker::connect(&queue).await.delete().await;
}
