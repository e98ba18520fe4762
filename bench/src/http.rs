//! A minimal keep-alive HTTP/1.1 GET client and the GET load built on it.
//! One request at a time per connection, no pipelining; responses must carry
//! `Content-Length` (warp's JSON replies do). The same client loads the
//! totaler and the bare warp server, so their figures compare.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One keep-alive connection.
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    request: Vec<u8>,
}

/// Most requests one load sends, whatever its duration.
const MAX_REQUESTS: u64 = 50_000_000;

impl Connection {
    pub async fn open(addr: SocketAddr, path: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(4096),
            request,
        })
    }

    /// Sends the connection's GET and returns the status and the body.
    pub async fn get(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        self.stream.write_all(&self.request).await?;
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            self.fill().await?;
        };
        let (status, length) = parse_head(&self.buffer[..head_end])?;
        while self.buffer.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buffer[head_end..head_end + length].to_vec();
        self.buffer.drain(..head_end + length);
        Ok((status, body))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buffer.reserve(4096);
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }
}

/// `GET path` on `connections` connections for `duration`; returns 200s per second.
pub async fn load(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        tasks.push(Connection::open(addr, path).await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let per_connection = MAX_REQUESTS / connections as u64;
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|mut connection| {
            tokio::spawn(async move {
                let mut ok = 0u64;
                for _ in 0..per_connection {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let (status, _) = connection.get().await?;
                    if status == 200 {
                        ok += 1;
                    }
                }
                anyhow::Ok(ok)
            })
        })
        .collect();
    let mut ok = 0;
    for handle in handles {
        ok += handle.await.context("GET load task")??;
    }
    Ok(ok as f64 / started.elapsed().as_secs_f64())
}

/// The `sum` of a `{"sum": N}` body.
pub fn parse_sum(body: &[u8]) -> anyhow::Result<i128> {
    let text = std::str::from_utf8(body).context("GET /sum body is not UTF-8")?;
    let value = text
        .split_once("\"sum\":")
        .map(|(_, rest)| rest.trim_start())
        .context("GET /sum body has no sum")?;
    let digits: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits
        .parse()
        .with_context(|| format!("GET /sum body has a bad sum: {text}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> anyhow::Result<(u16, usize)> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("response has no status")?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .context("response has no Content-Length")?;
    Ok((status, length))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn head_gives_status_and_length() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n";
        assert_eq!(parse_head(head).unwrap(), (200, 9));
    }

    #[test]
    fn sum_is_read_from_json() {
        assert_eq!(parse_sum(br#"{"sum":-42}"#).unwrap(), -42);
        assert_eq!(
            parse_sum(br#"{"sum": 170141183460469231731687303715884105727}"#).unwrap(),
            i128::MAX
        );
    }
}
