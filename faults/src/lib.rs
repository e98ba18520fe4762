//! The fault suite: proves that every acknowledged Add is counted exactly
//! once whatever fails. It starts its own PostgreSQL and RabbitMQ, the real
//! `adder` and `totaler` binaries, drives gRPC load (retrying Adds with
//! request ids, and id-less Adds on several commit writers), and meanwhile
//! SIGKILLs and restarts the totaler and the adder, crashes (SIGKILL) or stops
//! (SIGTERM) the broker, crashes PostgreSQL, runs two totalers on one
//! `sum.txt` and two adders on one database, SIGTERMs a totaler while it
//! consumes, crashes one between its ledger update and its ack, loses the
//! relay's published marks, fills the disk under `sum.txt` (a real tmpfs),
//! deletes `sum.txt` or replaces it by an older copy, holds a slow outbox
//! transaction open across more than 1,024 published gaps, holds the broker's
//! confirms past the relay's timeout (a proxy between adder and broker),
//! sends hostile inputs (NUL request ids, forged and oversized messages,
//! half-sent HTTP requests), drives the total beyond i64 both ways, and runs
//! some faults together. Then it lets the backlog drain and checks the total,
//! the outbox, the dead letters, `totaler verify`, and that the run really saw
//! what it claims (duplicates, republishes, ...), from the services' metrics.
//!
//! Every random choice comes from one printed seed (`TALLY_FAULTS_SEED`
//! replays a run). It must not touch anything outside its run directory
//! (`run_dir`: the tmpfs it mounts is under it, and is unmounted on every
//! exit); a failed run's directory is kept under `target/faults-failed/`.
//!
//! Knobs: [`Options`], flags of the `faults` binary and `TALLY_FAULTS_*`
//! variables in one declaration.
//!
//! A cluster mode (`cluster::run`, its own test) runs the same binaries on
//! a three-node RabbitMQ cluster behind HAProxy and loses a node at a time.
//! A failover mode (`failover::run`, its own test) puts the outbox on three
//! PostgreSQL members under Patroni and loses the primary again and again.
//!
//! # Layout
//! - `cluster`: the cluster mode (three broker nodes, HAProxy, standbys).
//! - `failover`: the failover mode (Patroni promotes, the adders follow).
//! - `fleet`: what those two share: their services, schedule and run.
//! - `servers`: the main mode's private PostgreSQL and RabbitMQ node.
//! - `process`: the service binaries as child processes.
//! - `stack`: everything a main-mode run holds, started and stopped together.
//! - `crashes`: process, server and network faults, alone and combined.
//! - `sum_file`: the full disk, the deleted and the replaced `sum.txt`.
//! - `inputs`: hostile inputs, the slow transaction, totals beyond i64.
//! - `stalls`: what time and size bring: a broker outage's large backlog,
//!   a transaction open elsewhere, silent gRPC sockets, a silent PostgreSQL.
//! - `repair`: batch numbers far from 1 and past a loss, and the repair of
//!   lost batches with the commands `totaler verify` prints.
//! - `disk`: the tmpfs under `sum.txt` and the ledger lock.
//! - `hostile`: the hostile requests and messages themselves.
//! - `outbox`: the suite's SQL on the outbox.
//! - `load`: the gRPC load and the tally of acknowledged Adds.
//! - `metrics`: what the services' `/metrics` say happened.
//! - `counts`: what each main-mode fault did and saw.
//! - `readings`: what every mode reads at its end, and the settling wait.
//! - `settled`: the one check of every mode's end: the total is exact.
//! - `report`: the main mode's final checks and their report.
//! - `run_dir`: a run's directory, kept when the run failed.
//! - `rng`: the seeded generator.

pub mod cluster;
pub mod counts;
pub mod crashes;
pub mod disk;
pub mod failover;
pub mod fleet;
pub mod hostile;
pub mod inputs;
pub mod load;
pub mod metrics;
pub mod outbox;
pub mod process;
pub mod readings;
pub mod repair;
pub mod report;
pub mod rng;
pub mod run_dir;
pub mod servers;
pub mod settled;
pub mod stack;
pub mod stalls;
pub mod sum_file;

use std::{
    path::Path,
    time::{Duration, Instant},
};

pub use report::Report;
pub use run_dir::{Finished, Verdict};

use crate::{
    load::{Load, Shape},
    rng::Rng,
    run_dir::RunDir,
    stack::Stack,
};

