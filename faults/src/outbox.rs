//! The suite's own SQL on the outbox: what it holds (for the final check
//! and for forging messages), a slow transaction whose rows interleave with
//! the rows published meanwhile, the loss of batch confirmations that makes
//! the next active relay publish batches again, and which uncertain Adds
//! were committed.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

/// The `a` of the slow transaction's rows starts here (apart from the load's).
pub const SLOW_BASE: i64 = 1 << 51;
/// Each slow row adds this much, so a count of lost rows shows in the total.
pub const SLOW_SUM: i64 = 1_000_003;

/// The outbox as the final check sees it.
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    pub sum: i128,
    pub rows: i64,
    pub unpublished: i64,
}

/// What a slow transaction did.
#[derive(Debug, Clone, Default)]
pub struct Slow {
    pub rows: Vec<(i64, i64)>,
    /// Rows of the transaction with another transaction's row just below them.
    pub gaps: usize,
    /// Adds committed by others while it was open.
    pub others: i64,
    pub committed: bool,
}

pub async fn reconcile(url: &str) -> anyhow::Result<Outbox> {
    let mut connection = PgConnection::connect(url).await?;
    let (sum, rows, unpublished): (String, i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(sum), 0)::text, count(*), count(*) \
         - (SELECT coalesce(sum(rows), 0)::bigint FROM outbox_batch WHERE confirmed_at IS NOT NULL) \
         - count(*) FILTER (WHERE xid IS NULL AND published_at IS NOT NULL) FROM outbox",
    )
    .fetch_one(&mut connection)
    .await?;
    Ok(Outbox {
        sum: sum.parse()?,
        rows,
        unpublished,
    })
}

/// Rows not yet confirmed by the broker (as `reconcile` counts them).
pub async fn unpublished(connection: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) \
         - (SELECT coalesce(sum(rows), 0)::bigint FROM outbox_batch WHERE confirmed_at IS NOT NULL) \
         - count(*) FILTER (WHERE xid IS NULL AND published_at IS NOT NULL) FROM outbox",
    )
    .fetch_one(connection)
    .await?)
}

/// The outbox's source UUID and its highest id.
pub async fn source_and_top(url: &str) -> anyhow::Result<(String, i64)> {
    let mut connection = PgConnection::connect(url).await?;
    let (source, top): (String, i64) = sqlx::query_as(
        "SELECT (SELECT source::text FROM outbox_source), coalesce((SELECT max(id) FROM outbox), 0)",
    )
    .fetch_one(&mut connection)
    .await?;
    Ok((source, top))
}

/// Of the uncertain `(a, sum)`, the ones whose row is in the outbox.
pub async fn committed_of(url: &str, uncertain: &[(i64, i64)]) -> anyhow::Result<Vec<(i64, i64)>> {
    if uncertain.is_empty() {
        return Ok(Vec::new());
    }
    let mut connection = PgConnection::connect(url).await?;
    let tags: Vec<i64> = uncertain.iter().map(|(a, _)| *a).collect();
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT a, sum FROM outbox WHERE a = ANY($1)")
        .bind(&tags)
        .fetch_all(&mut connection)
        .await?;
    Ok(rows)
}

/// Clears the confirmation of the newest confirmed batches holding about
/// `rows` rows, as a crash that lost the relay's asynchronous confirmation
/// commits would leave them; returns their rows and batch numbers. The next
/// active relay publishes them again, identically, and the totaler must
/// count them once.
pub async fn forget_published(url: &str, rows: i64) -> anyhow::Result<(u64, Vec<i64>)> {
    let mut connection = PgConnection::connect(url).await?;
    let forgotten: Vec<(i64, i64)> = sqlx::query_as(
        "WITH newest AS (SELECT source, id, rows, sum(rows) OVER (ORDER BY created_at DESC, id DESC) AS upto \
                         FROM outbox_batch WHERE confirmed_at IS NOT NULL), \
              gone AS (UPDATE outbox_batch b SET confirmed_at = NULL FROM newest n \
                       WHERE b.source = n.source AND b.id = n.id AND n.upto - n.rows < $1 RETURNING b.id, b.rows) \
         SELECT id, rows FROM gone",
    )
    .bind(rows)
    .fetch_all(&mut connection)
    .await?;
    let total = forgotten.iter().map(|(_, rows)| *rows as u64).sum();
    Ok((total, forgotten.into_iter().map(|(id, _)| id).collect()))
}

/// How many of `batches` are confirmed (again).
pub async fn confirmed_of(url: &str, batches: &[i64]) -> anyhow::Result<usize> {
    let mut connection = PgConnection::connect(url).await?;
    let confirmed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_batch WHERE id = ANY($1) AND confirmed_at IS NOT NULL",
    )
    .bind(batches)
    .fetch_one(&mut connection)
    .await?;
    Ok(confirmed as usize)
}

/// Opens a transaction that inserts rows one at a time (as the adder would:
/// `INSERT INTO outbox (a, b, sum)`), each after other Adds took the ids
/// just below it, until `gaps` of its rows sit in gaps of their own and at
/// least `others` Adds were committed and published around them; then
/// commits. `first_tag` makes its rows' `a` unique in the run.
pub async fn slow_transaction(
    url: &str,
    first_tag: i64,
    gaps: usize,
    others: i64,
) -> anyhow::Result<Slow> {
    let mut watcher = PgConnection::connect(url).await?;
    let mut connection = PgConnection::connect(url).await?;
    let mut transaction = connection.begin().await?;
    let mut slow = Slow::default();
    let mut previous = 0i64;
    let deadline = Instant::now() + Duration::from_secs(40);
    while slow.gaps < gaps && Instant::now() < deadline {
        let a = first_tag + slow.rows.len() as i64;
        let (id,): (i64,) =
            sqlx::query_as("INSERT INTO outbox (a, b, sum) VALUES ($1, $2, $3) RETURNING id")
                .bind(a)
                .bind(SLOW_SUM - a)
                .bind(SLOW_SUM)
                .fetch_one(&mut *transaction)
                .await?;
        if id != previous + 1 {
            slow.gaps += 1;
        }
        previous = id;
        slow.rows.push((a, SLOW_SUM));
    }
    let first = slow_first_id(&mut transaction, first_tag).await?;
    // Hold it open until enough other Adds around it are committed and published.
    let (mut others_now, mut unpublished) = (0i64, 1i64);
    while (others_now < others || unpublished > 0) && Instant::now() < deadline {
        (others_now, unpublished) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE id <= $2 AND NOT EXISTS (SELECT 1 FROM outbox_batch b \
               WHERE b.confirmed_at IS NOT NULL AND o.id BETWEEN b.first_id AND b.last_id \
               AND pg_visible_in_snapshot(o.xid, b.hi) AND NOT pg_visible_in_snapshot(o.xid, b.lo))) \
             FROM outbox o WHERE id > $1",
        )
        .bind(first)
        .bind(previous)
        .fetch_one(&mut watcher)
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give the totaler a moment to count what was published.
    tokio::time::sleep(Duration::from_secs(1)).await;
    slow.others = others_now;
    slow.committed = transaction.commit().await.is_ok();
    Ok(slow)
}

async fn slow_first_id(connection: &mut PgConnection, first_tag: i64) -> anyhow::Result<i64> {
    let (first,): (i64,) = sqlx::query_as("SELECT min(id) FROM outbox WHERE a >= $1")
        .bind(first_tag)
        .fetch_one(connection)
        .await?;
    Ok(first)
}
