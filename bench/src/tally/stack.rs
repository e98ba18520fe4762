//! The stack under test and its lifecycle: a fresh database, a queue and a
//! sum file of this run, the release `adder` and `totaler` in their own
//! processes, the harness's gRPC clients; starting, warming up, stopping
//! and restarting either service, and the exact-total check every phase
//! ends with ([`Stack::settle`]). The phases themselves are in the sibling
//! modules.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};
use testkit::{database::Fresh, free_addr, queue_name};

use crate::{
    broker::Broker,
    config::Config,
    grpc::{self, Clients},
    http,
    process::{Memory, Process},
    stages::Snapshot,
};

/// The running stack and what the harness knows of it.
pub struct Stack {
    pub(super) config: Config,
    db: Option<Fresh>,
    pub(super) queue: String,
    sum_file: PathBuf,
    log: PathBuf,
    /// `None` only while a phase has it stopped.
    pub(super) adder: Option<Process>,
    pub(super) totaler: Option<Process>,
    pub(super) grpc_addr: SocketAddr,
    pub(super) adder_http: SocketAddr,
    pub(super) totaler_http: SocketAddr,
    pub(super) clients: Clients,
    pub(super) broker: Broker,
    pub(super) expected: i128,
    /// Peak resident memory seen, adder and totaler, in MiB.
    pub peak_mb: (f64, f64),
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a phase polls `GET /sum`.
pub(super) const POLL: Duration = Duration::from_millis(1);

impl Stack {
    /// Creates the database, starts adder and totaler, and warms them up;
    /// runs `outbox_sql` on the database once the adder migrated it.
    pub async fn start(config: &Config, run_dir: &Path) -> anyhow::Result<Self> {
        let db = Fresh::create(config.database_url(), "tally_bench_tally").await?;
        let queue = queue_name("bench", "tally");
        let broker = Broker::connect(config.amqp_url()).await?;
        broker.declare(&queue).await?;
        let (grpc_addr, adder_http, totaler_http) = (free_addr()?, free_addr()?, free_addr()?);
        let log = run_dir.join("services.log");
        let place = AdderPlace {
            db_url: &db.url,
            queue: &queue,
            grpc_addr,
            http_addr: adder_http,
        };
        let adder = spawn_adder(config, &place, &log).await?;
        let mut stack = Self {
            config: config.clone(),
            db: Some(db),
            queue,
            sum_file: run_dir.join("data").join("sum.txt"),
            log,
            adder: Some(adder),
            totaler: None,
            grpc_addr,
            adder_http,
            totaler_http,
            clients: Clients::connect(grpc_addr, config.grpc_connections).await?,
            broker,
            expected: 0,
            peak_mb: (0.0, 0.0),
        };
        if let Some(file) = &config.outbox_sql {
            stack.run_outbox_sql(file).await?;
        }
        stack.start_totaler().await?;
        stack.warm_up().await?;
        Ok(stack)
    }

    /// The sum file's directory, where the file limit is measured.
    pub fn sum_dir(&self) -> PathBuf {
        self.sum_file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// The run's outbox database.
    pub(super) fn db_url(&self) -> anyhow::Result<&str> {
        self.db
            .as_ref()
            .map(|db| db.url.as_str())
            .context("the run's database is gone")
    }

    /// Starts the adder (again) on the same database, queue and addresses,
    /// and reconnects the gRPC clients to it.
    pub(super) async fn start_adder(&mut self) -> anyhow::Result<()> {
        let place = AdderPlace {
            db_url: self.db_url()?,
            queue: &self.queue,
            grpc_addr: self.grpc_addr,
            http_addr: self.adder_http,
        };
        let adder = spawn_adder(&self.config, &place, &self.log).await?;
        self.adder = Some(adder);
        self.clients = Clients::connect(self.grpc_addr, self.config.grpc_connections).await?;
        Ok(())
    }

    pub(super) async fn stop_adder(&mut self) -> anyhow::Result<()> {
        self.sample_memory();
        if let Some(adder) = self.adder.take() {
            adder.stop().await?;
        }
        Ok(())
    }

    /// Runs the SQL of `file` on the run's outbox database, as one script.
    async fn run_outbox_sql(&self, file: &Path) -> anyhow::Result<()> {
        let sql =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut connection = PgConnection::connect(self.db_url()?).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut connection)
            .await
            .with_context(|| format!("running {} on the outbox database", file.display()))?;
        eprintln!(
            "bench: ran {} on the outbox database (kept for the whole run)",
            file.display()
        );
        Ok(())
    }

    pub(super) async fn start_totaler(&mut self) -> anyhow::Result<()> {
        let mut totaler = Process::start(
            "totaler",
            &self.config.bin_dir.join("totaler"),
            &[],
            &[
                ("AMQP_URL", self.config.amqp_url().to_owned()),
                ("TALLY_QUEUE", self.queue.clone()),
                ("SUM_FILE", self.sum_file.display().to_string()),
                ("TOTALER_HTTP_ADDR", self.totaler_http.to_string()),
                ("TOTALER_PREFETCH", self.config.prefetch.to_string()),
                ("TOTALER_BATCH_SIZE", self.config.batch_size.to_string()),
                ("RUST_LOG", "warn".into()),
            ],
            &self.log,
        )?;
        totaler
            .wait_ready(self.totaler_http, "/readyz", READY_TIMEOUT)
            .await?;
        self.totaler = Some(totaler);
        Ok(())
    }

