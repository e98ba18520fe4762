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
//! - `status`: what `/readyz` reports of the relay (its broker channel).
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
pub mod status;
pub mod telemetry;
pub mod trace;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::Config;
/// Resolves on SIGINT or SIGTERM: the trigger `main` passes to [`run`].
pub use listen::shutdown::signal as shutdown_signal;

use crate::{add::Adder, metrics::Metrics, outbox::Outbox, relay::Relay, status::Status};

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
    let tracker = TaskTracker::new();
    let metrics = Arc::new(Metrics::new());
    // The servers answer from the start: health at once, Adds UNAVAILABLE
    // until the outbox is migrated and its identity checked.
    let adder = Adder {
        outbox: Arc::new(tokio::sync::OnceCell::new()),
        relay_wake: Arc::new(Notify::new()),
        status: Arc::new(Status::new(metrics.broker_up.clone())),
        tracing: config.otel.enabled(),
    };
    tracker.spawn(http::serve(
        listeners.http,
        adder.clone(),
        metrics.clone(),
        config.limits.clone(),
        token.clone(),
    ));
    let grpc = tracker.spawn(grpc::serve(
        listeners.grpc,
        adder.clone(),
        metrics.clone(),
        config.limits.clone(),
        token.clone(),
    ));
    tokio::pin!(shutdown, grpc);
    let served = async {
        let outbox = tokio::select! {
            outbox = open_outbox(&config) => outbox?,
            () = &mut shutdown => return Ok(()),
        };
        start_relay(&config, outbox, &adder, &metrics, &tracker, &token).await;
        tracing::info!(grpc = %config.grpc_addr, http = %config.http_addr, "adder serving");
        tokio::select! {
            () = &mut shutdown => Ok(()),
            result = &mut grpc => result
                .context("gRPC server task")?
                .context("gRPC server failed"),
        }
    }
    .await;
    tracing::info!("adder shutting down");
    token.cancel();
    listen::shutdown::drain(tracker, config.shutdown_grace()).await;
    served
}

/// Opens Adds to `outbox` and starts the tasks that work on it: the relay
/// and the housekeeping.
async fn start_relay(
    config: &Config,
    outbox: Outbox,
    adder: &Adder,
    metrics: &Arc<Metrics>,
    tracker: &TaskTracker,
    token: &CancellationToken,
) {
    let _ = adder.outbox.set(outbox.clone());
    let source = outbox.source().await.unwrap_or_default();
    tracing::info!(%source, "outbox ready");
    let relay = Relay {
        outbox: outbox.clone(),
        amqp_url: config.amqp_url.clone(),
        queue: config.queue.clone(),
        exchange: config.exchange.clone(),
        batch: config.relay_batch.max(1),
        pack: config.relay_pack.max(1) as usize,
        poll: config.relay_poll(),
        linger: config.relay_linger(),
        confirm_timeout: config.relay_confirm_timeout(),
        wake: adder.relay_wake.clone(),
        status: adder.status.clone(),
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
}

/// Connects and migrates, retrying with backoff while PostgreSQL is down; a
/// database that must not be published from (a logical copy) is an error.
async fn open_outbox(config: &Config) -> anyhow::Result<Outbox> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match Outbox::open(
            &config.database_url,
            config.db_pool,
            config.commit_writers(),
        )
        .await
        {
            Ok(outbox) => return Ok(outbox),
            Err(e) if e.is_fatal() => return Err(e).context("opening the outbox"),
            Err(e) => tracing::warn!(error = %e, "outbox database not ready, retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
