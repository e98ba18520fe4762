//! The consumer: delivery -> ledger -> ack. It gathers deliveries into a
//! batch, dead-letters the ones not authored by a publisher (their AMQP
//! `user-id`, which RabbitMQ validates against the publishing connection's
//! user, missing or not in `TOTALER_PUBLISHERS`: forged, whatever they
//! claim) and the malformed ones, applies the rest in one ledger
//! update (each batch part counted once by `(source, batch, part)`, each
//! legacy row by `(source, seq)`) and, only once that update is durable,
//! dead-letters the messages the ledger refused (contradicting a known part
//! count) and acks the rest
//! with one `multiple` ack naming the highest applied delivery, never a
//! rejected one: the broker settles each delivery once, by the reject or by
//! the ack, and a forged message cannot close the channel (an ack naming a
//! rejected tag is PRECONDITION_FAILED). A lost broker means reconnect with
//! backoff; unacked deliveries come back and the ledger counts them once.
//! A disk error means no ack and a retry with backoff; a corrupt, vanished
//! or replaced ledger stops the totaler.
//!
//! Nothing is acked that is not durable, on any path: a shutdown while a
//! batch waits for the disk leaves the batch unacked (the broker delivers it
//! again). It stops only between batches: never between the rename and the ack.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection, Consumer as AmqpConsumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions},
    types::FieldTable,
};
use proto::{SumMessage, message::now_us, nodes::Nodes};
use tokio_util::sync::CancellationToken;

use crate::{
    ledger::{self, Ledger, Outcome, Refusal, State},
    metrics::Metrics,
    status::Status,
};

/// What the consumer needs to run.
pub struct Consumer {
    pub amqp_url: Nodes,
    pub queue: String,
    pub prefetch: u16,
    pub batch_size: usize,
    pub linger: Duration,
    pub ledger: Arc<Ledger>,
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    pub crash_after_apply: bool,
    /// Who may author a sum.
    pub publishers: Publishers,
    /// Whether traces are exported: then each batch's span links to the
    /// publish spans in its messages' `traceparent` headers.
    pub tracing: bool,
}

/// The broker users whose messages are counted: a delivery's `user-id`
/// must name one of them (`Any`: any or none, while upgrading from adders
/// that did not set it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publishers {
    Any,
    Only(Vec<String>),
}

/// Why consuming stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
}

/// Why no consumer could be started; logged, then retried.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Node(#[from] proto::nodes::ConnectError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

enum Stop {
    Broker(String),
    Fatal(Fatal),
    /// Shutdown came while a batch was not yet durable: it stays unacked.
    Shutdown,
}

impl From<lapin::Error> for Stop {
    fn from(e: lapin::Error) -> Self {
        Stop::Broker(e.to_string())
    }
}