/// How a run goes: the flags of the `faults` binary, each also read from
/// its `TALLY_FAULTS_*` variable (the tests take only the variables:
/// [`Options::from_env`]).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// How long the load and faults run, in seconds (at least one round of
    /// every kind runs, however long it takes).
    #[arg(long, env = "TALLY_FAULTS_SECONDS", default_value_t = 75)]
    pub seconds: u64,
    /// Seed of every random choice (printed; replays a run). Random when unset.
    #[arg(long, env = "TALLY_FAULTS_SEED", default_value_t = Rng::fresh_seed(), hide_default_value = true)]
    pub seed: u64,
    /// Concurrent retrying load workers (with request ids).
    #[arg(long, env = "TALLY_FAULTS_WORKERS", default_value_t = 16)]
    pub workers: usize,
    /// Adds per second the retrying workers aim at, all together.
    #[arg(long, env = "TALLY_FAULTS_RATE", default_value_t = 800)]
    pub rate: u64,
    /// Concurrent id-less load workers (no request id; an Add counts only
    /// when it returned OK).
    #[arg(long, env = "TALLY_FAULTS_IDLESS_WORKERS", default_value_t = 16)]
    pub idless_workers: usize,
    /// Id-less Adds per second, all id-less workers together.
    #[arg(long, env = "TALLY_FAULTS_IDLESS_RATE", default_value_t = 600)]
    pub idless_rate: u64,
    /// ADDER_COMMIT_WRITERS of the adders (group-commit writers).
    #[arg(long, env = "TALLY_FAULTS_COMMIT_WRITERS", default_value_t = 8)]
    pub commit_writers: usize,
    /// How long the backlog may take to drain at the end, in seconds.
    #[arg(long, env = "TALLY_FAULTS_SETTLE_SECONDS", default_value_t = 240)]
    pub settle_seconds: u64,
    /// Acknowledged Adds per second of fault time the run must reach.
    #[arg(long, env = "TALLY_FAULTS_MIN_ACK_RATE", default_value_t = 200)]
    pub min_ack_rate: u64,
    /// The relay's confirm timeout the adders get, in seconds
    /// (`ADDER_RELAY_CONFIRM_TIMEOUT_MS`): the partition holds confirms 5 s
    /// longer.
    #[arg(
        long,
        env = "TALLY_FAULTS_CONFIRM_TIMEOUT_SECONDS",
        default_value_t = 4
    )]
    pub confirm_timeout_seconds: u64,
    /// The totaler's documented HTTP header-read timeout, in seconds.
    #[arg(
        long,
        env = "TALLY_FAULTS_HEADER_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub header_timeout_seconds: u64,
    /// Rows a broker outage leaves in the outbox (the BrokerOutageBacklog
    /// fault); soak runs use 1000000.
    #[arg(long, env = "TALLY_FAULTS_BACKLOG_ROWS", default_value_t = 200_000)]
    pub backlog_rows: u64,
}

impl Options {
    /// The defaults, overridden by the `TALLY_FAULTS_*` variables.
    ///
    /// # Panics
    /// When a variable is set but not a number.
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Env {
            #[command(flatten)]
            options: Options,
        }
        <Env as clap::Parser>::try_parse_from(["faults"])
            .unwrap_or_else(|e| panic!("the TALLY_FAULTS_* variables: {e}"))
            .options
    }

    /// The load the run drives: its retrying and id-less workers and rates.
    pub fn shape(&self) -> Shape {
        Shape {
            workers: self.workers,
            rate: self.rate,
            idless_workers: self.idless_workers,
            idless_rate: self.idless_rate,
        }
    }
}

/// When a kind of fault runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounds {
    /// In the first round, and drawn again after it.
    Always,
    /// In the first round only: the long ones.
    FirstOnly,
    /// Drawn after the first round only.
    AfterFirst,
}

