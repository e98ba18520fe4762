//! The fixed-rate phase: `rate` Adds of 1 per second, each timed by the
//! client; Add -> counted from a 1 ms poll of `GET /sum`; the services'
//! own stage histograms over the window; CPU by part and the highest RSS.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::oneshot;

use crate::{
    cpu,
    figure::Figure,
    grpc, http, process,
    stages::{self, Distribution, Snapshot},
};

use super::{
    Stack,
    quantiles::{counted_latencies, ms, percentile},
    stack::POLL,
};

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
    /// The services' own stage quantiles over the window (`stages`).
    pub stages: Vec<(Figure, f64)>,
    /// What each stage observed over the window, for the charts.
    pub distributions: Vec<Distribution>,
    /// Cores each part kept busy during the window (`cpu::figures`).
    pub cpu: Vec<(Figure, f64)>,
}

impl Stack {
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
        let cpu = cpu::figures(&cpu::Sample::take().cores_since(&cpu_before), true);
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
            distributions: distributions(&before, &after),
            cpu,
        })
    }
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
) -> Vec<(Figure, f64)> {
    let mut figures = Vec::new();
    for (stages, before, after) in [
        (stages::ADDER, &before.0, &after.0),
        (stages::TOTALER, &before.1, &after.1),
    ] {
        for stage in stages {
            for (figure, q) in [(stage.p50, 0.50), (stage.p99, 0.99)] {
                if let Some(ms) = after.quantile_ms_since(before, stage.series, q) {
                    figures.push((figure, ms));
                }
            }
        }
    }
    figures
}

/// What every stage observed between two scrapes of both services.
fn distributions(before: &(Snapshot, Snapshot), after: &(Snapshot, Snapshot)) -> Vec<Distribution> {
    let adder = stages::ADDER
        .iter()
        .map(|stage| (stage, &before.0, &after.0));
    let totaler = stages::TOTALER
        .iter()
        .map(|stage| (stage, &before.1, &after.1));
    adder
        .chain(totaler)
        .filter_map(|(stage, before, after)| {
            Some(Distribution {
                stage,
                buckets: after.buckets_ms_since(before, stage.series)?,
            })
        })
        .collect()
}

/// Highest resident memory of the processes every 250 ms until `stop`.
async fn sample_rss(
    pids: (Option<u32>, Option<u32>),
    mut stop: oneshot::Receiver<()>,
) -> (f64, f64) {
    let mut highest = (0.0f64, 0.0f64);
    loop {
        if let Some(Ok(memory)) = pids.0.map(process::memory_of) {
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
