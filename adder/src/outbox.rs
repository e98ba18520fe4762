//! The outbox table and nothing else: every SQL statement the adder runs lives
//! here. It records Adds, hands unpublished rows to the relay under
//! `FOR UPDATE SKIP LOCKED` inside the caller's transaction, marks rows
//! published and purges old ones. It knows neither tonic nor lapin.
//!
//! Adds are group-committed: they queue for a few writer tasks, and a free
//! writer takes everything queued (up to `GROUP_MAX_ROWS`) and inserts it
//! with one multi-row INSERT, one commit. Each caller is answered only
//! after that statement, and so its row, is committed; a failed statement
//! fails every caller in it, and none of its rows exists. With a light load
//! a writer is free and an Add commits alone, as it would without grouping.
//!
//! Request ids are resolved per group: one lookup of every id in the group
//! first (a retry is answered from its row and burns no sequence value), then
//! the INSERT skips ids another adder inserted meanwhile (`ON CONFLICT DO
//! NOTHING`), and those are looked up after it. An id repeated within one
//! group is inserted once; its repeats are answered from that row.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use sqlx::{PgPool, Postgres, Transaction, postgres::PgPoolOptions};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

/// The outbox of one PostgreSQL database.
#[derive(Clone)]
pub struct Outbox {
    pool: PgPool,
    source: Uuid,
    group: mpsc::Sender<Queued>,
}

/// An Add waiting for a group commit.
struct Queued {
    a: i64,
    b: i64,
    sum: i64,
    request_id: Option<String>,
    committed: oneshot::Sender<Result<Recorded, Error>>,
}

