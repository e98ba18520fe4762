//! Process, server and network faults: SIGKILL and SIGTERM of the
//! services, broker crashes and stops, PostgreSQL crashes, a second totaler
//! on the same `sum.txt` and a second adder on the same database, a totaler
//! that dies between its ledger update and its ack, lost published marks, a
//! partition that holds the broker's confirms, and two of them at once.
//! Each records what it did (and whether it did harm) in `Counts`.

use std::{process::ExitStatus, time::Duration};

use crate::{
    load::{Load, Shape},
    metrics::{APPLIED_ROWS, CONSUMED, scrape, value},
    outbox,
    stack::Stack,
};

impl Stack {
    pub(crate) async fn kill_totaler(&mut self) -> anyhow::Result<()> {
        self.sampler.sample_now().await;
        self.totaler.kill();
        self.counts.totaler_kills += 1;
        self.pause(0, 1000).await;
        self.totaler.start().await
    }

    pub(crate) async fn kill_adder(&mut self) -> anyhow::Result<()> {
        self.sampler.sample_now().await;
        self.adder.kill();
        self.counts.adder_kills += 1;
        self.pause(0, 1000).await;
        self.adder.start().await
    }

    pub(crate) async fn restart_broker(&mut self, crash: bool) -> anyhow::Result<()> {
        if crash {
            tokio::task::block_in_place(|| self.rabbit.crash());
            self.counts.broker_crashes += 1;
        } else {
            tokio::task::block_in_place(|| self.rabbit.stop());
            self.counts.broker_stops += 1;
        }
        self.pause(0, 2000).await;
        self.rabbit.start_node().await
    }

