//! A test's own view of RabbitMQ: declare the Tally topology for a unique
//! queue, publish raw bodies, count and drain messages, delete the queues.

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};

/// A connection and a confirming channel for one test queue.
pub struct Broker {
    pub queue: String,
    _connection: Connection,
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
            _connection: connection,
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

    /// Messages ready in `queue` (a passive declare).
    pub async fn count(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    /// Takes and acks every message now in `queue`, returning the bodies.
    pub async fn drain(&self, queue: &str) -> Vec<Vec<u8>> {
        let mut bodies = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            bodies.push(message.delivery.data);
        }
        bodies
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

impl Broker {
    /// Publishes `body` and returns whether the broker acked it.
    pub async fn try_publish(&self, body: &[u8]) -> bool {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        confirm.is_ack()
    }
}
