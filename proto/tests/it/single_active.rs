//! The queue's single active consumer, on RabbitMQ 3.x and 4.x: of two
//! consumers, the broker delivers to the first only; when its channel
//! closes with a delivery unacked, the second gets that delivery and the
//! rest. This is what makes a second totaler a hot standby.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use proto::topology;

use crate::support::{self, Broker};

#[tokio::test]
async fn the_second_consumer_stands_by_until_the_first_is_gone_on_rabbitmq_3() {
    stands_by(&support::broker3(), "3.").await;
}

#[tokio::test]
async fn the_second_consumer_stands_by_until_the_first_is_gone_on_rabbitmq_4() {
    stands_by(&support::broker4(), "4.").await;
}

async fn stands_by(broker: &Broker, major: &str) {
    assert!(broker.version().await.starts_with(major));
    let connection = broker.connect().await;
    let queue = support::unique_queue("single_active");
    let admin = connection.create_channel().await.expect("channel");
    topology::declare(&admin, &queue).await.expect("declare");
    let active = connection.create_channel().await.expect("channel");
    let mut first = consume(&active, &queue).await;
    let standby = connection.create_channel().await.expect("channel");
    let mut second = consume(&standby, &queue).await;
    for body in [b"1", b"2"] {
        assert!(
            support::publish(&admin, &queue, body)
                .await
                .expect("publish")
        );
    }
    let held = next(&mut first)
        .await
        .expect("the first consumer gets a delivery");
    assert_eq!(held.data, b"1");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), second.next())
            .await
            .is_err(),
        "the standby got nothing while the first consumer was there"
    );
    active.close(200, "gone".into()).await.expect("close");
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut second).await.expect("the standby takes over");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        bodies.push(delivery.data);
    }
    bodies.sort();
    assert_eq!(
        bodies,
        [b"1".to_vec(), b"2".to_vec()],
        "the unacked one came back"
    );
    standby.close(200, "done".into()).await.expect("close");
    support::delete_topology(&connection, &queue).await;
}

async fn consume(channel: &Channel, queue: &str) -> lapin::Consumer {
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume")
}

async fn next(consumer: &mut lapin::Consumer) -> Option<lapin::message::Delivery> {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .ok()
        .flatten()
        .map(|delivery| delivery.expect("a delivery"))
}
