//! The end of a cluster run: wait for the backlog to drain, then require
//! the settled total (`Settled`: `GET /sum` on every totaler and `sum.txt`
//! equal the acknowledged Adds, the outbox and the queues drained,
//! `totaler verify` agrees), and that the run saw what it claims: every
//! fault kind, the queue's leader moving, the standby taking over,
//! requests on both adders.

use std::{collections::BTreeMap, fmt, time::Duration};

use super::Cluster;
use crate::{
    Options,
    fleet::Mode,
    metrics::{CONSUMED, GRPC_ADDS_OK},
    readings::{Verify, wait_until_settled},
    run_dir::Verdict,
    settled::Settled,
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
    pub settled: Settled,
    /// Adds each adder answered OK, and deliveries each totaler consumed.
    pub adds_by_adder: Vec<(String, f64)>,
    pub consumed_by_totaler: Vec<(String, f64)>,
    /// The faults' problems, every kind run, an Add acknowledged.
    pub journal_problems: Vec<String>,
    pub fault_time: Duration,
}

/// Waits (up to `options.settle_seconds`) for every totaler to show the
/// expected total with nothing left to publish or consume, then checks.
pub async fn settle_and_check(
    cluster: &mut Cluster,
    options: &Options,
    fault_time: Duration,
) -> ClusterReport {
    let limit = Duration::from_secs(options.settle_seconds);
    wait_until_settled(limit, async || read(cluster).await).await;
    cluster.fleet.sampler.sample_now().await;
    let mut settled = read(cluster).await;
    settled.verify = Verify {
        binary: cluster.fleet.totalers[0].binary().to_path_buf(),
        sum_file: cluster.fleet.sum_file.clone(),
        url: cluster.postgres.url(),
    }
    .run();
    let fleet = &cluster.fleet;
    let journal = &cluster.journal;
    ClusterReport {
        seed: options.seed,
        runs: journal.runs.clone(),
        leader_moves: cluster.leader_moves,
        takeovers: cluster.takeovers,
        slowest_takeover: cluster.slowest_takeover,
        flowing_without_a_node: cluster.flowing_without_a_node,
        relay_takeovers: cluster.relay_takeovers,
        slowest_relay_takeover: cluster.slowest_relay_takeover,
        node_loss_adds: cluster.node_loss_adds,
        journal_problems: journal.problems(Cluster::FAULTS, settled.acknowledged),
        settled,
        adds_by_adder: fleet.per(&fleet.adders, GRPC_ADDS_OK),
        consumed_by_totaler: fleet.per(&fleet.totalers, CONSUMED),
        fault_time,
    }
}

async fn read(cluster: &Cluster) -> Settled {
    let sources = cluster
        .fleet
        .sources(Some(cluster.postgres.url()), cluster.brokers.any_url());
    Settled::read(&sources, &cluster.journal.tally).await
}

impl Verdict for ClusterReport {
    fn seed(&self) -> u64 {
        self.seed
    }

    /// Everything wrong with the run; empty when the total is exact and the
    /// run did what it claims.
    fn problems(&self) -> Vec<String> {
        let mut problems = self.settled.problems();
        problems.extend(self.journal_problems.iter().cloned());
        let ran = |name: &str| self.runs.get(name).copied().unwrap_or(0);
        let leader_losses = ran("KillLeader") + ran("StopLeader");
        if self.leader_moves < leader_losses {
            problems.push(format!(
                "the queue's leader moved after {} of {leader_losses} leader losses",
                self.leader_moves
            ));
        }
        if self.takeovers < ran("KillActiveTotaler") {
            problems.push("a standby totaler did not take over".to_owned());
        }
        for (name, adds) in &self.adds_by_adder {
            if *adds < 1.0 {
                problems.push(format!("the balancer sent {name} no Adds"));
            }
        }
        problems
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
            "  while a broker node was lost: {} Adds acknowledged, {} calls failed",
            self.node_loss_adds.0, self.node_loss_adds.1
        )?;
        writeln!(f, "  Adds by adder: {:?}", self.adds_by_adder)?;
        writeln!(f, "  consumed by totaler: {:?}", self.consumed_by_totaler)?;
        write!(f, "{}", self.settled)?;
        for problem in self.problems() {
            writeln!(f, "  PROBLEM: {problem}")?;
        }
        Ok(())
    }
}
