//! The totaler service: consumes Tally's queue and keeps the exact running
//! total in a file-locked `sum.txt`, acking each batch only after the new
//! total is durable; serves `GET /sum` from memory.
//!
//! # Layout
//! - `config`: flags and environment ([`Config`]).
//! - `ledger`: `sum.txt`, its format, lock, reads and durable updates.
//! - `consumer`: delivery -> ledger -> ack.
//! - `status`: the in-memory total and health the HTTP server reports, and
//!   the refresher that keeps the total in step with the file.
//! - `http`: the warp server; the only module that knows warp.
//! - `verify`: the read-only audit of the ledger against the outbox.
//! - `dlq`: `totaler dlq list|replay`, the dead letters in `<queue>.dead`.
//! - `metrics`, `telemetry`: Prometheus registry, log and trace set-up.

pub mod config;
mod consumer;
pub mod dlq;
mod http;
mod ledger;
mod metrics;
mod status;
pub mod telemetry;
pub mod verify;

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::Config;
/// Resolves on SIGINT or SIGTERM: the trigger `main` passes to [`run`].
pub use listen::shutdown::signal as shutdown_signal;

use crate::{
    consumer::Consumer,
    ledger::{Create, Ledger},
    metrics::Metrics,
    status::Status,
};

/// Runs the totaler until `shutdown` resolves (then finishes and acks the
/// batch in hand, within the grace period) or the ledger turns out corrupt
/// (an error).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (ledger, status, metrics) = open_ledger(&config).await?;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(http::serve(
        listener,
        status.clone(),
        metrics.clone(),
        config.limits.clone(),
        token.clone(),
    ));
    tracker.spawn(status::refresh(
        ledger.clone(),
        status.clone(),
        metrics.sum.clone(),
        config.refresh(),
        token.clone(),
    ));
    let consumer = Consumer {
        amqp_url: config.amqp_url.clone(),
        queue: config.queue.clone(),
        prefetch: config.prefetch,
        batch_size: config.batch_size.max(1),
        linger: config.batch_linger(),
        ledger,
        status,
        metrics,
        crash_after_apply: config.crash_after_apply,
        publishers: consumer::Publishers::from_list(&config.publishers),
        tracing: config.otel.enabled(),
    };
    let consuming = tracker.spawn(consumer.run(token.clone()));
    tracing::info!(http = %config.http_addr, queue = %config.queue, "totaler serving");
    tokio::pin!(consuming, shutdown);
    let stopped = tokio::select! {
        () = &mut shutdown => None,
        result = &mut consuming => Some(result),
    };
    tracing::info!("totaler shutting down");
    token.cancel();
    let drained = listen::shutdown::drain(tracker, config.shutdown_grace()).await;
    let result = match stopped {
        Some(result) => result,
        None if drained || consuming.is_finished() => consuming.await,
        None => return Ok(()),
    };
    result
        .context("consumer task")?
        .context("consuming stopped")
}

/// Opens `sum.txt` (creating it as `config` allows) and the status and
/// metrics that start from its total.
async fn open_ledger(config: &Config) -> anyhow::Result<(Arc<Ledger>, Arc<Status>, Arc<Metrics>)> {
    let path = config.sum_file.clone();
    let create = if config.create_ledger {
        Create::Always
    } else {
        Create::IfNew
    };
    let (ledger, state) = tokio::task::spawn_blocking(move || Ledger::open(&path, create))
        .await
        .context("opening the ledger")??;
    tracing::info!(file = %config.sum_file.display(), total = %state.total, "ledger open");
    let metrics = Arc::new(Metrics::new());
    metrics.sum.set(state.total as f64);
    Ok((
        Arc::new(ledger),
        Arc::new(Status::new(state.total)),
        metrics,
    ))
}
