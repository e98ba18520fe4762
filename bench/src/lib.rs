//! Tally's benchmark harness: in one run on one machine, the limits of what
//! Tally is built on and Tally's own figures, side by side, each measured
//! `repeats` times with the median reported. Progress goes to stderr, a
//! Markdown table to stdout, everything to a JSON file.
//!
//! It builds nothing: `scripts/bench` builds the release binaries first.
//! It only talks to 127.0.0.1 (and the servers of `DATABASE_URL` and
//! `AMQP_URL`), on databases and queues of its own, and every loop in it is
//! bounded in count and in time.
//!
//! # Layout
//! - `config`: flags and environment ([`Config`]).
//! - `limits`: the machine's limits.
//! - `tally`: the stack under test and its figures.
//! - `grpc`, `http`: the load generators; `broker`, `database`: the
//!   harness's own clients; `bare`: the bare servers; `process`: children.
//! - `cpu`: who used the cores during a load.
//! - `stages`: the services' own histograms, split into stages.
//! - `report`: medians, ratios, targets, the table and the JSON.

pub mod bare;
pub mod broker;
pub mod config;
pub mod cpu;
pub mod database;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod process;
pub mod report;
pub mod stages;
pub mod tally;

use std::{future::Future, path::Path, time::Instant};

use anyhow::Context;
use serde_json::json;

pub use config::Config;

use crate::{report::Round, tally::Stack};

