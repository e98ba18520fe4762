//! The broker topology both services rely on: a durable quorum queue of
//! persistent messages that dead-letters to `<queue>.dead` and never
//! dead-letters for redeliveries, plus the rights each service's broker user
//! needs. The queues and their arguments are data ([`queues`]), so the admin
//! step (`rabbitmq/definitions.json`, `scripts/services`) is checked against
//! them by a test: RabbitMQ refuses a redeclaration whose arguments differ.
//!
//! At connect a service checks with passive declares, which need no right,
//! that the queues exist (the least-privilege users of compose and
//! `scripts/stack` may do nothing more); only a missing queue is declared,
//! which needs the configure right (tests, `guest`). A service never
//! compares an existing queue's arguments: the admin step
//! (`rabbitmq/definitions.json`) owns them. Nothing here deletes a queue.
//!
//! The queue has a single active consumer (`x-single-active-consumer`): of
//! several totalers consuming it, the broker delivers to one, and the
//! others are hot standbys it switches to when that one's channel closes.
//! The ledger's file lock keeps several appliers exact anyway (a queue made
//! before the argument, which RabbitMQ cannot add to an existing queue, has
//! them all apply in turn); the argument only stops them contending.

use std::time::Duration;

use lapin::{
    Channel, Connection, ConnectionProperties, ErrorKind,
    options::QueueDeclareOptions,
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, ShortString},
};

/// The queue name used when `TALLY_QUEUE` is not set.
pub const DEFAULT_QUEUE: &str = "tally.sums";

/// The `x-delivery-limit` (and policy `delivery-limit`) of the queue: how
/// often a message may be returned (consumer gone, nack or reject with
/// requeue) before RabbitMQ dead-letters it. RabbitMQ 4.0 defaults quorum
/// queues to 20, which dead-letters well-formed sums while a totaler that
/// cannot write its ledger crash-loops. `-1` means "unlimited" on 4.x only:
/// 3.x compares the return count with it as a plain integer, so `-1`
/// dead-letters a message at its first return, and 3.x refuses a negative
/// `delivery-limit` policy. `i32::MAX` means the same on both: a message
/// returned once a second would reach it after 68 years.
pub const DELIVERY_LIMIT: i64 = i32::MAX as i64;

/// The fanout exchange the admin step binds `tally.sums` to, and each
/// replica totaler's own queue (totalers on machines of their own, each
/// with its own `sum.txt`). An adder with `TALLY_EXCHANGE` set to it
/// publishes through it, so every bound queue gets every message; without
/// it, through the default exchange to `tally.sums` alone.
pub const FANOUT_EXCHANGE: &str = "tally.fanout";

/// The name of the policy that applies [`DELIVERY_LIMIT`] to a queue created
/// before the argument existed (an argument cannot be added to an existing
/// queue; a policy can).
pub const DELIVERY_LIMIT_POLICY: &str = "tally-delivery-limit";

/// The same for `<queue>.dead`, which nothing consumes but an operator
/// looks at (`totaler dlq list` takes and returns each message): without
/// it, RabbitMQ 4.0's default limit of 20 drops a dead letter at the 21st
/// look, since the dead-letter queue has no dead-letter exchange itself.
pub const DEAD_LETTER_LIMIT_POLICY: &str = "tally-dead-letter-limit";

/// How long a connection attempt may take: a broker that accepts TCP but
/// never finishes the handshake must not hang a service.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One queue argument's value, as `definitions.json` spells it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argument {
    /// An AMQP long string.
    Text(String),
    /// An AMQP integer.
    Integer(i64),
    /// An AMQP boolean.
    Boolean(bool),
}

/// A durable queue and its declaration arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// Argument name (`x-queue-type`, ...) and value, sorted by name.
    pub arguments: Vec<(&'static str, Argument)>,
}

/// What a broker user may do in the vhost: the three permission regexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The queues of `queue`'s topology, dead-letter queue first (it must exist
/// before anything is dead-lettered to it).
pub fn queues(queue: &str) -> [QueueSpec; 2] {
    let dead = dead_letter_queue(queue);
    let quorum = || ("x-queue-type", Argument::Text("quorum".to_owned()));
    [
        QueueSpec {
            name: dead.clone(),
            arguments: vec![
                ("x-delivery-limit", Argument::Integer(DELIVERY_LIMIT)),
                quorum(),
            ],
        },
        QueueSpec {
            name: queue.to_owned(),
            arguments: vec![
                ("x-dead-letter-exchange", Argument::Text(String::new())),
                ("x-dead-letter-routing-key", Argument::Text(dead)),
                ("x-delivery-limit", Argument::Integer(DELIVERY_LIMIT)),
                quorum(),
                ("x-single-active-consumer", Argument::Boolean(true)),
            ],
        },
    ]
}