/// Declares [`Fault`], its list [`Fault::ALL`] and each kind's [`Rounds`]
/// from one table.
macro_rules! faults {
    ($($(#[$doc:meta])* $name:ident: $rounds:ident,)*) => {
        /// The faults the schedule draws from, each its own kind so the
        /// report says which one broke what.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Fault {
            $($(#[$doc])* $name,)*
        }

        impl Fault {
            /// Every kind, in the table's order (the soak draws from these).
            pub const ALL: &[Fault] = &[$(Fault::$name,)*];

            /// When this kind runs.
            pub const fn rounds(self) -> Rounds {
                match self {
                    $(Fault::$name => Rounds::$rounds,)*
                }
            }
        }
    };
}

faults! {
    KillTotaler: Always,
    KillAdder: Always,
    /// The lone broker SIGKILL is left out of the first round, which
    /// `BrokerCrashDuringTotalerKill` covers (a broker restart is the
    /// slowest fault, and CI time is bounded); it is drawn afterwards.
    CrashBroker: AfterFirst,
    StopBroker: Always,
    RestartPostgres: Always,
    TwoTotalers: Always,
    TerminateTotaler: Always,
    CrashTotalerAfterApply: Always,
    LoseRelayMarks: Always,
    TwoAdders: Always,
    ConfirmPartition: FirstOnly,
    FullDiskTerminate: FirstOnly,
    FullDiskKill: Always,
    DeleteSumFile: Always,
    ReplaceSumFile: Always,
    SlowOutboxTransaction: FirstOnly,
    NulRequestIds: FirstOnly,
    HostileMessages: FirstOnly,
    HalfSentHttp: FirstOnly,
    BeyondI64: FirstOnly,
    BrokerCrashDuringTotalerKill: Always,
    PostgresCrashDuringAdderKill: Always,
    BrokerOutageBacklog: FirstOnly,
    TransactionElsewhere: FirstOnly,
    SilentGrpcSockets: Always,
    SilentPostgres: Always,
    /// The source's batch numbers moved to 10^9 (a source that has cut a
    /// billion batches).
    FarBatchNumbers: FirstOnly,
    /// Batches lost from a purged queue, 150,000 batch numbers more, then
    /// the repair an operator makes with `totaler verify`'s commands.
    LostBatchRepaired: FirstOnly,
}

impl Fault {
    /// The first round: every kind once, in the table's order.
    pub fn first_round() -> impl Iterator<Item = Fault> {
        Self::ALL
            .iter()
            .copied()
            .filter(|f| f.rounds() != Rounds::AfterFirst)
    }

    /// The kinds drawn again after the first round.
    pub fn repeated() -> Vec<Fault> {
        Self::ALL
            .iter()
            .copied()
            .filter(|f| f.rounds() != Rounds::FirstOnly)
            .collect()
    }
}

/// How long the load runs before the first fault.
const FIRST_FAULT_AFTER: Duration = Duration::from_secs(15);

/// Runs the suite and reports what it saw; `Finished::failure` says
/// whether the total is exact and the run honest.
pub async fn run(options: Options) -> anyhow::Result<Finished<Report>> {
    let dir = RunDir::create("main", options.seed)?;
    match run_in(dir.path(), &options).await {
        Ok(report) => Ok(dir.finish(report)),
        Err(e) => Err(dir.failed(e)),
    }
}

/// The run in `root`; everything it started is stopped when it returns.
async fn run_in(root: &Path, options: &Options) -> anyhow::Result<Report> {
    eprintln!(
        "faults: seed {} (replay with TALLY_FAULTS_SEED={})",
        options.seed, options.seed
    );
    let started = Instant::now();
    let mut stack = Stack::start(root, options).await?;
    eprintln!(
        "faults: servers and services up in {:.1?}; logs in {}",
        started.elapsed(),
        root.display()
    );
    let mut rng = stack.rng.fork();
    let load = Load::start(
        &stack.adder_grpc(),
        options.shape(),
        &mut rng,
        &options.seed.to_string(),
        stack.tally.clone(),
    )?;
    let faulting = Instant::now();
    let injected = inject_faults(&mut stack, Duration::from_secs(options.seconds), started).await;
    let fault_time = faulting.elapsed();
    eprintln!("faults: load stopping; waiting for every started Add to be acknowledged");
    let tally = load.finish().await;
    stack.release_elsewhere().await;
    injected?;
    stack.ensure_running().await?;
    let report = report::settle_and_check(&mut stack, &tally, options, started, fault_time).await;
    stack.shut_down().await;
    Ok(report)
}

/// Injects faults at random moments until `duration` has passed and each
/// kind has run at least once: first every kind in a seeded order, then
/// random ones.
async fn inject_faults(
    stack: &mut Stack,
    duration: Duration,
    started: Instant,
) -> anyhow::Result<()> {
    // A broker crash seconds after the queues were created left RabbitMQ
    // 3.10's `tally.sums` without a leader for good ("leader not known";
    // seed 17494462230635224366, with and without the single active
    // consumer), which is the broker's, not Tally's: the faults start once
    // the queues have run under load a while.
    tokio::time::sleep(FIRST_FAULT_AFTER).await;
    stack.record_resources(true);
    let until = Instant::now() + duration;
    let mut first_round: Vec<Fault> = Fault::first_round().collect();
    let repeated = Fault::repeated();
    for i in (1..first_round.len()).rev() {
        first_round.swap(i, stack.rng.range(0, i as u64 + 1) as usize);
    }
    let mut first_round = first_round.into_iter().peekable();
    // Every kind runs at least once, however long restarts take.
    while Instant::now() < until || first_round.peek().is_some() {
        tokio::time::sleep(Duration::from_millis(stack.rng.range(200, 1000))).await;
        // Drawn every time, also in the first round, so a seed replays
        // the same schedule as before.
        let drawn = repeated[stack.rng.range(0, repeated.len() as u64) as usize];
        let fault = first_round.next().unwrap_or(drawn);
        eprintln!(
            "faults: t={:>6.1}s {fault:?}",
            started.elapsed().as_secs_f64()
        );
        let at = Instant::now();
        stack.inject(fault).await?;
        *stack.counts.runs.entry(format!("{fault:?}")).or_default() += 1;
        eprintln!("faults:          {fault:?} took {:.1?}", at.elapsed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rounds_come_from_the_one_table() {
        assert_eq!(Fault::ALL.len(), 28);
        let first: Vec<Fault> = Fault::first_round().collect();
        assert_eq!(first.len(), 27);
        assert!(!first.contains(&Fault::CrashBroker));
        let repeated = Fault::repeated();
        assert_eq!(repeated.len(), 17);
        assert!(repeated.contains(&Fault::CrashBroker));
        for long in [
            Fault::ConfirmPartition,
            Fault::SlowOutboxTransaction,
            Fault::BrokerOutageBacklog,
            Fault::TransactionElsewhere,
            Fault::LostBatchRepaired,
        ] {
            assert!(first.contains(&long) && !repeated.contains(&long));
        }
        // The schedule draws by index: the table's order is the replay's.
        assert!(repeated.is_sorted() && first.is_sorted());
    }
}
