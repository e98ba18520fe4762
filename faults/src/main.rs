//! The fault suite as a command, for soak runs:
//! `cargo build --release -p adder -p totaler -p faults && target/release/faults --seconds 3600`
//! (`--cluster`: the cluster mode; `--failover`: the failover mode).

use clap::Parser;

use faults::{Finished, Options, Verdict};

/// Runs Tally's real binaries under load while killing every component,
/// then checks that the total equals the sum of acknowledged Adds.
#[derive(Parser)]
#[command(name = "faults", version)]
struct Args {
    #[command(flatten)]
    options: Options,
    /// Run the cluster mode instead: three RabbitMQ nodes, two adders
    /// behind HAProxy, two totalers on one file, nodes lost in turn.
    #[arg(long, conflicts_with = "failover")]
    cluster: bool,
    /// Run the failover mode instead: the outbox on three PostgreSQL
    /// members under Patroni (scripts/pg-cluster), the primary lost in turn.
    #[arg(long)]
    failover: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let failure = if args.cluster {
        verdict(faults::cluster::run(args.options).await?)
    } else if args.failover {
        verdict(faults::failover::run(args.options).await?)
    } else {
        verdict(faults::run(args.options).await?)
    };
    match failure {
        Some(failure) => anyhow::bail!(failure),
        None => Ok(()),
    }
}

/// Prints the report; what failed, if anything did.
fn verdict<R: Verdict>(finished: Finished<R>) -> Option<String> {
    println!("{}", finished.report);
    finished.failure()
}
