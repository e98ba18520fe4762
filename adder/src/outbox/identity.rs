//! The outbox database's identity: its system identifier, database oid and
//! WAL timeline, stored with the source the relay publishes under.
//!
//! - A new timeline (a promoted standby, a point-in-time restore) keeps the
//!   rows and batches, byte for byte, but may have lost the newest of them:
//!   batch numbers the ledger already counted could be cut again with other
//!   rows. The outbox then continues under a **new source**: batches cut
//!   from now on are numbered from 1 under it, batches cut before keep their
//!   old source and are republished identically.
//! - Another system identifier or database oid means a logical copy (a dump
//!   restored, a database created from a template): its transaction ids are
//!   not the ones its batches were cut by. That is refused, naming both
//!   identities; an operator must start such a database as a new outbox.
//! - Except after `pg_upgrade`, which makes a new system identifier (and,
//!   before PostgreSQL 15, a new database oid) but keeps the transaction
//!   ids: an operator says so once (`upgraded`, `--outbox-upgraded`), and
//!   the outbox continues under a new source as after a promotion, its
//!   unpublished rows and unconfirmed batches kept. It is refused all the
//!   same when the server's transaction ids are behind the outbox's (they
//!   were not kept: a copy, not an upgrade).

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::Error;

/// Where a database stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub system_id: String,
    pub db_oid: i64,
    pub timeline: i64,
}

/// Checks the stored identity against the database's and settles it (see the
/// module docs); returns the source to cut new batches under. `upgraded`:
/// the operator says the database went through `pg_upgrade`.
pub async fn check(pool: &PgPool, upgraded: bool) -> Result<Uuid, Error> {
    let mut tx = pool.begin().await?;
    let source = settle(&mut tx, upgraded).await?;
    tx.commit().await?;
    Ok(source)
}

async fn settle(tx: &mut Transaction<'static, Postgres>, upgraded: bool) -> Result<Uuid, Error> {
    let (source, system_id, db_oid, timeline): (Uuid, Option<String>, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT source, system_id, db_oid, timeline FROM outbox_source FOR UPDATE")
            .fetch_one(&mut **tx)
            .await?;
    let now = current(tx).await?;
    let stored = match (system_id, db_oid, timeline) {
        (Some(system_id), Some(db_oid), Some(timeline)) => Identity {
            system_id,
            db_oid,
            timeline,
        },
        _ => {
            record(tx, source, &now).await?;
            return Ok(source);
        }
    };
    let moved = stored.system_id != now.system_id || stored.db_oid != now.db_oid;
    if moved && !(upgraded && xids_kept(tx).await?) {
        return Err(Error::Copied(format!(
            "this database is a logical copy of outbox source {source} (stored system {} database oid {}, \
             found system {} database oid {}): its transaction ids do not match its batches; \
             publishing from it could reuse ids already counted. Start it as a new outbox (a fresh database); \
             if it was upgraded in place with pg_upgrade (transaction ids kept), start the adder once with \
             --outbox-upgraded (ADDER_OUTBOX_UPGRADED=true) to continue under a new source",
            stored.system_id, stored.db_oid, now.system_id, now.db_oid
        )));
    }
    if !moved && stored.timeline == now.timeline {
        return Ok(source);
    }
    let fresh = Uuid::new_v4();
    tracing::warn!(old = %source, new = %fresh, from = stored.timeline, to = now.timeline,
        "the outbox database is on a new timeline or was upgraded (promoted, restored, pg_upgrade); new batches go under a new source");
    sqlx::query("INSERT INTO outbox_sources (source) VALUES ($1)")
        .bind(fresh)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE outbox_source SET source = $1")
        .bind(fresh)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE outbox_cursor SET source = $1, batch = 0")
        .bind(fresh)
        .execute(&mut **tx)
        .await?;
    record(tx, fresh, &now).await?;
    Ok(fresh)
}

async fn record(
    tx: &mut Transaction<'static, Postgres>,
    source: Uuid,
    identity: &Identity,
) -> Result<(), Error> {
    for statement in [
        "UPDATE outbox_source SET system_id = $1, db_oid = $2, timeline = $3 WHERE source = $4",
        "UPDATE outbox_sources SET system_id = $1, db_oid = $2, timeline = $3 WHERE source = $4",
    ] {
        sqlx::query(statement)
            .bind(&identity.system_id)
            .bind(identity.db_oid)
            .bind(identity.timeline)
            .bind(source)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Whether the server's transaction ids are ahead of every one the outbox
/// recorded (as `pg_upgrade` leaves them; a restored copy starts over).
async fn xids_kept(tx: &mut Transaction<'static, Postgres>) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(
        "SELECT pg_current_xact_id() >= greatest( \
             (SELECT pg_snapshot_xmax(hi) FROM outbox_cursor), \
             (SELECT max(xid) FROM outbox))",
    )
    .fetch_one(&mut **tx)
    .await?)
}

/// The identity of the database `tx` runs in.
async fn current(tx: &mut Transaction<'static, Postgres>) -> Result<Identity, Error> {
    let (system_id, db_oid, wal_file): (String, i64, String) = sqlx::query_as(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                (SELECT oid::bigint FROM pg_database WHERE datname = current_database()), \
                pg_walfile_name(pg_current_wal_lsn())",
    )
    .fetch_one(&mut **tx)
    .await?;
    // A WAL file name starts with the timeline, 8 hex digits.
    let timeline = wal_file
        .get(..8)
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| Error::Copied(format!("unexpected WAL file name {wal_file:?}")))?;
    Ok(Identity {
        system_id,
        db_oid,
        timeline,
    })
}
