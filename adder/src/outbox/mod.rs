//! The outbox database and nothing else: every SQL statement the adder runs
//! lives in this module. It records Adds (group-committed, `group`), lets one
//! relay per database cut them into snapshot batches and confirm them
//! (`batches`), hands the relay the rows from before batches existed and
//! marks them published (`legacy`),
//! keeps the database's identity (`identity`) and its place in the adders'
//! list of databases (`position`), uses only the writable
//! primary of the database's servers and follows it to a new one
//! (`primary`), bounds every wait on the database (`bounds`) and purges
//! what retention allows. It knows neither tonic nor lapin, and no sqlx type leaves it:
//! callers hold an [`Outbox`], the relay lock ([`Active`]) and claims
//! ([`Claim`], [`LegacyClaim`]), the only values that can mark what the
//! broker confirmed.

mod batches;
mod bounds;
mod group;
mod identity;
mod legacy;
mod position;
mod primary;
mod reader;

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::{mpsc, oneshot};

pub use batches::{Active, Batch, Claim, Cut, Row, Standby};
pub use bounds::{Bounds, Unanswered};
pub use identity::Identity;
pub use legacy::LegacyClaim;
pub use position::{Membership, Place, disagreement};
pub use reader::{Held, Reader};

/// The outbox of one PostgreSQL database.
#[derive(Clone)]
pub struct Outbox {
    pool: PgPool,
    group: mpsc::Sender<group::Queued>,
    /// Keeps the pool on the primary while any clone lives (several servers).
    _follower: Option<Arc<primary::Follower>>,
    /// The follower's moves to a new primary (several servers).
    moves: Option<primary::Moves>,
    /// How long any wait on the database may last.
    bounds: Bounds,
}

/// How an outbox database is opened.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Most connections of its pool (each waited for at most 3 s).
    pub max_connections: u32,
    /// Group-commit writers (at least one).
    pub writers: usize,
    /// The bounds on every wait on it.
    pub bounds: Bounds,
    /// The operator says it went through `pg_upgrade`: a new system
    /// identifier is then an upgrade, not a copy (see `identity`).
    pub upgraded: bool,
}

/// A recorded Add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub id: i64,
    pub sum: i64,
    /// The request id matched an earlier row; nothing new was written.
    pub replayed: bool,
}

/// What can go wrong with the outbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request_id {request_id:?} was already used with a = {a}, b = {b}")]
    Conflict { request_id: String, a: i64, b: i64 },
    /// PostgreSQL refused this Add's own data (alone, not its group's).
    #[error("the outbox refused this Add: {reason}")]
    Refused { reason: String },
    #[error("the outbox database is unavailable")]
    Database(#[from] sqlx::Error),
    /// A group commit failed; every Add in it gets the same cause.
    #[error("the outbox database is unavailable")]
    Group(#[source] std::sync::Arc<sqlx::Error>),
    /// No connection to the database could be had for the group: nothing
    /// of it was sent, so none of its Adds was recorded.
    #[error("the outbox database is unreachable")]
    Unreached(#[source] std::sync::Arc<sqlx::Error>),
    /// The adder has not migrated and checked its outbox yet.
    #[error("the outbox database is not open yet")]
    NotOpen,
    /// The group-commit writers are gone (the runtime is stopping); the Add
    /// may or may not have been committed.
    #[error("the outbox is stopping")]
    Stopped,
    /// The Add's request id was being inserted by another adder whose insert
    /// was rolled back: nothing was written for it, a retry is safe.
    #[error("the request id raced another adder's insert that was rolled back, retry")]
    Raced,
    #[error("migrating the outbox failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database was migrated by a newer adder: this binary does not know
    /// its schema. Fatal: roll forward, not back.
    #[error(
        "the outbox database was migrated by a newer adder (migration {0} is unknown to this binary): \
         run that version or newer; an adder binary cannot be rolled back past a migration"
    )]
    Newer(i64),
    /// The database is a logical copy of an outbox: its transaction ids mean
    /// nothing to the batches it holds. Fatal.
    #[error("{0}")]
    Copied(String),
    /// None of the servers `DATABASE_URL` names is a writable primary now
    /// (a failover in progress, or all down).
    #[error("no server of the outbox database is a writable primary")]
    NoPrimary,
    /// The adder moved to a new primary while this work waited on the old
    /// one for an answer; a group commit so cut short may or may not have
    /// been committed.
    #[error("the outbox database's primary changed before it answered")]
    Moved,
    /// The database did not answer within its bound (`Bounds::answer`):
    /// the work may or may not have been done; the connection was dropped.
    #[error(transparent)]
    Unanswered(#[from] Unanswered),
    /// The database is recorded at another place in the adders' list of
    /// outbox databases than this adder's list gives it. Fatal.
    #[error("{0}")]
    Misplaced(String),
    /// `DATABASE_URL` asks for something the adder cannot do. Fatal.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// Whether retrying cannot help (the adder must stop).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Copied(_) | Error::Misplaced(_) | Error::Config(_) | Error::Newer(_)
        )
    }

    /// Whether the Add certainly was not recorded and the database is what
    /// failed (not open yet, or no connection to it): an Add without a
    /// request id may then be recorded on another database instead.
    pub fn nothing_sent(&self) -> bool {
        matches!(self, Error::NotOpen | Error::Unreached(_))
    }

    /// Whether an Add that failed so may have been recorded all the same
    /// (the database did not say, or said after the adder stopped
    /// listening): only a retry with the same request id is then safe.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            // A statement the server cancelled (its statement timeout) was
            // rolled back: nothing of it was committed.
            Error::Group(e) => !is_cancelled(e),
            Error::Moved | Error::Unanswered(_) | Error::Stopped => true,
            _ => false,
        }
    }
}

