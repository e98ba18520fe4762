//! The fault suite's cluster mode: Tally as it runs past one machine, on
//! real engines. Three RabbitMQ nodes in one cluster (the quorum queue with
//! a member on each), two adders behind HAProxy (requests spread over
//! them), two totalers on one `sum.txt` (one active consumer, one hot
//! standby), every service given all three broker nodes. Under retrying
//! load (and id-less Adds) it SIGKILLs and SIGTERMs the node leading the
//! queue, kills a follower node, an adder and the active totaler, and
//! restarts each with no operator action; while a node is lost, sums must
//! still be consumed (the services moved to the other nodes). Then the backlog drains and
//! `report` checks the total on every totaler, the outbox and `verify`.
//!
//! # Layout
//! - `brokers`: the three-node cluster, its leader, its queues (HAProxy
//!   is `testkit::balancer`, which `bench` shares).
//! - `report`: the final checks and their report.

pub mod brokers;
pub mod report;

use std::{
    path::Path,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    Options,
    fleet::{self, Fleet, Journal, Mode, QUEUE},
    metrics::{CONSUMED, RELAY_ACTIVE, scrape, value},
    process::Service,
    run_dir::Finished,
    servers::Postgres,
};
use brokers::Brokers;
pub use report::ClusterReport;

/// The faults of the cluster mode, each its own kind in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFault {
    /// SIGKILL the node leading the quorum queue.
    KillLeader,
    /// SIGTERM the node leading the quorum queue.
    StopLeader,
    /// SIGKILL a node that does not lead it.
    KillFollower,
    /// SIGKILL the adder (behind the balancer) whose relay is active.
    KillAdder,
    /// SIGKILL the totaler that is consuming.
    KillActiveTotaler,
}

/// Everything a cluster run holds; fields drop in order (processes first).
pub struct Cluster {
    pub fleet: Fleet,
    pub brokers: Brokers,
    pub postgres: Postgres,
    pub journal: Journal,
    /// Leader kills and stops after which another node led the queue.
    pub leader_moves: u32,
    /// Active-totaler kills after which the standby consumed.
    pub takeovers: u32,
    /// The slowest standby takeover seen.
    pub slowest_takeover: Duration,
    /// Kills of the active relay's adder after which the other's took over,
    /// and the slowest of those takeovers.
    pub relay_takeovers: u32,
    pub slowest_relay_takeover: Duration,
    /// Node losses during which deliveries were still consumed.
    pub flowing_without_a_node: u32,
    /// Add calls acknowledged and failed from a node's loss to its return.
    pub node_loss_adds: (u64, u64),
}

/// Runs the cluster mode for `options.seconds` and reports what it saw.
pub async fn run(options: Options) -> anyhow::Result<Finished<ClusterReport>> {
    fleet::run::<Cluster>(options).await
}

impl Mode for Cluster {
    type Fault = ClusterFault;
    type Report = ClusterReport;
    const NAME: &'static str = "cluster";
    const FAULTS: &'static [ClusterFault] = &[
        ClusterFault::KillLeader,
        ClusterFault::KillAdder,
        ClusterFault::KillActiveTotaler,
        ClusterFault::StopLeader,
        ClusterFault::KillFollower,
    ];
    const PAUSE_MS: (u64, u64) = (1000, 3000);

    async fn start(root: &Path, options: &Options) -> anyhow::Result<Self> {
        let postgres =
            tokio::task::block_in_place(|| Postgres::start(root)).context("private PostgreSQL")?;
        let brokers = tokio::task::block_in_place(|| Brokers::start(root))
            .context("the three-node RabbitMQ cluster")?;
        let fleet = Fleet::start(root, options, &brokers.urls(), &postgres.url(), 2).await?;
        Ok(Self {
            fleet,
            brokers,
            postgres,
            journal: Journal::new("faults cluster", options.seed),
            leader_moves: 0,
            takeovers: 0,
            slowest_takeover: Duration::ZERO,
            flowing_without_a_node: 0,
            relay_takeovers: 0,
            slowest_relay_takeover: Duration::ZERO,
            node_loss_adds: (0, 0),
        })
    }

    fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    fn journal(&mut self) -> &mut Journal {
        &mut self.journal
    }

    async fn inject(&mut self, fault: ClusterFault) -> anyhow::Result<()> {
        match fault {
            ClusterFault::KillLeader => self.lose_leader(true).await,
            ClusterFault::StopLeader => self.lose_leader(false).await,
            ClusterFault::KillFollower => self.kill_follower().await,
            ClusterFault::KillAdder => self.kill_adder().await,
            ClusterFault::KillActiveTotaler => self.kill_active_totaler().await,
        }
    }

    async fn settle(&mut self, options: &Options, fault_time: Duration) -> ClusterReport {
        if let Err(e) = self.ensure_running().await {
            self.journal
                .fail(format!("restarting what the faults left down: {e:#}"));
        }
        report::settle_and_check(self, options, fault_time).await
    }
}

