//! The relay: rows become messages, are marked only after the broker's
//! confirm, survive a broker outage, are packed into parts of at most
//! ADDER_RELAY_PACK rows (1: a message per row) with the documented AMQP
//! properties, two adders publish every row, a lost broker node is left
//! for the next one of the list, and through a fanout exchange every bound
//! queue (a replica totaler's) gets every row.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures_util::future::join_all;
use proto::SumMessage;
use testkit::{Broker, Proxy, database, proxy::target_of};

use crate::support::{call, config, drain_messages, outbox_counts, pool, rows, spawn_adder};

#[tokio::test]
async fn row_is_marked_published_only_after_the_broker_confirms_it() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("confirm");
    let broker = Broker::connect(&queue).await;
    let proxy = Proxy::start(target_of(&testkit::amqp_url())).await;
    let adder = spawn_adder(config(&db, &proxy.url(&testkit::amqp_url()), &queue)).await;
    testkit::eventually(Duration::from_secs(20), "the relay to connect", || async {
        crate::support::http(adder.http, "GET", "/readyz", "")
            .await
            .filter(|(_, body)| body.contains(r#""broker":true"#))
    })
    .await;
    // The broker receives what the relay publishes, but its confirms are held.
    proxy.hold_replies();
    let outbox = pool(&db).await;
    let response = call(&mut adder.client().await, 7, 8, "")
        .await
        .expect("Add");
    testkit::eventually(
        Duration::from_secs(20),
        "the message to reach the queue",
        || async { (broker.count(&queue).await == 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        outbox_counts(&outbox).await,
        (1, 1, 15),
        "no confirm, so the row stays unpublished"
    );

    proxy.release_replies();
    testkit::eventually(
        Duration::from_secs(20),
        "the row to be marked published",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    let messages = drain_messages(&broker).await;
    assert_eq!(messages.len(), 1);
    let [row] = messages[0].sums[..] else {
        panic!("one row in {:?}", messages[0]);
    };
    assert_eq!((row.seq, row.sum), (response.outbox_id, 15));
    assert!(messages[0].published_us >= row.created_us);
    adder.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn broker_outage_keeps_adds_succeeding_and_the_backlog_arrives_packed() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("outage");
    let broker = Broker::connect(&queue).await;
    let proxy = Proxy::start(target_of(&testkit::amqp_url())).await;
    let mut settings = config(&db, &proxy.url(&testkit::amqp_url()), &queue);
    settings.relay_pack = 7;
    let adder = spawn_adder(settings).await;
    let mut client = adder.client().await;
    call(&mut client, 1, 0, "").await.expect("Add");
    let outbox = pool(&db).await;
    testkit::eventually(
        Duration::from_secs(20),
        "the first row to be confirmed",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    proxy.cut();
    for i in 1..=50 {
        call(&mut client, i, 1, "")
            .await
            .expect("Adds succeed while the broker is away");
    }
    assert!(
        outbox_counts(&outbox).await.1 >= 50,
        "the backlog waits in the outbox"
    );
    proxy.restore();
    testkit::eventually(Duration::from_secs(30), "the backlog to drain", || async {
        (outbox_counts(&outbox).await.1 == 0).then_some(())
    })
    .await;
    let messages = drain_messages(&broker).await;
    let mut seqs: Vec<i64> = rows(&messages).map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=51).collect::<Vec<_>>(),
        "every row arrives exactly once"
    );
    let batches = assert_packed(&messages, 7);
    assert!(
        batches.values().any(|&rows| rows >= 14),
        "the backlog waited in the outbox and was cut into a batch of several full parts: {batches:?}"
    );
    adder.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn the_relay_moves_to_the_next_broker_node_when_its_node_is_lost() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("nodes");
    let broker = Broker::connect(&queue).await;
    // Two "nodes": two proxies to the one test broker.
    let first = Proxy::start(target_of(&testkit::amqp_url())).await;
    let second = Proxy::start(target_of(&testkit::amqp_url())).await;
    let nodes = format!(
        "{},{}",
        first.url(&testkit::amqp_url()),
        second.url(&testkit::amqp_url())
    );
    let adder = spawn_adder(config(&db, &nodes, &queue)).await;
    let mut client = adder.client().await;
    let outbox = pool(&db).await;
    call(&mut client, 1, 0, "").await.expect("Add");
    testkit::eventually(
        Duration::from_secs(20),
        "the first row to be confirmed through node 1",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    first.cut();
    for i in 1..=20 {
        call(&mut client, i, 1, "").await.expect("Add");
    }
    testkit::eventually(
        Duration::from_secs(30),
        "the rest to be confirmed through node 2 while node 1 stays lost",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    let mut seqs: Vec<i64> = rows(&drain_messages(&broker).await)
        .map(|r| r.seq)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (1..=21).collect::<Vec<_>>(), "every row arrived");
    adder.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn through_the_fanout_exchange_every_bound_queue_gets_every_row() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("fanout");
    let replica = testkit::unique_queue("fanout-replica");
    let exchange = format!("{queue}.fanout");
    let broker = Broker::connect(&queue).await;
    let replica_broker = Broker::connect(&replica).await;
    broker.bind(&queue, &exchange).await;
    broker.bind(&replica, &exchange).await;
    let mut settings = config(&db, &testkit::amqp_url(), &queue);
    settings.exchange = exchange.clone();
    let adder = spawn_adder(settings).await;
    let mut client = adder.client().await;
    for i in 1..=30 {
        call(&mut client, i, 1, "").await.expect("Add");
    }
    let outbox = pool(&db).await;
    testkit::eventually(
        Duration::from_secs(20),
        "every row to be confirmed",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    for broker in [&broker, &replica_broker] {
        let mut seqs: Vec<i64> = rows(&drain_messages(broker).await).map(|r| r.seq).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=30).collect::<Vec<_>>(),
            "{} got every row once",
            broker.queue
        );
    }
    adder.stop().await;
    broker.delete_exchange(&exchange).await;
    broker.delete().await;
    replica_broker.delete().await;
}

#[tokio::test]
async fn relay_pack_1_publishes_one_row_per_message_with_the_documented_properties() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("pack1");
    let broker = Broker::connect(&queue).await;
    let mut settings = config(&db, &testkit::amqp_url(), &queue);
    settings.relay_pack = 1;
    // A commit wakes the relay, which lingers: the concurrent Adds below
    // land in batches of several rows.
    settings.relay_linger_ms = 300;
    let adder = spawn_adder(settings).await;
    let client = adder.client().await;
    let adds = (0..20).map(|i| {
        let mut client = client.clone();
        async move { call(&mut client, i, 100, "").await.expect("Add") }
    });
    join_all(adds).await;
    let outbox = pool(&db).await;
    testkit::eventually(
        Duration::from_secs(20),
        "every row to be confirmed",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    let deliveries = broker.drain_deliveries(&queue).await;
    let messages: Vec<SumMessage> = deliveries
        .iter()
        .map(|d| SumMessage::decode(&d.data).expect("a valid message"))
        .collect();
    for (delivery, message) in deliveries.iter().zip(&messages) {
        let part = message.part.expect("a batch part");
        let properties = &delivery.properties;
        assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(
            properties.message_id().as_ref().map(|id| id.as_str()),
            Some(format!("{}/{}.{}", message.source, part.batch, part.part).as_str()),
            "message_id is <source>/<batch>.<part>"
        );
    }
    assert!(
        messages.iter().all(|m| m.sums.len() == 1),
        "one row per message"
    );
    let mut seqs: Vec<i64> = rows(&messages).map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "each row once");
    let batches = assert_packed(&messages, 1);
    assert!(
        batches.values().any(|&rows| rows > 1),
        "a batch of several rows was split into one message per row: {batches:?}"
    );
    adder.stop().await;
    broker.delete().await;
}

/// Asserts the relay's packing of `messages` (one delivery of each part):
/// each batch's parts are numbered 0..parts once each with one part count,
/// hold its rows in id order, at most `pack` per part, every part but the
/// last exactly `pack`. Returns the rows of each batch.
fn assert_packed(messages: &[SumMessage], pack: usize) -> BTreeMap<i64, usize> {
    let mut batches: BTreeMap<i64, Vec<&SumMessage>> = BTreeMap::new();
    for message in messages {
        let part = message.part.expect("a batch part");
        batches.entry(part.batch).or_default().push(message);
    }
    let mut sizes = BTreeMap::new();
    for (batch, mut parts) in batches {
        parts.sort_by_key(|m| m.part.map(|p| p.part));
        let count = parts[0].part.map(|p| p.parts);
        let numbers: Vec<u32> = parts
            .iter()
            .filter_map(|m| m.part.map(|p| p.part))
            .collect();
        assert_eq!(
            Some(numbers.clone()),
            count.map(|n| (0..n).collect::<Vec<_>>()),
            "batch {batch}: parts {numbers:?} of {count:?}, each once"
        );
        for (i, message) in parts.iter().enumerate() {
            assert_eq!(
                message.part.map(|p| p.parts),
                count,
                "batch {batch}: one part count"
            );
            let rows = message.sums.len();
            if i + 1 < parts.len() {
                assert_eq!(rows, pack, "batch {batch} part {i}: full but the last");
            } else {
                assert!(
                    (1..=pack).contains(&rows),
                    "batch {batch}: last part holds {rows} rows"
                );
            }
        }
        let seqs: Vec<i64> = parts
            .iter()
            .flat_map(|m| m.sums.iter().map(|s| s.seq))
            .collect();
        assert!(
            seqs.is_sorted(),
            "batch {batch}: rows in id order: {seqs:?}"
        );
        sizes.insert(batch, seqs.len());
    }
    sizes
}

#[tokio::test]
async fn two_adders_on_one_database_publish_every_row() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("two");
    let broker = Broker::connect(&queue).await;
    let first = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    let second = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    let mut tasks = Vec::new();
    for adder in [&first, &second] {
        for _ in 0..4 {
            let mut client = adder.client().await;
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    call(&mut client, i, 1, "").await.expect("Add");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("load task");
    }
    let outbox = pool(&db).await;
    testkit::eventually(
        Duration::from_secs(30),
        "every row to be published",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    let messages = drain_messages(&broker).await;
    let seqs: Vec<i64> = rows(&messages).map(|r| r.seq).collect();
    assert_eq!(seqs.len(), 800, "each row is published once");
    assert_eq!(
        seqs.into_iter().collect::<BTreeSet<_>>(),
        (1..=800).collect(),
        "all 800 rows arrive"
    );
    assert_eq!(
        messages
            .iter()
            .map(|m| m.source)
            .collect::<BTreeSet<_>>()
            .len(),
        1
    );
    first.stop().await;
    second.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn published_rows_past_retention_are_purged_and_unpublished_ones_kept() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("purge");
    let broker = Broker::connect(&queue).await;
    let adder = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    let mut client = adder.client().await;
    for i in 0..5 {
        call(&mut client, i, 1, "").await.expect("Add");
    }
    let outbox_pool = pool(&db).await;
    testkit::eventually(
        Duration::from_secs(20),
        "the rows to be published",
        || async { (outbox_counts(&outbox_pool).await.1 == 0).then_some(()) },
    )
    .await;
    adder.stop().await;
    sqlx::query("INSERT INTO outbox (a, b, sum) VALUES (1, 1, 2)")
        .execute(&outbox_pool)
        .await
        .expect("an unpublished row");
    let outbox = adder::outbox::Outbox::open(&db, 1, 1).await.expect("open");
    assert_eq!(
        outbox
            .purge(Duration::from_secs(3600), 100)
            .await
            .expect("purge"),
        0,
        "young rows stay"
    );
    let mut purged = 0;
    loop {
        match outbox.purge(Duration::ZERO, 100).await.expect("purge") {
            0 => break,
            n => purged += n,
        }
    }
    assert_eq!(purged, 5, "every row of a confirmed batch goes");
    assert_eq!(
        outbox_counts(&outbox_pool).await,
        (1, 1, 2),
        "the unpublished row is kept"
    );
    let (rows, total): (i64, String) =
        sqlx::query_as("SELECT purged_rows, purged_total::text FROM outbox_sources")
            .fetch_one(&outbox_pool)
            .await
            .expect("the purged totals");
    assert_eq!(
        (rows, total.as_str()),
        (5, "15"),
        "what was purged is kept as a sum"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_batch")
        .fetch_one(&outbox_pool)
        .await
        .expect("count batches");
    assert_eq!(left, 0, "the purged batches' summaries go too");
    broker.delete().await;
}
