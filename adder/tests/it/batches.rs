//! Snapshot batches against a real PostgreSQL and RabbitMQ: batches are the
//! same rows when read again, a slow transaction's rows land in a later
//! batch, a relay whose confirms never came republishes its batch
//! identically, a standby relay takes over, legacy rows are published once,
//! and a copied or promoted database is detected.

use std::{collections::BTreeSet, time::Duration};

use adder::outbox::{Active, Error, Outbox, Standby};
use testkit::{Broker, Proxy, database, proxy::target_of};

use crate::support::{call, config, drain_messages, outbox_counts, pool, rows, spawn_adder};

async fn open(url: &str) -> Outbox {
    Outbox::open(url, 4, 2).await.expect("open the outbox")
}

async fn record(outbox: &Outbox, n: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(outbox.record(i, 1, i + 1, None).await.expect("record").id);
    }
    ids
}

async fn active(outbox: &Outbox) -> Active {
    Active::try_acquire(outbox, &mut Standby::default())
        .await
        .expect("the relay lock")
        .expect("no other relay")
}

#[tokio::test]
async fn batches_are_dense_and_the_same_rows_when_read_again() {
    let db = database::fresh().await;
    let outbox = open(&db).await;
    let ids = record(&outbox, 250).await;
    let mut active = active(&outbox).await;
    let mut seen = Vec::new();
    let mut numbers = Vec::new();
    while let Some(cut) = active.cut(100, 30).await.expect("cut") {
        let (batch, first) = (cut.claim, cut.rows);
        let again = active.rows(&batch).await.expect("rows again");
        assert_eq!(first, again, "batch {} read again", batch.id);
        assert_eq!(first.len() as i64, batch.rows);
        numbers.push(batch.id);
        seen.extend(first.iter().map(|r| r.id));
    }
    assert_eq!(numbers, vec![1, 2, 3], "dense, 100 rows at most each");
    assert_eq!(seen, ids, "every row once, in id order");
    // The last batch used its pair up; the next cut opens the next pair.
    let later = record(&outbox, 20).await;
    let cut = active
        .cut(100, 30)
        .await
        .expect("cut")
        .expect("a fourth batch");
    assert_eq!(cut.claim.id, 4);
    assert_eq!(cut.rows.iter().map(|r| r.id).collect::<Vec<_>>(), later);
    assert_eq!(active.rows(&cut.claim).await.expect("rows again"), cut.rows);
    assert!(active.cut(100, 30).await.expect("cut").is_none());
    let unconfirmed = active.unconfirmed().await.expect("unconfirmed");
    assert_eq!(unconfirmed.len(), 4);
    for batch in unconfirmed {
        let cut = active.claim(batch).await.expect("claim");
        active.confirm(cut.claim).await.expect("confirm");
    }
    assert!(active.unconfirmed().await.expect("unconfirmed").is_empty());
    assert_eq!(
        outbox_counts(&pool(&db).await).await.1,
        0,
        "nothing pending"
    );
}

#[tokio::test]
async fn a_slow_transactions_rows_land_in_a_later_batch_and_none_is_lost() {
    let db = database::fresh().await;
    let outbox = open(&db).await;
    let slow_pool = pool(&db).await;
    let mut slow = slow_pool.begin().await.expect("begin");
    let slow_ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO outbox (a, b, sum) SELECT i, 0, i FROM generate_series(1, 75) i RETURNING id",
    )
    .fetch_all(&mut *slow)
    .await
    .expect("the slow rows");
    let later = record(&outbox, 1100).await;
    let mut active = active(&outbox).await;
    let mut published = Vec::new();
    while let Some(cut) = active.cut(500, 100).await.expect("cut") {
        published.extend(cut.rows.iter().map(|r| r.id));
    }
    assert_eq!(
        published, later,
        "the open transaction's rows are not overtaken"
    );
    slow.commit().await.expect("the slow commit");
    let cut = active
        .cut(500, 100)
        .await
        .expect("cut")
        .expect("a later batch");
    let rows: Vec<i64> = cut.rows.iter().map(|r| r.id).collect();
    assert_eq!(
        rows, slow_ids,
        "the slow rows, all of them, in the next batch"
    );
    assert!(
        slow_ids.iter().all(|id| *id < later[0]),
        "their ids are older"
    );
    assert!(active.cut(500, 100).await.expect("cut").is_none());
}

