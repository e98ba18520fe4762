//! The totaler service: consumes Tally's queue and keeps the exact running
//! total in a file-locked `sum.txt`, acking each batch only after the new
//! total is durable; serves `GET /sum` from memory.
//!
//! # Layout
//! - `config`: flags and environment ([`Config`]).
//! - `ledger`: `sum.txt`, its format, lock, reads and durable updates.
//! - `consumer`: delivery -> ledger -> ack, and the refresher of the total.
//! - `status`: the in-memory total and health the HTTP server reports.
//! - `http`: the warp server; the only module that knows warp.
//! - `verify`: the read-only audit of the ledger against the outbox.
//! - `metrics`, `telemetry`: Prometheus registry, log and trace set-up.

pub mod config;
pub mod consumer;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod status;
pub mod telemetry;
pub mod verify;

use std::{future::Future, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::Config;

use crate::{
    consumer::Consumer,
    ledger::{Create, Ledger},
    metrics::Metrics,
    status::Status,
};

/// Runs the totaler until `shutdown` resolves (then finishes and acks the
/// batch in hand) or the ledger turns out corrupt (an error).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
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
    let ledger = Arc::new(ledger);
    let status = Arc::new(Status::new(state.total));
    let metrics = Arc::new(Metrics::new());
    metrics.sum.set(state.total as f64);

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(http::serve(
        listener,
        status.clone(),
        metrics.clone(),
        config.limits.clone(),
        token.clone(),
    ));
    tracker.spawn(consumer::refresh(
        ledger.clone(),
        status.clone(),
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
        tracing: config.otel.enabled(),
    };
    let consuming = tracker.spawn(consumer.run(token.clone()));
    tracing::info!(http = %config.http_addr, queue = %config.queue, "totaler serving");
    tokio::pin!(consuming, shutdown);
    let result = tokio::select! {
        () = &mut shutdown => None,
        result = &mut consuming => Some(result),
    };
    tracing::info!("totaler shutting down");
    token.cancel();
    tracker.close();
    let result = match result {
        Some(result) => result,
        None => match tokio::time::timeout(config.shutdown_grace(), &mut consuming).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("shutdown grace period elapsed with a batch still in hand");
                Ok(Ok(()))
            }
        },
    };
    let _ = tokio::time::timeout(config.shutdown_grace(), tracker.wait()).await;
    result
        .context("consumer task")?
        .context("consuming stopped")
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
