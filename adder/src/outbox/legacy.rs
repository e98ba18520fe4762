//! Legacy rows: rows recorded before snapshot batches (their `xid` is NULL),
//! published row by row as before: the active relay publishes them first,
//! in messages without a batch (deduplicated by the ledger row by row, as
//! they always were), and marks each row's `published_at` after the
//! broker's confirm. New rows never enter this path. Retention deletes
//! them once published, keeping their count and sum (`purged_legacy_*`).

use std::{ops::Deref, time::Duration};

use sqlx::{PgConnection, PgPool};

use super::{Active, Error, Row};

/// Legacy rows read for publishing, and the right to mark them published:
/// only [`Active::legacy`] makes one and [`Active::mark_legacy`] consumes it,
/// so only rows read to be published are marked, once. Dropped unmarked, the
/// rows stay unpublished and are published again.
#[derive(Debug)]
pub struct LegacyClaim {
    rows: Vec<Row>,
}

impl Active {
    /// Up to `limit` unpublished legacy rows, oldest first.
    pub async fn legacy(&mut self, limit: i64) -> Result<LegacyClaim, Error> {
        let rows = legacy_rows(self.connection(), limit).await?;
        Ok(LegacyClaim { rows })
    }

    /// Marks the claimed rows published, once the broker confirmed them.
    pub async fn mark_legacy(&mut self, claim: LegacyClaim) -> Result<(), Error> {
        let ids: Vec<i64> = claim.rows.iter().map(|row| row.id).collect();
        sqlx::query(
            "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1) AND xid IS NULL",
        )
        .bind(&ids)
        .execute(self.connection())
        .await?;
        Ok(())
    }
}

impl Deref for LegacyClaim {
    type Target = [Row];

    fn deref(&self) -> &[Row] {
        &self.rows
    }
}

async fn legacy_rows(connection: &mut PgConnection, limit: i64) -> Result<Vec<Row>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, sum, (extract(epoch FROM created_at) * 1000000)::bigint AS created_us \
         FROM outbox WHERE published_at IS NULL AND xid IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(connection)
    .await?)
}

/// Deletes up to `limit` legacy rows published before `retention` ago, and
/// adds their count and sum to the purged legacy totals of the oldest
/// source (the one `totaler verify` audits legacy rows under), in the same
/// statement: a row deleted by two purges at once is deleted, and counted,
/// by one of them.
pub(super) async fn purge(pool: &PgPool, retention: Duration, limit: i64) -> Result<u64, Error> {
    let deleted: Option<i64> = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE xid IS NULL \
           AND published_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2) RETURNING sum) \
         UPDATE outbox_sources SET purged_legacy_rows = purged_legacy_rows + (SELECT count(*) FROM gone), \
           purged_legacy_total = purged_legacy_total + (SELECT coalesce(sum(sum), 0) FROM gone) \
         WHERE source = (SELECT source FROM outbox_sources ORDER BY started_at LIMIT 1) \
           AND EXISTS (SELECT 1 FROM gone) \
         RETURNING (SELECT count(*) FROM gone)",
    )
    .bind(retention.as_secs_f64())
    .bind(limit)
    .fetch_optional(pool)
    .await?;
    Ok(deleted.map_or(0, |n| n.unsigned_abs()))
}
