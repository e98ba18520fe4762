//! `totaler dlq list|replay`: the operator's view of `<queue>.dead`. `list`
//! shows each dead message, why it died and what it holds, and leaves it
//! there; `replay` moves messages back to the queue for the totaler to
//! count again, exactly once because the ledger dedupes by
//! `(source, batch, part)`.
//!
//! Both take messages with `basic.get` and no ack. `list` returns them all
//! with one `nack(requeue)` at the end; `replay` publishes each to the
//! queue (mandatory, with a publisher confirm) and acks the dead copy only
//! after the confirm, so a replay killed midway loses nothing: its unacked
//! messages return to `<queue>.dead` when its connection closes (a kill
//! between confirm and ack leaves a copy in both queues, which the ledger
//! counts once). This module must not touch the ledger file: `--sum-file`
//! is only read, to say what a replay would do.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Context;
use lapin::{
    BasicProperties, Channel, Confirmation,
    message::Delivery,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
        ConfirmSelectOptions,
    },
    types::{AMQPValue, FieldTable},
};
use proto::{SumMessage, nodes::Nodes};

use crate::{
    consumer::{Applied, apply_one},
    ledger::State,
};

/// Operator commands on the dead-letter queue `<queue>.dead`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Dlq {
    /// Print each dead message: its x-death reason, queue and count, message
    /// id, size, first bytes (escaped) and why the totaler refused it.
    /// Leaves every message in the queue (each is delivered once and
    /// returned: RabbitMQ marks it redelivered and counts the delivery).
    List(ListArgs),
    /// Move dead messages back to the queue, each acked in `<queue>.dead`
    /// only after the broker confirmed its copy. Fix the cause first: a
    /// message still refused is dead-lettered again.
    Replay(ReplayArgs),
}

/// `totaler dlq list`'s arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ListArgs {
    /// Show at most this many messages, oldest first [default: all].
    #[arg(long)]
    pub limit: Option<usize>,
    /// A ledger to check each message against (read only): says whether it
    /// is already applied, would be applied or would be refused again.
    #[arg(long)]
    pub sum_file: Option<PathBuf>,
    /// How many bytes of each body to print.
    #[arg(long, default_value_t = 160)]
    pub bytes: usize,
}

/// `totaler dlq replay`'s arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// Replay at most this many messages, oldest first [default: all].
    #[arg(long)]
    pub limit: Option<usize>,
    /// Replay only the messages with this AMQP message id
    /// (`<source>/<batch>.<part>`); the others stay, in their order.
    #[arg(long)]
    pub id: Option<String>,
    /// Test hook: abort right after the first message's copy is confirmed
    /// and before its dead copy is acked, to prove a replay killed there
    /// still counts the message once.
    #[arg(long, env = "TOTALER_DLQ_CRASH_AFTER_CONFIRM", hide = true)]
    pub crash_after_confirm: bool,
}

/// Where the dead letters are: a broker user that may read `<queue>.dead`
/// and publish to the default exchange, and the queue they came from.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub amqp_url: &'a Nodes,
    pub queue: &'a str,
}

/// Prints the dead messages; returns the report.
pub async fn list(target: Target<'_>, args: &ListArgs) -> anyhow::Result<String> {
    let state = args
        .sum_file
        .as_deref()
        .map(crate::verify::read_ledger)
        .transpose()?;
    let (_connection, channel) = open(target).await?;
    let dead = proto::topology::dead_letter_queue(target.queue);
    let deliveries = take(&channel, &dead, args.limit).await?;
    let mut report = String::new();
    for (n, delivery) in deliveries.iter().enumerate() {
        describe(&mut report, n + 1, delivery, state.as_ref(), args.bytes);
    }
    let _ = writeln!(
        report,
        "{dead}: {} message(s) listed, all left in place",
        deliveries.len()
    );
    give_back(&channel, &deliveries).await?;
    Ok(report)
}

/// How a replay went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Messages now in the queue and gone from `<queue>.dead`.
    pub moved: usize,
    /// Messages looked at and left in `<queue>.dead` (another `--id`).
    pub left: usize,
}

