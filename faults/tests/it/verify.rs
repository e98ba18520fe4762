//! `totaler verify` end to end: the real adder and totaler binaries against
//! the test PostgreSQL and RabbitMQ, then the real `totaler verify`, on a
//! clean system (exit 0) and on deliberately broken ones (exit 1, naming
//! what is missing, extra, and the total's difference).

use std::time::Duration;

use proto::tally::v1::AddRequest;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::support::{Pair, temp_dir, verify};

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_a_clean_system_and_names_what_a_broken_one_lacks() {
    let database = testkit::database::fresh().await;
    let queue = testkit::unique_queue("verify");
    let broker = testkit::Broker::connect(&queue).await;
    let dir = temp_dir("verify");
    let sum_file = dir.join("sum.txt");
    let mut pair = Pair::new(
        &database,
        &queue,
        &sum_file,
        &dir,
        &[("ADDER_RELAY_PACK", "3")],
    );
    pair.start_adder().await;
    pair.totaler.start().await.expect("start the totaler");
    let mut client = pair.client().await;
    let mut expected = 0i128;
    for i in 0..40i64 {
        let request = AddRequest {
            a: i * 1000,
            b: 7,
            request_id: String::new(),
        };
        client.add(request).await.expect("Add");
        expected += i128::from(i * 1000 + 7);
    }
    let outbox = pool(&database).await;
    testkit::eventually(Duration::from_secs(30), "everything counted", || async {
        let text = std::fs::read_to_string(&sum_file).ok()?;
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox_batch WHERE confirmed_at IS NULL")
                .fetch_one(&outbox)
                .await
                .ok()?;
        (text.starts_with(&format!("{expected}\n")) && pending == 0).then_some(())
    })
    .await;
    pair.totaler.terminate().await.expect("stop the totaler");
    pair.adder.terminate().await.expect("stop the adder");

    let (ok, report) = verify(&sum_file, &database);
    assert!(ok, "a clean system verifies: {report}");
    assert!(
        report.contains(&format!("total: ledger {expected} = outbox {expected}")),
        "{report}"
    );

    // Broken 1: the ledger's total is off by one.
    let good = std::fs::read_to_string(&sum_file).expect("the ledger");
    let body = good.split_once('\n').expect("a first line").1;
    std::fs::write(&sum_file, format!("{}\n{body}", expected + 1)).expect("a wrong total");
    let (ok, report) = verify(&sum_file, &database);
    assert!(!ok);
    assert!(
        report.contains("TOTAL") && report.contains("difference 1"),
        "{report}"
    );
    std::fs::write(&sum_file, &good).expect("the good ledger back");

    // Broken 2: the outbox holds a confirmed batch the ledger never applied.
    sqlx::query(
        "INSERT INTO outbox_batch (source, id, lo, hi, pack, rows, total, first_id, last_id, created_at, confirmed_at) \
         SELECT source, id + 1, hi, hi, pack, 1, 555, last_id + 1, last_id + 1, created_at, confirmed_at \
         FROM outbox_batch ORDER BY id DESC LIMIT 1",
    )
    .execute(&outbox)
    .await
    .expect("a batch the ledger does not have");
    let (ok, report) = verify(&sum_file, &database);
    assert!(!ok);
    assert!(
        report.contains("MISSING") && report.contains("sum 555"),
        "{report}"
    );
    sqlx::query("DELETE FROM outbox_batch WHERE total = 555")
        .execute(&outbox)
        .await
        .expect("remove it");

    // Broken 3: the ledger claims batches the outbox never cut (or lost:
    // a rewound database).
    let source: String = sqlx::query_scalar("SELECT source::text FROM outbox_source")
        .fetch_one(&outbox)
        .await
        .expect("the source");
    let newest: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox_batch")
        .fetch_one(&outbox)
        .await
        .expect("the newest batch");
    let forged = good.replace(
        &format!("source {source} 1-{newest}\n"),
        &format!("source {source} 1-{}\n", newest + 5),
    );
    assert_ne!(
        forged, good,
        "the ledger has the source's horizon line: {good}"
    );
    std::fs::write(&sum_file, &forged).expect("a ledger ahead of its outbox");
    let (ok, report) = verify(&sum_file, &database);
    assert!(!ok);
    assert!(report.contains("REWOUND"), "{report}");
    broker.delete().await;
}