/// The adder's rights: publish through [`FANOUT_EXCHANGE`] only, so it can
/// feed only the queues bound to it (no write on `amq.default`, which routes
/// to any queue of the vhost by name; no configure: it cannot declare or
/// delete queues; no read: it cannot consume). An adder with this user
/// publishes with `TALLY_EXCHANGE=tally.fanout`.
pub fn adder_permissions() -> Permissions {
    adder_permissions_through(FANOUT_EXCHANGE)
}

/// The adder's rights when it publishes through `exchange` (the tests give
/// each run an exchange of its own).
pub fn adder_permissions_through(exchange: &str) -> Permissions {
    Permissions {
        configure: "^$".to_owned(),
        write: format!("^{}$", regex_escape(exchange)),
        read: "^$".to_owned(),
    }
}

/// The totaler's rights: consume from `queue` only. Dead-lettering a rejected
/// message is done by the broker and needs no right; no write: it cannot
/// publish; no configure: it cannot declare or delete queues.
pub fn totaler_permissions(queue: &str) -> Permissions {
    Permissions {
        configure: "^$".to_owned(),
        write: "^$".to_owned(),
        read: queue_pattern(queue),
    }
}

/// The regex that matches exactly `queue` (`^tally\.sums$`), for
/// permissions and for the [`DELIVERY_LIMIT_POLICY`] and
/// [`DEAD_LETTER_LIMIT_POLICY`] patterns.
pub fn queue_pattern(queue: &str) -> String {
    format!("^{}$", regex_escape(queue))
}

/// Connects to `url` and opens a channel on which `queue`'s topology exists.
/// The queues are checked first (passive declares, which need no right:
/// the services' restricted users, and nothing logged when all is there);
/// only when one is missing are they declared, which needs the configure
/// right. A user without it gets the NOT_FOUND of the check: the admin step
/// has not created the queues.
pub async fn open(url: &str, queue: &str) -> lapin::Result<(Connection, Channel)> {
    let connecting = Connection::connect(url, ConnectionProperties::default());
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    let channel = connection.create_channel().await?;
    let missing = match check(&channel, queue).await {
        Ok(()) => return Ok((connection, channel)),
        Err(e) if is_soft_error(&e, AMQPSoftError::NOTFOUND) => e,
        Err(e) => return Err(e),
    };
    // NOT_FOUND closed that channel, and ACCESS_REFUSED would close this one.
    let channel = connection.create_channel().await?;
    match declare(&channel, queue).await {
        Ok(()) => Ok((connection, channel)),
        Err(e) if is_access_refused(&e) => Err(missing),
        Err(e) => Err(e),
    }
}

/// Declares `queue` and its dead-letter queue, durable quorum queues with the
/// arguments of [`queues`]. Needs the configure right on both names.
pub async fn declare(channel: &Channel, queue: &str) -> lapin::Result<()> {
    for spec in queues(queue) {
        channel
            .queue_declare(spec.name.as_str().into(), durable(), spec.field_table())
            .await?;
    }
    Ok(())
}

/// Checks that `queue` and its dead-letter queue exist (passive declares,
/// which need no right; NOT_FOUND when the admin step has not created them).
/// It cannot see their arguments.
pub async fn check(channel: &Channel, queue: &str) -> lapin::Result<()> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    for spec in queues(queue) {
        channel
            .queue_declare(spec.name.as_str().into(), passive, FieldTable::default())
            .await?;
    }
    Ok(())
}

/// Whether `error` is the broker's ACCESS_REFUSED (a missing right).
pub fn is_access_refused(error: &lapin::Error) -> bool {
    is_soft_error(error, AMQPSoftError::ACCESSREFUSED)
}

fn is_soft_error(error: &lapin::Error, kind: AMQPSoftError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Soft(k) if *k == kind)
    )
}

impl QueueSpec {
    /// The arguments as an AMQP table.
    pub fn field_table(&self) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in &self.arguments {
            let value = match value {
                Argument::Text(text) => AMQPValue::LongString(text.as_str().into()),
                Argument::Integer(n) => AMQPValue::LongLongInt(*n),
                Argument::Boolean(b) => AMQPValue::Boolean(*b),
            };
            table.insert(ShortString::from(*name), value);
        }
        table
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Escapes the regex metacharacters of a queue name (`tally.sums` →
/// `tally\.sums`).
fn regex_escape(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if "\\.+*?()|[]{}^$-".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totaler_may_read_exactly_its_queue() {
        assert_eq!(totaler_permissions("tally.sums").read, "^tally\\.sums$");
    }
}
