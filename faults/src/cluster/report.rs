//! The end of a cluster run: wait for the backlog to drain, then require
//! that `GET /sum` on every totaler and `sum.txt` equal the sum of
//! acknowledged Adds (plus the uncertain ones the outbox holds), that the
//! outbox and the queues are drained, that `totaler verify` agrees, and that
//! the run saw what it claims: every fault kind, the queue's leader moving,
//! the standby taking over, requests on both adders.

use std::{
    collections::BTreeMap,
    fmt,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::{CLUSTER_FAULTS, Cluster};
use crate::{
    Options,
    load::Tally,
    metrics::{CONSUMED, GRPC_ADDS_OK},
    outbox::{self, Outbox},
    report::{self, queues, run_verify},
};

/// What a cluster run did and what it found.
#[derive(Debug, Clone)]
pub struct ClusterReport {
    pub seed: u64,
    pub runs: BTreeMap<String, u32>,
    pub leader_moves: u32,
    pub takeovers: u32,
    pub slowest_takeover: Duration,
    pub flowing_without_a_node: u32,
    pub relay_takeovers: u32,
    pub slowest_relay_takeover: Duration,
    /// Add calls acknowledged and failed while a broker node was lost.
    pub node_loss_adds: (u64, u64),
    pub acknowledged: u64,
    pub retries: u64,
    pub uncertain: usize,
    pub uncertain_committed: usize,
    pub expected: i128,
    /// `GET /sum` of each totaler, by name.
    pub served: Vec<(String, Result<i128, String>)>,
    pub file: Option<i128>,
    pub outbox: Option<Outbox>,
    pub ready: u32,
    pub dead_letters: u32,
    pub verify: Result<(), String>,
    /// Adds each adder answered OK, and deliveries each totaler consumed.
    pub adds_by_adder: Vec<(String, f64)>,
    pub consumed_by_totaler: Vec<(String, f64)>,
    pub failures: Vec<String>,
    pub fault_time: Duration,
}

/// Waits (up to `options.settle_seconds`) for every totaler to show the
/// expected total with nothing left to publish or consume, then checks.
pub async fn settle_and_check(
    cluster: &mut Cluster,
    tally: &Tally,
    options: &Options,
    fault_time: Duration,
) -> anyhow::Result<ClusterReport> {
    let deadline = Instant::now() + Duration::from_secs(options.settle_seconds);
    let mut report = gather(cluster, tally, options).await?;
    while Instant::now() < deadline && !report.total_problems().is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        report = gather(cluster, tally, options).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.sampler.sample_now().await;
    report = gather(cluster, tally, options).await?;
    report.verify = run_verify(
        cluster.totalers[0].binary(),
        &cluster.sum_file,
        &cluster.postgres.url(),
    );
    report.fault_time = fault_time;
    Ok(report)
}

async fn gather(
    cluster: &Cluster,
    tally: &Tally,
    options: &Options,
) -> anyhow::Result<ClusterReport> {
    let mut served = Vec::new();
    for totaler in &cluster.totalers {
        served.push((totaler.name.clone(), report::served(totaler.http).await));
    }
    let file = report::file_total(&cluster.sum_file);
    let url = cluster.postgres.url();
    let (uncertain, committed, expected) = report::expected(tally, &url).await;
    let (ready, dead_letters) = match cluster.brokers.any_url() {
        Ok(url) => queues(&url).await.unwrap_or((u32::MAX, u32::MAX)),
        Err(_) => (u32::MAX, u32::MAX),
    };
    let per = |services: &[crate::process::Service], series: &str| {
        services
            .iter()
            .map(|s| (s.name.clone(), cluster.sampler.total(&s.name, series)))
            .collect()
    };
    Ok(ClusterReport {
        seed: options.seed,
        runs: cluster.runs.clone(),
        leader_moves: cluster.leader_moves,
        takeovers: cluster.takeovers,
        slowest_takeover: cluster.slowest_takeover,
        flowing_without_a_node: cluster.flowing_without_a_node,
        relay_takeovers: cluster.relay_takeovers,
        slowest_relay_takeover: cluster.slowest_relay_takeover,
        node_loss_adds: cluster.node_loss_adds,
        acknowledged: tally.acknowledged.load(Ordering::Relaxed),
        retries: tally.retries.load(Ordering::Relaxed),
        uncertain: uncertain.len(),
        uncertain_committed: committed.len(),
        expected,
        served,
        file,
        outbox: outbox::reconcile(&url).await.ok(),
        ready,
        dead_letters,
        verify: Ok(()),
        adds_by_adder: per(&cluster.adders, GRPC_ADDS_OK),
        consumed_by_totaler: per(&cluster.totalers, CONSUMED),
        failures: cluster.failures.clone(),
        fault_time: Duration::ZERO,
    })
}

impl ClusterReport {
    /// Everything wrong with the run; empty when the total is exact and the
    /// run did what it claims.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.total_problems();
        problems.extend(self.failures.iter().cloned());
        if let Err(e) = &self.verify {
            problems.push(e.clone());
        }
        for fault in CLUSTER_FAULTS {
            if !self.runs.contains_key(&format!("{fault:?}")) {
                problems.push(format!("{fault:?} never ran"));
            }
        }
        let leader_losses =
            self.runs.get("KillLeader").unwrap_or(&0) + self.runs.get("StopLeader").unwrap_or(&0);
        if self.leader_moves < leader_losses {
            problems.push(format!(
                "the queue's leader moved after {} of {leader_losses} leader losses",
                self.leader_moves
            ));
        }
        if self.takeovers < *self.runs.get("KillActiveTotaler").unwrap_or(&0) {
            problems.push("a standby totaler did not take over".to_owned());
        }
        for (name, adds) in &self.adds_by_adder {
            if *adds < 1.0 {
                problems.push(format!("the balancer sent {name} no Adds"));
            }
        }
        if self.acknowledged == 0 {
            problems.push("no Add was acknowledged".to_owned());
        }
        problems
    }

    /// Whether the total is exact and everything drained (what settling
    /// waits for).
    fn total_problems(&self) -> Vec<String> {
        report::Settled {
            served: &self.served,
            file: self.file,
            expected: self.expected,
            outbox: self.outbox,
            rows: self.acknowledged as i64 + self.uncertain_committed as i64,
            ready: self.ready,
            dead_letters: self.dead_letters,
        }
        .problems()
    }
}

