//! Group commit really groups: concurrent Adds share transactions (the
//! outbox's `xid` is the inserting transaction's id). And the cross-adder
//! `ON CONFLICT` path: the same request id sent to two adders on one
//! database at once gives one row, and both answers name it.

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;
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
