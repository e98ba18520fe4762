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
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use testkit::{
    balancer::{Backend, Balancer},
    free_port,
};

use crate::{
    Options,
    load::{Load, Tally},
    metrics::{CONSUMED, RELAY_ACTIVE, Sampler, scrape, value},
    process::{Service, adder_env, binary, service_env},
    rng::Rng,
    servers::Postgres,
};
use brokers::Brokers;
pub use report::ClusterReport;

/// The queue of the run.
const QUEUE: &str = "tally.sums";

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

/// Every kind, in the order of the first round.
pub const CLUSTER_FAULTS: [ClusterFault; 5] = [
    ClusterFault::KillLeader,
    ClusterFault::KillAdder,
    ClusterFault::KillActiveTotaler,
    ClusterFault::StopLeader,
    ClusterFault::KillFollower,
];

/// Everything a cluster run holds; fields drop in order (processes first).
pub struct Cluster {
    pub adders: Vec<Service>,
    pub totalers: Vec<Service>,
    pub balancer: Balancer,
    pub sampler: Sampler,
    pub brokers: Brokers,
    pub postgres: Postgres,
    pub sum_file: PathBuf,
    pub rng: Rng,
    /// Fault kind → rounds run.
    pub runs: BTreeMap<String, u32>,
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
    /// What the load has had acknowledged, and its failed calls.
    pub tally: Arc<Tally>,
    pub failures: Vec<String>,
}

/// Runs the cluster mode for `options.seconds` and reports what it saw.
pub async fn run(options: Options) -> anyhow::Result<ClusterReport> {
    eprintln!("faults cluster: seed {}", options.seed);
    let started = Instant::now();
    let root = options.run_dir("tally-faults-cluster")?;
    let mut cluster = Cluster::start(&root, &options).await?;
    eprintln!(
        "faults cluster: 3 broker nodes, 2 adders, HAProxy, 2 totalers up in {:.1?}; logs in {}",
        started.elapsed(),
        root.display()
    );
    let shape = options.shape();
    let mut rng = cluster.rng.fork();
    let tally = cluster.tally.clone();
    let load = Load::start(&cluster.balancer.grpc(), shape, &mut rng, "cluster", tally)?;
    let faulting = Instant::now();
    let injected = cluster
        .inject_faults(Duration::from_secs(options.seconds), started)
        .await;
    let fault_time = faulting.elapsed();
    eprintln!("faults cluster: load stopping; waiting for every started Add");
    let tally = load.finish().await;
    injected?;
    cluster.ensure_running().await?;
    let report = report::settle_and_check(&mut cluster, &tally, &options, fault_time).await?;
    if report.problems().is_empty() {
        drop(cluster);
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("faults cluster: keeping {} for inspection", root.display());
    }
    Ok(report)
}

impl Cluster {
    async fn start(root: &Path, options: &Options) -> anyhow::Result<Self> {
        let postgres =
            tokio::task::block_in_place(|| Postgres::start(root)).context("private PostgreSQL")?;
        let brokers = Brokers::start(root, QUEUE)
            .await
            .context("the three-node RabbitMQ cluster")?;
        let nodes = brokers.urls();
        let data = root.join("data");
        std::fs::create_dir_all(&data)?;
        let sum_file = data.join("sum.txt");
        let local = |port: u16| -> SocketAddr {
            format!("127.0.0.1:{port}")
                .parse()
                .expect("a socket address")
        };
        let common = |name: &str| service_env(name, &nodes, QUEUE);
        let mut adders = Vec::new();
        let mut backends = Vec::new();
        for i in 1..=2 {
            let (grpc, http) = (local(free_port()), local(free_port()));
            let name = format!("adder-{i}");
            let mut env = common(&name);
            env.extend(adder_env(&postgres.url(), grpc, http, options));
            adders.push(Service::new(&name, binary("adder")?, env, root, http));
            backends.push(Backend { grpc, http });
        }
        let mut totalers = Vec::new();
        for i in 1..=2 {
            let http = local(free_port());
            let name = format!("totaler-{i}");
            let mut env = common(&name);
            env.extend([
                ("SUM_FILE".to_owned(), sum_file.display().to_string()),
                ("TOTALER_HTTP_ADDR".to_owned(), http.to_string()),
            ]);
            totalers.push(Service::new(&name, binary("totaler")?, env, root, http));
        }
        let balancer = Balancer::start(root, &backends).await?;
        let sampler = Sampler::start(
            adders
                .iter()
                .chain(&totalers)
                .map(|s| (s.name.clone(), s.http))
                .collect(),
        );
        let mut cluster = Self {
            adders,
            totalers,
            balancer,
            sampler,
            brokers,
            postgres,
            sum_file,
            rng: Rng::new(options.seed),
            runs: BTreeMap::new(),
            leader_moves: 0,
            takeovers: 0,
            slowest_takeover: Duration::ZERO,
            flowing_without_a_node: 0,
            relay_takeovers: 0,
            slowest_relay_takeover: Duration::ZERO,
            node_loss_adds: (0, 0),
            tally: Arc::default(),
            failures: Vec::new(),
        };
        // The first adder migrates the schema; then the rest start.
        cluster.adders[0].start().await?;
        cluster.adders[1].start().await?;
        for totaler in &mut cluster.totalers {
            totaler.start().await?;
        }
        Ok(cluster)
    }

