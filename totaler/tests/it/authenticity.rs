//! Only the adders' broker user authors a sum: RabbitMQ validates a
//! message's `user-id` property against the publishing connection's user,
//! and the totaler dead-letters a message whose `user-id` is missing or not
//! one of its publishers (`TOTALER_PUBLISHERS`). A forged message claiming
//! a real batch the adders have not published yet therefore cannot take its
//! place: the genuine parts are counted when they come.

use lapin::BasicProperties;
use uuid::Uuid;

use crate::support::{
    add_all, config, file_total, message, part_message, settle, spawn_adder, spawn_totaler,
    temp_dir, wait_total,
};

/// The properties of a message published by the test's broker user (whose
/// name RabbitMQ checks against `user-id`).
fn by_test_user() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_user_id(test_user().into())
}

/// A totaler counting only the test user's messages.
fn authenticated(queue: &str, path: &std::path::Path) -> totaler::Config {
    let mut config = config(&testkit::amqp_url(), queue, path);
    config.publishers = vec![test_user()];
    config
}

fn test_user() -> String {
    let url: lapin::uri::AMQPUri = testkit::amqp_url().parse().expect("TEST_AMQP_URL");
    url.authority.userinfo.username
}

#[tokio::test]
async fn a_message_without_the_publishers_user_id_is_dead_lettered() {
    let queue = testkit::unique_queue("forged_author");
    let broker = testkit::Broker::connect(&queue).await;
    let path = temp_dir("forged_author").join("sum.txt");
    let totaler = spawn_totaler(authenticated(&queue, &path)).await;
    let source = Uuid::new_v4();
    assert!(
        broker
            .publish_with(&message(source, 1, 5), by_test_user())
            .await
    );
    // No user-id: anyone with the write right may have sent it.
    broker.publish(&message(source, 2, 1_000_000)).await;
    broker.publish(&message(Uuid::new_v4(), 1, 1_000_000)).await;
    assert!(
        broker
            .publish_with(&message(source, 3, 7), by_test_user())
            .await
    );
    let dead = proto::topology::dead_letter_queue(&queue);
    settle(
        &broker,
        "the authentic ones counted, the others dead",
        async || broker.count(&dead).await == 2 && totaler.sum().await == 12,
    )
    .await;
    assert_eq!(file_total(&path), 12);
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn a_forged_single_part_claim_on_a_future_batch_does_not_displace_the_genuine_parts() {
    let queue = testkit::unique_queue("forged_parts");
    let broker = testkit::Broker::connect(&queue).await;
    let path = temp_dir("forged_parts").join("sum.txt");
    let totaler = spawn_totaler(authenticated(&queue, &path)).await;
    let source = Uuid::new_v4();
    assert!(
        broker
            .publish_with(&message(source, 1, 1), by_test_user())
            .await
    );
    // Forged: batch 2 "in one part", before the relay has published it.
    broker
        .publish(&part_message(source, (2, 0, 1), &[(2, 1_000_000)]))
        .await;
    for part in 0..2 {
        let genuine = part_message(source, (2, part, 2), &[(10 + i64::from(part), 20)]);
        assert!(broker.publish_with(&genuine, by_test_user()).await);
    }
    let dead = proto::topology::dead_letter_queue(&queue);
    settle(
        &broker,
        "the genuine parts counted, the forgery dead",
        async || broker.count(&dead).await == 1 && totaler.sum().await == 41,
    )
    .await;
    assert_eq!(file_total(&path), 41);
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_signs_its_messages_with_its_broker_user_and_they_count() {
    let url = testkit::database::fresh().await;
    let queue = testkit::unique_queue("signed");
    let broker = testkit::Broker::connect(&queue).await;
    let path = temp_dir("signed").join("sum.txt");
    let totaler = spawn_totaler(authenticated(&queue, &path)).await;
    let (endpoint, stop) = spawn_adder(&url, &queue).await;
    let counted = add_all(&endpoint, "signed", 1..21).await;
    wait_total(&totaler, counted).await;
    let dead = proto::topology::dead_letter_queue(&queue);
    assert_eq!(broker.count(&dead).await, 0, "nothing dead-lettered");
    drop(stop);
    totaler.stop().await;
    broker.delete().await;
}
