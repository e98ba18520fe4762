//! The memory-per-connection phase, run once after the rounds (the peaks
//! of `Stack::peak_mb` do not see it): `idle_connections` idle gRPC
//! connections to the adder (each after one health check, so its HTTP/2
//! state is set up), then as many HTTP/1.1 keep-alive connections to the
//! totaler (each after one `GET /sum`); each service's RSS before, with all
//! open, and `idle_settle_secs` after they all closed. The service's open
//! file descriptors are counted alongside, so a reading is taken only while
//! every connection is really open and only after every one really closed.
//!
//! The totaler closes a keep-alive connection idle for
//! `TOTALER_HTTP_HEADER_TIMEOUT_MS` (10 s by default): its connections are
//! opened in parallel and read at once, well inside that.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use futures_util::{StreamExt, TryStreamExt, stream};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{http, process};

use super::Stack;

/// What holding idle connections cost one service.
#[derive(Debug, Clone, Copy)]
pub struct PerConnection {
    /// RSS with all open minus RSS before, over the connections, in KiB.
    pub kb_per_conn: f64,
    /// How much of that rise was given back after they closed, in percent
    /// (can pass 100 when the service gave back more than the rise).
    pub returned_pct: f64,
}

/// The phase's figures, adder and totaler.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    pub adder: PerConnection,
    pub totaler: PerConnection,
}

/// Connections opened at once.
const OPENING: usize = 64;
/// Longest one connection may take to open and answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the service may take to notice that every connection closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// RSS and open descriptors of a service at one moment.
#[derive(Debug, Clone, Copy)]
struct Reading {
    rss_kb: f64,
    fds: usize,
}

impl Stack {
    /// Opens, holds and closes idle connections to each service in turn.
    pub async fn connections(&mut self) -> anyhow::Result<Connections> {
        let n = self.config.idle_connections;
        let settle = Duration::from_secs(self.config.idle_settle_secs);
        let adder_pid = self
            .adder
            .as_ref()
            .map(process::Process::pid)
            .context("the adder is not running")?;
        let grpc = self.grpc_addr;
        let adder = hold(adder_pid, n, settle, || open_grpc(grpc, n))
            .await
            .context("idle gRPC connections to the adder")?;
        let totaler_pid = self
            .totaler
            .as_ref()
            .map(process::Process::pid)
            .context("the totaler is not running")?;
        let http_addr = self.totaler_http;
        let totaler = hold(totaler_pid, n, settle, || open_http(http_addr, n))
            .await
            .context("idle HTTP connections to the totaler")?;
        Ok(Connections { adder, totaler })
    }
}

/// Reads `pid` before, with the `n` connections `open` makes held, and
/// `settle` after they closed.
async fn hold<T, F, Fut>(
    pid: u32,
    n: usize,
    settle: Duration,
    open: F,
) -> anyhow::Result<PerConnection>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<T>>>,
{
    let before = read(pid)?;
    let connections = open().await?;
    let held = read(pid)?;
    ensure!(
        held.fds >= before.fds + n,
        "the service holds {} descriptors with {n} connections open, {} before: some were not open when read",
        held.fds,
        before.fds
    );
    drop(connections);
    wait_closed(pid, before.fds).await?;
    tokio::time::sleep(settle).await;
    let after = read(pid)?;
    Ok(per_connection(before.rss_kb, held.rss_kb, after.rss_kb, n))
}

/// The figures of three RSS readings around `n` connections.
pub(super) fn per_connection(before: f64, held: f64, after: f64, n: usize) -> PerConnection {
    let rise = held - before;
    PerConnection {
        kb_per_conn: rise / n.max(1) as f64,
        returned_pct: if rise > 0.0 {
            (held - after) / rise * 100.0
        } else {
            100.0
        },
    }
}

fn read(pid: u32) -> anyhow::Result<Reading> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count();
    Ok(Reading {
        rss_kb: process::rss_kb(pid)?,
        fds,
    })
}

/// Polls until `pid` holds no more descriptors than `before` (plus a few
/// the service may have opened meanwhile, e.g. a database connection).
async fn wait_closed(pid: u32, before: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    loop {
        let now = read(pid)?.fds;
        if now <= before + 8 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the service still holds {now} descriptors {CLOSE_TIMEOUT:?} after the connections closed ({before} before)"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` gRPC connections to `addr`, each having answered one health check.
async fn open_grpc(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let url = format!("http://{addr}");
    open_all(n, "gRPC", |_| {
        let url = url.clone();
        async move {
            let channel = Channel::from_shared(url)?.connect().await?;
            HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await?;
            Ok(channel)
        }
    })
    .await
}

/// `n` keep-alive connections to `addr`, each having answered one `GET /sum`.
async fn open_http(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<http::Connection>> {
    open_all(n, "HTTP", |_| async move {
        let mut connection = http::Connection::open(addr, "/sum").await?;
        let (status, _) = connection.get().await?;
        ensure!(status == 200, "GET /sum answered {status}");
        Ok(connection)
    })
    .await
}

/// `n` connections made by `open`, `OPENING` at a time, each within `OPEN_TIMEOUT`.
async fn open_all<T, F, Fut>(n: usize, kind: &str, open: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    stream::iter(0..n)
        .map(|i| {
            let opened = open(i);
            async move {
                tokio::time::timeout(OPEN_TIMEOUT, opened)
                    .await
                    .with_context(|| format!("{kind} connection {i} took over {OPEN_TIMEOUT:?}"))?
                    .with_context(|| format!("{kind} connection {i}"))
            }
        })
        .buffer_unordered(OPENING)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_is_shared_by_the_connections_and_return_is_a_share_of_it() {
        let figures = per_connection(10_000.0, 42_000.0, 18_000.0, 2_000);
        assert_eq!(figures.kb_per_conn, 16.0);
        assert_eq!(figures.returned_pct, 75.0);
        let nothing_kept = per_connection(10_000.0, 42_000.0, 42_000.0, 2_000);
        assert_eq!(nothing_kept.returned_pct, 0.0);
    }
}
