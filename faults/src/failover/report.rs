//! The end of a failover run: wait for the backlog to drain, then require
//! that `GET /sum` and `sum.txt` equal the sum of acknowledged Adds (plus
//! the uncertain ones the outbox holds), that the outbox on the primary
//! reconciles with nothing unpublished, that the queues are drained, that
//! `totaler verify` (given every member) agrees, and that the run saw what
//! it claims: every kind, at least two promotions each followed by the
//! relay resuming and the old primary rejoining, a new source per promotion.

use std::{collections::BTreeMap, fmt, time::Duration};

use super::{DbFault, Failover, Timing};
use crate::{
    Options,
    fleet::Mode,
    readings::{Verify, wait_until_settled},
    run_dir::Verdict,
    settled::Settled,
};

/// The promotions a run must see: the "at least twice".
const MIN_PROMOTIONS: u32 = 2;

/// What a failover run did and what it found.
#[derive(Debug, Clone)]
pub struct FailoverReport {
    pub seed: u64,
    pub runs: BTreeMap<String, u32>,
    pub promotions: u32,
    pub timings: Vec<Timing>,
    pub settled: Settled,
    /// Sources in the ledger: one per timeline the outbox published from.
    pub sources: usize,
    /// The faults' problems, every kind run, an Add acknowledged.
    pub journal_problems: Vec<String>,
    pub fault_time: Duration,
}

/// Waits (up to `options.settle_seconds`) for the totaler to show the
/// expected total with nothing left to publish or consume, then checks.
pub async fn settle_and_check(
    failover: &mut Failover,
    options: &Options,
    fault_time: Duration,
) -> FailoverReport {
    let limit = Duration::from_secs(options.settle_seconds);
    wait_until_settled(limit, async || read(failover).await).await;
    let mut settled = read(failover).await;
    settled.verify = Verify {
        binary: failover.fleet.totalers[0].binary().to_path_buf(),
        sum_file: failover.fleet.sum_file.clone(),
        url: failover.patroni.url(),
    }
    .run();
    let sources = std::fs::read_to_string(&failover.fleet.sum_file)
        .map(|text| text.lines().filter(|l| l.starts_with("source ")).count())
        .unwrap_or(0);
    FailoverReport {
        seed: options.seed,
        runs: failover.journal.runs.clone(),
        promotions: failover.promotions,
        timings: failover.timings.clone(),
        journal_problems: failover
            .journal
            .problems(Failover::FAULTS, settled.acknowledged),
        settled,
        sources,
        fault_time,
    }
}

/// The run's end, the outbox read on the member that is primary now.
async fn read(failover: &Failover) -> Settled {
    let primary = failover.patroni.primary().await;
    let outbox = primary.map(|i| failover.patroni.member_url(i));
    let sources = failover.fleet.sources(outbox, Some(failover.rabbit.url()));
    Settled::read(&sources, &failover.journal.tally).await
}

impl Verdict for FailoverReport {
    fn seed(&self) -> u64 {
        self.seed
    }

    /// Everything wrong with the run; empty when the total is exact and the
    /// run did what it claims.
    fn problems(&self) -> Vec<String> {
        let mut problems = self.settled.problems();
        problems.extend(self.journal_problems.iter().cloned());
        if self.promotions < MIN_PROMOTIONS {
            problems.push(format!(
                "{} promotions; a run needs at least {MIN_PROMOTIONS}",
                self.promotions
            ));
        }
        let lost_primaries = self
            .timings
            .iter()
            .filter(|t| {
                matches!(
                    t.fault,
                    DbFault::KillPrimary | DbFault::CrashPrimary | DbFault::FreezePrimary
                )
            })
            .count();
        let resumed = self
            .timings
            .iter()
            .filter(|t| t.relay_resumed_after.is_some() && t.rejoined_after.is_some())
            .count();
        if resumed < lost_primaries {
            problems.push(format!(
                "the relay resumed and the old primary rejoined after {resumed} of {lost_primaries} lost primaries"
            ));
        }
        // Each promotion opens a new timeline, so batches under a new source.
        if self.sources < 1 + self.promotions as usize {
            problems.push(format!(
                "the ledger has {} sources after {} promotions (a new timeline must cut under a new source)",
                self.sources, self.promotions
            ));
        }
        problems
    }
}

impl fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "failover fault run, seed {}, {:.0?} of faults",
            self.seed, self.fault_time
        )?;
        writeln!(
            f,
            "  faults run: {:?}; promotions {}",
            self.runs, self.promotions
        )?;
        for t in &self.timings {
            let show = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{d:.1?}"));
            writeln!(
                f,
                "  {:?}: no Add acknowledged for {:.1?}; promoted after {}; Adds again {} later; relay publishing {} after that; old member a replica {} after its start",
                t.fault,
                t.add_gap,
                show(t.promoted_after),
                show(t.adds_resumed_after),
                show(t.relay_resumed_after),
                show(t.rejoined_after)
            )?;
        }
        writeln!(f, "  {} sources in the ledger", self.sources)?;
        write!(f, "{}", self.settled)?;
        for problem in self.problems() {
            writeln!(f, "  PROBLEM: {problem}")?;
        }
        Ok(())
    }
}
