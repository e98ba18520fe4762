//! The totaler binary: parse config, start telemetry, bind, run until SIGTERM.
//! A corrupt, missing or replaced ledger ends it with a non-zero exit and
//! the reason. `totaler verify` runs the audit instead.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

use totaler::{Config, config::Command, shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _traces = telemetry::init(config.log_format, &config.otel)?;
    if let Some(Command::Verify(args)) = &config.command {
        let findings = totaler::verify::run(args).await?;
        print!("{}", findings.report);
        if findings.discrepancies > 0 {
            println!("verify: {} discrepancies", findings.discrepancies);
            std::process::exit(1);
        }
        println!("verify: OK");
        return Ok(());
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
