//! The relay: outbox -> broker, one active relay per outbox database (an
//! adder runs one `Relay` per database it lists, each with its own broker
//! connection; of several adders' relays of one database, one is active).
//!
//! Once connected to the broker, a relay takes the database's relay lock
//! (`outbox::Active`); without it, it stands by and tries again every poll
//! (at most a second), so it takes over within a second of the active
//! relay's loss. The active relay first publishes the legacy rows (recorded
//! before snapshot batches, row by row as before), then republishes every
//! batch cut but not confirmed, identically, then cuts new batches: each is
//! committed before its first part is published, its parts (up to `pack`
//! rows each) are published persistent and mandatory with pipelined
//! confirms, and only when the broker acked every part is it marked
//! confirmed. Up to `WINDOW` batches await their confirms while the next is
//! cut and published; while one does, the next is cut once it is confirmed
//! or `pipeline_gap` after the last cut, whichever comes first, so that a
//! high rate makes larger batches rather than more of them.
//!
//! A nack, a return, a confirm timeout, a lost channel or the adder's move
//! to a new primary of the outbox database ends the active period: the lock is released and every unconfirmed batch is published
//! again on the next one, which the ledger counts once. It never marks a
//! batch before all its confirms, and stops only between batches.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use proto::{Sum, SumMessage, message::Part, message::now_us, nodes::Nodes};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    outbox::{self, Active, Batch, Claim, Cut, Outbox, Row},
    status::Status,
};

/// What the relay needs to run.
pub struct Relay {
    pub outbox: Outbox,
    /// The database's index in `DATABASE_URL` (its metrics and status).
    pub database: usize,
    pub amqp_url: Nodes,
    pub queue: String,
    /// The exchange published through ("" the default one, to `queue`).
    pub exchange: String,
    /// Most rows one batch takes.
    pub batch: u32,
    /// Most rows one message carries.
    pub pack: usize,
    pub poll: Duration,
    /// Wait after a wake-up before cutting, so one batch takes more rows.
    pub linger: Duration,
    /// While batches await their confirms, the least time between two cuts
    /// (unless the oldest is confirmed first), so one batch takes more rows.
    pub pipeline_gap: Duration,
    /// How long to wait for the broker's confirms of a batch.
    pub confirm_timeout: Duration,
    pub wake: Arc<Notify>,
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    /// Whether traces are exported: then each batch gets a publish span.
    pub tracing: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker: {0}")]
    Connect(#[from] proto::nodes::ConnectError),
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::Error),
    #[error("broker: the channel is closed")]
    Disconnected,
    #[error("broker: no confirms within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("broker: message {id} was {what}")]
    NotConfirmed { id: String, what: String },
}

/// A batch whose parts are published and await their confirms.
struct InFlight {
    batch: Claim,
    /// Awaits every confirm of the batch (bounded by the confirm timeout)
    /// and says how long they took from the publish.
    confirmed: tokio::task::JoinHandle<Result<Duration, Error>>,
}

/// Batches awaiting confirms at once while the next is cut.
const WINDOW: usize = 4;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Closing a connection whose socket is already dead must not hang us either.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A standby tries the relay lock at least this often.
const STANDBY_POLL_MAX: Duration = Duration::from_secs(1);

