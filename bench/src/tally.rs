//! Tally itself, as the release binaries in their own processes, on a fresh
//! database, a queue and a sum file of this run: durable Adds/s at
//! saturation (counted only once the total is exactly what the acknowledged
//! Adds make it), latency at a fixed rate, backlog drain, `GET /sum`, and
//! each service's memory.
//!
//! The harness keeps `expected`, the total the acknowledged Adds make; every
//! phase ends by waiting for the totaler to reach it, and a total that
//! passes it is an error, never a result.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::sync::oneshot;

use crate::{
    broker::{Bound, Broker},
    config::Config,
    cpu,
    database::Fresh,
    grpc::{self, Clients, Sample},
    http,
    process::{self, Memory, Process},
    stages::{self, Snapshot},
};

/// The running stack and what the harness knows of it.
pub struct Stack {
    config: Config,
    db: Option<Fresh>,
    queue: String,
    sum_file: PathBuf,
    log: PathBuf,
    adder: Process,
    totaler: Option<Process>,
    adder_http: SocketAddr,
    totaler_http: SocketAddr,
    clients: Clients,
    broker: Broker,
    expected: i128,
    /// Peak resident memory seen, adder and totaler, in MiB.
    pub peak_mb: (f64, f64),
}

/// Latency figures of one fixed-rate window, in milliseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    pub achieved_per_s: f64,
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    pub counted_p50_ms: f64,
    pub counted_p99_ms: f64,
    /// Highest resident memory sampled during the window, adder and totaler.
    pub rss_mb: (f64, f64),
    /// The services' own stage quantiles over the window (`stages`), by key.
    pub stages: Vec<(&'static str, f64)>,
    /// Cores each part kept busy during the window (`cpu::keyed`).
    pub cpu: Vec<(&'static str, f64)>,
}

/// Saturation figures.
#[derive(Debug, Clone)]
pub struct Saturation {
    /// Acknowledged Adds per second of load.
    pub accepted_per_s: f64,
    /// Acknowledged Adds per second until the total reached them.
    pub durable_per_s: f64,
    /// Cores each part kept busy during the load (`cpu::keyed`).
    pub cpu: Vec<(&'static str, f64)>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(1);
/// Most Adds one saturation window sends.
const MAX_CALLS: u64 = 50_000_000;

impl Stack {
    /// Creates the database, starts adder and totaler, and warms them up.
    pub async fn start(config: &Config, run_dir: &Path) -> anyhow::Result<Self> {
        let db = Fresh::create(&config.database_url, "tally").await?;
        let queue = crate::broker::unique_queue("tally");
        let broker = Broker::connect(&config.amqp_url).await?;
        broker.declare(&queue).await?;
        let (grpc_addr, adder_http, totaler_http) = (
            process::free_addr()?,
            process::free_addr()?,
            process::free_addr()?,
        );
        let log = run_dir.join("services.log");
        let mut adder = Process::start(
            "adder",
            &config.bin_dir.join("adder"),
            &[],
            &[
                ("DATABASE_URL", db.url.clone()),
                ("AMQP_URL", config.amqp_url.clone()),
                ("TALLY_QUEUE", queue.clone()),
                ("ADDER_GRPC_ADDR", grpc_addr.to_string()),
                ("ADDER_HTTP_ADDR", adder_http.to_string()),
                ("ADDER_DB_POOL", config.db_pool.to_string()),
                ("ADDER_RELAY_PACK", config.pack.to_string()),
                ("RUST_LOG", "warn".into()),
            ],
            &log,
        )?;
        adder
            .wait_ready(adder_http, "/readyz", READY_TIMEOUT)
            .await?;
        let mut stack = Self {
            config: config.clone(),
            db: Some(db),
            queue,
            sum_file: run_dir.join("data").join("sum.txt"),
            log,
            adder,
            totaler: None,
            adder_http,
            totaler_http,
            clients: Clients::connect(grpc_addr, config.grpc_connections).await?,
            broker,
            expected: 0,
            peak_mb: (0.0, 0.0),
        };
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

    async fn start_totaler(&mut self) -> anyhow::Result<()> {
        let mut totaler = Process::start(
            "totaler",
            &self.config.bin_dir.join("totaler"),
            &[],
            &[
                ("AMQP_URL", self.config.amqp_url.clone()),
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

    async fn stop_totaler(&mut self) -> anyhow::Result<()> {
        self.sample_memory();
        if let Some(totaler) = self.totaler.take() {
            totaler.stop().await?;
        }
        Ok(())
    }

    async fn warm_up(&mut self) -> anyhow::Result<()> {
        let done = grpc::saturate(&self.clients, 16, READY_TIMEOUT, 500, |_| (1, 0)).await;
        self.settle(&done).await?;
        Ok(())
    }

    /// Adds at saturation for the configured window, then waits until every
    /// acknowledged Add is counted.
    pub async fn saturation(&mut self) -> anyhow::Result<Saturation> {
        let cpu_before = cpu::Sample::take();
        let done = grpc::saturate(
            &self.clients,
            self.config.concurrency,
            self.config.duration(),
            MAX_CALLS,
            |i| ((i % 100) as i64, 1),
        )
        .await;
        let cpu = cpu::keyed(&cpu::Sample::take().cores_since(&cpu_before), false);
        let started = Instant::now() - done.elapsed;
        let counted_at = self.settle(&done).await?;
        self.sample_memory();
        Ok(Saturation {
            accepted_per_s: done.ok as f64 / done.elapsed.as_secs_f64(),
            durable_per_s: done.ok as f64 / (counted_at - started).as_secs_f64(),
            cpu,
        })
    }

    /// `rate` Adds of 1 per second; Add latency from the client, and Add ->
    /// counted from a 1 ms poll of `GET /sum` (see `counted_latencies`).
    pub async fn latency(&mut self) -> anyhow::Result<Latency> {
        let base = self.expected;
        let before = self.scrape_stages().await?;
        let (stop_poll, stopped) = oneshot::channel();
        let poller = tokio::spawn(poll_sum(self.totaler_http, stopped));
        let (stop_sampling, sampling_stopped) = oneshot::channel();
        let sampler = tokio::spawn(sample_rss(self.pids(), sampling_stopped));
        let cpu_before = cpu::Sample::take();
        let paced = grpc::paced(
            &self.clients,
            self.config.rate,
            self.config.latency_window(),
        )
        .await;
        let cpu = cpu::keyed(&cpu::Sample::take().cores_since(&cpu_before), true);
        let done = grpc::Saturation {
            ok: paced.samples.len() as u64,
            failed: paced.failed,
            acked_sum: paced.samples.len() as i128,
            ..grpc::Saturation::default()
        };
        let settled = self.settle(&done).await;
        let _ = stop_poll.send(());
        let _ = stop_sampling.send(());
        let observations = poller.await.context("GET /sum poller")??;
        let rss_mb = sampler.await.unwrap_or_default();
        settled?;
        let after = self.scrape_stages().await?;
        self.sample_memory();
        let mut add: Vec<f64> = paced.samples.iter().map(|s| ms(s.latency)).collect();
        let mut counted = counted_latencies(&paced.samples, &observations, base)?;
        Ok(Latency {
            achieved_per_s: paced.samples.len() as f64 / paced.elapsed.as_secs_f64(),
            add_p50_ms: percentile(&mut add, 0.50),
            add_p99_ms: percentile(&mut add, 0.99),
            counted_p50_ms: percentile(&mut counted, 0.50),
            counted_p99_ms: percentile(&mut counted, 0.99),
            rss_mb,
            stages: stage_quantiles(&before, &after),
            cpu,
        })
    }

    /// Both services' histograms, adder first.
    async fn scrape_stages(&self) -> anyhow::Result<(Snapshot, Snapshot)> {
        Ok((
            Snapshot::scrape(self.adder_http).await?,
            Snapshot::scrape(self.totaler_http).await?,
        ))
    }

    /// With the totaler stopped, queues a backlog of `drain_rows` rows (sum
    /// 1 each, of a source of its own), packed `pack` to a message as the
    /// relay packs a backlog, exactly as `limits::raw_consume` does; then
    /// starts the totaler and returns rows counted per second from its start.
    pub async fn drain(&mut self) -> anyhow::Result<f64> {
        self.stop_totaler().await?;
        let rows = self.config.drain_rows;
        let pack = self.config.pack as u64;
        let bound = Bound {
            messages: rows.div_ceil(pack),
            duration: self.config.settle(),
        };
        let queued = self
            .broker
            .publish(
                &self.queue,
                self.config.confirm_window,
                self.config.pack,
                bound,
            )
            .await;
        let (messages, _) = match queued {
            Ok(queued) => queued,
            Err(e) => {
                self.start_totaler().await?;
                return Err(e.context("queueing the backlog"));
            }
        };
        let done = grpc::Saturation {
            ok: messages * pack,
            acked_sum: i128::from(messages * pack),
            ..grpc::Saturation::default()
        };
        let started = Instant::now();
        self.start_totaler().await?;
        let counted_at = self.settle(&done).await?;
        Ok(done.ok as f64 / (counted_at - started).as_secs_f64())
    }

    /// `GET /sum` requests per second at the totaler, idle otherwise.
    pub async fn sum_gets(&mut self) -> anyhow::Result<f64> {
        let rate = http::load(
            self.totaler_http,
            "/sum",
            self.config.http_connections,
            self.config.duration(),
        )
        .await?;
        self.sample_memory();
        Ok(rate)
    }

    /// After a failed phase: waits until the total stops moving and takes it
    /// as the new expected total, so later phases still check exactly.
    pub async fn resync(&mut self) -> anyhow::Result<()> {
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
        let stopped_adder = self.adder.stop().await;
        self.broker.delete(&self.queue).await;
        if let Some(db) = self.db.take() {
            db.drop_now().await;
        }
        stopped_totaler?;
        stopped_adder
    }

    fn pids(&self) -> (u32, Option<u32>) {
        (self.adder.pid(), self.totaler.as_ref().map(Process::pid))
    }

    fn sample_memory(&mut self) {
        if let Ok(Memory { peak_mb, .. }) = self.adder.memory() {
            self.peak_mb.0 = self.peak_mb.0.max(peak_mb);
        }
        if let Some(Ok(Memory { peak_mb, .. })) = self.totaler.as_ref().map(Process::memory) {
            self.peak_mb.1 = self.peak_mb.1.max(peak_mb);
        }
    }

    /// Checks the load went through, waits for the total to reach the new
    /// expected value, and returns when it did.
    async fn settle(&mut self, done: &grpc::Saturation) -> anyhow::Result<Instant> {
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

/// Polls `GET /sum` until the total is `target`; fails if it passes it or
/// `timeout` elapses. Connection errors (a totaler starting) are retried.
async fn wait_total(addr: SocketAddr, target: i128, timeout: Duration) -> anyhow::Result<Instant> {
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

/// Observations `(when, total)` of every change of `GET /sum` until `stop`.
async fn poll_sum(
    addr: SocketAddr,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<Vec<(Instant, i128)>> {
    let mut connection = http::Connection::open(addr, "/sum").await?;
    let mut seen: Vec<(Instant, i128)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3600) {
        // One GET always follows the stop, so the final total is observed.
        let stopping = stop.try_recv().is_ok();
        let (_, body) = connection.get().await?;
        let total = http::parse_sum(&body)?;
        if seen.last().is_none_or(|(_, last)| *last != total) {
            seen.push((Instant::now(), total));
        }
        if stopping {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(seen)
}

/// p50 and p99 of every stage between two scrapes of both services.
fn stage_quantiles(
    before: &(Snapshot, Snapshot),
    after: &(Snapshot, Snapshot),
) -> Vec<(&'static str, f64)> {
    let mut figures = Vec::new();
    for (stages, before, after) in [
        (stages::ADDER, &before.0, &after.0),
        (stages::TOTALER, &before.1, &after.1),
    ] {
        for stage in stages {
            for (key, q) in [(stage.p50_key, 0.50), (stage.p99_key, 0.99)] {
                if let Some(ms) = after.quantile_ms_since(before, stage.series, q) {
                    figures.push((key, ms));
                }
            }
        }
    }
    figures
}

/// Highest resident memory of the processes every 250 ms until `stop`.
async fn sample_rss(pids: (u32, Option<u32>), mut stop: oneshot::Receiver<()>) -> (f64, f64) {
    let mut highest = (0.0f64, 0.0f64);
    loop {
        if let Ok(memory) = process::memory_of(pids.0) {
            highest.0 = highest.0.max(memory.rss_mb);
        }
        if let Some(Ok(memory)) = pids.1.map(process::memory_of) {
            highest.1 = highest.1.max(memory.rss_mb);
        }
        tokio::select! {
            _ = &mut stop => return highest,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Add -> counted for each sample. Every Add of the window adds 1 and
/// nothing else adds, so the total minus `base` is how many were counted;
/// the relay publishes in outbox id order and the totaler applies in queue
/// order, so the Add with the k-th smallest outbox id is counted when the
/// total first reaches `base + k`. (Exact but for rows whose commits finish
/// out of id order, which shifts a row by its neighbours' few microseconds.)
fn counted_latencies(
    samples: &[Sample],
    seen: &[(Instant, i128)],
    base: i128,
) -> anyhow::Result<Vec<f64>> {
    let mut by_id: Vec<&Sample> = samples.iter().collect();
    by_id.sort_by_key(|s| s.outbox_id);
    by_id
        .iter()
        .enumerate()
        .map(|(k, sample)| {
            let target = base + k as i128 + 1;
            let at = seen.partition_point(|(_, total)| *total < target);
            let (when, _) = seen
                .get(at)
                .with_context(|| format!("no GET /sum observation reached {target}"))?;
            Ok(ms(when.saturating_duration_since(sample.sent)))
        })
        .collect()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The `q` quantile (nearest rank) of `values`, sorting them; 0 when empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut values, 0.99), 99.0);
        assert_eq!(percentile(&mut values, 0.50), 50.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn each_add_is_counted_when_the_total_reaches_its_rank() {
        let t0 = Instant::now();
        let sample = |ms_due: u64, outbox_id| Sample {
            sent: t0 + Duration::from_millis(ms_due),
            latency: Duration::ZERO,
            outbox_id,
        };
        let samples = [sample(0, 10), sample(1, 11)];
        let seen = [
            (t0 + Duration::from_millis(5), 100),
            (t0 + Duration::from_millis(7), 101),
            (t0 + Duration::from_millis(9), 102),
        ];
        assert_eq!(
            counted_latencies(&samples, &seen, 100).unwrap(),
            vec![7.0, 8.0]
        );
    }
}
