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
//! - `figure`: every figure, ratio and target, in one list.
//! - `round`: one round of every phase, recorded figure by figure.
//! - `limits`: the machine's limits.
//! - `tally`: the stack under test and its phases.
//! - `grpc`, `http`: the load generators; `broker`, `database`: the
//!   harness's own clients; `bare`: the bare servers; `process`: children
//!   (fresh databases, queue names, ports and child processes come from
//!   `testkit`).
//! - `cpu`: who used the cores during a load.
//! - `scale`: `--scale-out`, one to three adders behind HAProxy.
//! - `stages`: the services' own histograms, split into stages.
//! - `report`: medians, ratios, targets, the table and the JSON.
//! - `chart`: the SVG charts.

pub mod bare;
mod broker;
mod chart;
pub mod config;
mod cpu;
mod database;
mod figure;
mod grpc;
mod http;
mod limits;
mod process;
mod report;
mod round;
mod scale;
mod stages;
mod tally;

use std::{path::Path, time::Instant};

use anyhow::Context;
use serde_json::json;

pub use config::Config;

use crate::{figure::Figure, report::Medians, stages::Distribution, tally::Stack};

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
    if config.scale_out {
        return scale::run(&config, &run_dir).await;
    }
    let loadavg_before = loadavg();
    let started = Instant::now();
    progress(&format!(
        "starting adder and totaler ({})",
        run_dir.display()
    ));
    let mut stack = Stack::start(&config, &run_dir).await?;
    let mut rounds = Vec::with_capacity(config.repeats);
    let mut distributions: Vec<Distribution> = Vec::new();
    for round in 1..=config.repeats {
        let measured = round::measure(&config, &mut stack, &run_dir, round).await;
        merge(&mut distributions, &measured.distributions);
        rounds.push(measured.round);
    }
    let peaks = stack.peak_mb;
    // --idle-connections 0 skips the phase: its figures read "not measured"
    // (a rise over zero connections would be noise, not a figure).
    if let Some(last) = rounds.last_mut()
        && config.idle_connections > 0
    {
        let label = format!("{}/{}", config.repeats, config.repeats);
        round::measure_connections(&mut stack, &label, last).await;
    }
    let stopped = stack.stop().await;
    for round in &mut rounds {
        round.insert(Figure::AdderPeakRssMb, peaks.0);
        round.insert(Figure::TotalerPeakRssMb, peaks.1);
    }
    let medians = Medians::of(&rounds);
    println!("{}", report::table(&rounds, &medians));
    let meta = json!({
        "repeats": config.repeats,
        "duration_secs": config.duration_secs,
        "latency_secs": config.latency_secs,
        "rate": config.rate,
        "concurrency": config.concurrency,
        "grpc_connections": config.grpc_connections,
        "http_connections": config.http_connections,
        "idle_connections": config.idle_connections,
        "idle_settle_secs": config.idle_settle_secs,
        "drain_rows": config.drain_rows,
        "outbox_drain_rows": config.outbox_drain_rows.0.map(|(smaller, larger)| [smaller, larger]),
        "outbox_sql": config.outbox_sql.as_ref().map(|file| file.display().to_string()),
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
    let charts_dir = config.out.parent().unwrap_or(Path::new("."));
    match chart::write_all(charts_dir, &medians, &distributions) {
        Ok(written) => progress(&format!(
            "wrote {} charts in {}",
            written.len(),
            charts_dir.display()
        )),
        Err(e) => progress(&format!("charts FAILED: {e:#}")),
    }
    let _ = std::fs::remove_dir_all(run_dir.join("data"));
    progress(&format!(
        "wrote {} in {:.0} s",
        config.out.display(),
        started.elapsed().as_secs_f64()
    ));
    stopped
}

/// Adds each round's distribution of a stage to the run's.
fn merge(run: &mut Vec<Distribution>, round: &[Distribution]) {
    for distribution in round {
        match run
            .iter_mut()
            .find(|d| std::ptr::eq(d.stage, distribution.stage))
        {
            Some(known) => known.merge(distribution),
            None => run.push(distribution.clone()),
        }
    }
}

/// Drops a database of the run, saying so if it cannot.
async fn drop_database(db: testkit::database::Fresh) {
    if let Err(e) = db.drop_now().await {
        progress(&format!("could not drop a database: {e:#}"));
    }
}

pub(crate) fn progress(line: &str) {
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
