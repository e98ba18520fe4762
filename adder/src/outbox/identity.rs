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
/// module docs); returns the source to cut new batches under.
pub async fn check(pool: &PgPool) -> Result<Uuid, Error> {
    let mut tx = pool.begin().await?;
    let source = settle(&mut tx).await?;
    tx.commit().await?;
    Ok(source)
}

async fn settle(tx: &mut Transaction<'static, Postgres>) -> Result<Uuid, Error> {
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
    if stored.system_id != now.system_id || stored.db_oid != now.db_oid {
        return Err(Error::Copied(format!(
            "this database is a logical copy of outbox source {source} (stored system {} database oid {}, \
             found system {} database oid {}): its transaction ids do not match its batches; \
             publishing from it could reuse ids already counted. Start it as a new outbox (a fresh database)",
            stored.system_id, stored.db_oid, now.system_id, now.db_oid
        )));
    }
    if stored.timeline == now.timeline {
        return Ok(source);
    }
    let fresh = Uuid::new_v4();
    tracing::warn!(old = %source, new = %fresh, from = stored.timeline, to = now.timeline,
        "the outbox database is on a new timeline (promoted or restored); new batches go under a new source");
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
