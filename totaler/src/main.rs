//! The totaler binary: parse config, start telemetry, bind, run until SIGTERM.
//! A corrupt, missing or replaced ledger ends it with a non-zero exit and
//! the reason. `totaler verify` runs the audit instead, `totaler dlq` the
//! dead-letter commands.

use anyhow::Context;
use tokio::net::TcpListener;

use totaler::{
    Config,
    config::Command,
    dlq::{self, Dlq},
    shutdown_signal, telemetry,
};

/// jemalloc, configured at build time (`.cargo/config.toml`) to give freed
/// pages back within about a second: glibc's malloc kept the memory of
/// closed connections for good.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load()?;
    let _traces = telemetry::init(config.log_format, &config.otel)?;
    match &config.command {
        Some(Command::Verify(args)) => return verify(args).await,
        Some(Command::Dlq(command)) => return dlq(&config, command).await,
        None => {}
    }
    // GET /sum must hold 15,000 keep-alive connections: lift the soft limit.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let result = totaler::run(config, listener, shutdown_signal()).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "totaler stopped");
    }
    result
}

async fn verify(args: &totaler::verify::Args) -> anyhow::Result<()> {
    let findings = totaler::verify::run(args).await?;
    print!("{}", findings.report);
    if findings.discrepancies > 0 {
        println!("verify: {} discrepancies", findings.discrepancies);
        std::process::exit(1);
    }
    println!("verify: OK");
    Ok(())
}

async fn dlq(config: &Config, command: &Dlq) -> anyhow::Result<()> {
    let target = dlq::Target {
        amqp_url: &config.amqp_url,
        queue: &config.queue,
    };
    match command {
        Dlq::List(args) => print!("{}", dlq::list(target, args).await?),
        Dlq::Replay(args) => {
            let replayed = dlq::replay(target, args).await?;
            println!(
                "replayed {} message(s) to {}; {} left in {}",
                replayed.moved,
                config.queue,
                replayed.left,
                proto::topology::dead_letter_queue(&config.queue)
            );
        }
    }
    Ok(())
}
