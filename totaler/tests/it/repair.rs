//! `totaler verify` after retention and the repairs it points to: legacy
//! rows purged by retention still count in the outbox's total, legacy rows
//! an old relay purged before are a warning, and a lost batch is found
//! MISSING, republished with the `adder republish` command verify prints,
//! and counted once however often it is republished.

use std::{path::Path, time::Duration};

use adder::outbox::Outbox;
use sqlx::PgPool;
use testkit::{Broker, amqp_url, database};
use uuid::Uuid;

use crate::support::{
    add_all, config, file_total, settle, spawn_adder, spawn_totaler, temp_dir, verify, wait_total,
};

/// An outbox with legacy rows 1..=10 (sums 1..=10, 55 in all) that an old
/// relay published, and a ledger that counted them; the outbox and its pool.
async fn legacy_outbox(test: &str) -> (String, Outbox, PgPool, std::path::PathBuf) {
    let db = database::fresh().await;
    let outbox = Outbox::open(&db, 2, 1).await.expect("open the outbox");
    let pool = sqlx::PgPool::connect(&db).await.expect("a pool");
    sqlx::query(
        "INSERT INTO outbox (a, b, sum, xid, published_at) \
         SELECT i, 0, i, NULL, clock_timestamp() FROM generate_series(1, 10) i",
    )
    .execute(&pool)
    .await
    .expect("legacy rows");
    let source: Uuid = sqlx::query_scalar("SELECT source FROM outbox_sources")
        .fetch_one(&pool)
        .await
        .expect("the source");
    let sum_file = temp_dir(test).join("sum.txt");
    write_ledger(
        &sum_file,
        &format!("55\ntally-ledger v1\nsource {source} 10\n"),
    );
    (db, outbox, pool, sum_file)
}

fn write_ledger(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the ledger");
}

async fn purge_all(outbox: &Outbox) {
    while outbox.purge(Duration::ZERO, 1000).await.expect("purge") > 0 {}
}

#[tokio::test]
async fn legacy_rows_purged_by_retention_still_count_in_the_total() {
    let (db, outbox, pool, sum_file) = legacy_outbox("legacy-purged").await;
    let before = verify(&sum_file, &db).await;
    assert_eq!(before.discrepancies, 0, "{}", before.report);

    purge_all(&outbox).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("count rows");
    assert_eq!(left, 0, "every published legacy row is purged");
    let after = verify(&sum_file, &db).await;
    assert_eq!(after.discrepancies, 0, "{}", after.report);
    assert!(
        after.report.contains("total: ledger 55 = outbox 55"),
        "{}",
        after.report
    );
}

#[tokio::test]
async fn legacy_rows_an_old_relay_purged_are_a_warning_not_a_failure() {
    let (db, outbox, pool, sum_file) = legacy_outbox("legacy-old-purge").await;
    // The old relay's retention deleted rows 1..=3 (sum 6) and kept no count.
    sqlx::query("DELETE FROM outbox WHERE id <= 3")
        .execute(&pool)
        .await
        .expect("an old purge");
    for findings in [verify(&sum_file, &db).await, {
        purge_all(&outbox).await;
        verify(&sum_file, &db).await
    }] {
        assert_eq!(findings.discrepancies, 0, "{}", findings.report);
        assert!(
            findings
                .report
                .contains("WARNING legacy rows purged before this version: 3 legacy row ids"),
            "{}",
            findings.report
        );
        assert!(
            findings.report.contains("difference 6"),
            "{}",
            findings.report
        );
    }
}

/// Runs the `adder republish` command line `verify` printed (after
/// `adder republish`), with the adders' database, broker and queue.
async fn republish(
    line: &str,
    db: &str,
    queue: &str,
) -> anyhow::Result<adder::republish::Republished> {
    let printed = line
        .split("adder republish ")
        .nth(1)
        .expect("a command line");
    let amqp = testkit::amqp_url();
    let mut argv = vec![
        "adder republish",
        "--database-url",
        db,
        "--amqp-url",
        &amqp,
        "--queue",
        queue,
    ];
    argv.extend(printed.split_whitespace());
    let args = <adder::republish::Args as clap::Parser>::try_parse_from(argv)?;
    adder::republish::run(&args).await
}