/// An existing row found by its request id: `(id, a, b, sum)`.
type Found = (i64, i64, i64, i64);

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
    /// A group commit failed; every Add in it gets the same cause.
    #[error("the outbox database is unavailable")]
    Group(#[source] Arc<sqlx::Error>),
    #[error("migrating the outbox failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Most Adds one group commit inserts.
const GROUP_MAX_ROWS: usize = 1000;
/// Adds that may wait for a writer before `record` waits to queue.
const GROUP_QUEUE: usize = 16 * GROUP_MAX_ROWS;

impl Outbox {
    /// A lazily connecting pool: the adder starts, and fails Adds with
    /// `UNAVAILABLE`, while PostgreSQL is down.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, Error> {
        Ok(PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(url)?)
    }

    /// Runs the migrations (serialised across adders by sqlx's advisory lock),
    /// reads this database's source id and starts `writers` group-commit
    /// writers (at least one; fewer writers make bigger groups, so fewer
    /// WAL flushes, at the price of an Add sometimes waiting for the commit
    /// before its own).
    pub async fn open(pool: PgPool, writers: usize) -> Result<Self, Error> {
        sqlx::migrate!("./migrations").run(&pool).await?;
        let source = sqlx::query_scalar("SELECT source FROM outbox_source")
            .fetch_one(&pool)
            .await?;
        let group = spawn_writers(&pool, writers.max(1));
        Ok(Self {
            pool,
            source,
            group,
        })
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
        let (committed, answer) = oneshot::channel();
        let queued = Queued {
            a,
            b,
            sum,
            request_id: request_id.map(str::to_owned),
            committed,
        };
        self.group
            .send(queued)
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?
    }

    /// Opens the transaction a relay batch runs in. Its commit does not wait
    /// for the WAL flush (`synchronous_commit = off`): all it records is that
    /// rows were published, and if a crash loses that, the rows are published
    /// again and the totaler counts them once. Every Add's own commit stays
    /// synchronous. This keeps the relay's flushes out of the Adds' way.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
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

/// Starts the group-commit writers; they stop when every `Outbox` clone
/// (every sender) is gone and the queue is empty.
fn spawn_writers(pool: &PgPool, writers: usize) -> mpsc::Sender<Queued> {
    let (sender, receiver) = mpsc::channel(GROUP_QUEUE);
    let receiver = Arc::new(Mutex::new(receiver));
    for _ in 0..writers {
        tokio::spawn(write_groups(pool.clone(), receiver.clone()));
    }
    sender
}

/// One writer: takes everything queued (one Add at least), commits it as one
/// statement, answers each caller, repeats.
async fn write_groups(pool: PgPool, queue: Arc<Mutex<mpsc::Receiver<Queued>>>) {
    let mut group = Vec::with_capacity(GROUP_MAX_ROWS);
    loop {
        {
            let mut queue = queue.lock().await;
            if queue.recv_many(&mut group, GROUP_MAX_ROWS).await == 0 {
                return;
            }
        }
        match commit_group(&pool, &group).await {
            Ok(answers) => {
                for (queued, answer) in group.drain(..).zip(answers) {
                    let _ = queued.committed.send(answer);
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for queued in group.drain(..) {
                    let _ = queued.committed.send(Err(Error::Group(e.clone())));
                }
            }
        }
    }
}

/// Commits one group and answers each Add in it, in `group` order. Err
/// means nothing of the group was written.
async fn commit_group(
    pool: &PgPool,
    group: &[Queued],
) -> Result<Vec<Result<Recorded, Error>>, sqlx::Error> {
    let ids: Vec<&str> = group
        .iter()
        .filter_map(|q| q.request_id.as_deref())
        .collect();
    let mut found = if ids.is_empty() {
        HashMap::new()
    } else {
        find_all(pool, &ids).await?
    };
    // Every id-less Add, and the first Add of each request id not found.
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let mut to_insert = Vec::with_capacity(group.len());
    for (i, queued) in group.iter().enumerate() {
        match queued.request_id.as_deref() {
            None => to_insert.push(i),
            Some(id) if !found.contains_key(id) && !first_of.contains_key(id) => {
                first_of.insert(id, i);
                to_insert.push(i);
            }
            Some(_) => {}
        }
    }
    let inserted = insert_group(pool, group, &to_insert).await?;
    let raced: Vec<&str> = to_insert
        .iter()
        .filter(|i| !inserted.contains_key(i))
        .filter_map(|&i| group[i].request_id.as_deref())
        .collect();
    if !raced.is_empty() {
        found.extend(find_all(pool, &raced).await?);
    }
    Ok(group
        .iter()
        .enumerate()
        .map(|(i, queued)| {
            if let Some(&id) = inserted.get(&i) {
                return Ok(Recorded {
                    id,
                    sum: queued.sum,
                    replayed: false,
                });
            }
            let request_id = queued
                .request_id
                .as_deref()
                .expect("only Adds with a request id are left out of the insert");
            let earlier = first_of.get(request_id).and_then(|&first| {
                let q = &group[first];
                inserted.get(&first).map(|&id| (id, q.a, q.b, q.sum))
            });
            match earlier.or_else(|| found.get(request_id).copied()) {
                Some(row) => replay(row, request_id, queued.a, queued.b),
                // Raced an insert that was rolled back: the caller retries.
                None => Err(Error::Database(sqlx::Error::RowNotFound)),
            }
        })
        .collect())
}

/// The rows of these request ids, by request id.
async fn find_all(
    pool: &PgPool,
    request_ids: &[&str],
) -> Result<HashMap<String, Found>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64)> =
        sqlx::query_as("SELECT request_id, id, a, b, sum FROM outbox WHERE request_id = ANY($1)")
            .bind(request_ids)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(request_id, id, a, b, sum)| (request_id, (id, a, b, sum)))
        .collect())
}

