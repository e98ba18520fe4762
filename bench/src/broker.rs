//! The harness's own RabbitMQ client: a queue with Tally's topology under a
//! name of this run, persistent publishes with a sliding window of
//! confirms (authored, as the relay's are, by the URL's user), a plain consumer that acks like the totaler (one `multiple`
//! ack per batch, no disk), queue depth, and clean-up.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeleteOptions,
    },
    types::FieldTable,
    uri::AMQPUri,
};
use proto::{Sum, SumMessage, message::now_us};
use uuid::Uuid;

/// A connection with one confirming channel.
pub struct Broker {
    _connection: Connection,
    channel: Channel,
    url: String,
    /// The broker user the URL logs in as: the author of what is published.
    user: String,
}

/// A bound on a publish run: whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub messages: u64,
    pub duration: Duration,
}

impl Broker {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let user = url
            .parse::<AMQPUri>()
            .map_err(|_| anyhow::anyhow!("AMQP_URL is not an AMQP URL"))?
            .authority
            .userinfo
            .username;
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            _connection: connection,
            channel,
            url: url.to_owned(),
            user,
        })
    }

    /// Declares `queue` (and its dead-letter queue) exactly as Tally does.
    pub async fn declare(&self, queue: &str) -> anyhow::Result<()> {
        proto::topology::declare(&self.channel, queue).await?;
        Ok(())
    }

    /// Publishes Tally-shaped persistent messages of `pack` rows each with
    /// up to `window` unconfirmed; returns how many messages the broker
    /// acked, and the time taken until the last confirm.
    pub async fn publish(
        &self,
        queue: &str,
        window: usize,
        pack: usize,
        bound: Bound,
    ) -> anyhow::Result<(u64, Duration)> {
        let source = Uuid::new_v4();
        let started = Instant::now();
        let deadline = started + bound.duration;
        let mut in_flight = VecDeque::with_capacity(window);
        let mut acked = 0;
        let mut seq = 0u64;
        while seq < bound.messages && Instant::now() < deadline {
            if in_flight.len() >= window {
                acked += confirmed(in_flight.pop_front()).await?;
            }
            seq += 1;
            let first = i64::try_from((seq - 1) * pack as u64)?;
            let message = SumMessage {
                source,
                part: Some(proto::message::Part {
                    batch: i64::try_from(seq)?,
                    part: 0,
                    parts: 1,
                }),
                published_us: now_us(),
                sums: (1..=pack as i64)
                    .map(|i| Sum {
                        seq: first + i,
                        sum: 1,
                        created_us: now_us(),
                    })
                    .collect(),
            };
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(message.id().into())
                // The author, as the relay sets it: the broker checks it
                // against this connection's user, the totaler against its
                // publishers (TOTALER_PUBLISHERS: `guest` by default).
                .with_user_id(self.user.as_str().into());
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.encode(),
                    properties,
                )
                .await?;
            in_flight.push_back(confirm);
        }
        while let Some(confirm) = in_flight.pop_front() {
            acked += confirmed(Some(confirm)).await?;
        }
        Ok((acked, started.elapsed()))
    }

    /// Consumes `count` messages on a fresh channel with `prefetch`, acking
    /// every `batch` with one `multiple` ack; returns the time from the
    /// connect to the last delivery.
    pub async fn consume(
        &self,
        queue: &str,
        count: u64,
        prefetch: u16,
        batch: u64,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        // Timed from the connect, as the totaler's drain is timed from its start.
        let started = Instant::now();
        let connection = Connection::connect(&self.url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                queue.into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut received = 0u64;
        while received < count {
            let delivery = tokio::time::timeout(timeout, deliveries.next())
                .await
                .context("the raw consumer waited too long for a delivery")?
                .context("the broker cancelled the raw consumer")??;
            received += 1;
            if received.is_multiple_of(batch) || received == count {
                channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                    .await?;
            }
        }
        let elapsed = started.elapsed();
        let _ = connection.close(200, "bench done".into()).await;
        Ok(elapsed)
    }

    /// Messages ready in `queue`.
    pub async fn ready(&self, queue: &str) -> anyhow::Result<u32> {
        let declared = testkit::broker::declare_passive(&self.channel, queue).await?;
        Ok(declared.message_count())
    }

    /// Deletes `queue` and its dead-letter queue.
    pub async fn delete(&self, queue: &str) {
        for name in [queue.to_owned(), proto::topology::dead_letter_queue(queue)] {
            let _ = self
                .channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

async fn confirmed(confirm: Option<lapin::PublisherConfirm>) -> anyhow::Result<u64> {
    let Some(confirm) = confirm else { return Ok(0) };
    match confirm.await? {
        Confirmation::Ack(None) => Ok(1),
        other => bail!("the broker did not confirm a benchmark message: {other:?}"),
    }
}
