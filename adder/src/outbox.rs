//! The outbox table and nothing else: every SQL statement the adder runs lives
//! here. It records Adds, hands unpublished rows to the relay under
//! `FOR UPDATE SKIP LOCKED` inside the caller's transaction, marks rows
//! published and purges old ones. It knows neither tonic nor lapin.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction, postgres::PgPoolOptions};
use uuid::Uuid;

/// The outbox of one PostgreSQL database.
#[derive(Clone)]
pub struct Outbox {
    pool: PgPool,
    source: Uuid,
}

/// A recorded Add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub id: i64,
    pub sum: i64,
    /// The request id matched an earlier row; nothing new was written.
    pub replayed: bool,
}

/// An unpublished row, as the relay publishes it.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub sum: i64,
    pub created_us: i64,
}

/// What can go wrong with the outbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request_id {request_id:?} was already used with a = {a}, b = {b}")]
    Conflict { request_id: String, a: i64, b: i64 },
    #[error("the outbox database is unavailable")]
    Database(#[from] sqlx::Error),
    #[error("migrating the outbox failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// How many times `record` retries a request id that raced another insert.
const RECORD_ATTEMPTS: usize = 3;

impl Outbox {
    /// A lazily connecting pool: the adder starts, and fails Adds with
    /// `UNAVAILABLE`, while PostgreSQL is down.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, Error> {
        Ok(PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(url)?)
    }

    /// Runs the migrations (serialised across adders by sqlx's advisory lock)
    /// and reads this database's source id.
    pub async fn open(pool: PgPool) -> Result<Self, Error> {
        sqlx::migrate!("./migrations").run(&pool).await?;
        let source = sqlx::query_scalar("SELECT source FROM outbox_source")
            .fetch_one(&pool)
            .await?;
        Ok(Self { pool, source })
    }

    /// The identity of this outbox database, part of every message id.
    pub fn source(&self) -> Uuid {
        self.source
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
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
        let Some(request_id) = request_id else {
            let id = sqlx::query_scalar(
                "INSERT INTO outbox (a, b, sum) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(a)
            .bind(b)
            .bind(sum)
            .fetch_one(&self.pool)
            .await?;
            return Ok(Recorded {
                id,
                sum,
                replayed: false,
            });
        };
        for _ in 0..RECORD_ATTEMPTS {
            if let Some(found) = self.find(request_id).await? {
                return replay(found, request_id, a, b);
            }
            let inserted = sqlx::query_scalar(
                "INSERT INTO outbox (a, b, sum, request_id) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (request_id) DO NOTHING RETURNING id",
            )
            .bind(a)
            .bind(b)
            .bind(sum)
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(id) = inserted {
                return Ok(Recorded {
                    id,
                    sum,
                    replayed: false,
                });
            }
        }
        Err(Error::Database(sqlx::Error::RowNotFound))
    }

    async fn find(&self, request_id: &str) -> Result<Option<(i64, i64, i64, i64)>, Error> {
        Ok(
            sqlx::query_as("SELECT id, a, b, sum FROM outbox WHERE request_id = $1")
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Opens the transaction a relay batch runs in.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, Error> {
        Ok(self.pool.begin().await?)
    }

    /// Locks up to `limit` unpublished rows, oldest first, skipping rows
    /// another relay holds. The locks last until `tx` ends.
    pub async fn claim(
        tx: &mut Transaction<'static, Postgres>,
        limit: u32,
    ) -> Result<Vec<Pending>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, sum, (extract(epoch FROM created_at) * 1000000)::bigint AS created_us \
             FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut **tx)
        .await?)
    }

    /// Marks rows published; call only with ids the broker confirmed.
    pub async fn mark_published(
        tx: &mut Transaction<'static, Postgres>,
        ids: &[i64],
    ) -> Result<(), Error> {
        sqlx::query("UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Rows not yet confirmed by the broker.
    pub async fn pending(&self) -> Result<i64, Error> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Deletes up to `limit` rows published before `retention` ago; returns how many.
    pub async fn purge(&self, retention: Duration, limit: i64) -> Result<u64, Error> {
        let result = sqlx::query(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
             WHERE published_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(retention.as_secs_f64())
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Whether PostgreSQL answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

fn replay(
    found: (i64, i64, i64, i64),
    request_id: &str,
    a: i64,
    b: i64,
) -> Result<Recorded, Error> {
    let (id, found_a, found_b, sum) = found;
    if (found_a, found_b) != (a, b) {
        return Err(Error::Conflict {
            request_id: request_id.to_owned(),
            a: found_a,
            b: found_b,
        });
    }
    Ok(Recorded {
        id,
        sum,
        replayed: true,
    })
}
