//! The fault suite's failover mode: the outbox on three PostgreSQL members
//! under Patroni (synchronous, strict: `scripts/pg-cluster`), two adders
//! behind HAProxy given every member, one RabbitMQ node, one totaler. Under
//! retrying load (and id-less Adds) it loses the primary, by SIGKILL of its
//! machine and by `pg_ctl -m immediate` under a dead Patroni, lets Patroni
//! promote the synchronous standby, starts the old primary again and waits
//! for it to rejoin as a replica (pg_rewind); it freezes the primary
//! (SIGSTOP: a hung machine, its connections open and silent) and requires
//! the adders to leave it for the promoted standby while it is frozen; it
//! also kills the synchronous standby and crashes the primary under a live
//! Patroni. Each promotion
//! must be followed by Adds and the relay resuming on the new primary, and
//! at the end `report` requires the total to equal the acknowledged Adds,
//! the outbox to reconcile and `totaler verify` to agree across every
//! source (each promotion starts a new timeline, so a new source).
//!
//! # Layout
//! - `inject`: each fault and what must follow it.
//! - `patroni`: the Patroni cluster, its members' roles, their faults.
//! - `report`: the final checks and their report.

mod inject;
pub mod patroni;
pub mod report;

use std::{path::Path, time::Duration};

use anyhow::Context;

use crate::{
    Options,
    fleet::{self, Fleet, Journal, Mode, QUEUE},
    run_dir::Finished,
    servers::Rabbit,
};
use patroni::Patroni;
pub use report::FailoverReport;

/// How long Patroni may take to promote, a member to rejoin, the relay to
/// resume.
const PROMOTION_LIMIT: Duration = Duration::from_secs(60);
const REJOIN_LIMIT: Duration = Duration::from_secs(120);
const RESUME_LIMIT: Duration = Duration::from_secs(60);

/// The faults of the failover mode, each its own kind in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFault {
    /// SIGKILL of the primary's Patroni and postmaster (a machine lost):
    /// the synchronous standby is promoted.
    KillPrimary,
    /// SIGKILL of the primary's Patroni, then `pg_ctl -m immediate` on its
    /// PostgreSQL: promoted likewise.
    CrashPrimary,
    /// `pg_ctl -m immediate` on the primary while its Patroni lives:
    /// Patroni restarts it or fails over, whichever it decides.
    CrashInPlace,
    /// SIGSTOP of the primary's Patroni and PostgreSQL (a hung machine,
    /// its connections open and silent): the standby is promoted, and Adds
    /// must resume on it while the old primary is still frozen; then
    /// SIGCONT, and the old primary must step down and rejoin.
    FreezePrimary,
    /// SIGKILL of the synchronous standby's machine: strict replication
    /// must move to the other replica, and commits go on.
    KillSyncStandby,
}

/// What one fault took, as the load and the relay saw it.
#[derive(Debug, Clone)]
pub struct Timing {
    pub fault: DbFault,
    /// The longest time no Add was acknowledged, from the fault until the
    /// cluster was whole again.
    pub add_gap: Duration,
    /// From the fault to another member being primary (promotions only).
    pub promoted_after: Option<Duration>,
    /// From the new primary (as Patroni's REST API first said) to the
    /// next acknowledged Add; for the other kinds, from the fault.
    pub adds_resumed_after: Option<Duration>,
    /// From that Add to the relays publishing again.
    pub relay_resumed_after: Option<Duration>,
    /// From the lost member's start to it running as a replica.
    pub rejoined_after: Option<Duration>,
}

/// Everything a failover run holds; fields drop in order (processes first).
pub struct Failover {
    pub fleet: Fleet,
    pub rabbit: Rabbit,
    pub patroni: Patroni,
    pub journal: Journal,
    /// Faults after which another member became primary.
    pub promotions: u32,
    pub timings: Vec<Timing>,
}

/// Runs the failover mode for `options.seconds` and reports what it saw.
pub async fn run(options: Options) -> anyhow::Result<Finished<FailoverReport>> {
    fleet::run::<Failover>(options).await
}

impl Mode for Failover {
    type Fault = DbFault;
    type Report = FailoverReport;
    const NAME: &'static str = "failover";
    const FAULTS: &'static [DbFault] = &[
        DbFault::KillPrimary,
        DbFault::KillSyncStandby,
        DbFault::FreezePrimary,
        DbFault::CrashPrimary,
        DbFault::CrashInPlace,
    ];
    const PAUSE_MS: (u64, u64) = (1000, 2000);

    async fn start(root: &Path, options: &Options) -> anyhow::Result<Self> {
        let dir = root.to_path_buf();
        let patroni = tokio::task::spawn_blocking(move || Patroni::start(&dir));
        let rabbit = Rabbit::start(root).await.context("private RabbitMQ")?;
        let patroni = patroni.await?.context("the Patroni cluster")?;
        rabbit
            .declare_topology(QUEUE)
            .await
            .context("declaring the queues")?;
        let fleet = Fleet::start(root, options, &rabbit.url(), &patroni.url(), 1).await?;
        Ok(Self {
            fleet,
            rabbit,
            patroni,
            journal: Journal::new("faults failover", options.seed),
            promotions: 0,
            timings: Vec::new(),
        })
    }

    fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    fn journal(&mut self) -> &mut Journal {
        &mut self.journal
    }

    async fn inject(&mut self, fault: DbFault) -> anyhow::Result<()> {
        self.inject_and_time(fault).await
    }

    async fn settle(&mut self, options: &Options, fault_time: Duration) -> FailoverReport {
        let report = report::settle_and_check(self, options, fault_time).await;
        if !crate::run_dir::Verdict::problems(&report).is_empty() {
            eprintln!("{}", self.patroni.status());
        }
        report
    }
}