/// Inserts the Adds `group[i]` for `i` in `to_insert` in one statement (so
/// in one commit), skipping request ids that exist by now, and returns the
/// id of each inserted one by its index. Rows are inserted in `to_insert`
/// order (`ORDER BY n`), and an identity column hands out increasing ids
/// within a statement, so the sorted ids of the inserted rows follow that
/// order, whatever order RETURNING uses.
async fn insert_group(
    pool: &PgPool,
    group: &[Queued],
    to_insert: &[usize],
) -> Result<HashMap<usize, i64>, sqlx::Error> {
    if to_insert.is_empty() {
        return Ok(HashMap::new());
    }
    let a: Vec<i64> = to_insert.iter().map(|&i| group[i].a).collect();
    let b: Vec<i64> = to_insert.iter().map(|&i| group[i].b).collect();
    let sum: Vec<i64> = to_insert.iter().map(|&i| group[i].sum).collect();
    let request_id: Vec<Option<&str>> = to_insert
        .iter()
        .map(|&i| group[i].request_id.as_deref())
        .collect();
    let mut rows: Vec<(i64, Option<String>)> = sqlx::query_as(
        "INSERT INTO outbox (a, b, sum, request_id) \
         SELECT a, b, sum, r FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[]) \
         WITH ORDINALITY AS t(a, b, sum, r, n) ORDER BY n \
         ON CONFLICT (request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING id, request_id",
    )
    .bind(&a)
    .bind(&b)
    .bind(&sum)
    .bind(&request_id)
    .fetch_all(pool)
    .await?;
    rows.sort_unstable_by_key(|(id, _)| *id);
    let returned: HashSet<&str> = rows.iter().filter_map(|(_, r)| r.as_deref()).collect();
    let kept: Vec<usize> = to_insert
        .iter()
        .copied()
        .filter(|&i| {
            group[i]
                .request_id
                .as_deref()
                .is_none_or(|r| returned.contains(r))
        })
        .collect();
    if kept.len() != rows.len() {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(kept
        .into_iter()
        .zip(rows.into_iter().map(|(id, _)| id))
        .collect())
}

fn replay(found: Found, request_id: &str, a: i64, b: i64) -> Result<Recorded, Error> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_adds_each_get_their_own_committed_row() {
        let url = testkit::database::fresh().await;
        let outbox = Outbox::open(Outbox::connect_lazy(&url, 4).unwrap(), 2)
            .await
            .unwrap();
        let calls: Vec<_> = (0..300i64)
            .map(|a| {
                let outbox = outbox.clone();
                tokio::spawn(async move { (a, outbox.record(a, 1000, a + 1000, None).await) })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for call in calls {
            let (a, recorded) = call.await.unwrap();
            let recorded = recorded.unwrap();
            assert_eq!(recorded.sum, a + 1000);
            assert!(!recorded.replayed);
            let row: (i64, i64) = sqlx::query_as("SELECT a, b FROM outbox WHERE id = $1")
                .bind(recorded.id)
                .fetch_one(outbox.pool())
                .await
                .unwrap();
            assert_eq!(row, (a, 1000), "row {} belongs to another Add", recorded.id);
            assert!(ids.insert(recorded.id));
        }
    }

    #[tokio::test]
    async fn concurrent_repeats_of_a_request_id_share_one_row() {
        let url = testkit::database::fresh().await;
        let outbox = Outbox::open(Outbox::connect_lazy(&url, 4).unwrap(), 1)
            .await
            .unwrap();
        let calls: Vec<_> = (0..200i64)
            .map(|i| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    let id = match i % 4 {
                        0 | 1 => Some("same".to_owned()),
                        2 => Some(format!("own-{i}")),
                        _ => None,
                    };
                    (i, outbox.record(2, 3, 5, id.as_deref()).await.unwrap())
                })
            })
            .collect();
        let mut same_ids = std::collections::HashSet::new();
        let mut same_fresh = 0;
        for call in calls {
            let (i, recorded) = call.await.unwrap();
            assert_eq!(recorded.sum, 5);
            if i % 4 < 2 {
                same_ids.insert(recorded.id);
                same_fresh += usize::from(!recorded.replayed);
            } else {
                assert!(!recorded.replayed, "call {i}");
            }
        }
        assert_eq!(same_ids.len(), 1, "every repeat is answered from one row");
        assert_eq!(same_fresh, 1, "exactly one of the repeats wrote it");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(outbox.pool())
            .await
            .unwrap();
        assert_eq!(rows, 1 + 50 + 50, "one row for 'same', one per other Add");
        let conflict = outbox.record(2, 4, 6, Some("same")).await;
        assert!(
            matches!(conflict, Err(Error::Conflict { a: 2, b: 3, .. })),
            "{conflict:?}"
        );
    }
}
