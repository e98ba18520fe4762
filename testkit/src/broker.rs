//! A test's own view of RabbitMQ: declare the Tally topology for a unique
//! queue, publish raw bodies, count and drain messages (with their AMQP
//! properties), delete the queues; a fanout exchange with queues bound to
//! it (replica totalers).

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use tokio_stream::StreamExt;

/// A connection and a confirming channel for one test queue.
pub struct Broker {
    pub queue: String,
    connection: Connection,
    channel: Channel,
}

impl Broker {
    /// Connects and declares `queue` with the Tally topology.
    pub async fn connect(queue: &str) -> Self {
        let connection = Connection::connect(&crate::amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to TEST_AMQP_URL");
        let channel = connection.create_channel().await.expect("open a channel");
        proto::topology::declare(&channel, queue)
            .await
            .expect("declare the topology");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("enable confirms");
        Self {
            queue: queue.to_owned(),
            connection,
            channel,
        }
    }

    /// Publishes `body` persistently to the test queue and waits for the confirm.
    pub async fn publish(&self, body: &[u8]) {
        assert!(
            self.try_publish(body).await,
            "the broker refused a test message"
        );
    }

    /// Messages ready in `queue` (a passive declare). Unacked deliveries
    /// are not counted: see `count_settled`.
    pub async fn count(&self, queue: &str) -> u32 {
        self.declare_passive(queue).await.message_count()
    }

    /// Every message `queue` holds, ready or unacked: waits (up to 10 s)
    /// until no consumer is attached, because a consumer's unacked messages
    /// return to the queue only once the queue has seen it leave, and counts
    /// then. Call it after the consumers under test have stopped.
    pub async fn count_settled(&self, queue: &str) -> u32 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let declared = self.declare_passive(queue).await;
            if declared.consumer_count() == 0 {
                return declared.message_count();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a consumer is still attached to {queue} after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn declare_passive(&self, queue: &str) -> lapin::Queue {
        declare_passive(&self.channel, queue)
            .await
            .expect("passive declare")
    }

    /// Takes and acks every message now in `queue`, returning the bodies.
    pub async fn drain(&self, queue: &str) -> Vec<Vec<u8>> {
        self.drain_deliveries(queue)
            .await
            .into_iter()
            .map(|delivery| delivery.data)
            .collect()
    }

    /// Takes and acks every message now in `queue`, returning each whole:
    /// body, AMQP properties, redelivered flag. Through a consumer, since
    /// RabbitMQ refuses `basic.get` on a queue with a single active
    /// consumer; so no other consumer may be active on `queue` (it would
    /// keep this one standing by: that panics after 30 s).
    pub async fn drain_deliveries(&self, queue: &str) -> Vec<Delivery> {
        let channel = self.connection.create_channel().await.expect("a channel");
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut deliveries = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                Ok(Some(delivery)) => {
                    let delivery = delivery.expect("a delivery");
                    delivery.ack(BasicAckOptions::default()).await.expect("ack");
                    deliveries.push(delivery);
                }
                Ok(None) => break,
                Err(_) if self.count(queue).await == 0 => break,
                Err(_) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "{queue} still holds messages after 30 s of draining: is another consumer active?"
                ),
            }
        }
        let _ = channel.close(200, "drained".into()).await;
        deliveries
    }

    /// Deletes the test queue and its dead-letter queue.
    pub async fn delete(&self) {
        for queue in [
            self.queue.clone(),
            proto::topology::dead_letter_queue(&self.queue),
        ] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

/// Declares `queue` passively on `channel`: its message and consumer
/// counts, or an error (and a closed channel) if it does not exist.
pub async fn declare_passive(channel: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

impl Broker {
    /// Publishes `body` and returns whether the broker acked it.
    pub async fn try_publish(&self, body: &[u8]) -> bool {
        let properties = BasicProperties::default().with_delivery_mode(2);
        self.publish_to(&self.queue, body, properties).await
    }

    /// Publishes `body` with `properties` (headers, for example) to the
    /// test's queue and returns whether the broker acked it.
    pub async fn publish_with(&self, body: &[u8], properties: BasicProperties) -> bool {
        self.publish_to(&self.queue, body, properties).await
    }

    /// Publishes `body` with `properties` to any `queue` (a dead-letter
    /// queue, say) and returns whether the broker acked it.
    pub async fn publish_to(&self, queue: &str, body: &[u8], properties: BasicProperties) -> bool {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        confirm.is_ack()
    }
}

/// A test's fanout exchange, as the admin step makes `tally.fanout`, with
/// queues bound to it (the queue of a replica totaler, say).
impl Broker {
    /// Declares the durable fanout `exchange` and binds `queue` (whose
    /// topology it declares too) to it.
    pub async fn bind(&self, queue: &str, exchange: &str) {
        self.channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the exchange");
        proto::topology::declare(&self.channel, queue)
            .await
            .expect("declare the topology");
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the queue");
    }

    /// Publishes `body` persistently through `exchange`; whether acked.
    pub async fn publish_via(&self, exchange: &str, body: &[u8]) -> bool {
        let properties = BasicProperties::default().with_delivery_mode(2);
        self.channel
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm")
            .is_ack()
    }

    /// Deletes `exchange` (its bindings go with it).
    pub async fn delete_exchange(&self, exchange: &str) {
        let _ = self
            .channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
}
