//! Group commit really groups: concurrent Adds share transactions (the
//! outbox's `xid` is the inserting transaction's id), a small group waits
//! for the commit in flight no longer than about one commit's time, and
//! full ones overlap. And the cross-adder `ON CONFLICT` path: the same
//! request id sent to two adders on one database at once gives one row, and
//! both answers name it.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures_util::future::join_all;
use sqlx::{Connection, PgConnection};
use testkit::database;

use crate::support::{call, config, pool, spawn_adder};

#[tokio::test]
async fn concurrent_adds_share_group_commits() {
    let db = database::fresh().await;
    let mut settings = config(&db, &testkit::amqp_url(), &testkit::unique_queue("group"));
    settings.commit_writers = Some(1);
    let adder = spawn_adder(settings).await;
    let client = adder.client().await;
    let adds = (0..200).map(|i| {
        let mut client = client.clone();
        async move { call(&mut client, i, 1, "").await.expect("Add").sum }
    });
    let sums = join_all(adds).await;
    assert_eq!(sums, (1..=200).collect::<Vec<_>>());
    let (rows, transactions): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xid) FROM outbox")
            .fetch_one(&pool(&db).await)
            .await
            .expect("count the transactions");
    println!("200 concurrent Adds committed in {transactions} transactions");
    assert_eq!(rows, 200);
    assert!(
        transactions * 4 <= rows,
        "200 concurrent Adds through one writer share commits: {transactions} transactions"
    );
    adder.stop().await;
}

/// What eight writers did with `adds` Adds sent while the first Add's
/// commit was held by a lock: how many INSERTs were waiting on it a second
/// later, and in how many transactions all `1 + adds` committed once it
/// was released.
async fn adds_behind_a_held_commit(adds: i64) -> (i64, i64) {
    let db = database::fresh().await;
    let mut settings = config(&db, &testkit::amqp_url(), &testkit::unique_queue("held"));
    settings.db_pool = 16;
    settings.commit_writers = Some(8);
    let adder = spawn_adder(settings).await;
    let client = adder.client().await;
    let mut holder = PgConnection::connect(&db).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE outbox IN SHARE MODE")
        .execute(&mut holder)
        .await
        .expect("hold off INSERTs");
    let send = |i: i64| {
        let mut client = client.clone();
        tokio::spawn(async move { call(&mut client, i, 1, "").await })
    };
    let first = send(0);
    let observer = pool(&db).await;
    let waiting = || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE relation = 'outbox'::regclass AND NOT granted",
        )
        .fetch_one(&observer)
        .await
        .expect("read pg_locks");
        waiting
    };
    for _ in 0..100 {
        if waiting().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        waiting().await,
        1,
        "the first Add's INSERT waits for the lock"
    );
    let rest: Vec<_> = (1..=adds).map(send).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let blocked = waiting().await;
    sqlx::query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("release");
    first.await.expect("join").expect("the first Add");
    for add in rest {
        add.await.expect("join").expect("an Add");
    }
    let (rows, transactions): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xid) FROM outbox")
            .fetch_one(&observer)
            .await
            .expect("count the transactions");
    assert_eq!(rows, 1 + adds);
    adder.stop().await;
    (blocked, transactions)
}

/// A small group waits for the commit in flight only about one commit's
/// time (issue 21): a commit that never ends (here a lock holds it) must not
/// hold every other Add back, so after a second the 50 Adds' own INSERTs
/// are sent too. They still group: at most one INSERT per writer.
#[tokio::test]
async fn a_small_group_waits_for_the_commit_in_flight_only_about_one_commits_time() {
    let (waiting, transactions) = adds_behind_a_held_commit(50).await;
    println!(
        "50 Adds behind a held commit: {waiting} INSERTs waiting, {transactions} transactions"
    );
    assert!(
        waiting >= 2,
        "the 50 Adds waited for the held commit as long as it lasted: {waiting} INSERTs waiting"
    );
    assert!(
        transactions <= 1 + 8,
        "the 50 Adds committed in groups, at most one per writer: {transactions} transactions"
    );
}

#[tokio::test]
async fn full_groups_commit_beside_the_commit_in_flight() {
    let (waiting, _) = adds_behind_a_held_commit(250).await;
    println!("250 Adds behind a held commit: {waiting} INSERTs waiting");
    assert!(
        waiting >= 2,
        "a group of 100 Adds or more commits beside the held one: {waiting} INSERTs waiting"
    );
}

#[tokio::test]
async fn the_same_request_id_sent_to_two_adders_at_once_is_one_row() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("two-ids");
    let first = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    let second = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    let clients = [first.client().await, second.client().await];
    let calls = (0..100i64).flat_map(|i| {
        clients.iter().map(move |client| {
            let mut client = client.clone();
            async move {
                let id = format!("both-{i}");
                (id.clone(), call(&mut client, i, 7, &id).await)
            }
        })
    });
    let mut answers: HashMap<String, Vec<(i64, bool)>> = HashMap::new();
    for (id, result) in join_all(calls).await {
        let response = result.unwrap_or_else(|e| panic!("{id}: {e:?}"));
        let i: i64 = id["both-".len()..].parse().expect("a number");
        assert_eq!(response.sum, i + 7, "{id}");
        answers
            .entry(id)
            .or_default()
            .push((response.outbox_id, response.replayed));
    }
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT request_id, id FROM outbox")
        .fetch_all(&pool(&db).await)
        .await
        .expect("read the outbox");
    assert_eq!(rows.len(), 100, "one row per request id");
    let ids: HashSet<&String> = rows.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 100);
    for (request_id, row) in &rows {
        let pair = &answers[request_id];
        assert_eq!(pair.len(), 2);
        assert!(
            pair.iter().all(|(id, _)| id == row),
            "{request_id}: both answers name row {row}: {pair:?}"
        );
        assert_eq!(
            pair.iter().filter(|(_, replayed)| !replayed).count(),
            1,
            "{request_id}: one answer recorded it, the other replayed it: {pair:?}"
        );
    }
    first.stop().await;
    second.stop().await;
}
