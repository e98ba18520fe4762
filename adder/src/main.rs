//! The adder binary: parse config, start telemetry, bind, run until SIGTERM.

use clap::Parser;

use adder::{Config, Listeners, shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _traces = telemetry::init(config.log_format, &config.otel)?;
    // Many concurrent gRPC clients each hold a connection: lift the soft limit.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let listeners = Listeners::bind(&config).await?;
    adder::run(config, listeners, shutdown_signal()).await
}
