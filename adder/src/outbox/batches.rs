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
//! lost one only means the batch is published again, identically). Both are
//! one round trip each, the functions `tally_cut` and `tally_confirm` of
//! the migrations `relay_cut`, `lean_cut` and `linear_cut`; `in_pair!` is
//! the same selection in Rust. A cut costs its batch, not its pair: the
//! pair's id span is learnt once when it opens, then each batch walks the
//! primary key from where the last one stopped (`linear_cut`).

use std::{ops::Deref, time::Duration};

// `in_pair!()`: the rows of the pair `$1` (lo), `$2` (hi), what the cut, the
// read and the purge of a batch select from (`totaler verify` too, so it
// lives in the contract crate).
use proto::outbox_in_pair as in_pair;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::{Bounds, Error, Outbox, identity, primary};

/// The relay lock's key: one active relay per outbox database.
const RELAY_LOCK: i64 = 0x7461_6c6c_7972_6c79; // "tallyrly"

/// The purge lock's key (held for a purge's transaction): one adder's
/// housekeeping purges a database at a time, so batches go in order.
const PURGE_LOCK: i64 = 0x7461_6c6c_7970_7267; // "tallyprg"

/// The connection holding the relay lock; dropping it releases the lock.
/// Each of its waits is bounded (`Bounds::answer`): one the database does
/// not answer in time is an error, and the relay then drops the connection
/// (the server, probing with keepalives, soon ends the session and with it
/// the lock).
pub struct Active {
    connection: PgConnection,
    bounds: Bounds,
}

/// A batch read for publishing, and the right to mark it confirmed: only
/// [`Active::cut`] and [`Active::claim`] make one, and [`Active::confirm`] consumes it, so a
/// batch is confirmed only through the read that published it, and at most
/// once. Dropped unconfirmed (a nack, a lost channel), the batch simply stays
/// unconfirmed and the next active period publishes it again.
#[derive(Debug)]
pub struct Claim {
    batch: Batch,
}

/// A standby relay's connection, kept between its tries of the relay lock
/// so that it does not open one per try.
#[derive(Default)]
pub struct Standby {
    connection: Option<PgConnection>,
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

/// A batch to publish: its claim and its rows, in id order.
#[derive(Debug)]
pub struct Cut {
    pub claim: Claim,
    pub rows: Vec<Row>,
}

/// What `tally_cut` returns: a batch with its rows as arrays, or NULLs.
#[derive(sqlx::FromRow)]
struct CutRow {
    b_source: Option<Uuid>,
    b_id: Option<i64>,
    b_lo: Option<String>,
    b_hi: Option<String>,
    b_rows: Option<i64>,
    b_first_id: Option<i64>,
    b_last_id: Option<i64>,
    r_ids: Option<Vec<i64>>,
    r_sums: Option<Vec<i64>>,
    r_created_us: Option<Vec<i64>>,
}

/// A row of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub sum: i64,
    pub created_us: i64,
}

impl Active {
    /// Takes the relay lock of `outbox` if no other relay holds it, on a
    /// connection of its own (kept in `standby` between tries), and settles
    /// the database's identity. `None`: another relay is active.
    pub async fn try_acquire(
        outbox: &Outbox,
        standby: &mut Standby,
    ) -> Result<Option<Self>, Error> {
        let pool = &outbox.pool;
        let mut connection = match standby.connection.take() {
            Some(connection) => connection,
            None => primary::connect_within(&pool.connect_options()).await?,
        };
        let locked: bool = outbox
            .bounds
            .within(
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(RELAY_LOCK)
                    .fetch_one(&mut connection),
            )
            .await??;
        if !locked {
            standby.connection = Some(connection);
            return Ok(None);
        }
        let active = Self {
            connection,
            bounds: outbox.bounds,
        };
        outbox.bounds.within(identity::check(pool, false)).await??;
        Ok(Some(active))
    }

    /// Cuts the next batch of at most `max_rows` rows, each part `pack` rows,
    /// and commits it (synchronously: one round trip, `tally_cut`); `None`
    /// when no new row is visible. The cut carries its rows, so its first
    /// publish needs no second read.
    pub async fn cut(&mut self, max_rows: i64, pack: i32) -> Result<Option<Cut>, Error> {
        let cut: CutRow = self
            .bounds
            .within(
                sqlx::query_as(
                    "SELECT b_source, b_id, b_lo, b_hi, b_rows, b_first_id, b_last_id, r_ids, r_sums, r_created_us \
                     FROM tally_cut($1, $2)",
                )
                .bind(max_rows)
                .bind(pack)
                .fetch_one(&mut self.connection),
            )
            .await??;
        Ok(cut.into_cut(pack))
    }

    /// The rows of `batch`, in id order: the same rows every time.
    pub async fn rows(&mut self, batch: &Batch) -> Result<Vec<Row>, Error> {
        self.bounds
            .within(read_rows(&mut self.connection, batch))
            .await?
    }

    /// The rows of `batch` to publish again, and its claim, which alone can
    /// mark it confirmed once the broker acked them.
    pub async fn claim(&mut self, batch: Batch) -> Result<Cut, Error> {
        let rows = self.rows(&batch).await?;
        Ok(Cut {
            claim: Claim { batch },
            rows,
        })
    }

