//! A read-only view of one outbox database, for `adder republish`: a
//! source's cut batches and their rows, read exactly as the relay reads them
//! (`proto::outbox::BATCH_ROWS`, in id order). It takes no relay lock, runs
//! no migration and writes nothing: a cut batch never changes, so reading
//! it beside the active relay is safe.

use sqlx::PgConnection;
use uuid::Uuid;

use super::{Batch, Error, Row, batches, primary};

/// A connection to a database's writable primary, for reading batches.
pub struct Reader {
    connection: PgConnection,
}

/// Where a source's batches stand in a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Held {
    /// Batches up to this one were purged by retention.
    pub purged_through: i64,
    /// The newest batch cut (`purged_through` when none is left).
    pub newest: i64,
}

impl Reader {
    /// Connects to `url`'s writable primary: its only server, or the first
    /// primary of a multi-host URL.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let servers = primary::Servers::parse(url)?;
        let options = if servers.len() > 1 {
            servers.find_primary().await?
        } else {
            servers.first()
        };
        let connection = primary::connect_within(&options).await?;
        Ok(Self { connection })
    }

    /// Where `source`'s batches stand here; `None`: another database's.
    pub async fn holds(&mut self, source: Uuid) -> Result<Option<Held>, Error> {
        Ok(sqlx::query_as(
            "SELECT purged_through, coalesce((SELECT max(id) FROM outbox_batch b WHERE b.source = s.source), \
             purged_through) AS newest FROM outbox_sources s WHERE source = $1",
        )
        .bind(source)
        .fetch_optional(&mut self.connection)
        .await?)
    }

    /// The first batch of `first..=last` of `source` not in the outbox.
    pub async fn first_absent(
        &mut self,
        source: Uuid,
        (first, last): (i64, i64),
    ) -> Result<Option<i64>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT g FROM generate_series($2::bigint, $3::bigint) g WHERE NOT EXISTS \
             (SELECT 1 FROM outbox_batch WHERE source = $1 AND id = g) ORDER BY g LIMIT 1",
        )
        .bind(source)
        .bind(first)
        .bind(last)
        .fetch_optional(&mut self.connection)
        .await?)
    }

    /// Up to `limit` batches of `source` from `first` to `last`, in order.
    pub async fn batches(
        &mut self,
        source: Uuid,
        (first, last): (i64, i64),
        limit: i64,
    ) -> Result<Vec<Batch>, Error> {
        Ok(sqlx::query_as(
            "SELECT source, id, lo::text AS lo, hi::text AS hi, pack, rows, first_id, last_id, traceparent \
             FROM outbox_batch WHERE source = $1 AND id BETWEEN $2 AND $3 ORDER BY id LIMIT $4",
        )
        .bind(source)
        .bind(first)
        .bind(last)
        .bind(limit)
        .fetch_all(&mut self.connection)
        .await?)
    }

    /// The rows of `batch` in publishing order, the same the relay read;
    /// an error if they are not all there (purged meanwhile).
    pub async fn rows(&mut self, batch: &Batch) -> Result<Vec<Row>, Error> {
        batches::read_rows(&mut self.connection, batch).await
    }
}
