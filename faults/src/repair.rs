//! Faults of batch numbering and the repair path: a source whose batch
//! numbers run far from 1 (moved to 10^9, as a source that has cut a
//! billion batches), and batches lost from the queue while the totaler was
//! away (a purged queue), followed by more than 100,000 batch numbers, then
//! repaired as an operator would: `totaler verify` finds them MISSING and
//! prints `adder republish` command lines, which are run as printed. The
//! total stays exact only if the ledger counts every batch beyond the gaps
//! and each republished batch once; the final check says whether it did.

use std::{process::Command, time::Duration};

use anyhow::Context;
use lapin::options::QueuePurgeOptions;
use sqlx::{Connection, PgConnection};

use crate::stack::Stack;

/// Where `FarBatchNumbers` moves the source's batch numbers (at least).
pub const FAR_BATCH: i64 = 1_000_000_000;
/// How far `LostBatchRepaired` moves them past the lost batches.
pub const PAST_THE_LOSS: i64 = 150_000;

impl Stack {
    /// Moves the next batch number of the outbox's source to 10^9 or, when
    /// it is there already, another 10^9 on: the ledger must count batches
    /// that far from 1, and from the last one it saw.
    pub(crate) async fn far_batch_numbers(&mut self) -> anyhow::Result<()> {
        let mut db = PgConnection::connect(&self.postgres.url()).await?;
        let (from, to) = jump(&mut db, FAR_BATCH, true).await?;
        eprintln!("faults:          batch numbers moved from {from} to {to}");
        self.counts.batch_jumps.push((from, to));
        Ok(())
    }

