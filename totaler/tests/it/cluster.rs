//! Totalers in a cluster: a broker node list whose node is lost, hot
//! standbys on one queue (single active consumer) sharing one file, and
//! replicas with a queue and a file each, bound to one fanout exchange.

use testkit::{Broker, Proxy, metrics::sample, proxy::target_of};
use uuid::Uuid;

use crate::support::{config, file_total, get, message, settle, spawn_totaler, temp_dir};

#[tokio::test]
async fn a_lost_broker_node_is_left_for_the_next_one_in_the_list() {
    let queue = testkit::unique_queue("nodes");
    let broker = Broker::connect(&queue).await;
    // Two "nodes": two proxies to the one test broker, so one can be lost
    // for good while the other still leads to the queue.
    let first = Proxy::start(target_of(&testkit::amqp_url())).await;
    let second = Proxy::start(target_of(&testkit::amqp_url())).await;
    let nodes = format!(
        "{},{}",
        first.url(&testkit::amqp_url()),
        second.url(&testkit::amqp_url())
    );
    let path = temp_dir("nodes").join("sum.txt");
    let totaler = spawn_totaler(config(&nodes, &queue, &path)).await;
    let source = Uuid::new_v4();
    for seq in 1..=200 {
        broker.publish(&message(source, seq, 3)).await;
    }
    settle(&broker, "the first 200 through node 1", async || {
        totaler.sum().await == 600
    })
    .await;
    first.cut();
    for seq in 201..=400 {
        broker.publish(&message(source, seq, 3)).await;
    }
    settle(
        &broker,
        "the next 200 through node 2 while node 1 stays lost",
        async || totaler.sum().await == 1200,
    )
    .await;
    assert_eq!(file_total(&path), 1200);
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn of_two_totalers_one_applies_and_the_standby_takes_over_when_it_stops() {
    let queue = testkit::unique_queue("standby");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("standby").join("sum.txt");
    let active = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 1)).await;
    settle(&broker, "the first totaler to consume", async || {
        active.sum().await == 1
    })
    .await;

    let standby = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let mut expected = 1i128;
    for seq in 2..=1000 {
        expected += i128::from(seq);
        broker.publish(&message(source, seq, seq)).await;
    }
    settle(
        &broker,
        "both totalers to show the total (the standby from the file)",
        async || active.sum().await == expected && standby.sum().await == expected,
    )
    .await;
    assert_eq!(consumed(&standby).await, 0.0, "the standby applied nothing");

    active.stop().await;
    for seq in 1001..=1500 {
        expected += i128::from(seq);
        broker.publish(&message(source, seq, seq)).await;
    }
    settle(&broker, "the standby to take over", async || {
        standby.sum().await == expected
    })
    .await;
    assert!(consumed(&standby).await >= 1.0, "the standby consumed");
    assert_eq!(file_total(&path), expected);
    standby.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn replicas_on_queues_of_one_fanout_exchange_each_keep_the_exact_total() {
    let queue = testkit::unique_queue("replica-a");
    let other = testkit::unique_queue("replica-b");
    let exchange = format!("{queue}.fanout");
    let broker = Broker::connect(&queue).await;
    let other_broker = Broker::connect(&other).await;
    broker.bind(&queue, &exchange).await;
    broker.bind(&other, &exchange).await;
    let dir = temp_dir("replicas");
    let (path, other_path) = (dir.join("a/sum.txt"), dir.join("b/sum.txt"));
    let first = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let second = spawn_totaler(config(&testkit::amqp_url(), &other, &other_path)).await;
    let source = Uuid::new_v4();
    let mut expected = 0i128;
    let mut publish = async |seqs: std::ops::RangeInclusive<i64>| {
        for seq in seqs {
            expected += i128::from(seq);
            assert!(
                broker
                    .publish_via(&exchange, &message(source, seq, seq))
                    .await
            );
        }
    };
    publish(1..=300).await;
    settle(
        &other_broker,
        "replica b to count the first half",
        async || second.sum().await == 300 * 301 / 2,
    )
    .await;
    // A replica away for a while catches up from its own queue.
    second.stop().await;
    publish(301..=600).await;
    settle(&broker, "replica a to count everything", async || {
        first.sum().await == expected
    })
    .await;
    let second = spawn_totaler(config(&testkit::amqp_url(), &other, &other_path)).await;
    settle(&other_broker, "replica b to catch up", async || {
        second.sum().await == expected
    })
    .await;
    assert_eq!(
        (file_total(&path), file_total(&other_path)),
        (expected, expected)
    );
    first.stop().await;
    second.stop().await;
    broker.delete_exchange(&exchange).await;
    broker.delete().await;
    other_broker.delete().await;
}

/// Deliveries a totaler applied and acked.
async fn consumed(totaler: &crate::support::TestTotaler) -> f64 {
    let (_, metrics) = get(totaler.http, "/metrics").await.expect("metrics");
    sample(&metrics, "totaler_messages_total{outcome=\"consumed\"}").unwrap_or(0.0)
}
