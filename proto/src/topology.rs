//! The broker topology both services rely on: a durable quorum queue of
//! persistent messages that dead-letters to `<queue>.dead`. Declaration is
//! idempotent, so either service may start first; `rabbitmq/definitions.json`
//! must declare the same arguments or RabbitMQ refuses the redeclaration.

use lapin::{
    Channel,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, ShortString},
};

/// The queue name used when `TALLY_QUEUE` is not set.
pub const DEFAULT_QUEUE: &str = "tally.sums";

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
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