/// Runs every measurement `repeats` times, prints the table and writes the JSON.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = config.effective();
    let run_dir = config
        .work_dir
        .join(format!("run-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(run_dir.join("data"))
        .with_context(|| format!("creating {}", run_dir.display()))?;
    for binary in ["adder", "totaler"] {
        let path = config.bin_dir.join(binary);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: build it with `cargo build --release -p adder -p totaler`",
            path.display()
        );
    }
    let loadavg_before = loadavg();
    let started = Instant::now();
    progress(&format!(
        "starting adder and totaler ({})",
        run_dir.display()
    ));
    let mut stack = Stack::start(&config, &run_dir).await?;
    let mut rounds = Vec::with_capacity(config.repeats);
    for round in 1..=config.repeats {
        rounds.push(measure_round(&config, &mut stack, &run_dir, round).await);
    }
    let peaks = stack.peak_mb;
    let stopped = stack.stop().await;
    for round in &mut rounds {
        round.insert("adder_peak_rss_mb", peaks.0);
        round.insert("totaler_peak_rss_mb", peaks.1);
    }
    let medians = report::medians(&rounds);
    println!("{}", report::table(&rounds, &medians));
    let meta = json!({
        "repeats": config.repeats,
        "duration_secs": config.duration_secs,
        "latency_secs": config.latency_secs,
        "rate": config.rate,
        "concurrency": config.concurrency,
        "grpc_connections": config.grpc_connections,
        "http_connections": config.http_connections,
        "drain_rows": config.drain_rows,
        "confirm_window": config.confirm_window,
        "db_pool": config.db_pool,
        "prefetch": config.prefetch,
        "batch_size": config.batch_size,
        "quick": config.quick,
        "nproc": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "elapsed_secs": started.elapsed().as_secs_f64(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    write_json(&config.out, &report::json(&rounds, &medians, meta))?;
    let _ = std::fs::remove_dir_all(run_dir.join("data"));
    progress(&format!(
        "wrote {} in {:.0} s",
        config.out.display(),
        started.elapsed().as_secs_f64()
    ));
    stopped
}

async fn measure_round(config: &Config, stack: &mut Stack, run_dir: &Path, round: usize) -> Round {
    let label = format!("{round}/{}", config.repeats);
    let mut r = Round::new();
    if !config.skip_limits {
        measure_limits(config, stack, run_dir, &label, &mut r).await;
    }
    measure_tally(stack, &label, &mut r).await;
    r
}

async fn measure_limits(
    config: &Config,
    stack: &Stack,
    run_dir: &Path,
    label: &str,
    r: &mut Round,
) {
    let log = run_dir.join("bare.log");
    record(
        r,
        label,
        "broker_confirm_per_s",
        limits::broker_confirms(config),
    )
    .await;
    record(r, label, "raw_consume_per_s", limits::raw_consume(config)).await;
    progress(&format!("[{label}] measuring pg_insert_tps"));
    match limits::pg_inserts(config).await {
        Ok(pg) => {
            r.insert("pg_insert_tps", pg.tps);
            r.insert("pg_commit_p50_ms", pg.single_p50_ms);
            r.insert("pg_commit_p99_ms", pg.single_p99_ms);
            progress(&format!(
                "[{label}] pg_insert_tps: {:.0}; one client's INSERT p50 {:.2} ms p99 {:.2} ms",
                pg.tps, pg.single_p50_ms, pg.single_p99_ms
            ));
        }
        Err(e) => progress(&format!("[{label}] pg_insert_tps FAILED: {e:#}")),
    }
    let sum_dir = stack.sum_dir();
    let file = limits::file_updates(&sum_dir, config.duration());
    record(r, label, "file_updates_per_s", file).await;
    record(
        r,
        label,
        "bare_tonic_calls_per_s",
        limits::bare_tonic(config, &log),
    )
    .await;
    record(
        r,
        label,
        "bare_warp_get_per_s",
        limits::bare_warp(config, &log),
    )
    .await;
}

async fn measure_tally(stack: &mut Stack, label: &str, r: &mut Round) {
    match stack.saturation().await {
        Ok(s) => {
            r.insert("e2e_adds_per_s", s.durable_per_s);
            r.insert("add_accepted_per_s", s.accepted_per_s);
            for &(key, value) in &s.cpu {
                r.insert(key, value);
            }
            progress(&format!(
                "[{label}] e2e_adds_per_s: {:.0} (accepted {:.0}/s)",
                s.durable_per_s, s.accepted_per_s
            ));
        }
        Err(e) => failed(stack, label, "e2e_adds_per_s", e).await,
    }
    match stack.latency().await {
        Ok(l) => {
            for (key, value) in [
                ("latency_rate_per_s", l.achieved_per_s),
                ("add_p50_ms", l.add_p50_ms),
                ("add_p99_ms", l.add_p99_ms),
                ("add_to_counted_p50_ms", l.counted_p50_ms),
                ("add_to_counted_p99_ms", l.counted_p99_ms),
                ("adder_rss_mb", l.rss_mb.0),
                ("totaler_rss_mb", l.rss_mb.1),
            ] {
                r.insert(key, value);
            }
            for &(key, value) in l.stages.iter().chain(&l.cpu) {
                r.insert(key, value);
            }
            progress(&format!(
                "[{label}] at {:.0}/s: Add p50 {:.2} ms p99 {:.2} ms; Add->counted p50 {:.2} ms p99 {:.2} ms; RSS adder {:.1} MiB totaler {:.1} MiB",
                l.achieved_per_s,
                l.add_p50_ms,
                l.add_p99_ms,
                l.counted_p50_ms,
                l.counted_p99_ms,
                l.rss_mb.0,
                l.rss_mb.1
            ));
            progress(&format!(
                "[{label}] stages: {}",
                l.stages
                    .iter()
                    .map(|(key, ms)| format!("{key} {ms:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Err(e) => failed(stack, label, "latency", e).await,
    }
    match stack.drain().await {
        Ok(rate) => {
            r.insert("drain_per_s", rate);
            progress(&format!("[{label}] drain_per_s: {rate:.0}"));
        }
        Err(e) => failed(stack, label, "drain_per_s", e).await,
    }
    record(r, label, "sum_get_per_s", stack.sum_gets()).await;
}

async fn record(
    round: &mut Round,
    label: &str,
    key: &'static str,
    measured: impl Future<Output = anyhow::Result<f64>>,
) {
    progress(&format!("[{label}] measuring {key}"));
    match measured.await {
        Ok(value) => {
            round.insert(key, value);
            progress(&format!("[{label}] {key}: {}", report::number(value)));
        }
        Err(e) => progress(&format!("[{label}] {key} FAILED: {e:#}")),
    }
}

async fn failed(stack: &mut Stack, label: &str, what: &str, error: anyhow::Error) {
    progress(&format!("[{label}] {what} FAILED (not counted): {error:#}"));
    if let Err(e) = stack.resync().await {
        progress(&format!("[{label}] resync failed: {e:#}"));
    }
}

fn progress(line: &str) {
    eprintln!("bench: {line}");
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn write_json(path: &Path, document: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(document)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}
