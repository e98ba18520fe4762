//! Periodic outbox upkeep: refreshes `adder_outbox_pending` every second and
//! purges rows of confirmed batches past retention, whole batches at a
//! time in rounds of about `PURGE_BATCH` rows, every minute: off the hot
//! path, in its own transactions. Work waiting on a primary the adder has
//! left (a hung one) is given up at the move.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, outbox::Outbox};

const GAUGE_EVERY: Duration = Duration::from_secs(1);
const PURGE_EVERY: u32 = 60;
const PURGE_BATCH: i64 = 10_000;

/// Runs until `shutdown`.
pub async fn run(
    outbox: Outbox,
    retention: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticks = 0u32;
    let mut interval = tokio::time::interval(GAUGE_EVERY);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let pending = tokio::select! {
            pending = outbox.pending() => pending.ok(),
            () = outbox.moved() => None,
        };
        if let Some(pending) = pending {
            metrics.outbox_pending.set(pending);
        }
        ticks += 1;
        if ticks.is_multiple_of(PURGE_EVERY) {
            purge(&outbox, retention, &shutdown).await;
        }
    }
}

async fn purge(outbox: &Outbox, retention: Duration, shutdown: &CancellationToken) {
    let mut total = 0;
    while !shutdown.is_cancelled() {
        let purged = tokio::select! {
            purged = outbox.purge(retention, PURGE_BATCH) => purged,
            () = outbox.moved() => Err(crate::outbox::Error::Moved),
        };
        match purged {
            Ok(deleted) => {
                total += deleted;
                if deleted == 0 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging the outbox failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(rows = total, "purged published outbox rows past retention");
    }
}
