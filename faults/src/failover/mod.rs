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
//! - `patroni`: the Patroni cluster, its members' roles, their faults.
//! - `report`: the final checks and their report.

pub mod patroni;
pub mod report;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use testkit::{
    balancer::{Backend, Balancer},
    free_port,
};

use crate::{
    Options,
    load::{Load, Shape, Tally},
    metrics::{PUBLISHED_ROWS, Sampler, scrape, value},
    process::{Service, binary},
    rng::Rng,
    servers::Rabbit,
};
use patroni::{MEMBERS, Patroni, Role};
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
    let root = std::env::temp_dir().join(format!(
        "tally-faults-failover-{}-{}",
        options.seed,
        std::process::id()
    ));
    std::fs::create_dir_all(&root)?;
    let mut failover = Failover::start(&root, &options).await?;
    eprintln!(
        "faults failover: Patroni cluster, 2 adders, HAProxy, a totaler up in {:.1?}; logs in {}",
        started.elapsed(),
        root.display()
    );
    let shape = Shape {
        workers: options.workers,
        rate: options.rate,
        idless_workers: options.idless_workers,
        idless_rate: options.idless_rate,
    };
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
        let common = |name: &str| {
            vec![
                ("AMQP_URL".to_owned(), rabbit.url()),
                ("TALLY_QUEUE".to_owned(), QUEUE.to_owned()),
                ("RUST_LOG".to_owned(), "info".to_owned()),
                ("RUST_BACKTRACE".to_owned(), "0".to_owned()),
                ("OTEL_SERVICE_NAME".to_owned(), name.to_owned()),
            ]
        };
        let mut adders = Vec::new();
        let mut backends = Vec::new();
        for i in 1..=2 {
            let (grpc, http) = (local(free_port()), local(free_port()));
            let name = format!("adder-{i}");
            let mut env = common(&name);
            env.extend([
                ("DATABASE_URL".to_owned(), patroni.url()),
                ("ADDER_GRPC_ADDR".to_owned(), grpc.to_string()),
                ("ADDER_HTTP_ADDR".to_owned(), http.to_string()),
                (
                    "ADDER_COMMIT_WRITERS".to_owned(),
                    options.commit_writers.to_string(),
                ),
                (
                    "ADDER_RELAY_CONFIRM_TIMEOUT_MS".to_owned(),
                    (options.confirm_timeout_seconds * 1000).to_string(),
                ),
            ]);
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

    /// Every kind once (the first round), then random kinds until `duration`.
    async fn inject_faults(&mut self, duration: Duration, started: Instant) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        let mut first = DB_FAULTS.iter().copied();
        loop {
            let fault = match first.next() {
                Some(fault) => fault,
                None if Instant::now() < until => {
                    DB_FAULTS[self.rng.range(0, DB_FAULTS.len() as u64) as usize]
                }
                None => return Ok(()),
            };
            self.pause(1000, 2000).await;
            eprintln!(
                "faults failover: t={:>6.1}s {fault:?}",
                started.elapsed().as_secs_f64()
            );
            let at = Instant::now();
            let gap = GapWatch::start(self.tally.clone());
            let mut timing = self.inject(fault).await?;
            self.wait_whole().await;
            timing.add_gap = gap.stop().await;
            eprintln!(
                "faults failover:          {fault:?} took {:.1?}: {timing:?}",
                at.elapsed()
            );
            *self.runs.entry(format!("{fault:?}")).or_default() += 1;
            self.timings.push(timing);
        }
    }

    async fn inject(&mut self, fault: DbFault) -> anyhow::Result<Timing> {
        let mut timing = Timing {
            fault,
            add_gap: Duration::ZERO,
            promoted_after: None,
            adds_resumed_after: None,
            relay_resumed_after: None,
            rejoined_after: None,
        };
        let Some(primary) = self.patroni.primary().await else {
            self.fail(format!("{fault:?}: no single primary before the fault"));
            return Ok(timing);
        };
        let lost = match fault {
            DbFault::KillSyncStandby => {
                let Some(standby) = self.patroni.sync_standby().await else {
                    self.fail(format!(
                        "{fault:?}: no synchronous standby before the fault"
                    ));
                    return Ok(timing);
                };
                self.blocking(|p| p.kill(standby))?;
                timing.adds_resumed_after = self.require_commits(fault).await;
                standby
            }
            DbFault::KillPrimary | DbFault::CrashPrimary => {
                let at = Instant::now();
                if fault == DbFault::KillPrimary {
                    self.blocking(|p| p.kill(primary))?;
                } else {
                    self.blocking(|p| p.crash_unmanaged(primary))?;
                }
                self.await_promotion(fault, primary, at, &mut timing).await;
                primary
            }
            DbFault::FreezePrimary => {
                let at = Instant::now();
                let frozen = self.blocking(|p| p.freeze(primary))?;
                self.await_promotion(fault, primary, at, &mut timing).await;
                frozen.thaw()?;
                let thawed = Instant::now();
                if self.patroni.wait_replica(primary, REJOIN_LIMIT).await {
                    timing.rejoined_after = Some(thawed.elapsed());
                } else {
                    self.fail(format!(
                        "{fault:?}: {} did not step down and rejoin as a replica {REJOIN_LIMIT:?} after it thawed",
                        Patroni::name(primary)
                    ));
                }
                return Ok(timing);
            }
            DbFault::CrashInPlace => {
                // pg_ctl returns once the server is gone: Adds acknowledged
                // after that were committed by whichever server Patroni
                // brought up (its REST API may still say "primary" meanwhile).
                self.blocking(|p| p.crash(primary))?;
                timing.adds_resumed_after = self.require_commits(fault).await;
                if self
                    .patroni
                    .wait_primary(None, PROMOTION_LIMIT)
                    .await
                    .is_some_and(|now| now != primary)
                {
                    self.promotions += 1;
                }
                return Ok(timing);
            }
        };
        self.pause(500, 1500).await;
        let start = Instant::now();
        self.blocking(|p| p.start_member(lost))?;
        if self.patroni.wait_replica(lost, REJOIN_LIMIT).await {
            timing.rejoined_after = Some(start.elapsed());
        } else {
            self.fail(format!(
                "{fault:?}: {} did not rejoin as a replica {REJOIN_LIMIT:?} after its start",
                Patroni::name(lost)
            ));
        }
        Ok(timing)
    }

    /// After the primary was lost at `at`: another member must be promoted,
    /// and the relays must publish again from it.
    async fn await_promotion(
        &mut self,
        fault: DbFault,
        old: usize,
        at: Instant,
        timing: &mut Timing,
    ) {
        let Some(new) = self.patroni.wait_primary(Some(old), PROMOTION_LIMIT).await else {
            self.fail(format!(
                "{fault:?}: no other member was promoted {PROMOTION_LIMIT:?} after {} was lost",
                Patroni::name(old)
            ));
            return;
        };
        self.promotions += 1;
        timing.promoted_after = Some(at.elapsed());
        eprintln!(
            "faults failover:          {} promoted after {:.1?}",
            Patroni::name(new),
            at.elapsed()
        );
        let promoted = Instant::now();
        let acknowledged = self.tally.acknowledged.load(Ordering::Relaxed);
        while self.tally.acknowledged.load(Ordering::Relaxed) <= acknowledged {
            if promoted.elapsed() > RESUME_LIMIT {
                self.fail(format!(
                    "{fault:?}: no Add was acknowledged {RESUME_LIMIT:?} after {} was promoted",
                    Patroni::name(new)
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        timing.adds_resumed_after = Some(promoted.elapsed());
        // Rows committed on the new primary must be published from it.
        let first_add = Instant::now();
        let published = self.published().await;
        while self.published().await <= published {
            if first_add.elapsed() > RESUME_LIMIT {
                self.fail(format!(
                    "{fault:?}: no relay published {RESUME_LIMIT:?} after Adds resumed on {}",
                    Patroni::name(new)
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        timing.relay_resumed_after = Some(first_add.elapsed());
    }

    /// After `fault`, Adds must be acknowledged again (while the
    /// synchronous standby is lost: the other replica becomes synchronous;
    /// after a crash in place: once Patroni restarted the server); how long
    /// that took.
    async fn require_commits(&mut self, fault: DbFault) -> Option<Duration> {
        let before = self.tally.acknowledged.load(Ordering::Relaxed);
        let lost = Instant::now();
        while lost.elapsed() < PROMOTION_LIMIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // A few answers to commits made before the fault may still arrive.
            if self.tally.acknowledged.load(Ordering::Relaxed) > before + 10 {
                return Some(lost.elapsed());
            }
        }
        self.fail(format!(
            "{fault:?}: no Add was acknowledged in the {PROMOTION_LIMIT:?} after the fault"
        ));
        None
    }

    /// Waits until every member runs again, one primary and two replicas,
    /// one of them synchronous: the state the next fault needs.
    async fn wait_whole(&mut self) {
        let deadline = Instant::now() + REJOIN_LIMIT;
        loop {
            let mut roles = Vec::new();
            for i in 0..MEMBERS {
                roles.push(self.patroni.role(i).await);
            }
            let primaries = roles.iter().filter(|r| **r == Role::Primary).count();
            let sync = roles.contains(&Role::Replica { sync: true });
            let replicas = roles
                .iter()
                .filter(|r| matches!(r, Role::Replica { .. }))
                .count();
            if primaries == 1 && replicas == MEMBERS - 1 && sync {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "the cluster was not whole again {REJOIN_LIMIT:?} after a fault: {roles:?}"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Rows the adders' relays published so far (neither adder restarts).
    async fn published(&self) -> f64 {
        let mut sum = 0.0;
        for adder in &self.adders {
            sum += value(&scrape(adder.http).await, PUBLISHED_ROWS);
        }
        sum
    }

    fn blocking<T>(&self, f: impl FnOnce(&Patroni) -> anyhow::Result<T>) -> anyhow::Result<T> {
        tokio::task::block_in_place(|| f(&self.patroni))
    }

    fn fail(&mut self, problem: String) {
        eprintln!("faults failover:          PROBLEM: {problem}");
        self.failures.push(problem);
    }

    async fn pause(&mut self, low_ms: u64, high_ms: u64) {
        tokio::time::sleep(Duration::from_millis(self.rng.range(low_ms, high_ms + 1))).await;
    }
}

/// Watches the load's acknowledged count and keeps the longest time it
/// stood still.
struct GapWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl GapWatch {
    fn start(tally: Arc<Tally>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut last = tally.acknowledged.load(Ordering::Relaxed);
            let mut since = Instant::now();
            let mut longest = Duration::ZERO;
            while !stopping.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = tally.acknowledged.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                }
                longest = longest.max(since.elapsed());
            }
            longest
        });
        Self { stop, task }
    }

    async fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}
