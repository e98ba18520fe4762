//! Test support for Tally's integration tests: a fresh PostgreSQL database
//! per test, a unique RabbitMQ queue per test with helpers to publish and
//! read raw messages, a TCP proxy that a test can cut to simulate an outage,
//! an OTLP/gRPC receiver that collects the spans the real binaries export,
//! and polling with a deadline. Everything talks to real servers; nothing is
//! mocked. Used by the tests of each crate and by the fault suite.
//!
//! The servers come from `TEST_DATABASE_URL` (default
//! `postgres://tally:tally@127.0.0.1:5432/tally`, a role with CREATEDB) and
//! `TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`), as
//! `scripts/services` sets them up.
//!
//! # Layout
//! - `broker`: queues and raw messages.
//! - `database`: fresh databases.
//! - `http`: a raw HTTP/1.1 client.
//! - `metrics`: samples of the Prometheus text format.
//! - `otlp`: a real OTLP/gRPC trace receiver the services export to.
//! - `process`: waiting for a real binary with a deadline.
//! - `proxy`: the cuttable TCP proxy.

pub mod broker;
pub mod database;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod proxy;

use std::{future::Future, time::Duration};

pub use broker::Broker;
pub use proxy::Proxy;

/// The AMQP URL tests use.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A loopback port that was free a moment ago, for a process the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
}

/// A queue name no other test uses.
pub fn unique_queue(test: &str) -> String {
    format!("test.{test}.{}", uuid::Uuid::new_v4().simple())
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
