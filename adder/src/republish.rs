//! `adder republish`: publishes cut batches of one source again, for an
//! operator repairing what `totaler verify` found MISSING (a lost queue, a
//! restored or fresh ledger). Each batch is read exactly as the relay reads
//! it (`outbox::Reader`, the same rows in the same order) and published as
//! the relay publishes it (`relay::batch_messages`, `relay::send`: the same
//! parts, message ids and queue), persistent and mandatory, and the command
//! ends only when the broker confirmed every part. A batch already applied
//! is harmless: the ledger counts each `(source, batch, part)` once.
//!
//! It writes nothing to the outbox and takes no relay lock (a cut batch
//! never changes, and this marks nothing confirmed). It refuses, before
//! publishing anything, a range with a batch the outbox does not hold:
//! purged by retention (verify names the sum it carried) or not cut yet.

use std::{fmt, path::PathBuf, time::Duration};

use anyhow::Context;
use lapin::options::ConfirmSelectOptions;
use proto::nodes::Nodes;
use uuid::Uuid;

use crate::{
    outbox::{Batch, Held, Reader},
    relay,
};

/// Batches read from the outbox at a time.
const WINDOW: i64 = 100;

/// `adder republish`'s arguments: the adders' own `DATABASE_URL`,
/// `AMQP_URL`, `TALLY_QUEUE` and `TALLY_EXCHANGE`, and which batches.
#[derive(Clone, clap::Parser)]
#[command(
    name = "adder republish",
    about = "Publish cut batches of one source again (what `totaler verify` found MISSING); the ledger counts each part once"
)]
pub struct Args {
    /// The outbox database(s), as the adders' DATABASE_URL (several
    /// separated by whitespace): the one that holds --source is read, on
    /// its writable primary.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// RabbitMQ URL, or the comma-separated URLs of a cluster's nodes.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub amqp_url: Nodes,
    /// A file holding DATABASE_URL's password, as the adders'
    /// DATABASE_PASSWORD_FILE.
    #[arg(long, env = "DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
    /// A file holding AMQP_URL's password, as the adders' AMQP_PASSWORD_FILE.
    #[arg(long, env = "AMQP_PASSWORD_FILE")]
    pub amqp_password_file: Option<PathBuf>,
    /// Queue the sums are published to, as the adders' TALLY_QUEUE.
    #[arg(long, env = "TALLY_QUEUE", default_value = proto::topology::DEFAULT_QUEUE)]
    pub queue: String,
    /// Exchange published through, as the adders' TALLY_EXCHANGE.
    #[arg(long, env = "TALLY_EXCHANGE", default_value = "")]
    pub exchange: String,
    /// The source (outbox database identity) whose batches to publish.
    #[arg(long)]
    pub source: Uuid,
    /// The batches: one number, or an inclusive range `FIRST..=LAST`.
    #[arg(long, value_parser = parse_batches)]
    pub batches: (i64, i64),
    /// How long to wait for the broker's confirms of a batch, in milliseconds.
    #[arg(long, env = "ADDER_RELAY_CONFIRM_TIMEOUT_MS", default_value_t = 30_000)]
    pub confirm_timeout_ms: u64,
}

/// What was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Republished {
    pub source: Uuid,
    /// The outbox database's place in DATABASE_URL, from 1.
    pub database: usize,
    pub batches: u64,
    pub messages: u64,
    pub rows: i64,
}

impl Args {
    /// Reads the password files that are set into the URLs (and unsets
    /// them), as the adder does (`Config::load`).
    pub fn with_password_files(mut self) -> anyhow::Result<Self> {
        if let Some(path) = self.database_password_file.take() {
            self.database_url =
                crate::config::database_url_with_password_file(&self.database_url, &path)?;
        }
        if let Some(path) = self.amqp_password_file.take() {
            self.amqp_url = crate::config::amqp_url_with_password_file(&self.amqp_url, &path)?;
        }
        Ok(self)
    }
}

/// Publishes the batches `args` names again, every part confirmed.
pub async fn run(args: &Args) -> anyhow::Result<Republished> {
    let (mut reader, database) = find_source(args).await?;
    check_range(&mut reader, args).await?;
    let opened = args
        .amqp_url
        .open(&args.queue)
        .await
        .context("connecting to the broker")?;
    opened
        .channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut done = Republished {
        source: args.source,
        database,
        batches: 0,
        messages: 0,
        rows: 0,
    };
    let (mut next, last) = args.batches;
    while next <= last {
        let batches = reader.batches(args.source, (next, last), WINDOW).await?;
        let Some(end) = batches.last().map(|b| b.id) else {
            anyhow::bail!(
                "batch {next} of source {} vanished (purged meanwhile?)",
                args.source
            );
        };
        for batch in &batches {
            publish(&mut reader, &opened.channel, batch, args).await?;
            done.add(batch);
        }
        next = end + 1;
    }
    let _ = opened.connection.close(200, "republished".into()).await;
    Ok(done)
}

