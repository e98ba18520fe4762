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

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
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
    metrics::Sampler,
    process::{Service, adder_env, binary, service_env},
    rng::Rng,
    servers::Rabbit,
};
use patroni::Patroni;
pub use report::FailoverReport;

/// The queue of the run.
const QUEUE: &str = "tally.sums";
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

/// Every kind, in the order of the first round.
pub const DB_FAULTS: [DbFault; 5] = [
    DbFault::KillPrimary,
    DbFault::KillSyncStandby,
    DbFault::FreezePrimary,
    DbFault::CrashPrimary,
    DbFault::CrashInPlace,
];

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
    pub adders: Vec<Service>,
    pub totaler: Service,
    pub balancer: Balancer,
    pub sampler: Sampler,
    pub rabbit: Rabbit,
    pub patroni: Patroni,
    pub sum_file: PathBuf,
    pub rng: Rng,
    /// Fault kind → rounds run.
    pub runs: BTreeMap<String, u32>,
    /// Faults after which another member became primary.
    pub promotions: u32,
    pub timings: Vec<Timing>,
    pub tally: Arc<Tally>,
    pub failures: Vec<String>,
}

/// Runs the failover mode for `options.seconds` and reports what it saw.
pub async fn run(options: Options) -> anyhow::Result<FailoverReport> {
    eprintln!("faults failover: seed {}", options.seed);
    let started = Instant::now();
    let root = options.run_dir("tally-faults-failover")?;
    let mut failover = Failover::start(&root, &options).await?;
    eprintln!(
        "faults failover: Patroni cluster, 2 adders, HAProxy, a totaler up in {:.1?}; logs in {}",
        started.elapsed(),
        root.display()
    );
    let shape = options.shape();
    let mut rng = failover.rng.fork();
    let tally = failover.tally.clone();
    let load = Load::start(
        &failover.balancer.grpc(),
        shape,
        &mut rng,
        "failover",
        tally,
    )?;
    let faulting = Instant::now();
    let injected = failover
        .inject_faults(Duration::from_secs(options.seconds), started)
        .await;
    let fault_time = faulting.elapsed();
    eprintln!("faults failover: load stopping; waiting for every started Add");
    let tally = load.finish().await;
    injected?;
    let report = report::settle_and_check(&mut failover, &tally, &options, fault_time).await?;
    if report.problems().is_empty() {
        drop(failover);
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("{}", failover.patroni.status());
        eprintln!("faults failover: keeping {} for inspection", root.display());
    }
    Ok(report)
}

impl Failover {
    async fn start(root: &Path, options: &Options) -> anyhow::Result<Self> {
        let dir = root.to_path_buf();
        let patroni = tokio::task::spawn_blocking(move || Patroni::start(&dir));
        let rabbit = Rabbit::start(root).await.context("private RabbitMQ")?;
        let patroni = patroni.await?.context("the Patroni cluster")?;
        rabbit
            .declare_topology(QUEUE)
            .await
            .context("declaring the queues")?;
        let data = root.join("data");
        std::fs::create_dir_all(&data)?;
        let sum_file = data.join("sum.txt");
        let local = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
        let common = |name: &str| service_env(name, &rabbit.url(), QUEUE);
        let mut adders = Vec::new();
        let mut backends = Vec::new();
        for i in 1..=2 {
            let (grpc, http) = (local(free_port()), local(free_port()));
            let name = format!("adder-{i}");
            let mut env = common(&name);
            env.extend(adder_env(&patroni.url(), grpc, http, options));
            adders.push(Service::new(&name, binary("adder")?, env, root, http));
            backends.push(Backend { grpc, http });
        }
        let http = local(free_port());
        let mut env = common("totaler");
        env.extend([
            ("SUM_FILE".to_owned(), sum_file.display().to_string()),
            ("TOTALER_HTTP_ADDR".to_owned(), http.to_string()),
        ]);
        let totaler = Service::new("totaler", binary("totaler")?, env, root, http);
        let balancer = Balancer::start(root, &backends).await?;
        let sampler = Sampler::start(
            adders
                .iter()
                .chain([&totaler])
                .map(|s| (s.name.clone(), s.http))
                .collect(),
        );
        let mut failover = Self {
            adders,
            totaler,
            balancer,
            sampler,
            rabbit,
            patroni,
            sum_file,
            rng: Rng::new(options.seed),
            runs: BTreeMap::new(),
            promotions: 0,
            timings: Vec::new(),
            tally: Arc::default(),
            failures: Vec::new(),
        };
        // The first adder migrates the schema; then the rest start.
        for adder in &mut failover.adders {
            adder.start().await?;
        }
        failover.totaler.start().await?;
        Ok(failover)
    }
}
