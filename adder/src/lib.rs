//! The adder service: gRPC and HTTP `Add(a, b)` that commit every sum to a
//! PostgreSQL outbox before answering, and a relay that publishes the outbox
//! to RabbitMQ with publisher confirms.
//!
//! # Layout
//! - `config`: flags and environment ([`Config`]).
//! - `add`: the Add operation shared by both front ends.
//! - `grpc`, `http`: the front ends; the only modules that know tonic / warp.
//! - `outbox`: every SQL statement.
//! - `relay`: outbox -> broker: one active relay per database, snapshot
//!   batches published in parts with pipelined confirms.
//! - `housekeeping`: pending gauge and retention purge.
//! - `metrics`, `telemetry`: Prometheus registry, log and trace set-up.
//! - `trace`: the Add's request span and the relay's publish span (on only
//!   while tracing is).

pub mod add;
pub mod config;
pub mod grpc;
pub mod housekeeping;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod relay;
pub mod telemetry;
pub mod trace;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::Config;

use crate::{add::Adder, metrics::Metrics, outbox::Outbox, relay::Relay};

/// The sockets the adder serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    /// Binds the addresses in `config`.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind(config.grpc_addr)
                .await
                .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?,
            http: TcpListener::bind(config.http_addr)
                .await
                .with_context(|| format!("binding HTTP on {}", config.http_addr))?,
        })
    }
}

/// Runs the adder until `shutdown` resolves, then stops accepting, finishes
/// in-flight Adds and the relay's batch, within the configured grace period.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    tokio::pin!(shutdown);
    let metrics = Arc::new(Metrics::new());
    let wake = Arc::new(Notify::new());
    // The servers answer from the start: health at once, Adds UNAVAILABLE
    // until the outbox is migrated and its identity checked.
    let opened = Arc::new(tokio::sync::OnceCell::new());
    let adder = Adder {
        outbox: opened.clone(),
        relay_wake: wake.clone(),
        broker: metrics.broker_up.clone(),
        tracing: config.otel.enabled(),
    };
    let tracker = TaskTracker::new();
    tracker.spawn(http::serve(
        listeners.http,
        adder.clone(),
        metrics.clone(),
        config.limits.clone(),
        token.clone(),
    ));
    let grpc = tracker.spawn(grpc::serve(
        listeners.grpc,
        adder,
        metrics.clone(),
        config.limits.clone(),
        token.clone(),
    ));
    let outbox = tokio::select! {
        outbox = open_outbox(&config) => outbox,
        () = &mut shutdown => Ok(None),
    };
    let outbox = match outbox {
        Ok(Some(outbox)) => outbox,
        stopped => {
            token.cancel();
            tracker.close();
            let _ = tokio::time::timeout(config.shutdown_grace(), tracker.wait()).await;
            return stopped.map(|_| ());
        }
    };
    let _ = opened.set(outbox.clone());
    let source = outbox.source().await.unwrap_or_default();
    tracing::info!(%source, "outbox ready");
    let relay = Relay {
        outbox: outbox.clone(),
        amqp_url: config.amqp_url.clone(),
        queue: config.queue.clone(),
        batch: config.relay_batch.max(1),
        pack: config.relay_pack.max(1) as usize,
        poll: config.relay_poll(),
        linger: config.relay_linger(),
        confirm_timeout: config.relay_confirm_timeout(),
        wake,
        metrics: metrics.clone(),
        tracing: config.otel.enabled(),
    };
    tracker.spawn(relay.run(token.clone()));
    tracker.spawn(housekeeping::run(
        outbox,
        config.retention(),
        metrics.clone(),
        token.clone(),
    ));
    tracing::info!(grpc = %config.grpc_addr, http = %config.http_addr, "adder serving");
    tokio::pin!(grpc);
    let served = tokio::select! {
        () = &mut shutdown => None,
        result = &mut grpc => Some(result),
    };
    tracing::info!("adder shutting down");
    token.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period elapsed with work still running");
    }
    match served {
        Some(result) => result
            .context("gRPC server task")?
            .context("gRPC server failed"),
        None => Ok(()),
    }
}

/// Connects and migrates, retrying with backoff while PostgreSQL is down; a
/// database that must not be published from (a logical copy) is an error.
async fn open_outbox(config: &Config) -> anyhow::Result<Option<Outbox>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let opened = match Outbox::connect_lazy(&config.database_url, config.db_pool) {
            Ok(pool) => Outbox::open(pool, config.commit_writers()).await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(outbox) => return Ok(Some(outbox)),
            Err(e) if e.is_fatal() => return Err(e).context("opening the outbox"),
            Err(e) => tracing::warn!(error = %e, "outbox database not ready, retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
