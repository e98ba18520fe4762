//! The adder binary: parse config, start telemetry, bind, run until SIGTERM.
//! `adder republish` publishes cut batches again instead (its own
//! arguments, `adder republish --help`).

use clap::Parser;

use adder::{Config, Listeners, shutdown_signal, telemetry};

/// jemalloc, configured at build time (`.cargo/config.toml`) to give freed
/// pages back within about a second: glibc's malloc kept the memory of
/// closed connections for good.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "republish")
    {
        return republish().await;
    }
    let config = Config::load()?;
    let _traces = telemetry::init(config.log_format, &config.otel)?;
    // Many concurrent gRPC clients each hold a connection: lift the soft limit.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let listeners = Listeners::bind(&config).await?;
    adder::run(config, listeners, shutdown_signal()).await
}

/// `adder republish`: prints what it published, or fails naming why.
async fn republish() -> anyhow::Result<()> {
    let args =
        adder::republish::Args::parse_from(std::env::args_os().skip(1)).with_password_files()?;
    println!("{}", adder::republish::run(&args).await?);
    Ok(())
}
