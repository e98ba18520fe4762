//! Snapshot batches, the way PgQ cuts them: no row is touched again once it
//! is inserted. Each row records the transaction that inserted it (`xid`);
//! a batch is the rows whose transactions became visible between two
//! snapshots (`lo`, `hi`), with ids `first_id..=last_id`, in id order. Its
//! boundaries are written once, with a dense batch number per source, so a
//! batch read again is the same rows in the same order, and the rows of a
//! transaction still open at `hi` fall into a later batch by construction:
//! no slow writer is overtaken and forgotten.
//!
//! Only the holder of the relay lock (a session advisory lock on its own
//! connection, [`Active`]) cuts and confirms; every other relay stands by.
//! A cut commits synchronously (a promoted standby must know every batch
//! that may have been published); a confirmation commits asynchronously (a
//! lost one only means the batch is published again, identically).

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::{Error, identity};

/// The relay lock's key: one active relay per outbox database.
const RELAY_LOCK: i64 = 0x7461_6c6c_7972_6c79; // "tallyrly"

/// The connection holding the relay lock; dropping it releases the lock.
pub struct Active {
    connection: PgConnection,
}

/// A cut batch, as the relay publishes it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Batch {
    pub source: Uuid,
    pub id: i64,
    pub lo: String,
    pub hi: String,
    /// Rows per part, fixed when it was cut.
    pub pack: i32,
    pub rows: i64,
    pub first_id: i64,
    pub last_id: i64,
    /// The context of the span that first published it (only while tracing
    /// is on), sent again with every republication.
    pub traceparent: Option<String>,
}

/// A row of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub sum: i64,
    pub created_us: i64,
}

/// The rows of the pair `$1` (lo), `$2` (hi): what both the cut and the read
/// of a batch select from.
macro_rules! in_pair {
    () => {
        "xid >= pg_snapshot_xmin($1::pg_snapshot) AND xid < pg_snapshot_xmax($2::pg_snapshot) \
         AND pg_visible_in_snapshot(xid, $2::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot)"
    };
}

impl Active {
    /// Takes the relay lock if no other relay holds it, on a connection of its
    /// own (kept in `standby` between tries, so a standby does not open a
    /// connection per try), and settles the database's identity. `None`:
    /// another relay is active.
    pub async fn try_acquire(
        pool: &PgPool,
        standby: &mut Option<PgConnection>,
    ) -> Result<Option<Self>, Error> {
        let mut connection = match standby.take() {
            Some(connection) => connection,
            None => PgConnection::connect_with(&pool.connect_options()).await?,
        };
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            *standby = Some(connection);
            return Ok(None);
        }
        let active = Self { connection };
        identity::check(pool).await?;
        Ok(Some(active))
    }

    /// Cuts the next batch of at most `max_rows` rows, each part `pack` rows,
    /// and commits it; `None` when no new row is visible.
    pub async fn cut(&mut self, max_rows: i64, pack: i32) -> Result<Option<Batch>, Error> {
        let mut tx = self.connection.begin().await?;
        let (source, batch, lo, hi, after): (Uuid, i64, String, String, i64) = sqlx::query_as(
            "SELECT source, batch, lo::text, hi::text, after_id FROM outbox_cursor FOR UPDATE",
        )
        .fetch_one(&mut *tx)
        .await?;
        // The rest of the current pair, else the pair (hi, now).
        let mut pair = (lo, hi, after);
        let mut found = span(&mut tx, &pair, max_rows).await?;
        if found.0 == 0 {
            let now: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
                .fetch_one(&mut *tx)
                .await?;
            pair = (pair.1, now, 0);
            found = span(&mut tx, &pair, max_rows).await?;
        }
        let (rows, first_id, last_id) = found;
        if rows == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let cut = Batch {
            source,
            id: batch + 1,
            lo: pair.0,
            hi: pair.1,
            pack,
            rows,
            first_id,
            last_id,
            traceparent: None,
        };
        sqlx::query(concat!(
            "INSERT INTO outbox_batch (source, id, lo, hi, pack, rows, total, first_id, last_id) \
             SELECT $3, $4, $1::pg_snapshot, $2::pg_snapshot, $5, count(*), sum(sum), $6, $7 FROM outbox \
             WHERE id BETWEEN $6 AND $7 AND ",
            in_pair!()
        ))
        .bind(&cut.lo)
        .bind(&cut.hi)
        .bind(cut.source)
        .bind(cut.id)
        .bind(cut.pack)
        .bind(cut.first_id)
        .bind(cut.last_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE outbox_cursor SET batch = $1, lo = $2::pg_snapshot, hi = $3::pg_snapshot, after_id = $4",
        )
        .bind(cut.id)
        .bind(&cut.lo)
        .bind(&cut.hi)
        .bind(cut.last_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(cut))
    }

    /// The rows of `batch`, in id order: the same rows every time.
    pub async fn rows(&mut self, batch: &Batch) -> Result<Vec<Row>, Error> {
        let rows: Vec<Row> = sqlx::query_as(concat!(
            "SELECT id, sum, (extract(epoch FROM created_at) * 1000000)::bigint AS created_us \
             FROM outbox WHERE id BETWEEN $3 AND $4 AND ",
            in_pair!(),
            " ORDER BY id"
        ))
        .bind(&batch.lo)
        .bind(&batch.hi)
        .bind(batch.first_id)
        .bind(batch.last_id)
        .fetch_all(&mut self.connection)
        .await?;
        if rows.len() as i64 != batch.rows {
            return Err(Error::Copied(format!(
                "batch {} of source {} had {} rows when cut and has {} now: outbox rows were deleted or changed",
                batch.id,
                batch.source,
                batch.rows,
                rows.len()
            )));
        }
        Ok(rows)
    }

    /// Every batch cut but not confirmed, oldest first.
    pub async fn unconfirmed(&mut self) -> Result<Vec<Batch>, Error> {
        Ok(sqlx::query_as(
            "SELECT source, id, lo::text AS lo, hi::text AS hi, pack, rows, first_id, last_id, traceparent \
             FROM outbox_batch WHERE confirmed_at IS NULL ORDER BY created_at, source, id",
        )
        .fetch_all(&mut self.connection)
        .await?)
    }

    /// Records that the broker confirmed every part of `batch`.
    pub async fn confirm(&mut self, batch: &Batch) -> Result<(), Error> {
        let query = sqlx::query(
            "UPDATE outbox_batch SET confirmed_at = clock_timestamp() WHERE source = $1 AND id = $2",
        )
        .bind(batch.source)
        .bind(batch.id);
        self.commit_async(query).await
    }

    /// The trace contexts of up to `limit` rows of `batch` (the first, in id
    /// order; rows recorded with tracing off have none), and how many of
    /// its rows have one in all. Only the relay's tracing asks.
    pub async fn traceparents(
        &mut self,
        batch: &Batch,
        limit: i64,
    ) -> Result<(Vec<String>, usize), Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
            "SELECT traceparent, count(*) OVER () FROM outbox WHERE id BETWEEN $3 AND $4 AND ",
            in_pair!(),
            " AND traceparent IS NOT NULL ORDER BY id LIMIT $5"
        ))
        .bind(&batch.lo)
        .bind(&batch.hi)
        .bind(batch.first_id)
        .bind(batch.last_id)
        .bind(limit)
        .fetch_all(&mut self.connection)
        .await?;
        let all = rows
            .first()
            .map_or(0, |(_, all)| usize::try_from(*all).unwrap_or(0));
        Ok((rows.into_iter().map(|(t, _)| t).collect(), all))
    }

    /// Stores the context `batch` is first published under, once; like a
    /// confirmation it commits asynchronously (a lost one only means a
    /// republication starts a new publish span).
    pub async fn set_traceparent(&mut self, batch: &Batch, traceparent: &str) -> Result<(), Error> {
        let query = sqlx::query(
            "UPDATE outbox_batch SET traceparent = $3 \
             WHERE source = $1 AND id = $2 AND traceparent IS NULL",
        )
        .bind(batch.source)
        .bind(batch.id)
        .bind(traceparent.to_owned());
        self.commit_async(query).await
    }

    /// Runs `query` in a transaction that commits asynchronously.
    async fn commit_async(
        &mut self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(), Error> {
        let mut tx = self.connection.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) fn connection(&mut self) -> &mut PgConnection {
        &mut self.connection
    }

    /// Releases the lock (dropping does too, when the connection closes).
    pub async fn release(self) {
        let _ = self.connection.close().await;
    }
}

