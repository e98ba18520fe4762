//! Two outbox databases behind one adder (`DATABASE_URL` lists both): the
//! totaler counts both sources exactly, and `totaler verify` checks every
//! source, passing on an exact run and failing once one database's
//! counted batch is gone. Real adder (in-process), real totaler, two fresh
//! databases on the test server.

use sqlx::{Connection, PgConnection};
use testkit::{Broker, amqp_url, database, unique_queue};

use crate::support::{add_all, config, spawn_adder, spawn_totaler, temp_dir, verify, wait_total};

/// Batches of the outbox at `url`.
async fn batches(url: &str) -> i64 {
    let mut db = PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT count(*) FROM outbox_batch")
        .fetch_one(&mut db)
        .await
        .expect("count the batches")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_both_databases_and_finds_a_counted_batch_one_of_them_lost() {
    let urls = [database::fresh().await, database::fresh().await];
    let list = format!("{} {}", urls[0], urls[1]);
    let (queue, dir) = (unique_queue("outboxes-verify"), temp_dir("outboxes-verify"));
    let broker = Broker::connect(&queue).await;
    let sum_file = dir.join("sum.txt");
    let totaler = spawn_totaler(config(&amqp_url(), &queue, &sum_file)).await;
    let (endpoint, stop) = spawn_adder(&list, &queue).await;
    let mut counted = add_all(&endpoint, "first", 1..41).await;
    wait_total(&totaler, counted).await;
    counted += add_all(&endpoint, "second", 100..141).await;
    wait_total(&totaler, counted).await;
    let exact = verify(&sum_file, &list).await;
    assert_eq!(exact.discrepancies, 0, "{}", exact.report);
    assert!(exact.report.contains("(database 2)"), "{}", exact.report);
    assert!(
        exact
            .report
            .contains(&format!("total: ledger {counted} = outbox {counted}")),
        "{}",
        exact.report
    );
    for url in &urls {
        assert!(
            batches(url).await >= 2,
            "each database cut batches of both rounds"
        );
    }

    let mut second = PgConnection::connect(&urls[1]).await.expect("connect");
    sqlx::query("DELETE FROM outbox_batch WHERE id = (SELECT min(id) FROM outbox_batch)")
        .execute(&mut second)
        .await
        .expect("remove database 2's first batch");
    let lost = verify(&sum_file, &list).await;
    assert!(lost.discrepancies >= 1, "{}", lost.report);
    assert!(lost.report.contains("TOTAL ledger"), "{}", lost.report);
    drop(stop);
    totaler.stop().await;
    broker.delete().await;
}