    pub(crate) async fn restart_postgres(&mut self) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| self.postgres.crash())?;
        self.counts.postgres_crashes += 1;
        self.pause(0, 2000).await;
        tokio::task::block_in_place(|| self.postgres.start_server())
    }

    /// A second totaler on the same `sum.txt`; counts an overlap when both
    /// applied rows while both ran.
    pub(crate) async fn two_totalers(&mut self) -> anyhow::Result<()> {
        let before = scrape(self.totaler.http).await;
        self.second.start().await?;
        self.counts.two_totaler_periods += 1;
        self.pause(2000, 6000).await;
        // Both must have applied rows while both ran; give a totaler that
        // was still reconnecting (after a broker fault) up to 15 s more.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let first = scrape(self.totaler.http).await;
            let second = scrape(self.second.http).await;
            if value(&first, APPLIED_ROWS) > value(&before, APPLIED_ROWS)
                && value(&second, APPLIED_ROWS) > 0.0
            {
                self.counts.two_totaler_overlaps += 1;
                break;
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.sampler.sample_now().await;
        let status = self.second.terminate().await;
        self.record_sigterm("totaler-2", status);
        Ok(())
    }

    /// SIGTERM at a moment the totaler consumes (its consumed count rose in the
    /// 300 ms before the signal; counted as such only then).
    pub(crate) async fn terminate_totaler(&mut self) -> anyhow::Result<()> {
        // Signal at a moment it is consuming: wait (up to 10 s) for a 300 ms
        // window in which its consumed count rose, then SIGTERM at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let before = scrape(self.totaler.http).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let just_before = scrape(self.totaler.http).await;
            if value(&just_before, CONSUMED) > value(&before, CONSUMED) {
                self.counts.sigterms_while_consuming += 1;
                break;
            }
            if std::time::Instant::now() > deadline {
                break;
            }
        }
        self.sampler.sample_now().await;
        let status = self.totaler.terminate().await;
        self.record_sigterm("totaler", status);
        self.pause(0, 500).await;
        self.totaler.start().await
    }

    /// Restarts the totaler with its test hook that aborts right after a
    /// durable ledger update and before the ack: the broker redelivers a
    /// batch the ledger already holds.
    pub(crate) async fn crash_totaler_after_apply(&mut self) -> anyhow::Result<()> {
        self.sampler.sample_now().await;
        self.totaler.kill();
        self.totaler
            .spawn(&[("TOTALER_CRASH_AFTER_APPLY", "true")])?;
        match self.totaler.wait_exit(Duration::from_secs(30)).await? {
            Some(_) => self.counts.crashes_after_apply += 1,
            None => {
                self.totaler.kill();
                self.fail(
                    "a totaler with TOTALER_CRASH_AFTER_APPLY did not abort within 30 s".to_owned(),
                );
            }
        }
        self.totaler.start().await
    }

    /// Clears the confirmation of recent batches, as a lost asynchronous
    /// confirmation commit would, and kills the adder: the next active relay
    /// publishes them again.
    pub(crate) async fn lose_relay_marks(&mut self) -> anyhow::Result<()> {
        let (rows, batches) = outbox::forget_published(&self.postgres.url(), 300).await?;
        self.counts.forgotten_marks += rows;
        // Only a relay starting its active period republishes what is not
        // confirmed, as after the crash that lost the confirmations.
        self.kill_adder().await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let again = outbox::confirmed_of(&self.postgres.url(), &batches).await?;
            if again == batches.len() {
                self.counts.republished_batches += again as u64;
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                self.fail(format!(
                    "{} of {} batches whose confirmation was lost were not published and confirmed again within 30 s",
                    batches.len() - again,
                    batches.len()
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A second adder on the same database (and its own relay), with load
    /// of its own, for a few seconds.
    pub(crate) async fn two_adders(&mut self) -> anyhow::Result<()> {
        self.second_adder.start().await?;
        self.counts.two_adder_periods += 1;
        let before = self
            .tally
            .acknowledged
            .load(std::sync::atomic::Ordering::Relaxed);
        let shape = Shape {
            workers: 4,
            rate: 200,
            idless_workers: 4,
            idless_rate: 200,
        };
        let label = format!(
            "{}-adder2-{}",
            self.options.seed, self.counts.two_adder_periods
        );
        let grpc = format!("127.0.0.1:{}", self.second_grpc);
        let load = Load::start(&grpc, shape, &mut self.rng, &label, self.tally.clone())?;
        self.pause(3000, 6000).await;
        load.finish().await;
        let after = self
            .tally
            .acknowledged
            .load(std::sync::atomic::Ordering::Relaxed);
        self.counts.acknowledged_during_two_adders += after - before;
        self.sampler.sample_now().await;
        let status = self.second_adder.terminate().await;
        self.record_sigterm("adder-2", status);
        Ok(())
    }

    /// The proxy between the adders and the broker holds every byte the
    /// broker sends (its confirms) for 5 s past the relay's confirm timeout,
    /// then lets them through; the relay must recover and lose nothing.
    pub(crate) async fn confirm_partition(&mut self) -> anyhow::Result<()> {
        let hold = Duration::from_secs(self.options.confirm_timeout_seconds + 5);
        self.proxy.hold_replies();
        self.counts.confirm_partitions += 1;
        tokio::time::sleep(hold).await;
        self.proxy.release_replies();
        if !Self::ready(self.adder.http, Duration::from_secs(60)).await {
            self.fail(format!(
                "the adder was not ready 60 s after a {hold:?} confirm partition ended"
            ));
        }
        Ok(())
    }

    pub(crate) async fn broker_crash_during_totaler_kill(&mut self) -> anyhow::Result<()> {
        self.sampler.sample_now().await;
        self.totaler.kill();
        tokio::task::block_in_place(|| self.rabbit.crash());
        self.counts.broker_crashes_during_totaler_kills += 1;
        self.pause(0, 1000).await;
        self.rabbit.start_node().await?;
        self.totaler.start().await
    }

    pub(crate) async fn postgres_crash_during_adder_kill(&mut self) -> anyhow::Result<()> {
        self.sampler.sample_now().await;
        self.adder.kill();
        tokio::task::block_in_place(|| self.postgres.crash())?;
        self.counts.postgres_crashes_during_adder_kills += 1;
        self.pause(0, 1000).await;
        tokio::task::block_in_place(|| self.postgres.start_server())?;
        self.adder.start().await
    }

    pub(crate) fn record_sigterm(&mut self, name: &str, status: anyhow::Result<ExitStatus>) {
        self.counts.sigterms += 1;
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => self.fail(format!("{name} exited with {status} on SIGTERM")),
            Err(e) => self.fail(format!("{e:#}")),
        }
    }
}