    pub(super) async fn stop_totaler(&mut self) -> anyhow::Result<()> {
        self.sample_memory();
        if let Some(totaler) = self.totaler.take() {
            totaler.stop().await?;
        }
        Ok(())
    }

    pub(super) async fn warm_up(&mut self) -> anyhow::Result<()> {
        let done = grpc::saturate(&self.clients, 16, READY_TIMEOUT, 500, |_| (1, 0)).await;
        self.settle(&done).await?;
        Ok(())
    }

    /// Both services' histograms, adder first.
    pub(super) async fn scrape_stages(&self) -> anyhow::Result<(Snapshot, Snapshot)> {
        Ok((
            Snapshot::scrape(self.adder_http).await?,
            Snapshot::scrape(self.totaler_http).await?,
        ))
    }

    /// After a failed phase: waits until the total stops moving and takes it
    /// as the new expected total, so later phases still check exactly.
    pub async fn resync(&mut self) -> anyhow::Result<()> {
        if self.adder.is_none() {
            self.start_adder().await?;
        }
        if self.totaler.is_none() {
            self.start_totaler().await?;
        }
        let mut last = self.total().await?;
        for _ in 0..self.config.settle_secs.max(1) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.total().await?;
            if now == last && self.broker.ready(&self.queue).await? == 0 {
                break;
            }
            last = now;
        }
        eprintln!(
            "bench: resynced the expected total from {} to {last}",
            self.expected
        );
        self.expected = last;
        Ok(())
    }

    /// Stops both services and drops the run's database and queues.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.sample_memory();
        let stopped_totaler = self.stop_totaler().await;
        let stopped_adder = self.stop_adder().await;
        self.broker.delete(&self.queue).await;
        if let Some(db) = self.db.take() {
            crate::drop_database(db).await;
        }
        stopped_totaler?;
        stopped_adder
    }

    pub(super) fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.adder.as_ref().map(Process::pid),
            self.totaler.as_ref().map(Process::pid),
        )
    }

    pub(super) fn sample_memory(&mut self) {
        if let Some(Ok(Memory { peak_mb, .. })) = self.adder.as_ref().map(Process::memory) {
            self.peak_mb.0 = self.peak_mb.0.max(peak_mb);
        }
        if let Some(Ok(Memory { peak_mb, .. })) = self.totaler.as_ref().map(Process::memory) {
            self.peak_mb.1 = self.peak_mb.1.max(peak_mb);
        }
    }

    /// Checks the load went through, waits for the total to reach the new
    /// expected value, and returns when it did.
    pub(super) async fn settle(&mut self, done: &grpc::Saturation) -> anyhow::Result<Instant> {
        if done.failed > 0 {
            bail!(
                "{} Adds failed (first: {:?}); the total cannot be checked",
                done.failed,
                done.first_error
            );
        }
        let target = self.expected + done.acked_sum;
        let reached = wait_total(self.totaler_http, target, self.config.settle()).await?;
        self.expected = target;
        Ok(reached)
    }

    async fn total(&self) -> anyhow::Result<i128> {
        let mut connection = http::Connection::open(self.totaler_http, "/sum").await?;
        let (_, body) = connection.get().await?;
        http::parse_sum(&body)
    }
}

/// Where the adder runs: its database, queue and addresses.
struct AdderPlace<'a> {
    db_url: &'a str,
    queue: &'a str,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
}

/// Starts the release adder and waits until it is ready.
async fn spawn_adder(
    config: &Config,
    place: &AdderPlace<'_>,
    log: &Path,
) -> anyhow::Result<Process> {
    let mut adder = Process::start(
        "adder",
        &config.bin_dir.join("adder"),
        &[],
        &[
            ("DATABASE_URL", place.db_url.to_owned()),
            ("AMQP_URL", config.amqp_url().to_owned()),
            ("TALLY_QUEUE", place.queue.to_owned()),
            ("ADDER_GRPC_ADDR", place.grpc_addr.to_string()),
            ("ADDER_HTTP_ADDR", place.http_addr.to_string()),
            ("ADDER_DB_POOL", config.db_pool.to_string()),
            ("ADDER_RELAY_PACK", config.pack.to_string()),
            ("RUST_LOG", "warn".into()),
        ],
        log,
    )?;
    adder
        .wait_ready(place.http_addr, "/readyz", READY_TIMEOUT)
        .await?;
    Ok(adder)
}

/// Polls `GET /sum` until the total is `target`; fails if it passes it or
/// `timeout` elapses. Connection errors (a totaler starting) are retried.
pub(crate) async fn wait_total(
    addr: SocketAddr,
    target: i128,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let started = Instant::now();
    let mut connection = None;
    let mut last = None;
    while started.elapsed() < timeout {
        if connection.is_none() {
            connection = http::Connection::open(addr, "/sum").await.ok();
        }
        if let Some(open) = connection.as_mut() {
            match open.get().await {
                Ok((200, body)) => {
                    let total = http::parse_sum(&body)?;
                    if total == target {
                        return Ok(Instant::now());
                    }
                    if total > target {
                        bail!("the total passed the expected value: {total} > {target}");
                    }
                    last = Some(total);
                }
                _ => connection = None,
            }
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("the total did not reach {target} within {timeout:?} (last seen {last:?})")
}