/// Every `adder republish` line of a report.
fn commands(report: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.contains("adder republish --source"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_batch_is_found_missing_republished_and_counted_once() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("republish");
    let broker = Broker::connect(&queue).await;
    let sum_file = temp_dir("republish").join("sum.txt");
    let totaler = spawn_totaler(config(&amqp_url(), &queue, &sum_file)).await;
    let (endpoint, stop) = spawn_adder(&db, &queue).await;
    let mut counted = add_all(&endpoint, "before", 1..6).await;
    wait_total(&totaler, counted).await;

    // The totaler is away; batches the relay had confirmed are lost from
    // the queue (a purge, a lost broker disk).
    totaler.stop().await;
    let lost = add_all(&endpoint, "lost", 100..105).await;
    let pool = PgPool::connect(&db).await.expect("a pool");
    testkit::eventually(Duration::from_secs(30), "the lost rows confirmed", || async {
        let confirmed: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(rows), 0)::bigint FROM outbox_batch WHERE confirmed_at IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .expect("count confirmed rows");
        (confirmed == 10).then_some(())
    })
    .await;
    assert!(
        !broker.drain(&queue).await.is_empty(),
        "the lost batches' parts"
    );
    counted += add_all(&endpoint, "after", 1000..1005).await;
    let totaler = spawn_totaler(config(&amqp_url(), &queue, &sum_file)).await;
    wait_total(&totaler, counted).await;

    let found = verify(&sum_file, &db).await;
    assert!(found.discrepancies >= 1, "{}", found.report);
    assert!(found.report.contains("MISSING source"), "{}", found.report);
    let lines = commands(&found.report);
    assert!(!lines.is_empty(), "{}", found.report);
    for line in &lines {
        republish(line, &db, &queue).await.expect("republish");
    }
    counted += lost;
    wait_total(&totaler, counted).await;
    let repaired = verify(&sum_file, &db).await;
    assert_eq!(repaired.discrepancies, 0, "{}", repaired.report);

    // Again: already applied, so nothing changes.
    for line in &lines {
        republish(line, &db, &queue).await.expect("republish again");
    }
    settle(&broker, "the repeats consumed", async || {
        totaler.sum().await == counted
    })
    .await;
    assert_eq!(file_total(&sum_file), counted);
    let again = verify(&sum_file, &db).await;
    assert_eq!(again.discrepancies, 0, "{}", again.report);

    refusals_and_purged(&db, &queue, &sum_file, counted).await;
    drop(stop);
    totaler.stop().await;
    broker.delete().await;
}

/// A batch not cut and a purged batch are refused, naming why; once purged,
/// a fresh ledger is told which batches it lacks and the sum they carried.
async fn refusals_and_purged(db: &str, queue: &str, sum_file: &Path, counted: i128) {
    let pool = PgPool::connect(db).await.expect("a pool");
    let (source, newest): (Uuid, i64) =
        sqlx::query_as("SELECT source, max(id) FROM outbox_batch GROUP BY source")
            .fetch_one(&pool)
            .await
            .expect("the newest batch");
    let line = format!("adder republish --source {source} --batches {}", newest + 1);
    let refused = republish(&line, db, queue).await.expect_err("not cut yet");
    assert!(
        refused.to_string().contains("is not cut yet"),
        "{refused:#}"
    );

    let outbox = Outbox::open(db, 2, 1).await.expect("open the outbox");
    purge_all(&outbox).await;
    let purged = verify(sum_file, db).await;
    assert_eq!(purged.discrepancies, 0, "{}", purged.report);
    let line = format!("adder republish --source {source} --batches 1..={newest}");
    let refused = republish(&line, db, queue).await.expect_err("purged");
    assert!(
        refused.to_string().contains("was purged by retention"),
        "{refused:#}"
    );

    let fresh = sum_file.with_file_name("fresh.txt");
    write_ledger(&fresh, "0\n");
    let lacking = verify(&fresh, db).await;
    assert!(
        lacking.report.contains(&format!(
            "MISSING source {source} batches 1..={newest}: confirmed, purged by retention"
        )),
        "{}",
        lacking.report
    );
    assert!(
        lacking.report.contains(&format!("missing sum {counted}:")),
        "{}",
        lacking.report
    );
}