impl fmt::Display for ClusterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cluster fault run, seed {}, {:.0?} of faults",
            self.seed, self.fault_time
        )?;
        writeln!(f, "  faults run: {:?}", self.runs)?;
        writeln!(
            f,
            "  queue leader moved {} times; sums flowed during {} node losses; standby totaler takeovers {} (slowest {:.1?}); relay takeovers {} (slowest {:.1?})",
            self.leader_moves,
            self.flowing_without_a_node,
            self.takeovers,
            self.slowest_takeover,
            self.relay_takeovers,
            self.slowest_relay_takeover
        )?;
        writeln!(
            f,
            "  acknowledged Adds {} ({} retries; {} uncertain, {} of them committed), expected total {}",
            self.acknowledged,
            self.retries,
            self.uncertain,
            self.uncertain_committed,
            self.expected
        )?;
        writeln!(
            f,
            "  while a broker node was lost: {} Adds acknowledged, {} calls failed",
            self.node_loss_adds.0, self.node_loss_adds.1
        )?;
        writeln!(f, "  GET /sum: {:?}; sum.txt {:?}", self.served, self.file)?;
        writeln!(f, "  Adds by adder: {:?}", self.adds_by_adder)?;
        writeln!(f, "  consumed by totaler: {:?}", self.consumed_by_totaler)?;
        writeln!(
            f,
            "  outbox {:?}; queue {} ready, {} dead; verify {:?}",
            self.outbox, self.ready, self.dead_letters, self.verify
        )?;
        for problem in self.problems() {
            writeln!(f, "  PROBLEM: {problem}")?;
        }
        Ok(())
    }
}
