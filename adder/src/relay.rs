//! The relay: outbox -> broker. Each batch runs in one transaction that claims
//! rows with `FOR UPDATE SKIP LOCKED`, packs them into messages of up to
//! `pack` rows, publishes those (persistent, mandatory) with pipelined
//! publisher confirms, and marks published exactly the rows of the messages
//! the broker acked. A nack, a return or a lost connection leaves rows for a
//! retry; a row published twice (even in another pack) is deduplicated by
//! the totaler, row by row.
//!
//! Batches run in `LANES` concurrent lanes on the one channel, so one lane
//! claims and publishes while another waits for its confirms or commits;
//! `SKIP LOCKED` keeps their rows apart. Rows may so reach the queue a little
//! out of id order, which the totaler's dedupe state allows.
//!
//! It must never mark a row before its confirm, and it stops only between
//! batches: when one lane fails, the others finish their batch and stop.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use proto::{Sum, SumMessage, message::now_us};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    outbox::{self, Outbox, Pending},
};

/// What the relay needs to run.
pub struct Relay {
    pub outbox: Outbox,
    pub amqp_url: String,
    pub queue: String,
    pub batch: u32,
    /// Most rows one message carries.
    pub pack: usize,
    pub poll: Duration,
    /// Wait after a wake-up before claiming, so one batch takes more rows.
    pub linger: Duration,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::Error),
    #[error("broker: the channel is closed")]
    Disconnected,
    #[error("broker: no confirms within {CONFIRM_TIMEOUT:?}")]
    ConfirmTimeout,
}

/// Batches in flight at once on the channel.
const LANES: usize = 2;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Closing a connection whose socket is already dead must not hang us either.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Confirms that never come (a half-open connection) end the channel; the
/// rows stay unpublished and are retried on a new one.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

impl Relay {
    /// Publishes until `shutdown`, reconnecting to the broker with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        while !shutdown.is_cancelled() {
            match self.connect().await {
                Ok((connection, channel)) => {
                    backoff = BACKOFF_MIN;
                    self.metrics.broker_up.set(1);
                    tracing::info!(queue = %self.queue, "relay connected to the broker");
                    let result = self.pump(&channel, &shutdown).await;
                    self.metrics.broker_up.set(0);
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        connection.close(200, "relay stopping".into()),
                    )
                    .await;
                    match result {
                        Ok(()) => return,
                        Err(e) => tracing::warn!(error = %e, "relay lost the broker, reconnecting"),
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

    async fn connect(&self) -> lapin::Result<(Connection, Channel)> {
        let (connection, channel) = proto::topology::open(&self.amqp_url, &self.queue).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }

    /// Runs the lanes until shutdown (`Ok`) or a broker error in any lane
    /// (`Err`, once every lane has stopped between batches).
    async fn pump(&self, channel: &Channel, shutdown: &CancellationToken) -> Result<(), Error> {
        let stop = shutdown.child_token();
        let lanes = (0..LANES).map(|_| async {
            let result = self.lane(channel, &stop).await;
            if result.is_err() {
                stop.cancel();
            }
            result
        });
        futures_util::future::join_all(lanes)
            .await
            .into_iter()
            .find(Result::is_err)
            .unwrap_or(Ok(()))
    }

    /// Publishes batches until `shutdown` (`Ok`) or a broker error (`Err`).
    /// Outbox errors back off here, keeping the channel.
    async fn lane(&self, channel: &Channel, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut backoff = BACKOFF_MIN;
        loop {
            if !channel.status().connected() {
                return Err(Error::Disconnected);
            }
            let full = match self.publish_batch(channel).await {
                Ok(count) => {
                    backoff = BACKOFF_MIN;
                    count == self.batch as usize
                }
                Err(Error::Outbox(e)) => {
                    tracing::warn!(error = %e, "relay cannot read the outbox, retrying");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if full {
                continue;
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

    /// One batch: claim, publish with pipelined confirms, mark the acked rows,
    /// commit. Returns how many rows it claimed.
    #[tracing::instrument(skip_all, fields(claimed, confirmed))]
    async fn publish_batch(&self, channel: &Channel) -> Result<usize, Error> {
        let mut tx = self.outbox.begin().await?;
        let rows = Outbox::claim(&mut tx, self.batch).await?;
        if rows.is_empty() {
            tx.commit().await.map_err(outbox::Error::from)?;
            return Ok(0);
        }
        let started = Instant::now();
        let confirmed = self.publish(channel, &rows).await?;
        self.metrics
            .relay_confirm
            .observe(started.elapsed().as_secs_f64());
        Outbox::mark_published(&mut tx, &confirmed).await?;
        tx.commit().await.map_err(outbox::Error::from)?;
        self.metrics.relay_batch_size.observe(rows.len() as f64);
        self.metrics.relay_published.inc_by(confirmed.len() as u64);
        let span = tracing::Span::current();
        span.record("claimed", rows.len());
        span.record("confirmed", confirmed.len());
        Ok(rows.len())
    }

    /// Publishes every pack of rows before awaiting any confirm; returns the
    /// ids of the rows whose message the broker acked without returning it.
    async fn publish(&self, channel: &Channel, rows: &[Pending]) -> Result<Vec<i64>, Error> {
        let mut confirms = Vec::with_capacity(rows.len().div_ceil(self.pack));
        for pack in rows.chunks(self.pack.max(1)) {
            let message = SumMessage {
                source: self.outbox.source(),
                published_us: now_us(),
                sums: pack
                    .iter()
                    .map(|row| Sum {
                        seq: row.id,
                        sum: row.sum,
                        created_us: row.created_us,
                    })
                    .collect(),
            };
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(message.id().into());
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.encode(),
                    properties,
                )
                .await?;
            confirms.push((pack, confirm));
        }
        self.metrics.relay_messages.inc_by(confirms.len() as u64);
        tokio::time::timeout(CONFIRM_TIMEOUT, await_confirms(confirms))
            .await
            .map_err(|_| Error::ConfirmTimeout)?
    }
}

/// Waits for every confirm; returns the ids of the rows whose message the
/// broker acked without returning it.
async fn await_confirms(confirms: Vec<(&[Pending], PublisherConfirm)>) -> Result<Vec<i64>, Error> {
    let mut confirmed = Vec::new();
    for (pack, confirm) in confirms {
        let first = pack.first().map_or(0, |row| row.id);
        match confirm.await? {
            Confirmation::Ack(None) => confirmed.extend(pack.iter().map(|row| row.id)),
            Confirmation::Ack(Some(returned)) => {
                tracing::warn!(first, rows = pack.len(), reply = %returned.reply_text, "broker returned the message, will retry")
            }
            other => {
                tracing::warn!(first, rows = pack.len(), confirmation = ?other, "broker did not confirm, will retry")
            }
        }
    }
    Ok(confirmed)
}
