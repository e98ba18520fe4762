//! The fault suite as a command, for soak runs:
//! `cargo build --release -p adder -p totaler -p faults && target/release/faults --seconds 3600`.

use clap::Parser;

use faults::Options;

/// Runs Tally's real binaries under load while killing every component,
/// then checks that the total equals the sum of acknowledged Adds.
#[derive(Parser)]
#[command(name = "faults", version)]
struct Args {
    /// How long the load and faults run, in seconds.
    #[arg(long, env = "TALLY_FAULTS_SECONDS", default_value_t = 75)]
    seconds: u64,
    /// Seed of every random choice (printed; replays a run). Random when unset.
    #[arg(long, env = "TALLY_FAULTS_SEED")]
    seed: Option<u64>,
    /// Concurrent load workers.
    #[arg(long, env = "TALLY_FAULTS_WORKERS", default_value_t = 16)]
    workers: usize,
    /// Adds per second the load aims at, all workers together.
    #[arg(long, env = "TALLY_FAULTS_RATE", default_value_t = 800)]
    rate: u64,
    /// How long the backlog may take to drain at the end, in seconds.
    #[arg(long, env = "TALLY_FAULTS_SETTLE_SECONDS", default_value_t = 240)]
    settle_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = Options {
        seconds: args.seconds,
        seed: args.seed.unwrap_or_else(faults::rng::Rng::fresh_seed),
        workers: args.workers,
        rate: args.rate,
        settle_seconds: args.settle_seconds,
    };
    let report = faults::run(options).await?;
    println!("{report}");
    let problems = report.problems();
    anyhow::ensure!(
        problems.is_empty(),
        "the total is not exact: {}",
        problems.join("; ")
    );
    Ok(())
}
