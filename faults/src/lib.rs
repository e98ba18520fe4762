//! The fault suite: proves that every acknowledged Add is counted exactly
//! once whatever fails. It starts its own PostgreSQL and RabbitMQ, the real
//! `adder` and `totaler` binaries, drives retrying gRPC load, and meanwhile
//! SIGKILLs and restarts the totaler and the adder, crashes and restarts the
//! broker and PostgreSQL, runs two totalers on one `sum.txt`, and SIGTERMs a
//! totaler mid-batch. Then it lets the backlog drain and checks the total.
//!
//! Every random choice comes from one printed seed (`TALLY_FAULTS_SEED`
//! replays a run). It must not touch anything outside its temp directory.
//!
//! # Layout
//! - `servers`: the private PostgreSQL cluster and RabbitMQ node.
//! - `process`: the service binaries as child processes.
//! - `load`: the retrying gRPC load and the tally of acknowledged Adds.
//! - `report`: the final checks and their report.
//! - `rng`: the seeded generator.

pub mod load;
pub mod process;
pub mod report;
pub mod rng;
pub mod servers;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use testkit::free_port;

pub use report::{Counts, Report};

use crate::{
    load::Load,
    process::{Service, binary},
    rng::Rng,
    servers::{Postgres, Rabbit},
};

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the load and the faults run.
    pub seconds: u64,
    /// The seed of every random choice.
    pub seed: u64,
    /// Concurrent load workers.
    pub workers: usize,
    /// Adds per second the load aims at, all workers together.
    pub rate: u64,
    /// How long the backlog may take to drain at the end.
    pub settle_seconds: u64,
}

impl Options {
    /// The CI defaults, overridden by `TALLY_FAULTS_SECONDS`, `TALLY_FAULTS_SEED`,
    /// `TALLY_FAULTS_WORKERS` and `TALLY_FAULTS_RATE`.
    pub fn from_env() -> Self {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            seconds: number("TALLY_FAULTS_SECONDS", 75),
            seed: number("TALLY_FAULTS_SEED", Rng::fresh_seed()),
            workers: number("TALLY_FAULTS_WORKERS", 16) as usize,
            rate: number("TALLY_FAULTS_RATE", 800),
            settle_seconds: number("TALLY_FAULTS_SETTLE_SECONDS", 240),
        }
    }
}

/// The faults the schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillTotaler,
    KillAdder,
    RestartBroker,
    RestartPostgres,
    TwoTotalers,
    TerminateTotaler,
}

const ALL_FAULTS: [Fault; 6] = [
    Fault::KillTotaler,
    Fault::KillAdder,
    Fault::RestartBroker,
    Fault::RestartPostgres,
    Fault::TwoTotalers,
    Fault::TerminateTotaler,
];

/// Everything a run holds.
struct Stack {
    root: PathBuf,
    grpc: u16,
    postgres: Postgres,
    rabbit: Rabbit,
    adder: Service,
    totaler: Service,
    second: Service,
    counts: Counts,
    rng: Rng,
}

/// Runs the suite and reports what it saw; `Report::problems` says whether
/// the total is exact.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    eprintln!(
        "faults: seed {} (replay with TALLY_FAULTS_SEED={})",
        options.seed, options.seed
    );
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!(
        "tally-faults-{}-{}",
        options.seed,
        std::process::id()
    ));
    std::fs::create_dir_all(&root)?;
    let mut stack = Stack::start(&root, options.seed).await?;
    eprintln!(
        "faults: servers and services up in {:.1?}; logs in {}",
        started.elapsed(),
        root.display()
    );
    let mut rng = stack.rng.fork();
    let load = Load::start(
        &stack.adder_grpc(),
        options.workers,
        options.rate,
        &mut rng,
        options.seed,
    )?;
    stack
        .inject_faults(Duration::from_secs(options.seconds), started)
        .await?;
    eprintln!("faults: load stopping; waiting for every started Add to be acknowledged");
    let tally = load.finish().await;
    stack.ensure_running().await?;
    let report = report::settle_and_check(&stack, &tally, &options, started).await?;
    stack.shut_down().await;
    if report.problems().is_empty() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("faults: keeping {} for inspection", root.display());
    }
    Ok(report)
}

