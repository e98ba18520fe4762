//! Where the database stands in the adders' list of outbox databases: its
//! position (from 1) and how many there are, recorded in `outbox_position`
//! by the first adder that opens it. A request id is routed by its hash
//! to one position, so an adder whose list gives this database another
//! position, or another count, would send a retried Add to another database
//! than its first attempt's: it is refused (fatal, naming both places),
//! unless the operator reshards on purpose (`reshard`), which records the
//! new place.
//!
//! Position and count cannot tell another database in the same slot, nor an
//! adder forgotten during a reshard, so each database also has a `member`
//! id of its own and records the whole list (`members`: every database's
//! member id, in order). The adders compare their list with it when they
//! open the databases and again every few seconds (`crate::outboxes`).

use sqlx::PgPool;
use uuid::Uuid;

use super::Error;

/// A database's place in the list: `position` of `databases`, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub position: u32,
    pub databases: u32,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database {} of {}", self.position, self.databases)
    }
}

/// What a database records of the list: its own member id, and the list of
/// member ids (none until an adder has opened every database of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub member: Uuid,
    pub members: Option<Vec<Uuid>>,
}

/// Records `place` if the database has none yet; else checks it against the
/// recorded one, which `reshard` overwrites (forgetting the recorded list)
/// instead of refusing. Returns the database's member id.
pub async fn settle(pool: &PgPool, place: Place, reshard: bool) -> Result<Uuid, Error> {
    let (position, databases) = (to_sql(place.position)?, to_sql(place.databases)?);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO outbox_position (position, databases) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(position)
    .bind(databases)
    .execute(&mut *tx)
    .await?;
    let (stored_position, stored_databases): (i32, i32) =
        sqlx::query_as("SELECT position, databases FROM outbox_position FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let stored = Place {
        position: u32::try_from(stored_position).unwrap_or(0),
        databases: u32::try_from(stored_databases).unwrap_or(0),
    };
    if stored != place {
        if !reshard {
            return Err(Error::Misplaced(format!(
                "this outbox database is recorded as {stored} in the adders' DATABASE_URL list, \
                 but this adder's list makes it {place}: every adder must list the same databases \
                 in the same order, or a retried request id could be recorded twice on two databases. \
                 Fix DATABASE_URL (or, to reshard on purpose, see ADDER_OUTBOX_RESHARD)"
            )));
        }
        tracing::warn!(from = %stored, to = %place, "resharding: this outbox database's place in the list changes");
        sqlx::query(
            "UPDATE outbox_position SET position = $1, databases = $2, members = NULL, \
             set_at = clock_timestamp()",
        )
        .bind(position)
        .bind(databases)
        .execute(&mut *tx)
        .await?;
    }
    let member = sqlx::query_scalar("SELECT member FROM outbox_position")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(member)
}

/// What the database records of the list now.
pub async fn membership(pool: &PgPool) -> Result<Membership, Error> {
    let (member, members): (Uuid, Option<Vec<Uuid>>) =
        sqlx::query_as("SELECT member, members FROM outbox_position")
            .fetch_one(pool)
            .await?;
    Ok(Membership { member, members })
}

/// Records `list` as the adders' list if the database has none yet (or
/// `reshard` says to replace it); else refuses a different one
/// (`Error::Misplaced`).
pub async fn agree(pool: &PgPool, list: &[Uuid], reshard: bool) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let recorded: Option<Vec<Uuid>> =
        sqlx::query_scalar("SELECT members FROM outbox_position FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    match recorded {
        Some(recorded) if recorded == list => return Ok(()),
        Some(recorded) if !reshard => return Err(Error::Misplaced(disagreement(&recorded, list))),
        _ => {}
    }
    sqlx::query("UPDATE outbox_position SET members = $1")
        .bind(list)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Why a recorded list and an adder's differ, for the operator.
pub fn disagreement(recorded: &[Uuid], list: &[Uuid]) -> String {
    format!(
        "this outbox database records the adders' list of databases as {recorded:?} (member ids in \
         DATABASE_URL order), but this adder's DATABASE_URL lists {list:?}: every adder must list the \
         same databases in the same order, or a retried request id could be recorded twice on two \
         databases. Fix DATABASE_URL (or, to reshard on purpose, see ADDER_OUTBOX_RESHARD)"
    )
}

fn to_sql(n: u32) -> Result<i32, Error> {
    i32::try_from(n).map_err(|_| Error::Config(format!("{n} outbox databases are too many")))
}