#[tokio::test]
async fn a_relay_whose_confirms_never_came_republishes_its_batch_identically() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("republish");
    let broker = Broker::connect(&queue).await;
    let proxy = Proxy::start(target_of(&testkit::amqp_url())).await;
    let mut settings = config(&db, &proxy.url(&testkit::amqp_url()), &queue);
    settings.relay_confirm_timeout_ms = 1_000;
    settings.relay_pack = 2;
    let adder = spawn_adder(settings).await;
    let outbox = pool(&db).await;
    testkit::eventually(Duration::from_secs(20), "the relay to connect", || async {
        crate::support::http(adder.http, "GET", "/readyz", "")
            .await
            .filter(|(_, body)| body.contains(r#""broker":true"#))
    })
    .await;
    proxy.hold_replies();
    let mut client = adder.client().await;
    for i in 0..5 {
        call(&mut client, i, 10, "").await.expect("Add");
    }
    testkit::eventually(
        Duration::from_secs(20),
        "the parts to reach the queue",
        || async { (broker.count(&queue).await >= 3).then_some(()) },
    )
    .await;
    // Past the confirm timeout the relay gives the channel up.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        outbox_counts(&outbox).await.1,
        5,
        "not confirmed, not marked"
    );
    proxy.release_replies();
    testkit::eventually(
        Duration::from_secs(30),
        "the batch to be confirmed",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    let messages = drain_messages(&broker).await;
    let mut by_id = std::collections::BTreeMap::new();
    for message in &messages {
        let part = message.part.expect("a batch part");
        by_id
            .entry((part.batch, part.part, part.parts))
            .or_insert_with(Vec::new)
            .push(message.sums.clone());
    }
    assert!(
        messages.len() > by_id.len(),
        "some part was published again: {} messages, {} parts",
        messages.len(),
        by_id.len()
    );
    for ((batch, part, parts), copies) in &by_id {
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "batch {batch} part {part}/{parts} differs"
        );
    }
    let seqs: BTreeSet<i64> = rows(&messages).map(|r| r.seq).collect();
    assert_eq!(seqs.len(), 5);
    adder.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn a_standby_relay_takes_over_when_the_active_one_stops() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("standby");
    let broker = Broker::connect(&queue).await;
    let first = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    let second = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    let active_of = |http| async move {
        let (_, body) = crate::support::http(http, "GET", "/metrics", "")
            .await
            .expect("metrics");
        body.lines().any(|l| l == "adder_relay_active 1")
    };
    let (active, standby) =
        testkit::eventually(Duration::from_secs(20), "one active relay", || async {
            match (active_of(first.http).await, active_of(second.http).await) {
                (true, false) => Some((first.http, second.http)),
                (false, true) => Some((second.http, first.http)),
                _ => None,
            }
        })
        .await;
    let (stopping, staying) = if active == first.http {
        (first, second)
    } else {
        (second, first)
    };
    let mut client = staying.client().await;
    for i in 0..20 {
        call(&mut client, i, 1, "").await.expect("Add");
    }
    stopping.stop().await;
    for i in 20..40 {
        call(&mut client, i, 1, "").await.expect("Add");
    }
    let outbox = pool(&db).await;
    testkit::eventually(
        Duration::from_secs(10),
        "the standby to publish everything",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    assert!(
        active_of(standby).await,
        "the standby is the active relay now"
    );
    let messages = drain_messages(&broker).await;
    let seqs: BTreeSet<i64> = rows(&messages).map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=40).collect(), "every row");
    staying.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn legacy_rows_are_published_once_as_legacy_messages() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("legacy");
    let broker = Broker::connect(&queue).await;
    drop(open(&db).await);
    let outbox = pool(&db).await;
    // Rows as the upgrade leaves them: no xid; two already published.
    sqlx::query(
        "INSERT INTO outbox (a, b, sum, xid, published_at) \
         SELECT i, 0, i, NULL, CASE WHEN i <= 2 THEN clock_timestamp() END FROM generate_series(1, 6) i",
    )
    .execute(&outbox)
    .await
    .expect("legacy rows");
    let adder = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    call(&mut adder.client().await, 100, 0, "")
        .await
        .expect("a new Add");
    testkit::eventually(Duration::from_secs(20), "everything confirmed", || async {
        (outbox_counts(&outbox).await.1 == 0).then_some(())
    })
    .await;
    let messages = drain_messages(&broker).await;
    let legacy: Vec<i64> = messages
        .iter()
        .filter(|m| m.part.is_none())
        .flat_map(|m| m.sums.iter().map(|s| s.seq))
        .collect();
    assert_eq!(
        legacy,
        vec![3, 4, 5, 6],
        "the unpublished legacy rows, once"
    );
    let batched: Vec<i64> = messages
        .iter()
        .filter(|m| m.part.is_some())
        .flat_map(|m| m.sums.iter().map(|s| s.sum))
        .collect();
    assert_eq!(batched, vec![100], "the new row in a batch");
    adder.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn a_database_copied_from_an_outbox_is_refused() {
    let db = database::fresh().await;
    let outbox = open(&db).await;
    record(&outbox, 3).await;
    // Its connections close once the outbox and its writers are gone.
    drop(outbox);
    let name = format!("{}_copy", db.rsplit('/').next().expect("a database name"));
    let admin = pool(&testkit::database::base_url()).await;
    testkit::eventually(Duration::from_secs(10), "the copy", || async {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE {}",
            db.rsplit('/').next().expect("a database name")
        )))
        .execute(&admin)
        .await
        .ok()
    })
    .await;
    let copy = testkit::database::with_database(&db, &name);
    let opened = Outbox::open(&copy, 2, 1).await;
    let Err(error) = opened else {
        panic!("a copy of an outbox opened as if it were the outbox");
    };
    assert!(error.is_fatal(), "{error}");
    assert!(matches!(error, Error::Copied(_)));
    assert!(error.to_string().contains("logical copy"), "{error}");
}