/// What the ledger did with one delivery.
pub(crate) enum Applied {
    /// How many of its rows changed the total (all or none for a batch part).
    Rows(usize),
    Refused(Refusal),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Closing a connection whose socket is already dead must not hang us either.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Consumer {
    /// Consumes until `shutdown` (Ok) or a corrupt ledger (Err).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Fatal> {
        let mut backoff = BACKOFF_MIN;
        while !shutdown.is_cancelled() {
            match self.connect().await {
                Ok((connection, channel, deliveries, node)) => {
                    backoff = BACKOFF_MIN;
                    self.status.set_broker_ok(true);
                    tracing::info!(queue = %self.queue, %node, "consumer connected to the broker");
                    let result = self.consume(&channel, deliveries, &shutdown).await;
                    self.status.set_broker_ok(false);
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        connection.close(200, "totaler stopping".into()),
                    )
                    .await;
                    match result {
                        Ok(()) | Err(Stop::Shutdown) => return Ok(()),
                        Err(Stop::Fatal(e)) => return Err(e),
                        Err(Stop::Broker(e)) => {
                            tracing::warn!(error = %e, "consumer lost the broker, reconnecting")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "consumer cannot reach the broker, retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        Ok(())
    }

    /// Consumes on the first broker node that answers; returns the node's
    /// address too.
    async fn connect(&self) -> Result<(Connection, Channel, AmqpConsumer, String), ConnectError> {
        let proto::nodes::Opened {
            connection,
            channel,
            address,
        } = self.amqp_url.open(&self.queue).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                self.queue.as_str().into(),
                "totaler".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((connection, channel, deliveries, address))
    }

    async fn consume(
        &self,
        channel: &Channel,
        mut deliveries: AmqpConsumer,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                next = deliveries.next() => next,
            };
            let Some(first) = first else {
                return Err(Stop::Broker("the broker cancelled the consumer".into()));
            };
            let mut batch = vec![first?];
            self.fill(&mut batch, &mut deliveries).await?;
            self.handle(channel, batch, shutdown).await?;
        }
    }

    /// Adds deliveries until the batch is full or the linger has passed.
    async fn fill(
        &self,
        batch: &mut Vec<Delivery>,
        deliveries: &mut AmqpConsumer,
    ) -> Result<(), Stop> {
        let deadline = tokio::time::Instant::now() + self.linger;
        while batch.len() < self.batch_size {
            match tokio::time::timeout_at(deadline, deliveries.next()).await {
                Ok(Some(delivery)) => batch.push(delivery?),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(())
    }

    /// Dead-letters the malformed deliveries, applies the rest durably, then
    /// acks them.
    #[tracing::instrument(name = "consume batch", skip_all, fields(size = batch.len(), trace_id = tracing::field::Empty))]
    async fn handle(
        &self,
        channel: &Channel,
        batch: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        if self.tracing {
            otel::context::link_received(batch.iter().map(|d| &d.properties));
        }
        let received_us = now_us();
        // The well-formed deliveries: their tags, and their messages, which
        // move to the ledger's blocking thread without a copy.
        let mut tags = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        for delivery in batch {
            let user = delivery.properties.user_id().as_ref().map(|u| u.as_str());
            if !self.publishers.allows(user) {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(ToString::to_string);
                tracing::warn!(
                    id = id.as_deref().unwrap_or("<none>"),
                    user_id = user.unwrap_or("<none>"),
                    "dead-lettering a message not authored by a publisher (TOTALER_PUBLISHERS)"
                );
                self.dead_letter(channel, delivery.delivery_tag).await?;
                continue;
            }
            match SumMessage::decode(&delivery.data) {
                Ok(message) => {
                    self.metrics
                        .queue_time
                        .observe(seconds_between(message.published_us, received_us));
                    tags.push(delivery.delivery_tag);
                    messages.push(message);
                }
                Err(e) => {
                    let id = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(ToString::to_string);
                    tracing::warn!(id = id.as_deref().unwrap_or("<none>"), error = %e, "dead-lettering a malformed message");
                    self.dead_letter(channel, delivery.delivery_tag).await?;
                }
            }
        }
        if tags.is_empty() {
            return Ok(());
        }
        let messages = Arc::new(messages);
        let applied = self.apply(&messages, shutdown).await?;
        if self.crash_after_apply {
            tracing::error!(
                "TOTALER_CRASH_AFTER_APPLY: aborting between the durable update and the ack"
            );
            std::process::abort();
        }
        self.settle(channel, &tags, &messages, &applied).await
    }

    /// Dead-letters what the ledger refused, then acks the rest with one
    /// `multiple` ack naming the highest applied tag. The rejects go first:
    /// the broker reads a channel's frames in order, so by the ack every
    /// rejected delivery below it is settled already and the ack settles
    /// exactly the applied ones. It never names a rejected tag, which the
    /// broker would answer by closing the channel.
    async fn settle(
        &self,
        channel: &Channel,
        tags: &[u64],
        messages: &[SumMessage],
        applied: &[Applied],
    ) -> Result<(), Stop> {
        for ((tag, message), outcome) in tags.iter().zip(messages).zip(applied) {
            if let Applied::Refused(refusal) = outcome {
                tracing::warn!(id = %message.id(), error = %refusal, "dead-lettering a message the ledger refused");
                self.dead_letter(channel, *tag).await?;
            }
        }
        if let Some(last) = highest_applied(tags, applied) {
            channel
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(())
    }

    /// Rejects a delivery without requeue (the broker dead-letters it) and counts it.
    async fn dead_letter(&self, channel: &Channel, tag: u64) -> Result<(), Stop> {
        channel
            .basic_reject(tag, BasicRejectOptions { requeue: false })
            .await?;
        self.metrics
            .messages
            .with_label_values(&["dead_lettered"])
            .inc();
        Ok(())
    }

    /// One durable ledger update for every delivery of the batch, retried
    /// with backoff on disk errors. A shutdown during the retries returns
    /// `Stop::Shutdown`: the batch is not durable, so it must not be acked.
    async fn apply(
        &self,
        messages: &Arc<Vec<SumMessage>>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Applied>, Stop> {
        let mut backoff = BACKOFF_MIN;
        loop {
            let ledger = self.ledger.clone();
            let batch = messages.clone();
            let update = tokio::task::spawn_blocking(move || {
                ledger.update(|state| {
                    batch
                        .iter()
                        .map(|m| apply_one(state, m))
                        .collect::<Vec<_>>()
                })
            })
            .await
            .expect("the ledger update does not panic");
            match update {
                Ok(update) => {
                    self.status.set_ledger_ok(true);
                    self.status.set_total(update.state.total);
                    self.record(messages, &update.result, update.elapsed);
                    self.metrics.sum.set(update.state.total as f64);
                    self.metrics
                        .open_batches
                        .set(update.state.open_count() as i64);
                    return Ok(update.result);
                }
                Err(e) if e.is_fatal() => {
                    self.status.set_ledger_ok(false);
                    return Err(Stop::Fatal(e.into()));
                }
                Err(e) => {
                    self.status.set_ledger_ok(false);
                    self.metrics.ledger_errors.inc();
                    tracing::error!(error = %e, retry_in = ?backoff, "ledger update failed; not acking, will retry");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => {
                    tracing::warn!(deliveries = messages.len(), "shutting down with a batch the ledger could not take: leaving it unacked for redelivery");
                    return Err(Stop::Shutdown);
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn record(&self, messages: &[SumMessage], outcomes: &[Applied], elapsed: Duration) {
        let durable_us = now_us();
        let (mut applied, mut rows) = (0, 0);
        // One flush of the shared histogram per batch, not one atomic
        // update per row.
        let end_to_end = self.metrics.end_to_end.local();
        for (message, outcome) in messages.iter().zip(outcomes) {
            let Applied::Rows(n) = outcome else { continue };
            rows += message.sums.len();
            applied += n;
            if *n > 0 {
                for sum in &message.sums {
                    end_to_end.observe(seconds_between(sum.created_us, durable_us));
                }
            }
        }
        end_to_end.flush();
        let duplicates = rows - applied;
        self.metrics
            .messages
            .with_label_values(&["consumed"])
            .inc_by(messages.len() as u64);
        self.metrics
            .sums
            .with_label_values(&["applied"])
            .inc_by(applied as u64);
        self.metrics
            .sums
            .with_label_values(&["duplicate"])
            .inc_by(duplicates as u64);
        self.metrics.batch_size.observe(messages.len() as f64);
        self.metrics.apply.observe(elapsed.as_secs_f64());
        if duplicates > 0 {
            tracing::info!(
                duplicates,
                applied,
                "skipped redelivered sums already in the ledger"
            );
        }
    }
}

impl Publishers {
    /// `*` anywhere in the list: any author; otherwise the users listed.
    pub fn from_list(list: &[String]) -> Self {
        if list.iter().any(|user| user.trim() == "*") {
            return Self::Any;
        }
        Self::Only(
            list.iter()
                .map(|user| user.trim().to_owned())
                .filter(|user| !user.is_empty())
                .collect(),
        )
    }

    /// Whether a message with `user_id` (the broker-validated author) counts.
    pub fn allows(&self, user_id: Option<&str>) -> bool {
        match self {
            Self::Any => true,
            Self::Only(users) => user_id.is_some_and(|id| users.iter().any(|u| u == id)),
        }
    }
}

/// Applies one message: a batch part whole, a legacy message row by row.
pub(crate) fn apply_one(state: &mut State, message: &SumMessage) -> Applied {
    match message.part {
        Some(part) => {
            let sum = message.sums.iter().map(|s| i128::from(s.sum)).sum();
            match state.apply_part(message.source, part, sum) {
                Ok(Outcome::Applied) => Applied::Rows(message.sums.len()),
                Ok(Outcome::Duplicate) => Applied::Rows(0),
                Err(refusal) => Applied::Refused(refusal),
            }
        }
        None => Applied::Rows(
            message
                .sums
                .iter()
                .filter(|s| state.apply_row(message.source, s.seq, s.sum) == Outcome::Applied)
                .count(),
        ),
    }
}

/// The highest tag the ledger did not refuse: the one tag an ack may name.
/// `None` when it refused them all.
fn highest_applied(tags: &[u64], applied: &[Applied]) -> Option<u64> {
    tags.iter()
        .zip(applied)
        .filter(|(_, outcome)| matches!(outcome, Applied::Rows(_)))
        .map(|(&tag, _)| tag)
        .max()
}

fn seconds_between(from_us: i64, to_us: i64) -> f64 {
    (to_us.saturating_sub(from_us)).max(0) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Applied {
        Applied::Refused(Refusal::PartsDiffer {
            batch: 1,
            parts: 2,
            known: 1,
        })
    }

    #[test]
    fn only_a_listed_publisher_authors_a_sum_unless_any_is_allowed() {
        let only = Publishers::from_list(&["tally-adder".into(), " guest".into(), "".into()]);
        assert_eq!(
            only,
            Publishers::Only(vec!["tally-adder".into(), "guest".into()])
        );
        assert!(only.allows(Some("tally-adder")) && only.allows(Some("guest")));
        assert!(!only.allows(None) && !only.allows(Some("admin")) && !only.allows(Some("")));
        let any = Publishers::from_list(&["tally-adder".into(), "*".into()]);
        assert!(any.allows(None) && any.allows(Some("admin")));
    }

    #[test]
    fn the_ack_names_the_highest_applied_tag_never_a_refused_one() {
        let outcomes = [Applied::Rows(1), Applied::Rows(0), refused()];
        assert_eq!(highest_applied(&[4, 5, 6], &outcomes), Some(5));
        let outcomes = [refused(), Applied::Rows(1), refused()];
        assert_eq!(highest_applied(&[4, 5, 6], &outcomes), Some(5));
        assert_eq!(highest_applied(&[4, 6], &[refused(), refused()]), None);
        assert_eq!(highest_applied(&[7], &[Applied::Rows(1)]), Some(7));
    }
}
