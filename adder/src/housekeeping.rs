//! Periodic upkeep of one outbox database: refreshes its pending gauge
//! (and the adder's `adder_outbox_pending`) every second, which is also the
//! probe that marks the database up or down for Adds without a request id,
//! re-checks every 5 s that the database's list of databases agrees with
//! the adder's (`membership`), and purges rows of confirmed batches past
//! retention, whole batches at a time in rounds of about `PURGE_BATCH`
//! rows, every minute: off the hot path, in its own transactions. Work waiting on a primary the adder has
//! left (a hung one) is given up at the move.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{membership, metrics::Metrics, outbox::Outbox, routing::Outboxes};

const GAUGE_EVERY: Duration = Duration::from_secs(1);
const PURGE_EVERY: u32 = 60;
/// Ticks between re-checks of the database's list of databases.
const MEMBERS_EVERY: u32 = 5;
const PURGE_BATCH: i64 = 10_000;

/// Runs until `shutdown`, for the database at `index` of `outboxes`, which
/// is open.
pub async fn run(
    outboxes: Arc<Outboxes>,
    index: usize,
    retention: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slot = &outboxes.slots()[index];
    let Some(outbox) = slot.outbox.get() else {
        return;
    };
    let mut ticks = 0u32;
    let mut interval = tokio::time::interval(GAUGE_EVERY);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let pending = tokio::select! {
            pending = outbox.pending() => Some(pending),
            // Moved to a new primary: the next tick asks that one.
            () = outbox.moved() => None,
        };
        match pending {
            Some(Ok(pending)) => {
                metrics.set_pending(index, pending);
                slot.set_up(true);
            }
            Some(Err(_)) => slot.set_up(false),
            None => {}
        }
        ticks += 1;
        if ticks.is_multiple_of(MEMBERS_EVERY) {
            tokio::select! {
                () = membership::recheck(&outboxes, index) => {}
                () = outbox.moved() => {}
            }
        }
        if ticks.is_multiple_of(PURGE_EVERY) {
            purge(outbox, retention, &shutdown).await;
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
