//! Retention's purge when two adders' housekeeping purge one outbox at
//! once: `purged_through` (what `totaler verify` takes as purged) never
//! moves backwards, and every batch is purged once, its rows and sum kept.

use std::time::Duration;

use adder::outbox::{Active, Outbox, Standby};
use sqlx::PgPool;
use testkit::database;

use crate::support::pool;

/// Records `n` Adds, then cuts and confirms them as one batch.
async fn confirmed_batch(outbox: &Outbox, active: &mut Active, n: i64) {
    for i in 0..n {
        outbox.record(i, 1, i + 1, None).await.expect("record");
    }
    let cut = active.cut(1000, 100).await.expect("cut").expect("a batch");
    active.confirm(cut.claim).await.expect("confirm");
}

async fn purged(pool: &PgPool) -> (i64, i64, String) {
    sqlx::query_as("SELECT purged_through, purged_rows, purged_total::text FROM outbox_sources")
        .fetch_one(pool)
        .await
        .expect("the purged totals")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_purges_at_once_never_move_purged_through_backwards() {
    let db = database::fresh().await;
    let outbox = Outbox::open(&db, 4, 1).await.expect("open the outbox");
    let mut active = Active::try_acquire(&outbox, &mut Standby::default())
        .await
        .expect("the relay lock")
        .expect("no other relay");
    for _ in 0..3 {
        confirmed_batch(&outbox, &mut active, 5).await;
    }
    let check = pool(&db).await;
    // A row of batch 1 held: the first purge takes batches 1..=3 and waits
    // on it in the middle of its transaction.
    let mut held = check.begin().await.expect("begin");
    sqlx::query("SELECT id FROM outbox ORDER BY id LIMIT 1 FOR UPDATE")
        .fetch_one(&mut *held)
        .await
        .expect("hold a row of batch 1");
    let first = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.purge(Duration::ZERO, 1000).await }
    });
    testkit::eventually(
        Duration::from_secs(20),
        "the first purge to wait",
        || async {
            let waiting: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
                    .fetch_one(&check)
                    .await
                    .expect("pg_locks");
            (waiting > 0).then_some(())
        },
    )
    .await;
    // Meanwhile two more batches are confirmed; another adder purges.
    for _ in 0..2 {
        confirmed_batch(&outbox, &mut active, 5).await;
    }
    outbox
        .purge(Duration::ZERO, 1000)
        .await
        .expect("the second purge");
    let after_second = purged(&check).await.0;
    held.rollback().await.expect("release the row");
    first
        .await
        .expect("the first purge's task")
        .expect("the first purge");
    let after_first = purged(&check).await.0;
    assert!(
        after_first >= after_second,
        "purged_through moved backwards, from {after_second} to {after_first}"
    );
    while outbox.purge(Duration::ZERO, 1000).await.expect("purge") > 0 {}
    assert_eq!(
        purged(&check).await,
        (5, 25, "75".to_owned()),
        "every batch purged once, its rows and sum kept"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_batch")
        .fetch_one(&check)
        .await
        .expect("count batches");
    assert_eq!(left, 0);
}