#[tokio::test]
async fn a_new_timeline_continues_under_a_new_source_numbered_from_one() {
    let db = database::fresh().await;
    let outbox = open(&db).await;
    record(&outbox, 3).await;
    let before = outbox.source().await.expect("source");
    let mut relay = active(&outbox).await;
    let first = relay
        .cut(100, 100)
        .await
        .expect("cut")
        .expect("a batch")
        .claim
        .clone();
    assert_eq!((first.source, first.id), (before, 1));
    relay.release().await;
    // As after a promotion: the stored timeline is not the database's.
    sqlx::query("UPDATE outbox_source SET timeline = timeline + 1")
        .execute(&pool(&db).await)
        .await
        .expect("rewind the stored timeline");
    record(&outbox, 2).await;
    let mut relay = active(&outbox).await;
    let after = outbox.source().await.expect("source");
    assert_ne!(after, before, "a new source");
    let unconfirmed = relay.unconfirmed().await.expect("unconfirmed");
    assert_eq!(
        unconfirmed,
        vec![first],
        "the old batch keeps its source and number"
    );
    let next = relay
        .cut(100, 100)
        .await
        .expect("cut")
        .expect("a batch")
        .claim
        .clone();
    assert_eq!((next.source, next.id, next.rows), (after, 1, 2));
    let sources: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_sources")
        .fetch_one(&pool(&db).await)
        .await
        .expect("sources");
    assert_eq!(sources, 2, "verify knows both");
}
