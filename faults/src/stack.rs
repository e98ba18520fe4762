//! Everything a run holds: the private servers, the proxy between the
//! adders and the broker, the services (two adders, two totalers), the
//! sum file's directory (a tmpfs), the metrics sampler and the tally, plus
//! the dispatch from a `Fault` to the code that injects it. Dropping it
//! kills every process it started and unmounts the tmpfs.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use testkit::{Proxy, free_port, proxy::target_of};

use crate::{
    Fault, Options,
    counts::Counts,
    disk::DataDir,
    load::Tally,
    metrics::Sampler,
    process::{Service, binary, http_get},
    rng::Rng,
    servers::{Postgres, Rabbit},
};

/// How long the adders' gRPC waits for a connection's HTTP/2 preface in a
/// run (`ADDER_GRPC_HANDSHAKE_TIMEOUT_MS`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the adders wait on one statement in a run
/// (`ADDER_DB_STATEMENT_TIMEOUT_MS`); they give an answer up 2 s later.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything a run holds. Fields drop in order: processes first, then the
/// servers, the tmpfs last.
pub struct Stack {
    pub root: PathBuf,
    pub grpc: u16,
    pub second_grpc: u16,
    pub options: Options,
    pub adder: Service,
    pub second_adder: Service,
    pub totaler: Service,
    pub second: Service,
    pub sampler: Sampler,
    pub proxy: Proxy,
    /// Between the adders and PostgreSQL (the silent server fault).
    pub pg_proxy: Proxy,
    /// A transaction held open in another database (`TransactionElsewhere`).
    pub held_elsewhere: Option<sqlx::PgConnection>,
    pub postgres: Postgres,
    pub rabbit: Rabbit,
    pub counts: Counts,
    pub tally: Arc<Tally>,
    /// Bodies published straight to the queue that must be dead-lettered.
    pub expected_dead: Vec<(String, Vec<u8>)>,
    pub rng: Rng,
    pub data: DataDir,
}

impl Stack {
    pub async fn start(root: &Path, options: &Options) -> anyhow::Result<Self> {
        let mut counts = Counts::default();
        let (data, not_mounted) = DataDir::mount(&root.join("data"), "1m");
        if let Some(why) = not_mounted {
            eprintln!("faults: {why}");
            counts.failures.push(why);
        }
        let postgres =
            tokio::task::block_in_place(|| Postgres::start(root)).context("private PostgreSQL")?;
        let rabbit = Rabbit::start(root).await.context("private RabbitMQ")?;
        rabbit
            .declare_topology("tally.sums")
            .await
            .context("declaring the queues")?;
        let proxy = Proxy::start(target_of(&rabbit.url())).await;
        let pg_proxy = Proxy::start(target_of(&postgres.url())).await;
        let sum_file = data.sum_file();
        let totaler_env = |http: u16| {
            vec![
                ("AMQP_URL".to_owned(), rabbit.url()),
                ("TALLY_QUEUE".to_owned(), "tally.sums".to_owned()),
                ("RUST_LOG".to_owned(), "info".to_owned()),
                ("RUST_BACKTRACE".to_owned(), "0".to_owned()),
                ("SUM_FILE".to_owned(), sum_file.display().to_string()),
                ("TOTALER_HTTP_ADDR".to_owned(), format!("127.0.0.1:{http}")),
            ]
        };
        // The adders reach the broker through the proxy (the partition
        // fault), and PostgreSQL through another (the silent server).
        let adder_env = |grpc: u16, http: u16| {
            vec![
                ("AMQP_URL".to_owned(), proxy.url(&rabbit.url())),
                ("TALLY_QUEUE".to_owned(), "tally.sums".to_owned()),
                ("RUST_LOG".to_owned(), "info".to_owned()),
                ("RUST_BACKTRACE".to_owned(), "0".to_owned()),
                ("DATABASE_URL".to_owned(), pg_proxy.url(&postgres.url())),
                (
                    "ADDER_GRPC_HANDSHAKE_TIMEOUT_MS".to_owned(),
                    HANDSHAKE_TIMEOUT.as_millis().to_string(),
                ),
                (
                    "ADDER_DB_STATEMENT_TIMEOUT_MS".to_owned(),
                    STATEMENT_TIMEOUT.as_millis().to_string(),
                ),
                ("ADDER_GRPC_ADDR".to_owned(), format!("127.0.0.1:{grpc}")),
                ("ADDER_HTTP_ADDR".to_owned(), format!("127.0.0.1:{http}")),
                (
                    "ADDER_COMMIT_WRITERS".to_owned(),
                    options.commit_writers.to_string(),
                ),
                (
                    "ADDER_RELAY_CONFIRM_TIMEOUT_MS".to_owned(),
                    (options.confirm_timeout_seconds * 1000).to_string(),
                ),
            ]
        };
        let [
            grpc,
            second_grpc,
            adder_http,
            second_adder_http,
            totaler_http,
            second_http,
        ] = [(); 6].map(|()| free_port());
        let local = |port: u16| -> SocketAddr {
            format!("127.0.0.1:{port}")
                .parse()
                .expect("a socket address")
        };
        let service = |name: &str, binary: PathBuf, env, http| {
            Service::new(name, binary, env, root, local(http))
        };
        let sampler = Sampler::start(vec![
            ("adder".to_owned(), local(adder_http)),
            ("adder-2".to_owned(), local(second_adder_http)),
            ("totaler".to_owned(), local(totaler_http)),
            ("totaler-2".to_owned(), local(second_http)),
        ]);
        let mut stack = Self {
            adder: service(
                "adder",
                binary("adder")?,
                adder_env(grpc, adder_http),
                adder_http,
            ),
            second_adder: service(
                "adder-2",
                binary("adder")?,
                adder_env(second_grpc, second_adder_http),
                second_adder_http,
            ),
            totaler: service(
                "totaler",
                binary("totaler")?,
                totaler_env(totaler_http),
                totaler_http,
            ),
            second: service(
                "totaler-2",
                binary("totaler")?,
                totaler_env(second_http),
                second_http,
            ),
            root: root.to_path_buf(),
            grpc,
            second_grpc,
            options: options.clone(),
            sampler,
            proxy,
            pg_proxy,
            held_elsewhere: None,
            postgres,
            rabbit,
            counts,
            tally: Arc::default(),
            expected_dead: Vec::new(),
            rng: Rng::new(options.seed),
            data,
        };
        stack.adder.start().await?;
        stack.totaler.start().await?;
        Ok(stack)
    }

