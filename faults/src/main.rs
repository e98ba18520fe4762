//! The fault suite as a command, for soak runs:
//! `cargo build --release -p adder -p totaler -p faults && target/release/faults --seconds 3600`
//! (`--cluster`: the cluster mode; `--failover`: the failover mode).

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
    /// Concurrent id-less load workers (no request id; an Add counts only when it returned OK).
    #[arg(long, env = "TALLY_FAULTS_IDLESS_WORKERS", default_value_t = 16)]
    idless_workers: usize,
    /// Id-less Adds per second, all id-less workers together.
    #[arg(long, env = "TALLY_FAULTS_IDLESS_RATE", default_value_t = 600)]
    idless_rate: u64,
    /// ADDER_COMMIT_WRITERS of the adders (group-commit writers).
    #[arg(long, env = "TALLY_FAULTS_COMMIT_WRITERS", default_value_t = 8)]
    commit_writers: usize,
    /// How long the backlog may take to drain at the end, in seconds.
    #[arg(long, env = "TALLY_FAULTS_SETTLE_SECONDS", default_value_t = 240)]
    settle_seconds: u64,
    /// Acknowledged Adds per second of fault time the run must reach.
    #[arg(long, env = "TALLY_FAULTS_MIN_ACK_RATE", default_value_t = 200)]
    min_ack_rate: u64,
    /// The relay's confirm timeout the adders get, in seconds: the partition
    /// holds confirms 5 s longer.
    #[arg(
        long,
        env = "TALLY_FAULTS_CONFIRM_TIMEOUT_SECONDS",
        default_value_t = 4
    )]
    confirm_timeout_seconds: u64,
    /// Run the cluster mode instead: three RabbitMQ nodes, two adders
    /// behind HAProxy, two totalers on one file, nodes lost in turn.
    #[arg(long, conflicts_with = "failover")]
    cluster: bool,
    /// Run the failover mode instead: the outbox on three PostgreSQL
    /// members under Patroni (scripts/pg-cluster), the primary lost in turn.
    #[arg(long)]
    failover: bool,
    /// The totaler's documented HTTP header-read timeout in seconds.
    #[arg(
        long,
        env = "TALLY_FAULTS_HEADER_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    header_timeout_seconds: u64,
    /// Rows a broker outage leaves in the outbox (the BrokerOutageBacklog
    /// fault); soak runs use 1000000.
    #[arg(long, env = "TALLY_FAULTS_BACKLOG_ROWS", default_value_t = 200_000)]
    backlog_rows: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = Options {
        seconds: args.seconds,
        seed: args.seed.unwrap_or_else(faults::rng::Rng::fresh_seed),
        workers: args.workers,
        rate: args.rate,
        idless_workers: args.idless_workers,
        idless_rate: args.idless_rate,
        commit_writers: args.commit_writers,
        settle_seconds: args.settle_seconds,
        min_ack_rate: args.min_ack_rate,
        confirm_timeout_seconds: args.confirm_timeout_seconds,
        header_timeout_seconds: args.header_timeout_seconds,
        backlog_rows: args.backlog_rows,
    };
    let seed = options.seed;
    let problems = if args.cluster {
        let report = faults::cluster::run(options).await?;
        println!("{report}");
        report.problems()
    } else if args.failover {
        let report = faults::failover::run(options).await?;
        println!("{report}");
        report.problems()
    } else {
        let report = faults::run(options).await?;
        println!("{report}");
        report.problems()
    };
    anyhow::ensure!(
        problems.is_empty(),
        "seed {seed}: {} problems: {}",
        problems.len(),
        problems.join("; ")
    );
    Ok(())
}