    /// Every kind once (the first round), then random kinds until `duration`.
    async fn inject_faults(&mut self, duration: Duration, started: Instant) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        let mut first = CLUSTER_FAULTS.iter().copied();
        loop {
            let fault = match first.next() {
                Some(fault) => fault,
                None if Instant::now() < until => {
                    CLUSTER_FAULTS[self.rng.range(0, CLUSTER_FAULTS.len() as u64) as usize]
                }
                None => return Ok(()),
            };
            tokio::time::sleep(Duration::from_millis(self.rng.range(1000, 3000))).await;
            eprintln!(
                "faults cluster: t={:>6.1}s {fault:?}",
                started.elapsed().as_secs_f64()
            );
            let at = Instant::now();
            self.inject(fault).await?;
            *self.runs.entry(format!("{fault:?}")).or_default() += 1;
            eprintln!(
                "faults cluster:          {fault:?} took {:.1?}",
                at.elapsed()
            );
        }
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

    /// Crashes (or stops) the queue's leader, waits for another node to
    /// lead it while the load goes on, then restarts the node.
    async fn lose_leader(&mut self, crash: bool) -> anyhow::Result<()> {
        let leader = tokio::task::block_in_place(|| self.brokers.leader(QUEUE))?;
        let calls = self.calls();
        let node = &mut self.brokers.nodes[leader];
        let lost = Instant::now();
        tokio::task::block_in_place(|| if crash { node.crash() } else { node.stop() });
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
                    self.fail(format!(
                        "no other node led {QUEUE} 30 s after node {} was lost",
                        leader + 1
                    ));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        self.require_flow(leader).await;
        self.pause(1000, 3000).await;
        self.restart_node(leader).await?;
        self.count_calls_since(calls);
        Ok(())
    }

    /// Add calls acknowledged and failed so far (retried or uncertain).
    fn calls(&self) -> (u64, u64) {
        let acknowledged = self.tally.acknowledged.load(Ordering::Relaxed);
        let failed = self.tally.retries.load(Ordering::Relaxed)
            + self.tally.uncertain.lock().expect("tally lock").len() as u64;
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
        let before = consumed(&self.totalers).await;
        let lost = Instant::now();
        while lost.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if consumed(&self.totalers).await > before {
                self.flowing_without_a_node += 1;
                return;
            }
        }
        self.fail(format!(
            "nothing was consumed in the 30 s broker node {} was lost",
            down + 1
        ));
    }

    /// Starts node `i` again and waits until it accepts AMQP.
    async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        let at = Instant::now();
        self.brokers.nodes[i]
            .start_node()
            .await
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
        let follower = (leader + 1 + self.rng.range(0, 2) as usize) % brokers::NODES;
        let calls = self.calls();
        tokio::task::block_in_place(|| self.brokers.nodes[follower].crash());
        self.require_flow(follower).await;
        self.pause(1000, 2000).await;
        self.restart_node(follower).await?;
        self.count_calls_since(calls);
        Ok(())
    }

    /// Kills the adder whose relay is active: HAProxy's health check takes
    /// it out, the load's failed calls are retried (through the other), the
    /// other's relay must take over; then it comes back.
    async fn kill_adder(&mut self) -> anyhow::Result<()> {
        let active = self.active_relay().await;
        let i = active.unwrap_or_else(|| self.rng.range(0, 2) as usize);
        self.adders[i].kill();
        let killed = Instant::now();
        if active.is_some() {
            let other = self.adders[1 - i].http;
            let deadline = killed + Duration::from_secs(30);
            while value(&scrape(other).await, RELAY_ACTIVE) < 1.0 {
                if Instant::now() > deadline {
                    self.fail(format!(
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
        self.pause(1000, 3000).await;
        self.adders[i].start().await
    }

    /// The adder whose relay is the active one, if one is.
    async fn active_relay(&self) -> Option<usize> {
        for (i, adder) in self.adders.iter().enumerate() {
            if value(&scrape(adder.http).await, RELAY_ACTIVE) >= 1.0 {
                return Some(i);
            }
        }
        None
    }

    /// Kills the totaler that is consuming; the standby must consume next.
    async fn kill_active_totaler(&mut self) -> anyhow::Result<()> {
        let Some(active) = self.active_totaler().await else {
            self.fail("no totaler consumed for 5 s before a takeover".to_owned());
            return Ok(());
        };
        let standby = 1 - active;
        let before = value(&scrape(self.totalers[standby].http).await, CONSUMED);
        self.totalers[active].kill();
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(30);
        loop {
            let now = value(&scrape(self.totalers[standby].http).await, CONSUMED);
            if now > before {
                self.takeovers += 1;
                self.slowest_takeover = self.slowest_takeover.max(killed.elapsed());
                break;
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "the standby totaler consumed nothing 30 s after totaler-{} was killed",
                    active + 1
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.pause(500, 2000).await;
        self.totalers[active].start().await
    }

    /// The index of the totaler whose consumed count grows (up to 5 s).
    async fn active_totaler(&self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let counts = async || {
            let mut counts = Vec::new();
            for totaler in &self.totalers {
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

    async fn ensure_running(&mut self) -> anyhow::Result<()> {
        for node in &mut self.brokers.nodes {
            if !node.is_running() {
                node.start_node().await?;
            }
        }
        for service in self.adders.iter_mut().chain(&mut self.totalers) {
            if !service.is_running() {
                service.start().await?;
            }
        }
        Ok(())
    }

    fn fail(&mut self, problem: String) {
        eprintln!("faults cluster:          PROBLEM: {problem}");
        self.failures.push(problem);
    }

    async fn pause(&mut self, low_ms: u64, high_ms: u64) {
        tokio::time::sleep(Duration::from_millis(self.rng.range(low_ms, high_ms + 1))).await;
    }
}
