//! The bench binary: parse config, then either run the harness or, when the
//! harness starts itself with a hidden subcommand, serve a bare server.

use bench::{
    bare,
    config::{Cli, Serve},
};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.serve {
        Some(Serve::BareTonic { addr }) => bare::tonic(addr).await,
        Some(Serve::BareWarp { addr }) => bare::warp(addr).await,
        None => {
            // Idle connections to both services need a descriptor each here.
            if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
                eprintln!("bench: could not raise the open-file limit: {e}");
            }
            bench::run(cli.config).await
        }
    }
}
