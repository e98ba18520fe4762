//! The outbox drain phase: a backlog left in the outbox as a broker outage
//! leaves it, then relayed and counted, timed end to end (issue 21: a
//! backlog of 1,000,000 rows drains at least half as fast as one of
//! 100,000).
//!
//! While the broker is out of reach the relay cuts nothing and publishes
//! nothing, and Adds go on committing rows: after it, the relay finds every
//! row committed since its last cut in one snapshot pair. The phase leaves
//! the same: it stops the adder (its relay with it), inserts the rows
//! straight into `outbox` with SQL, the adder's own row shape (`a`, `b`,
//! `sum`, the rest by default), in transactions of
//! [`ROWS_PER_TRANSACTION`], then starts the adder. SQL and not the Add
//! path because durable Adds come at 15,000 to 25,000 a second here (about
//! a minute a round for both backlogs, on top of the drains), and a cut's
//! cost does not depend on how many transactions wrote its pair: the
//! pair's span comes from a range of the xid index, and each batch walks
//! the primary key.
//!
//! The drain is timed from the relay's start to the moment `GET /sum`
//! counts every row. The relay's start is when its database session began
//! (`pg_stat_activity.backend_start` of the session holding the relay lock):
//! a relay opens it once connected to the broker, to take the lock, exactly
//! as it does when the broker comes back after an outage. Both ends are
//! read on PostgreSQL's clock, so no two clocks are compared. The adder's
//! own start-up before that (process, pool, migrations, broker connection:
//! not part of a recovery from an outage) is reported beside it, not
//! counted.
//!
//! After the timed part (and not in it) the phase vacuums and analyses
//! `outbox`, so that autovacuum of the backlog does not fall into a later
//! phase, and warms the restarted adder up.

use std::time::Instant;

use anyhow::Context;
use sqlx::{Connection, PgConnection};

use crate::grpc;

use super::Stack;

/// What one outbox drain measured.
#[derive(Debug, Clone, Copy)]
pub struct OutboxDrain {
    /// Rows counted per second, from the relay's start until the total
    /// counted every row.
    pub per_s: f64,
    /// From the adder's start (its spawn) to its relay's start, in ms.
    pub start_up_ms: f64,
    /// From the relay's start to its first batch cut, in ms: the first cut
    /// reads the whole pair's span once.
    pub first_cut_ms: Option<f64>,
    /// How long inserting the backlog took, in seconds (not timed).
    pub left_secs: f64,
}

/// Rows of the backlog committed by one INSERT (a transaction of its own).
const ROWS_PER_TRANSACTION: u64 = 10_000;

/// The key of the relay lock, as the adder takes it with
/// `pg_try_advisory_lock` ("tallyrly", `adder::outbox::batches`).
const RELAY_LOCK: i64 = 0x7461_6c6c_7972_6c79;

/// How long ago the session holding the relay lock began, and how long
/// after that the first batch was cut, in seconds, on PostgreSQL's clock.
const RELAY_SESSION: &str = "\
    SELECT extract(epoch FROM clock_timestamp() - a.backend_start)::float8, \
           extract(epoch FROM (SELECT min(b.created_at) FROM outbox_batch b \
                                WHERE b.created_at >= a.backend_start) - a.backend_start)::float8 \
      FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted \
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND (l.classid::bigint << 32) | l.objid::bigint = $1";

impl Stack {
    /// Leaves a backlog of `rows` rows (sum 1 each) in the outbox with the
    /// adder stopped, then starts it and times the drain from its relay's
    /// start to the last row counted.
    pub async fn outbox_drain(&mut self, rows: u64) -> anyhow::Result<OutboxDrain> {
        self.stop_adder().await?;
        let leaving = Instant::now();
        if let Err(e) = leave_backlog(self.db_url()?, rows).await {
            self.start_adder().await?;
            return Err(e.context("leaving the backlog in the outbox"));
        }
        let left_secs = leaving.elapsed().as_secs_f64();
        let started = Instant::now();
        self.start_adder().await?;
        let done = grpc::Saturation {
            ok: rows,
            acked_sum: i128::from(rows),
            ..grpc::Saturation::default()
        };
        let counted_at = self.settle(&done).await?;
        let mut connection = PgConnection::connect(self.db_url()?).await?;
        let (relay_age, first_cut) = relay_session(&mut connection).await?;
        // The session's age when PostgreSQL answered, less the time since
        // the total was reached: the drain, on PostgreSQL's clock.
        let drain_secs = relay_age - counted_at.elapsed().as_secs_f64();
        anyhow::ensure!(
            drain_secs > 0.0,
            "the relay's session began after every row was counted: it is not the relay that drained them"
        );
        sqlx::raw_sql("VACUUM (ANALYZE) outbox")
            .execute(&mut connection)
            .await
            .context("vacuuming the outbox after the drain")?;
        let _ = connection.close().await;
        self.warm_up().await?;
        Ok(OutboxDrain {
            per_s: rows as f64 / drain_secs,
            start_up_ms: ((counted_at - started).as_secs_f64() - drain_secs) * 1000.0,
            first_cut_ms: first_cut.map(|secs| secs * 1000.0),
            left_secs,
        })
    }
}

/// Inserts `rows` rows of `1 + 0` into the outbox of `url`, committing
/// every [`ROWS_PER_TRANSACTION`].
async fn leave_backlog(url: &str, rows: u64) -> anyhow::Result<()> {
    let mut connection = PgConnection::connect(url).await?;
    let mut left = rows;
    while left > 0 {
        let now = left.min(ROWS_PER_TRANSACTION);
        sqlx::query("INSERT INTO outbox (a, b, sum) SELECT 1, 0, 1 FROM generate_series(1, $1)")
            .bind(i64::try_from(now).context("rows per transaction")?)
            .execute(&mut connection)
            .await?;
        left -= now;
    }
    let _ = connection.close().await;
    Ok(())
}

/// The age of the relay's session and its first cut's offset, in seconds.
async fn relay_session(connection: &mut PgConnection) -> anyhow::Result<(f64, Option<f64>)> {
    sqlx::query_as(RELAY_SESSION)
        .bind(RELAY_LOCK)
        .fetch_optional(connection)
        .await?
        .context("no session holds the relay lock: the adder's relay is not running")
}