/// Moves dead messages back to the queue, each confirmed before its dead
/// copy is acked.
pub async fn replay(target: Target<'_>, args: &ReplayArgs) -> anyhow::Result<Replayed> {
    let (_connection, channel) = open(target).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    let dead = proto::topology::dead_letter_queue(target.queue);
    // Without --id every message taken is replayed: take no more than asked.
    let take_limit = if args.id.is_some() { None } else { args.limit };
    let deliveries = take(&channel, &dead, take_limit).await?;
    let mut replayed = Replayed::default();
    let mut kept = Vec::new();
    for delivery in deliveries {
        let wanted = args.limit.is_none_or(|limit| replayed.moved < limit)
            && args
                .id
                .as_deref()
                .is_none_or(|id| message_id(&delivery) == Some(id));
        if !wanted {
            kept.push(delivery);
            continue;
        }
        republish(&channel, target.queue, &delivery).await?;
        if args.crash_after_confirm {
            eprintln!(
                "TOTALER_DLQ_CRASH_AFTER_CONFIRM: aborting between the confirmed copy and the ack of the dead one"
            );
            std::process::abort();
        }
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
            .with_context(|| format!("acking the replayed message in {dead}"))?;
        replayed.moved += 1;
    }
    replayed.left = kept.len();
    give_back(&channel, &kept).await?;
    Ok(replayed)
}

/// Connects and checks that the queue and its dead-letter queue exist.
async fn open(target: Target<'_>) -> anyhow::Result<(lapin::Connection, Channel)> {
    let opened = target
        .amqp_url
        .open(target.queue)
        .await
        .with_context(|| format!("opening the broker and {}", target.queue))?;
    Ok((opened.connection, opened.channel))
}

/// Up to `limit` messages of `queue`, oldest first, unacked.
async fn take(
    channel: &Channel,
    queue: &str,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Delivery>> {
    let mut deliveries = Vec::new();
    while limit.is_none_or(|limit| deliveries.len() < limit) {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .with_context(|| format!("basic.get from {queue}"))?;
        match got {
            Some(message) => deliveries.push(message.delivery),
            None => break,
        }
    }
    Ok(deliveries)
}

/// Returns every delivery in `deliveries` to its queue, in one nack.
async fn give_back(channel: &Channel, deliveries: &[Delivery]) -> anyhow::Result<()> {
    let Some(last) = deliveries.iter().map(|d| d.delivery_tag).max() else {
        return Ok(());
    };
    channel
        .basic_nack(
            last,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await
        .context("returning the messages to the dead-letter queue")
}

/// Publishes a copy of `delivery` to `queue` and waits for the confirm.
async fn republish(channel: &Channel, queue: &str, delivery: &Delivery) -> anyhow::Result<()> {
    let id = message_id(delivery).unwrap_or("<no id>").to_owned();
    let confirmation = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            replay_properties(&delivery.properties),
        )
        .await
        .with_context(|| format!("publishing {id} to {queue}"))?
        .await
        .with_context(|| format!("awaiting the confirm of {id}"))?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => {
            anyhow::bail!("{queue} did not take {id} (returned: no such queue?)")
        }
        Confirmation::Nack(_) => anyhow::bail!("the broker refused {id} (nack)"),
        Confirmation::NotRequested => anyhow::bail!("no publisher confirm for {id}"),
    }
}

