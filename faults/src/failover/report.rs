//! The end of a failover run: wait for the backlog to drain, then require
//! that `GET /sum` and `sum.txt` equal the sum of acknowledged Adds (plus
//! the uncertain ones the outbox holds), that the outbox on the primary
//! reconciles with nothing unpublished, that the queues are drained, that
//! `totaler verify` (given every member) agrees, and that the run saw what
//! it claims: every kind, at least two promotions each followed by the
//! relay resuming and the old primary rejoining, a new source per promotion.

use std::{
    collections::BTreeMap,
    fmt,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::{DB_FAULTS, DbFault, Failover, Timing};
use crate::{
    Options,
    load::Tally,
    outbox::{self, Outbox},
    report::{self, queues, run_verify},
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
    pub acknowledged: u64,
    pub retries: u64,
    pub uncertain: usize,
    pub uncertain_committed: usize,
    pub expected: i128,
    /// `GET /sum` of the totaler, by name.
    pub served: Vec<(String, Result<i128, String>)>,
    pub file: Option<i128>,
    /// Sources in the ledger: one per timeline the outbox published from.
    pub sources: usize,
    pub outbox: Option<Outbox>,
    pub ready: u32,
    pub dead_letters: u32,
    pub verify: Result<(), String>,
    pub failures: Vec<String>,
    pub fault_time: Duration,
}

/// Waits (up to `options.settle_seconds`) for the totaler to show the
/// expected total with nothing left to publish or consume, then checks.
pub async fn settle_and_check(
    failover: &mut Failover,
    tally: &Tally,
    options: &Options,
    fault_time: Duration,
) -> anyhow::Result<FailoverReport> {
    let deadline = Instant::now() + Duration::from_secs(options.settle_seconds);
    let mut report = gather(failover, tally, options).await;
    while Instant::now() < deadline && !report.total_problems().is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        report = gather(failover, tally, options).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    report = gather(failover, tally, options).await;
    report.verify = run_verify(
        failover.totaler.binary(),
        &failover.sum_file,
        &failover.patroni.url(),
    );
    report.fault_time = fault_time;
    Ok(report)
}

async fn gather(failover: &Failover, tally: &Tally, options: &Options) -> FailoverReport {
    let primary = failover.patroni.primary().await;
    let url = primary.map(|i| failover.patroni.member_url(i));
    let (uncertain, committed, expected) = match &url {
        Some(url) => report::expected(tally, url).await,
        None => (Vec::new(), Vec::new(), tally.sum()),
    };
    let outbox = match &url {
        Some(url) => outbox::reconcile(url).await.ok(),
        None => None,
    };
    let (ready, dead_letters) = queues(&failover.rabbit.url())
        .await
        .unwrap_or((u32::MAX, u32::MAX));
    let sources = std::fs::read_to_string(&failover.sum_file)
        .map(|text| text.lines().filter(|l| l.starts_with("source ")).count())
        .unwrap_or(0);
    FailoverReport {
        seed: options.seed,
        runs: failover.runs.clone(),
        promotions: failover.promotions,
        timings: failover.timings.clone(),
        acknowledged: tally.acknowledged.load(Ordering::Relaxed),
        retries: tally.retries.load(Ordering::Relaxed),
        uncertain: uncertain.len(),
        uncertain_committed: committed.len(),
        expected,
        served: vec![(
            failover.totaler.name.clone(),
            report::served(failover.totaler.http).await,
        )],
        file: report::file_total(&failover.sum_file),
        sources,
        outbox,
        ready,
        dead_letters,
        verify: Ok(()),
        failures: failover.failures.clone(),
        fault_time: Duration::ZERO,
    }
}

impl FailoverReport {
    /// Everything wrong with the run; empty when the total is exact and the
    /// run did what it claims.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.total_problems();
        problems.extend(self.failures.iter().cloned());
        if let Err(e) = &self.verify {
            problems.push(e.clone());
        }
        for fault in DB_FAULTS {
            if !self.runs.contains_key(&format!("{fault:?}")) {
                problems.push(format!("{fault:?} never ran"));
            }
        }
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
            "  GET /sum: {:?}; sum.txt {:?}; {} sources in the ledger",
            self.served, self.file, self.sources
        )?;
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