/// Whether the server cancelled the statement (SQLSTATE 57014, a statement
/// timeout): it was rolled back.
fn is_cancelled(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "57014")
}

/// Runs the migrations (serialised across adders by sqlx's advisory lock)
/// on a one-connection pool of their own, with no statement timeout.
async fn migrate(options: sqlx::postgres::PgConnectOptions) -> Result<(), Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(|connection, _| Box::pin(primary::require(connection)))
        .connect_lazy_with(options);
    let migrated = sqlx::migrate!("./migrations").run(&pool).await;
    pool.close().await;
    match migrated {
        Err(sqlx::migrate::MigrateError::VersionMissing(version)) => Err(Error::Newer(version)),
        other => Ok(other?),
    }
}

/// Opens a connection for each writer before the first Add, all at once:
/// on a loaded machine opening one took 2-3 s, and the first Adds, each
/// waiting for one, timed out (the pool's acquire limit) as UNAVAILABLE. A
/// connection that cannot be opened now is simply opened later.
async fn warm(pool: &PgPool, writers: usize) {
    let opened = futures_util::future::join_all((0..writers).map(|_| pool.acquire())).await;
    drop(opened);
}

impl Outbox {
    /// Connects to `url` (one server, or several in libpq's multi-host form:
    /// then to the first writable primary, followed to a new one after a
    /// failover; never to a standby) with a pool of at most
    /// `max_connections` (each
    /// waited for at most 3 s, so Adds fail with `UNAVAILABLE` rather than
    /// hang while PostgreSQL is down), runs the migrations (serialised
    /// across adders by sqlx's advisory lock), checks the database's
    /// identity (a logical copy is refused) and starts `writers`
    /// group-commit writers (at least one; fewer writers make bigger groups,
    /// so fewer WAL flushes, at the price of an Add sometimes waiting for the
    /// commit before its own).
    pub async fn open(url: &str, max_connections: u32, writers: usize) -> Result<Self, Error> {
        let settings = Settings {
            max_connections,
            writers,
            bounds: Bounds::default(),
            upgraded: false,
        };
        Self::open_with(url, settings).await
    }

    /// [`Outbox::open`] with every setting: the bounds on every wait (the
    /// migrations alone run without a statement timeout, on a connection of
    /// their own: a migration of a large outbox may take long), and whether
    /// the operator says the database went through `pg_upgrade`.
    pub async fn open_with(url: &str, settings: Settings) -> Result<Self, Error> {
        let Settings {
            max_connections,
            writers,
            bounds,
            upgraded,
        } = settings;
        let unbounded = primary::Servers::parse(url)?;
        let servers = unbounded.bounded(&bounds);
        let options = if servers.len() > 1 {
            servers.find_primary().await?
        } else {
            servers.first()
        };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(|connection, _| Box::pin(primary::require(connection)))
            .connect_lazy_with(options.clone());
        migrate(unbounded.same_server(&options)).await?;
        identity::check(&pool, upgraded).await?;
        let (follower, moves) = if servers.len() > 1 {
            let (follower, moves) = primary::follow(pool.clone(), servers);
            (Some(Arc::new(follower)), Some(moves))
        } else {
            (None, None)
        };
        warm(&pool, writers.max(1)).await;
        let group = group::spawn_writers(&pool, writers.max(1), moves.clone(), bounds);
        Ok(Self {
            pool,
            group,
            _follower: follower,
            moves,
            bounds,
        })
    }

    /// Resolves when the adder moves to another server of the database (a
    /// new primary): work still waiting on the old one will get no answer
    /// if that one hangs, and must start again. Never, with one server.
    pub async fn moved(&self) {
        primary::moved(self.moves.as_ref()).await;
    }