/// The dead message's properties, without the headers the broker added when
/// it dead-lettered or delivered it; persistent.
fn replay_properties(properties: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = properties.headers() {
        for (key, value) in old.inner() {
            let broker_added = key.as_str() == "x-death"
                || key.as_str() == "x-delivery-count"
                || key.as_str().starts_with("x-first-death-")
                || key.as_str().starts_with("x-last-death-");
            if !broker_added {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}

fn message_id(delivery: &Delivery) -> Option<&str> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str())
}

/// One message's entry in the listing.
fn describe(out: &mut String, n: usize, delivery: &Delivery, state: Option<&State>, bytes: usize) {
    let _ = writeln!(
        out,
        "#{n} id={} size={} bytes delivery-count={} redelivered={}",
        message_id(delivery).unwrap_or("<none>"),
        delivery.data.len(),
        header(delivery, "x-delivery-count")
            .and_then(integer)
            .unwrap_or(0),
        delivery.redelivered,
    );
    for death in deaths(delivery) {
        let _ = writeln!(out, "   x-death: {death}");
    }
    let _ = writeln!(out, "   user-id: {}", author(delivery));
    let _ = writeln!(out, "   why: {}", verdict(&delivery.data, state));
    let _ = writeln!(out, "   body: {}", escaped(&delivery.data, bytes));
}

/// The message's broker-validated author, or why it has none that counts:
/// the totaler counts only messages whose `user_id` is one of
/// `TOTALER_PUBLISHERS`, and a replay keeps the original `user_id`.
fn author(delivery: &Delivery) -> String {
    match delivery.properties.user_id() {
        Some(user) => user.to_string(),
        None => "<none>: not sent by a validated publisher; refused again on replay \
                 (unless TOTALER_PUBLISHERS is *)"
            .to_owned(),
    }
}

/// What the totaler makes of the body: why it was dead-lettered and what
/// a replay would do with the ledger as it is now.
fn verdict(body: &[u8], state: Option<&State>) -> String {
    let message = match SumMessage::decode(body) {
        Ok(message) => message,
        Err(e) => return format!("malformed: {e} (a replay dead-letters it again)"),
    };
    let Some(state) = state else {
        return format!(
            "parses as {} (give --sum-file to check it against the ledger)",
            message.id()
        );
    };
    match apply_one(&mut state.clone(), &message) {
        Applied::Refused(refusal) => format!("refused by the ledger: {refusal}"),
        Applied::Rows(0) => "already applied: a replay counts nothing".to_owned(),
        Applied::Rows(rows) => format!("not applied: a replay adds {rows} row(s)"),
    }
}

/// Each `x-death` entry: reason, queue, count, time.
fn deaths(delivery: &Delivery) -> Vec<String> {
    let Some(AMQPValue::FieldArray(entries)) = header(delivery, "x-death") else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(table) => Some(table),
            _ => None,
        })
        .map(|table| {
            let field = |key: &str| table.inner().get(key).map(text).unwrap_or_default();
            let count = table.inner().get("count").and_then(integer).unwrap_or(0);
            format!(
                "reason={} queue={} count={count} time={}",
                field("reason"),
                field("queue"),
                field("time")
            )
        })
        .collect()
}

fn header<'a>(delivery: &'a Delivery, key: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(key)
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Timestamp(t) => format!("{t} (unix s)"),
        other => format!("{other:?}"),
    }
}

/// The first `limit` bytes, ASCII-escaped (`\"`, `\n`, `\xff`), with the
/// number of bytes left out.
fn escaped(body: &[u8], limit: usize) -> String {
    let shown: String = body
        .iter()
        .take(limit)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    match body.len().saturating_sub(limit) {
        0 => format!("\"{shown}\""),
        more => format!("\"{shown}\" … ({more} more bytes)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_escaped_and_cut_at_the_limit() {
        assert_eq!(escaped(b"{\"a\":1}\n", 100), r#""{\"a\":1}\n""#);
        assert_eq!(
            escaped(&[0xff, b'x', b'y'], 2),
            r#""\xffx" … (1 more bytes)"#
        );
    }

    #[test]
    fn replayed_properties_drop_the_brokers_death_headers_and_keep_the_rest() {
        let mut headers = FieldTable::default();
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        headers.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("rejected".into()),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-ab-cd-01".into()),
        );
        let properties = BasicProperties::default()
            .with_message_id("s/1.0".into())
            .with_headers(headers);
        let replayed = replay_properties(&properties);
        let kept = replayed.headers().as_ref().expect("headers");
        assert_eq!(
            kept.inner().keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["traceparent"]
        );
        assert_eq!(
            replayed.message_id().as_ref().map(|id| id.as_str()),
            Some("s/1.0")
        );
        assert_eq!(*replayed.delivery_mode(), Some(2));
    }

    #[test]
    fn a_body_that_does_not_parse_is_called_malformed() {
        assert!(verdict(b"not json", None).starts_with("malformed: "));
    }
}