    /// Every batch cut but not confirmed, oldest first.
    pub async fn unconfirmed(&mut self) -> Result<Vec<Batch>, Error> {
        Ok(self
            .bounds
            .within(
                sqlx::query_as(
                    "SELECT source, id, lo::text AS lo, hi::text AS hi, pack, rows, first_id, last_id, traceparent \
                     FROM outbox_batch WHERE confirmed_at IS NULL ORDER BY created_at, source, id",
                )
                .fetch_all(&mut self.connection),
            )
            .await??)
    }

    /// Records that the broker confirmed every part of the claimed batch.
    /// One round trip, committed asynchronously (`tally_confirm`).
    pub async fn confirm(&mut self, claim: Claim) -> Result<(), Error> {
        self.bounds
            .within(
                sqlx::query("SELECT tally_confirm($1, $2)")
                    .bind(claim.batch.source)
                    .bind(claim.batch.id)
                    .execute(&mut self.connection),
            )
            .await??;
        Ok(())
    }

    /// The trace contexts of up to `limit` rows of `batch` (the first, in id
    /// order; rows recorded with tracing off have none), and how many of
    /// its rows have one in all. Only the relay's tracing asks.
    pub async fn traceparents(
        &mut self,
        batch: &Batch,
        limit: i64,
    ) -> Result<(Vec<String>, usize), Error> {
        let query = sqlx::query_as(concat!(
            "SELECT traceparent, count(*) OVER () FROM outbox WHERE id BETWEEN $3 AND $4 AND ",
            in_pair!(),
            " AND traceparent IS NOT NULL ORDER BY id LIMIT $5"
        ))
        .bind(&batch.lo)
        .bind(&batch.hi)
        .bind(batch.first_id)
        .bind(batch.last_id)
        .bind(limit);
        let rows: Vec<(String, i64)> = self
            .bounds
            .within(query.fetch_all(&mut self.connection))
            .await??;
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
        let connection = &mut self.connection;
        let commit = async move {
            let mut tx = connection.begin().await?;
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            query.execute(&mut *tx).await?;
            tx.commit().await
        };
        Ok(self.bounds.within(commit).await??)
    }

    pub(super) fn connection(&mut self) -> &mut PgConnection {
        &mut self.connection
    }

    /// Releases the lock (dropping does too, when the connection closes).
    pub async fn release(self) {
        let _ = self.connection.close().await;
    }
}

/// The rows of `batch` in publishing order (`proto::outbox::BATCH_ROWS`),
/// what the relay and `adder republish` both read; an error if they are not
/// all there (deleted, or purged meanwhile).
pub(super) async fn read_rows(
    connection: &mut PgConnection,
    batch: &Batch,
) -> Result<Vec<Row>, Error> {
    let rows: Vec<Row> = sqlx::query_as(proto::outbox::BATCH_ROWS)
        .bind(&batch.lo)
        .bind(&batch.hi)
        .bind(batch.first_id)
        .bind(batch.last_id)
        .fetch_all(connection)
        .await?;
    if rows.len() as i64 != batch.rows {
        return Err(Error::Copied(format!(
            "batch {} of source {} had {} rows when cut and has {} now: outbox rows were deleted or changed (purged meanwhile?)",
            batch.id,
            batch.source,
            batch.rows,
            rows.len()
        )));
    }
    Ok(rows)
}

impl CutRow {
    fn into_cut(self, pack: i32) -> Option<Cut> {
        let batch = Batch {
            source: self.b_source?,
            id: self.b_id?,
            lo: self.b_lo?,
            hi: self.b_hi?,
            pack,
            rows: self.b_rows?,
            first_id: self.b_first_id?,
            last_id: self.b_last_id?,
            traceparent: None,
        };
        let (ids, sums, created) = (self.r_ids?, self.r_sums?, self.r_created_us?);
        let rows = ids
            .into_iter()
            .zip(sums)
            .zip(created)
            .map(|((id, sum), created_us)| Row {
                id,
                sum,
                created_us,
            })
            .collect();
        Some(Cut {
            claim: Claim { batch },
            rows,
        })
    }
}

impl Deref for Claim {
    type Target = Batch;

    fn deref(&self) -> &Batch {
        &self.batch
    }
}

/// Deletes the oldest confirmed batches created before `retention` ago,
/// whole and in order, as many as fit in `limit` rows (at least one): their
/// rows, then their summaries (added to the purged totals of their source).
/// One purge at a time per database (the purge lock; another adder's
/// housekeeping meanwhile purges nothing), and `purged_through` only ever
/// rises: purges side by side (`SKIP LOCKED`) once let the one holding the
/// older batches commit last and move it back.
pub(super) async fn purge(pool: &PgPool, retention: Duration, limit: i64) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    let alone: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PURGE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !alone {
        return Ok(0);
    }
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
             UPDATE outbox_sources s SET purged_through = greatest(purged_through, $2), purged_rows = purged_rows + gone.rows, \
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
