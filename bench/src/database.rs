//! The INSERT limit: the adder's own single-row INSERT, autocommitted, from
//! as many clients as its pool, into a migrated outbox (a fresh database of
//! `testkit::database::Fresh`, made and dropped by the caller).

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;

/// What the INSERT limit measured.
#[derive(Debug, Clone, Copy)]
pub struct Inserts {
    /// Committed rows/s from as many clients as the adder's pool.
    pub tps: f64,
    /// One client's INSERT round trip (one commit, one WAL flush), in ms.
    pub single_p50_ms: f64,
    pub single_p99_ms: f64,
}

/// Most INSERTs one latency window makes.
const MAX_SINGLE: usize = 100_000;

/// The adder's single-row INSERT into a migrated outbox, autocommitted:
/// from `clients` connections for `duration` (throughput), then from one
/// connection for `duration` (latency).
pub async fn inserts(url: &str, clients: u32, duration: Duration) -> anyhow::Result<Inserts> {
    let pool = PgPoolOptions::new()
        .max_connections(clients)
        .min_connections(clients)
        .connect(url)
        .await?;
    sqlx::migrate!("../adder/migrations").run(&pool).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = JoinSet::new();
    for worker in 0..clients {
        let pool = pool.clone();
        workers.spawn(async move {
            let mut rows = 0u64;
            while Instant::now() < deadline {
                insert(&pool, i64::from(worker)).await?;
                rows += 1;
            }
            anyhow::Ok(rows)
        });
    }
    let mut rows = 0;
    while let Some(done) = workers.join_next().await {
        rows += done.context("INSERT worker")??;
    }
    let tps = rows as f64 / started.elapsed().as_secs_f64();
    let mut single = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration && single.len() < MAX_SINGLE {
        let one = Instant::now();
        insert(&pool, 1).await?;
        single.push(one.elapsed().as_secs_f64() * 1000.0);
    }
    pool.close().await;
    Ok(Inserts {
        tps,
        single_p50_ms: crate::tally::quantiles::percentile(&mut single, 0.50),
        single_p99_ms: crate::tally::quantiles::percentile(&mut single, 0.99),
    })
}

async fn insert(pool: &sqlx::PgPool, a: i64) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("INSERT INTO outbox (a, b, sum) VALUES ($1, $2, $3) RETURNING id")
            .bind(a)
            .bind(1i64)
            .bind(a + 1)
            .fetch_one(pool)
            .await?,
    )
}

/// Transactions committed so far in the database of `url`
/// (`pg_stat_database.xact_commit`; the statistics lag up to half a second).
pub async fn commits(url: &str) -> anyhow::Result<i64> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .context("connecting for pg_stat_database")?;
    let commits: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut connection)
    .await?;
    let _ = connection.close().await;
    Ok(commits)
}
