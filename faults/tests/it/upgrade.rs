//! Upgrade in place, end to end: an outbox on the row-by-row schema (the
//! first two migrations) with rows published and counted, one counted whose
//! mark was lost, one published and still in the queue in the old message
//! format, two unpublished; a `tally-ledger v1` file counting what was
//! counted. Then the new adder and totaler binaries start on them, new Adds
//! arrive, and every sum must be counted exactly once, as `totaler verify`
//! and the total agree.

use std::{path::Path, time::Duration};

use proto::tally::v1::AddRequest;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions};

use crate::support::{Pair, temp_dir, verify};

/// The last migration of the row-by-row relay.
const ROW_BY_ROW_SCHEMA: i64 = 20261122000001;

#[tokio::test(flavor = "multi_thread")]
async fn an_old_outbox_and_a_v1_ledger_upgrade_without_losing_or_doubling_a_sum() {
    let database = testkit::database::fresh().await;
    let queue = testkit::unique_queue("upgrade");
    let broker = testkit::Broker::connect(&queue).await;
    let outbox = PgPoolOptions::new()
        .max_connections(2)
        .connect(&database)
        .await
        .expect("connect");
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../adder/migrations");
    Migrator::new(migrations)
        .await
        .expect("the migrations")
        .run_to(ROW_BY_ROW_SCHEMA, &outbox)
        .await
        .expect("the old schema");
    // Rows 1-6 published and counted; 7 counted but its mark lost; 8
    // published, its message still in the queue; 9 and 10 never published.
    sqlx::query(
        "INSERT INTO outbox (a, b, sum, published_at) SELECT i * 100, i, i * 101, \
         CASE WHEN i <= 6 OR i = 8 THEN clock_timestamp() END FROM generate_series(1, 10) i",
    )
    .execute(&outbox)
    .await
    .expect("old rows");
    let source: String = sqlx::query_scalar("SELECT source::text FROM outbox_source")
        .fetch_one(&outbox)
        .await
        .expect("the source");
    let old_sum =
        |rows: std::ops::RangeInclusive<i64>| rows.map(|i| i128::from(i * 101)).sum::<i128>();
    let dir = temp_dir("upgrade");
    let sum_file = dir.join("sum.txt");
    std::fs::write(
        &sum_file,
        format!("{}\ntally-ledger v1\nsource {source} 7\n", old_sum(1..=7)),
    )
    .expect("a v1 ledger");
    broker
        .publish(
            format!(r#"{{"source":"{source}","published_us":1,"sums":[[8,808,1]]}}"#).as_bytes(),
        )
        .await;

    let mut pair = Pair::new(&database, &queue, &sum_file, &dir, &[]);
    pair.totaler.start().await.expect("start the totaler");
    pair.start_adder().await;
    let mut client = pair.client().await;
    let mut expected = old_sum(1..=10);
    for i in 0..25i64 {
        client
            .add(AddRequest {
                a: i,
                b: 1_000_000,
                request_id: String::new(),
            })
            .await
            .expect("a new Add");
        expected += i128::from(i + 1_000_000);
    }
    testkit::eventually(Duration::from_secs(30), "every sum counted", || async {
        let text = std::fs::read_to_string(&sum_file).ok()?;
        text.starts_with(&format!("{expected}\n")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pair.totaler.terminate().await.expect("stop the totaler");
    pair.adder.terminate().await.expect("stop the adder");
    let text = std::fs::read_to_string(&sum_file).expect("the ledger");
    assert!(
        text.starts_with(&format!("{expected}\n")),
        "nothing counted twice: {text}"
    );
    assert!(text.contains("tally-ledger v3"), "converted: {text}");
    assert!(
        text.contains(&format!("legacy {source} 1-10\n")),
        "every legacy row once: {text}"
    );
    let (ok, report) = verify(&sum_file, &database);
    assert!(ok, "verify after the upgrade: {report}");
    broker.delete().await;
}