impl Cluster {
    /// Crashes (or stops) the queue's leader, waits for another node to
    /// lead it while the load goes on, then restarts the node.
    async fn lose_leader(&mut self, crash: bool) -> anyhow::Result<()> {
        let leader = tokio::task::block_in_place(|| self.brokers.leader(QUEUE))?;
        let calls = self.calls();
        let lost = Instant::now();
        tokio::task::block_in_place(|| {
            if crash {
                self.brokers.crash(leader)
            } else {
                self.brokers.stop(leader)
            }
        })?;
        eprintln!(
            "faults cluster:          node {} (leader) down in {:.1?}",
            leader + 1,
            lost.elapsed()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::task::block_in_place(|| self.brokers.leader(QUEUE)) {
                Ok(now) if now != leader => {
                    eprintln!(
                        "faults cluster:          node {} leads after {:.1?}",
                        now + 1,
                        lost.elapsed()
                    );
                    self.leader_moves += 1;
                    break;
                }
                _ if Instant::now() > deadline => {
                    self.journal.fail(format!(
                        "no other node led {QUEUE} 30 s after node {} was lost",
                        leader + 1
                    ));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        self.require_flow(leader).await;
        self.journal.pause(1000, 3000).await;
        self.restart_node(leader).await?;
        self.count_calls_since(calls);
        Ok(())
    }

    /// Add calls acknowledged and failed so far (retried or uncertain).
    fn calls(&self) -> (u64, u64) {
        let acknowledged = self.journal.tally.acknowledged.load(Ordering::Relaxed);
        let failed = self.journal.tally.retries.load(Ordering::Relaxed)
            + self
                .journal
                .tally
                .uncertain
                .lock()
                .expect("tally lock")
                .len() as u64;
        (acknowledged, failed)
    }

    /// Adds the calls since `before` to those seen during node losses.
    fn count_calls_since(&mut self, before: (u64, u64)) {
        let now = self.calls();
        self.node_loss_adds.0 += now.0 - before.0;
        self.node_loss_adds.1 += now.1 - before.1;
    }

    /// Requires deliveries to be consumed while node `down` is lost: the
    /// services moved to the other nodes (a service that knew only the lost
    /// node would wait for it to come back).
    async fn require_flow(&mut self, down: usize) {
        let consumed = async |totalers: &[Service]| {
            let mut sum = 0.0;
            for totaler in totalers {
                sum += value(&scrape(totaler.http).await, CONSUMED);
            }
            sum
        };
        let before = consumed(&self.fleet.totalers).await;
        let lost = Instant::now();
        while lost.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if consumed(&self.fleet.totalers).await > before {
                self.flowing_without_a_node += 1;
                return;
            }
        }
        self.journal.fail(format!(
            "nothing was consumed in the 30 s broker node {} was lost",
            down + 1
        ));
    }

    /// Starts node `i` again and waits until it accepts AMQP.
    async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        let at = Instant::now();
        tokio::task::block_in_place(|| self.brokers.restart(i))
            .with_context(|| format!("restarting broker node {}", i + 1))?;
        eprintln!(
            "faults cluster:          node {} back in {:.1?}",
            i + 1,
            at.elapsed()
        );
        Ok(())
    }

    async fn kill_follower(&mut self) -> anyhow::Result<()> {
        let leader = tokio::task::block_in_place(|| self.brokers.leader(QUEUE))?;
        let follower = (leader + 1 + self.journal.rng.range(0, 2) as usize) % brokers::NODES;
        let calls = self.calls();
        tokio::task::block_in_place(|| self.brokers.crash(follower))?;
        self.require_flow(follower).await;
        self.journal.pause(1000, 2000).await;
        self.restart_node(follower).await?;
        self.count_calls_since(calls);
        Ok(())
    }

    /// Kills the adder whose relay is active: HAProxy's health check takes
    /// it out, the load's failed calls are retried (through the other), the
    /// other's relay must take over; then it comes back.
    async fn kill_adder(&mut self) -> anyhow::Result<()> {
        let active = self.active_relay().await;
        let i = active.unwrap_or_else(|| self.journal.rng.range(0, 2) as usize);
        self.fleet.adders[i].kill();
        let killed = Instant::now();
        if active.is_some() {
            let other = self.fleet.adders[1 - i].http;
            let deadline = killed + Duration::from_secs(30);
            while value(&scrape(other).await, RELAY_ACTIVE) < 1.0 {
                if Instant::now() > deadline {
                    self.journal.fail(format!(
                        "no relay took over 30 s after adder-{} was killed",
                        i + 1
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if Instant::now() <= deadline {
                self.relay_takeovers += 1;
                self.slowest_relay_takeover = self.slowest_relay_takeover.max(killed.elapsed());
            }
        }
        self.journal.pause(1000, 3000).await;
        self.fleet.adders[i].start().await
    }

    /// The adder whose relay is the active one, if one is.
    async fn active_relay(&self) -> Option<usize> {
        for (i, adder) in self.fleet.adders.iter().enumerate() {
            if value(&scrape(adder.http).await, RELAY_ACTIVE) >= 1.0 {
                return Some(i);
            }
        }
        None
    }

    /// Kills the totaler that is consuming; the standby must consume next.
    async fn kill_active_totaler(&mut self) -> anyhow::Result<()> {
        let Some(active) = self.active_totaler().await else {
            self.journal
                .fail("no totaler consumed for 5 s before a takeover".to_owned());
            return Ok(());
        };
        let standby = 1 - active;
        let before = value(&scrape(self.fleet.totalers[standby].http).await, CONSUMED);
        self.fleet.totalers[active].kill();
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(30);
        loop {
            let now = value(&scrape(self.fleet.totalers[standby].http).await, CONSUMED);
            if now > before {
                self.takeovers += 1;
                self.slowest_takeover = self.slowest_takeover.max(killed.elapsed());
                break;
            }
            if Instant::now() > deadline {
                self.journal.fail(format!(
                    "the standby totaler consumed nothing 30 s after totaler-{} was killed",
                    active + 1
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.journal.pause(500, 2000).await;
        self.fleet.totalers[active].start().await
    }

    /// The index of the totaler whose consumed count grows (up to 5 s).
    async fn active_totaler(&self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let counts = async || {
            let mut counts = Vec::new();
            for totaler in &self.fleet.totalers {
                counts.push(value(&scrape(totaler.http).await, CONSUMED));
            }
            counts
        };
        let first = counts().await;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = counts().await;
            if let Some(i) = (0..now.len()).find(|&i| now[i] > first[i]) {
                return Some(i);
            }
        }
        None
    }

    /// Starts every node and service the faults left down.
    async fn ensure_running(&mut self) -> anyhow::Result<()> {
        for i in 0..brokers::NODES {
            if !self.brokers.is_running(i) {
                self.restart_node(i).await?;
            }
        }
        self.fleet.ensure_running().await
    }
}