/// How many rows of `pair` (lo, hi, after id) a batch takes, and their first
/// and last id.
async fn span(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    (lo, hi, after): &(String, String, i64),
    max_rows: i64,
) -> Result<(i64, i64, i64), Error> {
    // The pair's rows are found through the xid index (materialised, so the
    // planner cannot walk the primary key from `after` instead, which would
    // read every older row of the table), then ordered by id.
    Ok(sqlx::query_as(concat!(
        "WITH pair AS MATERIALIZED (SELECT id FROM outbox WHERE ",
        in_pair!(),
        ") SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM \
         (SELECT id FROM pair WHERE id > $3 ORDER BY id LIMIT $4) t"
    ))
    .bind(lo)
    .bind(hi)
    .bind(after)
    .bind(max_rows)
    .fetch_one(&mut **tx)
    .await?)
}

/// Deletes the oldest confirmed batches created before `retention` ago,
/// whole and in order, as many as fit in `limit` rows (at least one): their
/// rows, then their summaries (added to the purged totals of their source).
pub(super) async fn purge(pool: &PgPool, retention: Duration, limit: i64) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    let batches: Vec<Batch> = sqlx::query_as(
        "SELECT source, id, lo::text AS lo, hi::text AS hi, pack, rows, first_id, last_id, traceparent \
         FROM outbox_batch b \
         WHERE confirmed_at IS NOT NULL AND created_at < clock_timestamp() - make_interval(secs => $1) \
           AND NOT EXISTS (SELECT 1 FROM outbox_batch u WHERE u.source = b.source AND u.id < b.id \
                           AND u.confirmed_at IS NULL) \
         ORDER BY source, id LIMIT 1000 FOR UPDATE SKIP LOCKED",
    )
    .bind(retention.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    let mut deleted = 0;
    for batch in &batches {
        if deleted > 0 && deleted + batch.rows as u64 > limit as u64 {
            break;
        }
        let result = sqlx::query(concat!(
            "DELETE FROM outbox WHERE id BETWEEN $3 AND $4 AND ",
            in_pair!()
        ))
        .bind(&batch.lo)
        .bind(&batch.hi)
        .bind(batch.first_id)
        .bind(batch.last_id)
        .execute(&mut *tx)
        .await?;
        deleted += result.rows_affected();
        sqlx::query(
            "WITH gone AS (DELETE FROM outbox_batch WHERE source = $1 AND id = $2 RETURNING rows, total) \
             UPDATE outbox_sources s SET purged_through = $2, purged_rows = purged_rows + gone.rows, \
             purged_total = purged_total + gone.total FROM gone WHERE s.source = $1",
        )
        .bind(batch.source)
        .bind(batch.id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}