impl Relay {
    /// Publishes until `shutdown`, reconnecting to the broker with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        while !shutdown.is_cancelled() {
            match self.connect().await {
                Ok((connection, channel, node)) => {
                    backoff = BACKOFF_MIN;
                    self.status.set_broker_up(self.database, true);
                    tracing::info!(queue = %self.queue, %node, "relay connected to the broker");
                    let result = self.serve(&channel, &shutdown).await;
                    self.status.set_broker_up(self.database, false);
                    self.metrics.set_relay_active(self.database, false);
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        connection.close(200, "relay stopping".into()),
                    )
                    .await;
                    match result {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "relay stopped publishing, reconnecting")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "relay cannot reach the broker, retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens a channel in confirm mode on the first broker node that
    /// answers; returns the node's address too.
    async fn connect(&self) -> Result<(Connection, Channel, String), Error> {
        let opened = self.amqp_url.open(&self.queue).await?;
        opened
            .channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((opened.connection, opened.channel, opened.address))
    }

    /// Stands by until this relay holds the relay lock, then publishes until
    /// shutdown (`Ok`) or an error (`Err`, the lock released).
    async fn serve(&self, channel: &Channel, shutdown: &CancellationToken) -> Result<(), Error> {
        let standby = self.poll.min(STANDBY_POLL_MAX);
        let mut waiting = outbox::Standby::default();
        let mut active = loop {
            if !channel.status().connected() {
                return Err(Error::Disconnected);
            }
            // A try on a primary that hangs would never end: a move to a
            // new one ends it (and drops the connection kept for tries).
            let tried = tokio::select! {
                tried = Active::try_acquire(&self.outbox, &mut waiting) => tried,
                () = self.outbox.moved() => {
                    waiting = outbox::Standby::default();
                    Err(outbox::Error::Moved)
                }
            };
            match tried {
                Ok(Some(active)) => break active,
                Ok(None) => {}
                Err(e) if e.is_fatal() => {
                    tracing::error!(error = %e, "relay refuses to publish from this database");
                }
                Err(e) => tracing::warn!(error = %e, "relay cannot reach the outbox, retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(standby) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        };
        tracing::info!(
            database = self.database + 1,
            "relay is the active relay of this outbox"
        );
        self.metrics.set_relay_active(self.database, true);
        // The lock lives on the old primary: once the adder moved to a new
        // one, this period ends (the old one may hang rather than fail) and
        // the next takes the lock there, publishing what is unconfirmed.
        let result = tokio::select! {
            result = self.publish_all(&mut active, channel, shutdown) => result,
            () = self.outbox.moved() => Err(Error::Outbox(outbox::Error::Moved)),
        };
        self.metrics.set_relay_active(self.database, false);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, active.release()).await;
        result
    }

    /// The active period: legacy rows, then unconfirmed batches, then new ones.
    async fn publish_all(
        &self,
        active: &mut Active,
        channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        self.publish_legacy(active, channel).await?;
        let mut in_flight = VecDeque::new();
        for batch in active.unconfirmed().await? {
            tracing::info!(source = %batch.source, batch = batch.id, "republishing a batch cut but not confirmed");
            let cut = active.claim(batch).await?;
            let published = self.publish(active, channel, cut).await?;
            in_flight.push_back(published);
            if in_flight.len() >= WINDOW {
                self.settle_front(active, &mut in_flight, None).await?;
            }
        }
        let mut last_cut: Option<Instant> = None;
        loop {
            // Mark what the broker confirmed already, then cut while the
            // window and the gap allow, then wait for the oldest batch (no
            // longer than until the gap allows a cut).
            while in_flight.front().is_some_and(|f| f.confirmed.is_finished()) {
                self.settle_front(active, &mut in_flight, None).await?;
            }
            let mut gap_ends = None;
            if in_flight.len() < WINDOW {
                gap_ends = self.gap_ends(last_cut, &in_flight);
                if gap_ends.is_none() {
                    if !channel.status().connected() {
                        return Err(Error::Disconnected);
                    }
                    if let Some(cut) = active.cut(i64::from(self.batch), self.pack as i32).await? {
                        in_flight.push_back(self.publish(active, channel, cut).await?);
                        last_cut = Some(Instant::now());
                        continue;
                    }
                }
            }
            if !in_flight.is_empty() {
                self.settle_front(active, &mut in_flight, gap_ends).await?;
                continue;
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            if !self.linger.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(self.linger) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }

    /// When the pipeline gap after `last_cut` ends, if a batch is in flight
    /// and it has not ended yet; `None`: the next cut may be made now.
    fn gap_ends(
        &self,
        last_cut: Option<Instant>,
        in_flight: &VecDeque<InFlight>,
    ) -> Option<Instant> {
        last_cut
            .filter(|_| !in_flight.is_empty())
            .map(|cut| cut + self.pipeline_gap)
            .filter(|&ends| Instant::now() < ends)
    }

    /// Publishes every part of a batch without awaiting a confirm; while
    /// tracing, under the batch's `traceparent` (`trace::publish_context`).
    #[tracing::instrument(name = "publish batch", skip_all, fields(source = %cut.claim.source, batch = cut.claim.id, rows = cut.claim.rows, trace_id = tracing::field::Empty))]
    async fn publish(
        &self,
        active: &mut Active,
        channel: &Channel,
        cut: Cut,
    ) -> Result<InFlight, Error> {
        let Cut { claim: batch, rows } = cut;
        let traceparent = if self.tracing {
            crate::trace::publish_context(active, &batch).await?
        } else {
            None
        };
        let messages = batch_messages(&batch, &rows);
        let mut confirms = Vec::with_capacity(messages.len());
        for message in &messages {
            let confirm = self.send(channel, message, traceparent.as_deref()).await?;
            confirms.push((message.id(), confirm));
        }
        self.metrics.relay_messages.inc_by(confirms.len() as u64);
        self.metrics.relay_batch_size.observe(batch.rows as f64);
        let (published, timeout) = (Instant::now(), self.confirm_timeout);
        let confirmed = tokio::spawn(async move {
            tokio::time::timeout(timeout, await_confirms(confirms))
                .await
                .map_err(|_| Error::ConfirmTimeout(timeout))??;
            Ok(published.elapsed())
        });
        Ok(InFlight { batch, confirmed })
    }

    async fn send(
        &self,
        channel: &Channel,
        message: &SumMessage,
        traceparent: Option<&str>,
    ) -> Result<PublisherConfirm, Error> {
        let target = (self.exchange.as_str(), self.queue.as_str());
        Ok(send(channel, target, self.amqp_url.user(), message, traceparent).await?)
    }

    /// Awaits every confirm of the oldest batch in flight (until `until`,
    /// if given: then it stays in flight) and marks it confirmed; any part
    /// not acked (or returned) ends the active period.
    async fn settle_front(
        &self,
        active: &mut Active,
        in_flight: &mut VecDeque<InFlight>,
        until: Option<Instant>,
    ) -> Result<(), Error> {
        let Some(front) = in_flight.front_mut() else {
            return Ok(());
        };
        let confirmed = match until {
            None => (&mut front.confirmed).await,
            Some(until) => {
                match tokio::time::timeout_at(until.into(), &mut front.confirmed).await {
                    Ok(confirmed) => confirmed,
                    Err(_) => return Ok(()),
                }
            }
        };
        let front = in_flight
            .pop_front()
            .expect("the front batch was there a moment ago");
        let took = confirmed.map_err(|_| Error::Disconnected)??;
        let rows = front.batch.rows;
        active.confirm(front.batch).await?;
        self.metrics.relay_confirm.observe(took.as_secs_f64());
        self.metrics.relay_published.inc_by(rows as u64);
        Ok(())
    }

    /// Legacy rows, row by row in messages without a batch, until none is left.
    async fn publish_legacy(&self, active: &mut Active, channel: &Channel) -> Result<(), Error> {
        loop {
            let rows = active.legacy(i64::from(self.batch)).await?;
            if rows.is_empty() {
                return Ok(());
            }
            let source = self.outbox.legacy_source().await?;
            let mut confirms = Vec::new();
            for chunk in rows.chunks(self.pack.max(1)) {
                let message = SumMessage {
                    source,
                    part: None,
                    published_us: now_us(),
                    sums: sums(chunk),
                };
                confirms.push((message.id(), self.send(channel, &message, None).await?));
            }
            tokio::time::timeout(self.confirm_timeout, await_confirms(confirms))
                .await
                .map_err(|_| Error::ConfirmTimeout(self.confirm_timeout))??;
            let marked = rows.len();
            active.mark_legacy(rows).await?;
            self.metrics.relay_published.inc_by(marked as u64);
            tracing::info!(rows = marked, "published legacy rows");
        }
    }
}

/// The messages of a batch, as the relay publishes it (and `adder
/// republish` again): its rows in parts of the batch's `pack`, in order.
pub(crate) fn batch_messages(batch: &Batch, rows: &[Row]) -> Vec<SumMessage> {
    let pack = usize::try_from(batch.pack).unwrap_or(1).max(1);
    let parts = u32::try_from(rows.len().div_ceil(pack)).unwrap_or(u32::MAX);
    rows.chunks(pack)
        .enumerate()
        .map(|(part, chunk)| SumMessage {
            source: batch.source,
            part: Some(Part {
                batch: batch.id,
                part: part as u32,
                parts,
            }),
            published_us: now_us(),
            sums: sums(chunk),
        })
        .collect()
}

/// Publishes `message` persistent and mandatory through `(exchange,
/// queue)` as `user`, with its trace context if any; the confirm is the
/// caller's.
pub(crate) async fn send(
    channel: &Channel,
    (exchange, queue): (&str, &str),
    user: &str,
    message: &SumMessage,
    traceparent: Option<&str>,
) -> Result<PublisherConfirm, lapin::Error> {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.id().into())
        // The author, which the broker checks against this connection's
        // user and the totaler against its publishers.
        .with_user_id(user.into());
    if let Some(traceparent) = traceparent {
        properties = otel::context::to_amqp(properties, traceparent);
    }
    channel
        .basic_publish(
            exchange.into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &message.encode(),
            properties,
        )
        .await
}

/// Outbox rows as message rows.
fn sums(rows: &[Row]) -> Vec<Sum> {
    rows.iter()
        .map(|row| Sum {
            seq: row.id,
            sum: row.sum,
            created_us: row.created_us,
        })
        .collect()
}

/// Waits for every confirm; Err names the first message not acked.
pub(crate) async fn await_confirms(confirms: Vec<(String, PublisherConfirm)>) -> Result<(), Error> {
    for (id, confirm) in confirms {
        match confirm.await? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(returned)) => {
                return Err(Error::NotConfirmed {
                    id,
                    what: format!("returned ({})", returned.reply_text),
                });
            }
            other => {
                return Err(Error::NotConfirmed {
                    id,
                    what: format!("not confirmed ({other:?})"),
                });
            }
        }
    }
    Ok(())
}
