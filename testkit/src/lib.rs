//! Test support for Tally's integration tests: a fresh PostgreSQL database
//! per test, a unique RabbitMQ queue per test with helpers to publish and
//! read raw messages, a TCP proxy that a test can cut to simulate an outage,
//! an OTLP/gRPC receiver that collects the spans the real binaries export,
//! HAProxy as a gRPC balancer before several adders, and polling with a
//! deadline. Everything talks to real servers; nothing is
//! mocked. Used by the tests of each crate, by the fault suite and by the
//! benchmark harness (which uses the fallible forms: `database::Fresh`,
//! `free_addr`, `queue_name`, `process::Logged`).
//!
//! The servers come from `TEST_DATABASE_URL` (default
//! `postgres://tally:tally@127.0.0.1:5432/tally`, a role with CREATEDB) and
//! `TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`), as
//! `scripts/services` sets them up.
//!
//! # Layout
//! - `balancer`: HAProxy before several adders (gRPC, per request).
//! - `broker`: queues and raw messages.
//! - `database`: fresh databases.
//! - `http`: a raw HTTP/1.1 client.
//! - `metrics`: samples of the Prometheus text format.
//! - `otlp`: a real OTLP/gRPC trace receiver the services export to.
//! - `process`: child processes with a log file, stopped with a grace
//!   period; waiting for a real binary with a deadline.
//! - `proxy`: the cuttable TCP proxy.
//! - `reference`: the generated `docs/reference/` pages (`--help`).
//! - `replicas`: private PostgreSQL servers: a primary, streaming standbys,
//!   restored base backups; crashed and promoted by the test.
//! - `sentinel`: whatever a test started is stopped when the test process
//!   dies, SIGKILL included.

pub mod balancer;
pub mod broker;
pub mod database;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod reference;
pub mod replicas;
pub mod sentinel;

use std::{future::Future, net::SocketAddr, time::Duration};

pub use broker::Broker;
pub use proxy::Proxy;

/// The AMQP URL tests use.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `scheme://user:password@rest` as `scheme://user@rest` and the password
/// (the tests that give a service its password in a file).
pub fn split_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (userinfo, hosts) = rest.split_once('@').expect("a URL with a user");
    let (user, password) = userinfo.split_once(':').expect("a URL with a password");
    (format!("{scheme}://{user}@{hosts}"), password.to_owned())
}

/// A loopback port that was free a moment ago, for a process the test starts.
pub fn free_port() -> u16 {
    free_addr()
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
}

/// A loopback address whose port was free a moment ago (bound and released).
pub fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A queue name no other test uses.
pub fn unique_queue(test: &str) -> String {
    queue_name("test", test)
}

/// A queue name of its own under `namespace` (`test`, `bench`), for `purpose`.
pub fn queue_name(namespace: &str, purpose: &str) -> String {
    format!("{namespace}.{purpose}.{}", uuid::Uuid::new_v4().simple())
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first of `span` consecutive loopback ports that were all free a
/// moment ago, below the kernel's ephemeral range (so [`free_port`] does
/// not hand them out meanwhile), for a script that numbers its ports from
/// a base.
pub fn free_port_block(span: u16) -> std::io::Result<u16> {
    (0..200)
        .map(|_| 10_000 + (uuid::Uuid::new_v4().as_u128() % 20_000) as u16)
        .find(|&base| {
            (base..base + span).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        })
        .ok_or_else(|| std::io::Error::other("no block of free loopback ports"))
}
