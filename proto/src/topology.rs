//! The broker topology both services rely on: a durable quorum queue of
//! persistent messages that dead-letters to `<queue>.dead`. Declaration is
//! idempotent, so either service may start first; `rabbitmq/definitions.json`
//! must declare the same arguments or RabbitMQ refuses the redeclaration.

use std::time::Duration;

use lapin::{
    Channel, Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, ShortString},
};

/// The queue name used when `TALLY_QUEUE` is not set.
pub const DEFAULT_QUEUE: &str = "tally.sums";

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// How long a connection attempt may take: a broker that accepts TCP but
/// never finishes the handshake must not hang a service.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `url`, opens a channel and declares `queue`'s topology.
pub async fn open(url: &str, queue: &str) -> lapin::Result<(Connection, Channel)> {
    let connecting = Connection::connect(url, ConnectionProperties::default());
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    let channel = connection.create_channel().await?;
    declare(&channel, queue).await?;
    Ok((connection, channel))
}

/// Declares `queue` and its dead-letter queue, both durable quorum queues.
pub async fn declare(channel: &Channel, queue: &str) -> lapin::Result<()> {
    let dead = dead_letter_queue(queue);
    channel
        .queue_declare(dead.as_str().into(), durable(), quorum())
        .await?;
    let mut arguments = quorum();
    arguments.insert("x-dead-letter-exchange".into(), long_string(""));
    arguments.insert("x-dead-letter-routing-key".into(), long_string(&dead));
    channel
        .queue_declare(queue.into(), durable(), arguments)
        .await?;
    Ok(())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-queue-type"), long_string("quorum"));
    arguments
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}
