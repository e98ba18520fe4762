//! The adder service: gRPC and HTTP `Add(a, b)` that commit every sum to a
//! PostgreSQL outbox before answering, and a relay that publishes the outbox
//! to RabbitMQ with publisher confirms.
//!
//! # Layout
//! - `config`: flags and environment ([`Config`]).
//! - `add`: the Add operation shared by both front ends.
//! - `grpc`, `http`: the front ends; the only modules that know tonic / warp.
//! - `outbox`: every SQL statement, of one outbox database.
//! - `routing`: the K outbox databases and which one an Add goes to
//!   (a request id's hash, else round robin over those that answer).
//! - `membership`: whether each database's recorded list of databases
//!   agrees with this adder's (it decides which take request ids).
//! - `relay`: outbox -> broker: one active relay per database, snapshot
//!   batches published in parts with pipelined confirms.
//! - `status`: what `/readyz` reports of the relays (their broker channels).
//! - `housekeeping`: per database: pending gauge, up/down probe, the list's
//!   re-check, retention purge.
//! - `republish`: `adder republish`, an operator's command: cut batches
//!   published again, as the relay did.
//! - `metrics`, `telemetry`: Prometheus registry, log and trace set-up.
//! - `trace`: the Add's request span and the relay's publish span (on only
//!   while tracing is).

mod add;
pub mod config;
mod grpc;
mod housekeeping;
mod http;
mod membership;
mod metrics;
pub mod outbox;
mod relay;
pub mod republish;
mod routing;
mod status;
pub mod telemetry;
mod trace;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::Config;
/// Resolves on SIGINT or SIGTERM: the trigger `main` passes to [`run`].
pub use listen::shutdown::signal as shutdown_signal;
pub use routing::home;

use crate::{
    add::Adder,
    metrics::Metrics,
    outbox::{Outbox, Place},
    relay::Relay,
    routing::Outboxes,
    status::Status,
};

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
/// in-flight Adds and the relays' batches, within the configured grace period.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let urls = config.database_urls();
    anyhow::ensure!(!urls.is_empty(), "DATABASE_URL names no outbox database");
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let metrics = Arc::new(Metrics::with_databases(urls.len()));
    // The servers answer from the start: health at once, Adds to a database
    // UNAVAILABLE until it is migrated and its identity and place checked.
    let adder = Adder {
        outboxes: Arc::new(Outboxes::new(metrics.databases.clone())),
        status: Arc::new(Status::new(metrics.broker_up.clone(), urls.len())),
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
        let mut opening = tokio::task::JoinSet::new();
        for (index, url) in urls.into_iter().enumerate() {
            let (config, place) = (config.clone(), adder.outboxes.slots()[index].place);
            opening.spawn(async move { (index, open_outbox(&config, &url, place).await) });
        }
        loop {
            tokio::select! {
                Some(opened) = opening.join_next() => {
                    let (index, opened) = opened.context("opening an outbox database")?;
                    let (outbox, member) = opened?;
                    let _ = adder.outboxes.slots()[index].member.set(member);
                    agree_on_the_list(&adder, index, &outbox, config.outbox_reshard).await?;
                    start_database(&config, index, outbox, &adder, &metrics, &tracker, &token).await;
                    if opening.is_empty() {
                        tracing::info!(grpc = %config.grpc_addr, http = %config.http_addr, "adder serving");
                    }
                }
                () = &mut shutdown => return Ok(()),
                result = &mut grpc => return result
                    .context("gRPC server task")?
                    .context("gRPC server failed"),
            }
        }
    }
    .await;
    tracing::info!("adder shutting down");
    token.cancel();
    listen::shutdown::drain(tracker, config.shutdown_grace()).await;
    served
}

/// Opens Adds to database `index` and starts the tasks that work on it: its
/// relay and its housekeeping.
async fn start_database(
    config: &Config,
    index: usize,
    outbox: Outbox,
    adder: &Adder,
    metrics: &Arc<Metrics>,
    tracker: &TaskTracker,
    token: &CancellationToken,
) {
    let slot = &adder.outboxes.slots()[index];
    let _ = slot.outbox.set(outbox.clone());
    slot.set_up(true);
    let source = outbox.source().await.unwrap_or_default();
    tracing::info!(%source, database = %slot.place, "outbox ready");
    let relay = Relay {
        outbox,
        database: index,
        amqp_url: config.amqp_url.clone(),
        queue: config.queue.clone(),
        exchange: config.exchange.clone(),
        batch: config.relay_batch.max(1),
        pack: config.relay_pack.max(1) as usize,
        poll: config.relay_poll(),
        linger: config.relay_linger(),
        pipeline_gap: config.relay_pipeline_gap(),
        confirm_timeout: config.relay_confirm_timeout(),
        wake: slot.wake.clone(),
        status: adder.status.clone(),
        metrics: metrics.clone(),
        tracing: config.otel.enabled(),
    };
    tracker.spawn(relay.run(token.clone()));
    tracker.spawn(housekeeping::run(
        adder.outboxes.clone(),
        index,
        config.retention(),
        metrics.clone(),
        token.clone(),
    ));
}

/// Agrees on the list of databases with those open so far as database
/// `index` opens (`membership::settle`); a disagreement stops the adder, a
/// database that does not answer leaves it to the periodic re-check.
async fn agree_on_the_list(
    adder: &Adder,
    index: usize,
    opened: &Outbox,
    reshard: bool,
) -> anyhow::Result<()> {
    match membership::settle(&adder.outboxes, index, opened, reshard).await {
        Err(e) if e.is_fatal() => Err(e).context("checking the list of outbox databases"),
        Err(e) => {
            tracing::warn!(error = %e, "checking the list of outbox databases failed, the re-check retries");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Connects to the database at `place` and migrates it, retrying with
/// backoff while PostgreSQL is down; a database that must not be published
/// from (a logical copy) or that another list placed elsewhere is an error.
/// Returns it with its member id.
async fn open_outbox(
    config: &Config,
    url: &str,
    place: Place,
) -> anyhow::Result<(Outbox, uuid::Uuid)> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let opened = async {
            let outbox = Outbox::open_with(url, config.outbox_settings()).await?;
            let member = outbox.settle_place(place, config.outbox_reshard).await?;
            Ok::<_, outbox::Error>((outbox, member))
        };
        match opened.await {
            Ok(opened) => return Ok(opened),
            Err(e) if e.is_fatal() => {
                return Err(e).with_context(|| format!("opening outbox {place}"));
            }
            Err(e) => {
                tracing::warn!(error = %e, database = %place, "outbox database not ready, retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
