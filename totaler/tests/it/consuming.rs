//! Consuming: exact sums, duplicates counted once, malformed messages
//! dead-lettered, a refused message never acked, several totalers on one
//! file, a lost broker connection.

use std::time::Duration;

use testkit::{Broker, Proxy, metrics::sample, proxy::target_of};
use uuid::Uuid;

use crate::support::{
    config, file_total, get, message, pack, part_message, settle, spawn_totaler, temp_dir,
};

#[tokio::test]
async fn messages_are_summed_into_the_file_and_acked() {
    let queue = testkit::unique_queue("sum");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("sum").join("data/sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    let mut expected = 0i128;
    for seq in 1..=300 {
        let sum = seq * 3 - 400;
        expected += i128::from(sum);
        broker.publish(&message(source, seq, sum)).await;
    }
    settle(&broker, "every message to be applied", async || {
        totaler.sum().await == expected
    })
    .await;
    assert_eq!(file_total(&path), expected);
    let (_, metrics) = get(totaler.http, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains(r#"totaler_sums_total{outcome="applied"} 300"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"totaler_messages_total{outcome="consumed"} 300"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("totaler_queue_time_seconds_count 300"),
        "{metrics}"
    );
    totaler.stop().await;
    assert_eq!(
        broker.count_settled(&queue).await,
        0,
        "every message was acked: none comes back once the totaler is gone"
    );
    broker.delete().await;
}

#[tokio::test]
async fn the_same_message_id_published_twice_is_counted_once() {
    let queue = testkit::unique_queue("twice");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("twice").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 10)).await;
    broker.publish(&message(source, 1, 10)).await;
    broker.publish(&message(source, 2, 5)).await;
    settle(&broker, "the messages to be handled", async || {
        totaler.sum().await == 15
    })
    .await;
    broker.publish(&message(source, 2, 5)).await;
    broker.publish(&message(Uuid::new_v4(), 1, 100)).await;
    settle(&broker, "the late duplicate to be handled", async || {
        totaler.sum().await == 115
    })
    .await;
    assert_eq!(file_total(&path), 115);
    let (_, metrics) = get(totaler.http, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains(r#"totaler_sums_total{outcome="duplicate"} 2"#),
        "{metrics}"
    );
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn rows_repacked_into_other_messages_are_counted_once_each() {
    let queue = testkit::unique_queue("repack");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("repack").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    // A relay that crashed after publishing rows 1-3 but before marking
    // them publishes them again, packed with newer rows.
    broker
        .publish(&pack(source, &[(1, 1), (2, 20), (3, 300)]))
        .await;
    broker
        .publish(&pack(source, &[(2, 20), (3, 300), (4, 4000), (6, 60000)]))
        .await;
    broker
        .publish(&pack(source, &[(5, 500_000), (6, 60000)]))
        .await;
    settle(&broker, "the packs to be handled", async || {
        totaler.sum().await == 564_321
    })
    .await;
    assert_eq!(file_total(&path), 564_321);
    let (_, metrics) = get(totaler.http, "/metrics").await.expect("metrics");
    for line in [
        r#"totaler_sums_total{outcome="applied"} 6"#,
        r#"totaler_sums_total{outcome="duplicate"} 3"#,
        r#"totaler_messages_total{outcome="consumed"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_and_the_total_untouched() {
    let queue = testkit::unique_queue("malformed");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("malformed").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 7)).await;
    broker.publish(b"not json at all").await;
    broker
        .publish(br#"{"source":"00000000-0000-0000-0000-000000000001","seq":3}"#)
        .await;
    broker.publish(&message(source, 0, 1000)).await;
    broker.publish(&pack(source, &[(5, 1000), (5, 1000)])).await;
    broker.publish(&message(source, 2, 8)).await;
    let dead = proto::topology::dead_letter_queue(&queue);
    testkit::eventually(
        Duration::from_secs(30),
        "4 dead letters and a total of 15",
        || async { (broker.count(&dead).await == 4 && totaler.sum().await == 15).then_some(()) },
    )
    .await;
    assert_eq!(broker.count(&queue).await, 0, "nothing is requeued");
    assert_eq!(file_total(&path), 15);
    let (_, metrics) = get(totaler.http, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains(r#"totaler_messages_total{outcome="dead_lettered"} 4"#),
        "{metrics}"
    );
    let dead_bodies = broker.drain(&dead).await;
    assert!(dead_bodies.contains(&b"not json at all".to_vec()));
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn a_refused_message_last_in_its_batch_is_not_acked_and_keeps_the_channel() {
    let queue = testkit::unique_queue("refused_last");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("refused_last").join("sum.txt");
    // Queued before the totaler starts, one forged message sits between
    // valid ones and one comes last: it has the highest delivery tag of
    // whichever batch it falls in.
    let source = Uuid::new_v4();
    // Contradicting the part count of batch 9, which its first part set.
    broker
        .publish(&part_message(source, (9, 0, 2), &[(90, 0)]))
        .await;
    let forged = || part_message(source, (9, 1, 3), &[(91, 9)]);
    broker.publish(&message(source, 1, 10)).await;
    broker.publish(&forged()).await;
    broker.publish(&message(source, 2, 10)).await;
    broker.publish(&message(source, 3, 10)).await;
    broker.publish(&forged()).await;
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let dead = proto::topology::dead_letter_queue(&queue);
    settle(&broker, "the forged messages dead-lettered", async || {
        broker.count(&dead).await == 2 && totaler.sum().await == 30
    })
    .await;
    // Had the ack named the rejected delivery, the broker would close the
    // channel and redeliver the batch ahead of this one.
    broker.publish(&message(source, 4, 10)).await;
    settle(&broker, "the next message applied", async || {
        totaler.sum().await == 40
    })
    .await;
    let (_, metrics) = get(totaler.http, "/metrics").await.expect("metrics");
    for (series, expected) in [
        (r#"totaler_messages_total{outcome="consumed"}"#, 7.0),
        (r#"totaler_messages_total{outcome="dead_lettered"}"#, 2.0),
        (r#"totaler_sums_total{outcome="duplicate"}"#, 0.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(expected),
            "{series}: nothing redelivered: {metrics}"
        );
    }
    totaler.stop().await;
    assert_eq!(
        broker.count_settled(&queue).await,
        0,
        "every delivery settled"
    );
    assert_eq!(broker.count(&dead).await, 2);
    broker.delete().await;
}

#[tokio::test]
async fn two_totalers_on_one_file_under_load_end_exact() {
    let queue = testkit::unique_queue("pair");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("pair").join("sum.txt");
    let first = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let second = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    let mut expected = 0i128;
    for seq in 1..=2000 {
        expected += i128::from(seq);
        broker.publish(&message(source, seq, seq)).await;
        if seq % 500 == 0 {
            // A redelivery-like duplicate now and then.
            broker.publish(&message(source, seq, seq)).await;
        }
    }
    settle(
        &broker,
        "both totalers to agree on the exact total",
        async || first.sum().await == expected && second.sum().await == expected,
    )
    .await;
    assert_eq!(file_total(&path), expected);
    first.stop().await;
    second.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn lost_broker_connection_reconnects_and_counts_redeliveries_once() {
    let queue = testkit::unique_queue("reconnect");
    let broker = Broker::connect(&queue).await;
    let proxy = Proxy::start(target_of(&testkit::amqp_url())).await;
    let path = temp_dir("reconnect").join("sum.txt");
    let totaler = spawn_totaler(config(&proxy.url(&testkit::amqp_url()), &queue, &path)).await;
    let source = Uuid::new_v4();
    for seq in 1..=500 {
        broker.publish(&message(source, seq, 2)).await;
        if seq == 250 {
            proxy.cut();
        }
    }
    let (status, _) = get(totaler.http, "/readyz").await.expect("readyz");
    assert_eq!(status, 503, "not ready without the broker");
    proxy.restore();
    settle(
        &broker,
        "all 500 messages after the reconnect",
        async || totaler.sum().await == 1000,
    )
    .await;
    assert_eq!(file_total(&path), 1000);
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn disk_error_means_no_ack_and_a_retry_until_it_clears() {
    let queue = testkit::unique_queue("disk");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("disk").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    // A directory where the temp file must go makes every update fail, as a
    // full or broken disk would.
    let blocker = path.with_file_name("sum.txt.tmp");
    std::fs::create_dir(&blocker).expect("create the blocker");
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 9)).await;
    // Two failed updates at least: the error shows, and the update is retried.
    testkit::eventually(
        Duration::from_secs(20),
        "the ledger error to show and the update to be retried",
        || async {
            let (status, _) = get(totaler.http, "/readyz").await?;
            let (_, metrics) = get(totaler.http, "/metrics").await?;
            let errors = sample(&metrics, "totaler_ledger_errors_total")?;
            let ready = sample(&metrics, "totaler_ready")?;
            (status == 503 && errors >= 2.0 && ready == 0.0).then_some(())
        },
    )
    .await;
    assert_eq!(totaler.sum().await, 0);
    assert_eq!(file_total(&path), 0, "the file is untouched");

    std::fs::remove_dir(&blocker).expect("remove the blocker");
    settle(&broker, "the retried update to land", async || {
        totaler.sum().await == 9
    })
    .await;
    assert_eq!(file_total(&path), 9);
    assert_eq!(get(totaler.http, "/readyz").await.expect("readyz").0, 200);
    let (_, metrics) = get(totaler.http, "/metrics").await.expect("metrics");
    assert_eq!(sample(&metrics, "totaler_ready"), Some(1.0), "{metrics}");
    totaler.stop().await;
    assert_eq!(
        broker.count_settled(&queue).await,
        0,
        "the message was acked once its update landed"
    );
    broker.delete().await;
}
