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
        None => bench::run(cli.config).await,
    }
}