impl Stack {
    async fn start(root: &Path, seed: u64) -> anyhow::Result<Self> {
        let postgres =
            tokio::task::block_in_place(|| Postgres::start(root)).context("private PostgreSQL")?;
        let rabbit = Rabbit::start(root).await.context("private RabbitMQ")?;
        let sum_file = root.join("data/sum.txt");
        let common = |http: u16| {
            vec![
                ("AMQP_URL".to_owned(), rabbit.url()),
                ("TALLY_QUEUE".to_owned(), "tally.sums".to_owned()),
                ("RUST_LOG".to_owned(), "info".to_owned()),
                ("RUST_BACKTRACE".to_owned(), "0".to_owned()),
                ("SUM_FILE".to_owned(), sum_file.display().to_string()),
                ("TOTALER_HTTP_ADDR".to_owned(), format!("127.0.0.1:{http}")),
            ]
        };
        let (grpc, adder_http, totaler_http, second_http) =
            (free_port(), free_port(), free_port(), free_port());
        let mut adder_env = common(0);
        adder_env.truncate(4);
        adder_env.extend([
            ("DATABASE_URL".to_owned(), postgres.url()),
            ("ADDER_GRPC_ADDR".to_owned(), format!("127.0.0.1:{grpc}")),
            (
                "ADDER_HTTP_ADDR".to_owned(),
                format!("127.0.0.1:{adder_http}"),
            ),
        ]);
        let local = |port: u16| {
            format!("127.0.0.1:{port}")
                .parse()
                .expect("a socket address")
        };
        let mut stack = Self {
            adder: Service::new(
                "adder",
                binary("adder")?,
                adder_env,
                root,
                local(adder_http),
            ),
            totaler: Service::new(
                "totaler",
                binary("totaler")?,
                common(totaler_http),
                root,
                local(totaler_http),
            ),
            second: Service::new(
                "totaler-2",
                binary("totaler")?,
                common(second_http),
                root,
                local(second_http),
            ),
            root: root.to_path_buf(),
            grpc,
            postgres,
            rabbit,
            counts: Counts::default(),
            rng: Rng::new(seed),
        };
        stack.adder.start().await?;
        stack.totaler.start().await?;
        Ok(stack)
    }

    fn adder_grpc(&self) -> String {
        format!("127.0.0.1:{}", self.grpc)
    }

    /// Injects faults at random moments until `duration` has passed and each
    /// kind has run at least once: first every kind in a seeded order, then
    /// random ones.
    async fn inject_faults(&mut self, duration: Duration, started: Instant) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        let mut first_round = ALL_FAULTS.to_vec();
        for i in (1..first_round.len()).rev() {
            first_round.swap(i, self.rng.range(0, i as u64 + 1) as usize);
        }
        let mut first_round = first_round.into_iter().peekable();
        // Every kind runs at least once, however long restarts take.
        while Instant::now() < until || first_round.peek().is_some() {
            tokio::time::sleep(Duration::from_millis(self.rng.range(1500, 5000))).await;
            let fault = first_round
                .next()
                .unwrap_or(ALL_FAULTS[self.rng.range(0, ALL_FAULTS.len() as u64) as usize]);
            eprintln!(
                "faults: t={:>6.1}s {fault:?}",
                started.elapsed().as_secs_f64()
            );
            self.inject(fault).await?;
        }
        Ok(())
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::KillTotaler => {
                self.totaler.kill();
                self.counts.totaler_kills += 1;
                self.pause(0, 1000).await;
                self.totaler.start().await?;
            }
            Fault::KillAdder => {
                self.adder.kill();
                self.counts.adder_kills += 1;
                self.pause(0, 1000).await;
                self.adder.start().await?;
            }
            Fault::RestartBroker => {
                if self.rng.range(0, 2) == 0 {
                    tokio::task::block_in_place(|| self.rabbit.crash());
                    self.counts.broker_crashes += 1;
                } else {
                    tokio::task::block_in_place(|| self.rabbit.stop());
                    self.counts.broker_stops += 1;
                }
                self.pause(0, 2000).await;
                self.rabbit.start_node().await?;
            }
            Fault::RestartPostgres => {
                tokio::task::block_in_place(|| self.postgres.crash())?;
                self.counts.postgres_crashes += 1;
                self.pause(0, 2000).await;
                tokio::task::block_in_place(|| self.postgres.start_server())?;
            }
            Fault::TwoTotalers => {
                self.second.start().await?;
                self.counts.two_totaler_periods += 1;
                self.pause(2000, 6000).await;
                let status = self.second.terminate().await;
                self.record_sigterm("totaler-2", status);
            }
            Fault::TerminateTotaler => {
                let status = self.totaler.terminate().await;
                self.record_sigterm("totaler", status);
                self.pause(0, 500).await;
                self.totaler.start().await?;
            }
        }
        Ok(())
    }

    fn record_sigterm(&mut self, name: &str, status: anyhow::Result<std::process::ExitStatus>) {
        self.counts.totaler_sigterms += 1;
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => self
                .counts
                .sigterm_failures
                .push(format!("{name} exited with {status} on SIGTERM")),
            Err(e) => self.counts.sigterm_failures.push(format!("{e:#}")),
        }
    }

    async fn pause(&mut self, low_ms: u64, high_ms: u64) {
        tokio::time::sleep(Duration::from_millis(self.rng.range(low_ms, high_ms + 1))).await;
    }

    async fn ensure_running(&mut self) -> anyhow::Result<()> {
        if !self.adder.is_running() {
            self.adder.start().await?;
        }
        if !self.totaler.is_running() {
            self.totaler.start().await?;
        }
        Ok(())
    }

    async fn shut_down(&mut self) {
        for service in [&mut self.second, &mut self.totaler, &mut self.adder] {
            if service.is_running() {
                let _ = service.terminate().await;
            }
        }
        tokio::task::block_in_place(|| self.rabbit.stop());
        let _ = tokio::task::block_in_place(|| self.postgres.crash());
    }
}