    /// Stops the totaler, lets the relay confirm batches into the queue,
    /// purges the queue (those batches are lost), moves the batch numbers
    /// 150,000 on, restarts the totaler, and repairs with the commands
    /// `totaler verify` prints.
    pub(crate) async fn lost_batch_repaired(&mut self) -> anyhow::Result<()> {
        let status = self.totaler.terminate().await;
        self.record_sigterm("totaler", status);
        let url = self.postgres.url();
        let mut db = PgConnection::connect(&url).await?;
        let before = newest_confirmed(&mut db).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while newest_confirmed(&mut db).await? <= before + 1 {
            if tokio::time::Instant::now() > deadline {
                self.fail("LostBatchRepaired: no batch was confirmed within 20 s".to_owned());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let purged = self.purge_queue().await?;
        let (from, to) = jump(&mut db, PAST_THE_LOSS, false).await?;
        self.counts.batch_jumps.push((from, to));
        self.totaler.start().await?;
        // Past verify's in-flight window for the lost batches, so they are
        // MISSING, not in flight (batches confirmed since are in flight).
        tokio::time::sleep(Duration::from_secs(REPAIR_IN_FLIGHT_SECS + 1)).await;
        let lost = self.verify_missing()?;
        eprintln!(
            "faults:          {purged} messages purged; verify finds {} batches MISSING",
            lost.batches.len()
        );
        if purged > 0 && lost.batches.is_empty() {
            self.fail(format!(
                "LostBatchRepaired: {purged} messages were purged, verify found nothing MISSING"
            ));
        }
        for line in &lost.commands {
            self.republish(line)?;
        }
        self.wait_repaired(&lost.batches).await;
        self.counts.lost_batches_repaired += lost.batches.len() as u64;
        Ok(())
    }

    /// Empties `tally.sums`; how many messages it held.
    async fn purge_queue(&self) -> anyhow::Result<u32> {
        let connection =
            lapin::Connection::connect(&self.rabbit.url(), lapin::ConnectionProperties::default())
                .await?;
        let channel = connection.create_channel().await?;
        let purged = channel
            .queue_purge("tally.sums".into(), QueuePurgeOptions::default())
            .await?;
        let _ = connection.close(200, "purged".into()).await;
        Ok(purged)
    }

    /// `totaler verify` with a short in-flight window: the batches it
    /// reports MISSING and the `adder republish` lines it prints.
    fn verify_missing(&self) -> anyhow::Result<Missing> {
        let output = Command::new(self.totaler.binary())
            .arg("verify")
            .arg("--sum-file")
            .arg(self.data.sum_file())
            .args(["--database-url", &self.postgres.url()])
            .args(["--in-flight-secs", &REPAIR_IN_FLIGHT_SECS.to_string()])
            .output()
            .context("running totaler verify")?;
        Ok(Missing::read(&String::from_utf8_lossy(&output.stdout)))
    }

    /// Runs one `adder republish` line as `verify` printed it, against the
    /// run's database and broker.
    fn republish(&mut self, line: &str) -> anyhow::Result<()> {
        let args = line
            .split("adder republish ")
            .nth(1)
            .context("a republish line")?;
        let output = Command::new(self.adder.binary())
            .arg("republish")
            .args(args.split_whitespace())
            .env("DATABASE_URL", self.postgres.url())
            .env("AMQP_URL", self.rabbit.url())
            .env("TALLY_QUEUE", "tally.sums")
            .output()
            .context("running adder republish")?;
        if !output.status.success() {
            self.fail(format!(
                "adder republish {args} exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Waits (up to 30 s) until `verify` no longer reports any of `lost`.
    async fn wait_repaired(&mut self, lost: &[i64]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let still: Option<Vec<i64>> = match self.verify_missing() {
                Ok(found) => Some(
                    found
                        .batches
                        .into_iter()
                        .filter(|b| lost.contains(b))
                        .collect(),
                ),
                Err(e) => {
                    eprintln!("faults: {e:#}");
                    None
                }
            };
            if still.as_ref().is_some_and(Vec::is_empty) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(format!(
                    "LostBatchRepaired: batches {still:?} still MISSING 30 s after their republish (None: verify did not run)"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// `verify`'s in-flight window during the repair, in seconds.
const REPAIR_IN_FLIGHT_SECS: u64 = 3;

/// What `verify` reported missing.
#[derive(Debug, Default, PartialEq, Eq)]
struct Missing {
    batches: Vec<i64>,
    commands: Vec<String>,
}

impl Missing {
    fn read(report: &str) -> Self {
        let mut missing = Self::default();
        for line in report.lines() {
            if line.contains("adder republish --source") {
                missing.commands.push(line.trim().to_owned());
            } else if let Some(rest) = line.split(" batch ").nth(1)
                && line.starts_with("MISSING source")
                && let Some(Ok(batch)) = rest.split_whitespace().next().map(str::parse)
            {
                missing.batches.push(batch);
            }
        }
        missing
    }
}

/// The newest confirmed batch number of the outbox's current source.
async fn newest_confirmed(db: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(max(id), 0) FROM outbox_batch \
         WHERE source = (SELECT source FROM outbox_source) AND confirmed_at IS NOT NULL",
    )
    .fetch_one(db)
    .await?)
}

/// Moves the cursor's batch number `by` on, or (`at_least`) to `by` - 1 if
/// it is below, under the relay's own row lock; returns the numbers before
/// and after.
async fn jump(db: &mut PgConnection, by: i64, at_least: bool) -> anyhow::Result<(i64, i64)> {
    let mut tx = db.begin().await?;
    let from: i64 = sqlx::query_scalar("SELECT batch FROM outbox_cursor FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    let to: i64 = sqlx::query_scalar(
        "UPDATE outbox_cursor SET batch = CASE WHEN $2 AND batch < $1 THEN $1 - 1 ELSE batch + $1 END \
         RETURNING batch",
    )
    .bind(by)
    .bind(at_least)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_s_missing_batches_and_commands_are_read() {
        let report = "MISSING source 5e0c batch 17 (outbox ids 3..=4, 2 rows, sum 9): confirmed, not applied\n\
                      MISSING source 5e0c batch 19 (outbox ids 5..=5, 1 rows, sum 1): confirmed, not applied\n\
                        republish: adder republish --source 5e0c --batches 17..=17\n\
                      source 5e0c: 3 batches in the outbox";
        assert_eq!(
            Missing::read(report),
            Missing {
                batches: vec![17, 19],
                commands: vec![
                    "republish: adder republish --source 5e0c --batches 17..=17".to_owned()
                ],
            }
        );
    }
}