/// The reader of the database that holds the source, and its place.
async fn find_source(args: &Args) -> anyhow::Result<(Reader, usize)> {
    let urls = proto::outbox::split_urls(&args.database_url);
    for (n, url) in urls.iter().enumerate() {
        let mut reader = Reader::connect(url)
            .await
            .with_context(|| format!("connecting to outbox database {}", n + 1))?;
        if reader.holds(args.source).await?.is_some() {
            return Ok((reader, n + 1));
        }
    }
    anyhow::bail!(
        "source {} is in none of the {} database(s) of DATABASE_URL",
        args.source,
        urls.len()
    )
}

/// Refuses the range unless the outbox holds every batch of it.
async fn check_range(reader: &mut Reader, args: &Args) -> anyhow::Result<()> {
    let source = args.source;
    let Some(absent) = reader.first_absent(source, args.batches).await? else {
        return Ok(());
    };
    let held = reader.holds(source).await?.unwrap_or(Held {
        purged_through: 0,
        newest: 0,
    });
    anyhow::bail!(
        "batch {absent} of source {source} {}; nothing was published",
        if absent > held.newest {
            format!("is not cut yet (the newest is {})", held.newest)
        } else if absent <= held.purged_through {
            format!(
                "was purged by retention (every batch up to {} was): it cannot be republished; `totaler verify` \
                 names the sum missing with it",
                held.purged_through
            )
        } else {
            "is not in the outbox".to_owned()
        }
    )
}

/// Publishes every part of `batch`, as the relay does, and awaits their
/// confirms.
async fn publish(
    reader: &mut Reader,
    channel: &lapin::Channel,
    batch: &Batch,
    args: &Args,
) -> anyhow::Result<()> {
    let rows = reader.rows(batch).await?;
    let target = (args.exchange.as_str(), args.queue.as_str());
    let mut confirms = Vec::new();
    for message in relay::batch_messages(batch, &rows) {
        let user = args.amqp_url.user();
        let confirm = relay::send(
            channel,
            target,
            user,
            &message,
            batch.traceparent.as_deref(),
        )
        .await?;
        confirms.push((message.id(), confirm));
    }
    let timeout = Duration::from_millis(args.confirm_timeout_ms);
    tokio::time::timeout(timeout, relay::await_confirms(confirms))
        .await
        .map_err(|_| anyhow::anyhow!("no confirms for batch {} within {timeout:?}", batch.id))?
        .with_context(|| format!("publishing batch {}", batch.id))
}

/// `N` or `FIRST..=LAST` (inclusive, FIRST <= LAST, from 1).
fn parse_batches(text: &str) -> Result<(i64, i64), String> {
    let number = |t: &str| {
        t.trim()
            .parse::<i64>()
            .map_err(|_| format!("{t:?} is not a batch number"))
    };
    let (first, last) = match text.split_once("..") {
        None => (number(text)?, number(text)?),
        Some((first, last)) => {
            let last = last
                .strip_prefix('=')
                .ok_or_else(|| format!("write the range inclusive, FIRST..=LAST (not {text:?})"))?;
            (number(first)?, number(last)?)
        }
    };
    if first < 1 || last < first {
        return Err(format!(
            "{text:?}: batches are numbered from 1, FIRST <= LAST"
        ));
    }
    Ok((first, last))
}

impl Republished {
    fn add(&mut self, batch: &Batch) {
        let pack = i64::from(batch.pack.max(1));
        self.batches += 1;
        self.messages += ((batch.rows + pack - 1) / pack).unsigned_abs();
        self.rows += batch.rows;
    }
}

impl fmt::Display for Republished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "republished {} batch(es) of source {} from outbox database {}: {} message(s), {} row(s), every one confirmed",
            self.batches, self.source, self.database, self.messages, self.rows
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_one_number_or_an_inclusive_range() {
        assert_eq!(parse_batches("5"), Ok((5, 5)));
        assert_eq!(parse_batches("5..=9"), Ok((5, 9)));
        assert!(
            parse_batches("5..9").is_err(),
            "an exclusive range is ambiguous"
        );
        assert!(parse_batches("0").is_err());
        assert!(parse_batches("9..=5").is_err());
        assert!(parse_batches("x").is_err());
    }
}