    pub fn adder_grpc(&self) -> String {
        format!("127.0.0.1:{}", self.grpc)
    }

    pub async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::KillTotaler => self.kill_totaler().await,
            Fault::KillAdder => self.kill_adder().await,
            Fault::CrashBroker => self.restart_broker(true).await,
            Fault::StopBroker => self.restart_broker(false).await,
            Fault::RestartPostgres => self.restart_postgres().await,
            Fault::TwoTotalers => self.two_totalers().await,
            Fault::TerminateTotaler => self.terminate_totaler().await,
            Fault::CrashTotalerAfterApply => self.crash_totaler_after_apply().await,
            Fault::LoseRelayMarks => self.lose_relay_marks().await,
            Fault::TwoAdders => self.two_adders().await,
            Fault::ConfirmPartition => self.confirm_partition().await,
            Fault::FullDiskTerminate => self.full_disk(false).await,
            Fault::FullDiskKill => self.full_disk(true).await,
            Fault::DeleteSumFile => self.delete_sum_file().await,
            Fault::ReplaceSumFile => self.replace_sum_file().await,
            Fault::SlowOutboxTransaction => self.slow_outbox_transaction().await,
            Fault::NulRequestIds => self.nul_request_ids().await,
            Fault::HostileMessages => self.hostile_messages().await,
            Fault::HalfSentHttp => self.half_sent_http().await,
            Fault::BeyondI64 => self.beyond_i64().await,
            Fault::BrokerCrashDuringTotalerKill => self.broker_crash_during_totaler_kill().await,
            Fault::PostgresCrashDuringAdderKill => self.postgres_crash_during_adder_kill().await,
            Fault::BrokerOutageBacklog => self.broker_outage_backlog().await,
            Fault::TransactionElsewhere => self.transaction_elsewhere().await,
            Fault::SilentGrpcSockets => self.silent_grpc_sockets().await,
            Fault::SilentPostgres => self.silent_postgres().await,
            Fault::FarBatchNumbers => self.far_batch_numbers().await,
            Fault::LostBatchRepaired => self.lost_batch_repaired().await,
        }
    }

    /// Notes each service's memory and file descriptors (`first`: at the
    /// first fault, else at the end) and, at the end, the size of `sum.txt`.
    pub fn record_resources(&mut self, first: bool) {
        for service in [&self.adder, &self.second_adder, &self.totaler, &self.second] {
            let entry = self
                .counts
                .resources
                .entry(service.name.clone())
                .or_default();
            if first {
                entry.0 = service.resources();
            } else {
                entry.1 = service.resources();
            }
        }
        if !first {
            self.counts.sum_file_bytes = std::fs::metadata(self.data.sum_file())
                .ok()
                .map(|m| m.len());
        }
    }

    /// Records a problem a fault saw (the run then fails).
    pub fn fail(&mut self, problem: String) {
        eprintln!("faults:          PROBLEM: {problem}");
        self.counts.failures.push(problem);
    }

    pub async fn pause(&mut self, low_ms: u64, high_ms: u64) {
        tokio::time::sleep(Duration::from_millis(self.rng.range(low_ms, high_ms + 1))).await;
    }

    /// Waits (bounded) until `service`'s `/readyz` answers 200.
    pub async fn ready(addr: SocketAddr, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if http_get(addr, "/readyz")
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub async fn ensure_running(&mut self) -> anyhow::Result<()> {
        if !self.adder.is_running() {
            self.adder.start().await?;
        }
        if !self.totaler.is_running() {
            self.totaler.start().await?;
        }
        Ok(())
    }

    pub async fn shut_down(&mut self) {
        for service in [
            &mut self.second,
            &mut self.totaler,
            &mut self.second_adder,
            &mut self.adder,
        ] {
            if service.is_running() {
                let _ = service.terminate().await;
            }
        }
        tokio::task::block_in_place(|| self.rabbit.stop());
        let _ = tokio::task::block_in_place(|| self.postgres.crash());
    }
}
