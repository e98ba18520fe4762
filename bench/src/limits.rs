//! The machine's limits, each measured the way Tally uses the resource:
//! persistent publishes with pipelined confirms on a quorum queue, a raw
//! consume of a backlog, the adder's INSERT at its pool size, the ledger's
//! atomic file update in the sum file's directory, and bare tonic and warp
//! servers under the same load generators as the services.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;

use testkit::{database::Fresh, free_addr, queue_name};

use crate::{
    broker::{Bound, Broker},
    config::Config,
    database,
    grpc::{self, Clients},
    http,
    process::Process,
};

/// Most updates one file-limit window makes.
const MAX_FILE_UPDATES: u64 = 1_000_000;
/// Most calls one bare-tonic window sends.
const MAX_CALLS: u64 = 50_000_000;
/// How long a bare server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Persistent publishes/s, pipelined confirms, on a fresh quorum queue, one
/// row per message: the broker's message rate.
pub async fn broker_confirms(config: &Config) -> anyhow::Result<f64> {
    let broker = Broker::connect(config.amqp_url()).await?;
    let queue = queue_name("bench", "confirms");
    broker.declare(&queue).await?;
    let bound = Bound {
        messages: u64::MAX,
        duration: config.duration(),
    };
    let published = broker
        .publish(&queue, config.confirm_window, 1, bound)
        .await;
    broker.delete(&queue).await;
    let (acked, elapsed) = published?;
    Ok(acked as f64 / elapsed.as_secs_f64())
}

/// Rows/s of a plain consumer draining a backlog of `drain_rows` rows,
/// packed `pack` to a message (the very backlog `Stack::drain` gives the
/// totaler): it receives and acks, and neither decodes nor writes.
pub async fn raw_consume(config: &Config) -> anyhow::Result<f64> {
    let broker = Broker::connect(config.amqp_url()).await?;
    let queue = queue_name("bench", "consume");
    broker.declare(&queue).await?;
    let result = async {
        let bound = Bound {
            messages: config.drain_rows.div_ceil(config.pack as u64),
            duration: config.settle(),
        };
        let (queued, _) = broker
            .publish(&queue, config.confirm_window, config.pack, bound)
            .await?;
        let elapsed = broker
            .consume(
                &queue,
                queued,
                config.prefetch,
                config.batch_size,
                Duration::from_secs(30),
            )
            .await?;
        anyhow::Ok((queued * config.pack as u64) as f64 / elapsed.as_secs_f64())
    }
    .await;
    broker.delete(&queue).await;
    result
}

/// Committed single-row INSERTs/s at the adder's pool size, then one
/// client's INSERT latency (the floor under an Add's latency), on a fresh
/// database.
pub async fn pg_inserts(config: &Config) -> anyhow::Result<database::Inserts> {
    let fresh = Fresh::create(config.database_url(), "tally_bench_limit").await?;
    let result = database::inserts(&fresh.url, config.db_pool, config.duration()).await;
    crate::drop_database(fresh).await;
    result
}

/// Atomic file updates/s in `dir`: write a temp file, fsync it, rename it
/// over the target, fsync the directory, as the ledger does.
pub async fn file_updates(dir: &Path, duration: Duration) -> anyhow::Result<f64> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || file_updates_blocking(&dir, duration))
        .await
        .context("file update task")?
}

fn file_updates_blocking(dir: &PathBuf, duration: Duration) -> anyhow::Result<f64> {
    let target = dir.join("limit.txt");
    let tmp = dir.join("limit.txt.tmp");
    let started = Instant::now();
    let mut updates = 0u64;
    while updates < MAX_FILE_UPDATES && started.elapsed() < duration {
        let mut file = File::create(&tmp)?;
        write!(
            file,
            "{updates}\ntally-ledger v1\nsource 00000000-0000-0000-0000-000000000000 {updates}\n"
        )?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()?;
        updates += 1;
    }
    let rate = updates as f64 / started.elapsed().as_secs_f64();
    let _ = fs::remove_file(&target);
    Ok(rate)
}

/// Calls/s of a bare tonic Adder in its own process, under the Add load.
pub async fn bare_tonic(config: &Config, log: &Path) -> anyhow::Result<f64> {
    let addr = free_addr()?;
    let server = start_self("bare-tonic", &addr.to_string(), log)?;
    let result = async {
        let clients = wait_for_tonic(addr, config.grpc_connections).await?;
        clients_warm(&clients).await;
        let done = grpc::saturate(
            &clients,
            config.concurrency,
            config.duration(),
            MAX_CALLS,
            |i| (i as i64, 1),
        )
        .await;
        anyhow::Ok(done.ok as f64 / done.elapsed.as_secs_f64())
    }
    .await;
    server.stop().await?;
    result
}

/// GETs/s of a bare warp server in its own process, under the GET load.
pub async fn bare_warp(config: &Config, log: &Path) -> anyhow::Result<f64> {
    let addr = free_addr()?;
    let mut server = start_self("bare-warp", &addr.to_string(), log)?;
    let result = async {
        server.wait_ready(addr, "/sum", START_TIMEOUT).await?;
        http::load(addr, "/sum", config.http_connections, config.duration()).await
    }
    .await;
    server.stop().await?;
    result
}

fn start_self(command: &str, addr: &str, log: &Path) -> anyhow::Result<Process> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    Process::start(command, &exe, &[command, "--addr", addr], &[], log)
}

async fn wait_for_tonic(addr: std::net::SocketAddr, connections: usize) -> anyhow::Result<Clients> {
    let started = Instant::now();
    loop {
        match Clients::connect(addr, connections).await {
            Ok(clients) => return Ok(clients),
            Err(e) if started.elapsed() > START_TIMEOUT => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn clients_warm(clients: &Clients) {
    let _ = grpc::saturate(clients, 8, Duration::from_millis(200), 1_000, |_| (1, 1)).await;
}