    /// Records this database's place in the adders' list, or checks it
    /// against the one recorded (`Error::Misplaced`); `reshard` records the
    /// new place instead of refusing it.
    /// Returns the database's member id.
    pub async fn settle_place(&self, place: Place, reshard: bool) -> Result<uuid::Uuid, Error> {
        position::settle(&self.pool, place, reshard).await
    }

    /// What the database records of the adders' list now.
    pub async fn membership(&self) -> Result<Membership, Error> {
        self.bounds.within(position::membership(&self.pool)).await?
    }

    /// Records `list` (member ids in order) as the adders' list, or refuses
    /// a different one already recorded (`Error::Misplaced`) unless
    /// `reshard`.
    pub async fn agree_members(&self, list: &[uuid::Uuid], reshard: bool) -> Result<(), Error> {
        position::agree(&self.pool, list, reshard).await
    }

    /// The source new batches are cut under.
    pub async fn source(&self) -> Result<uuid::Uuid, Error> {
        Ok(sqlx::query_scalar("SELECT source FROM outbox_source")
            .fetch_one(&self.pool)
            .await?)
    }

    /// The source legacy rows are published under, whatever the source of
    /// new batches: the oldest, the one in force when they were recorded
    /// (and the one `totaler verify` audits them under). Under the current
    /// source, a promotion between a legacy row's publish and its mark
    /// would publish it again under a new source, and it would count twice.
    pub async fn legacy_source(&self) -> Result<uuid::Uuid, Error> {
        Ok(sqlx::query_scalar(
            "SELECT source FROM outbox_sources ORDER BY started_at, source LIMIT 1",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Commits a row for `a + b = sum`. With a request id, a repeat of the same
    /// numbers returns the first row and writes nothing.
    pub async fn record(
        &self,
        a: i64,
        b: i64,
        sum: i64,
        request_id: Option<&str>,
    ) -> Result<Recorded, Error> {
        self.record_traced(a, b, sum, request_id, None).await
    }

    /// [`Outbox::record`], storing the Add's trace context with its row
    /// (tracing on); a replayed Add keeps the first one's.
    pub async fn record_traced(
        &self,
        a: i64,
        b: i64,
        sum: i64,
        request_id: Option<&str>,
        traceparent: Option<String>,
    ) -> Result<Recorded, Error> {
        let (committed, answer) = oneshot::channel();
        let queued = group::Queued {
            a,
            b,
            sum,
            request_id: request_id.map(str::to_owned),
            traceparent,
            committed,
        };
        self.group.send(queued).await.map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Rows the broker has not confirmed yet: legacy rows not marked, rows
    /// of unconfirmed batches, rows of the open pair not cut yet, and rows
    /// no pair holds yet. The last are found through the xid index as the
    /// transactions in progress at the cursor's `hi` and those after it, so
    /// a transaction left open anywhere on the server does not make this
    /// count read every row inserted since it began.
    pub async fn pending(&self) -> Result<i64, Error> {
        let count = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL AND xid IS NULL) \
             + (SELECT coalesce(sum(rows), 0)::bigint FROM outbox_batch WHERE confirmed_at IS NULL) \
             + (SELECT CASE WHEN pair_done THEN 0 ELSE greatest(pair_rows - pair_taken, 0) END \
                FROM outbox_cursor) \
             + (SELECT count(*) FROM outbox \
                WHERE (xid = ANY (ARRAY(SELECT pg_snapshot_xip(hi) FROM outbox_cursor)) \
                       OR xid >= (SELECT pg_snapshot_xmax(hi) FROM outbox_cursor)) \
                  AND NOT pg_visible_in_snapshot(xid, (SELECT hi FROM outbox_cursor)))",
        )
        .fetch_one(&self.pool);
        Ok(self.bounds.within(count).await??)
    }

    /// Deletes up to `limit` rows of confirmed batches (and published legacy
    /// rows) created before `retention` ago; returns how many. Batches go
    /// whole and in order: their rows, then their summaries, whose count and
    /// sum are added to their source's purged totals (for `totaler verify`).
    pub async fn purge(&self, retention: Duration, limit: i64) -> Result<u64, Error> {
        let legacy = self
            .bounds
            .within(legacy::purge(&self.pool, retention, limit))
            .await??;
        let batches = self
            .bounds
            .within(batches::purge(&self.pool, retention, limit))
            .await??;
        Ok(legacy + batches)
    }

    /// Whether PostgreSQL answers.
    pub async fn ping(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(self.bounds.within(ping).await, Ok(Ok(_)))
    }
}
