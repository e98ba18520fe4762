//! The scale-out measurement (`bench --scale-out`): the same saturating
//! load on one database and one totaler, to one adder directly (the
//! baseline) and through HAProxy to one, two and three adders (each with
//! its default group-commit writers, then with the writers of one adder
//! split among them); per layout,
//! durable Adds/s and the cores and µs per Add each part spent, medians of
//! `repeats` rounds with the layouts interleaved. On two cores the absolute
//! figures are bound by the machine: what it shows is whether the cost per
//! Add of each part stays flat as adders are added. It replaces the usual
//! run; the table goes to stdout and `<work dir>/scale.md`.
//!
//! With `--outboxes K` (K > 1) it also runs one adder directly and two
//! behind HAProxy on K fresh outbox databases (on the same server, the
//! adders' `DATABASE_URL` listing all K): what K = 1 against K databases
//! costs per Add in PostgreSQL CPU and commits, whose sum over the K
//! databases is shown.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use testkit::{
    balancer::{Backend, Balancer},
    database::Fresh,
    free_addr, queue_name,
};

use crate::{
    broker::Broker, config::Config, cpu, grpc, grpc::Clients, process::Process, progress,
    tally::wait_total,
};

/// Adders, outbox databases, whether the load goes through HAProxy, and whether the
/// deployment's group-commit writers are split among the adders (each
/// gets `ADDER_COMMIT_WRITERS` = a quarter of its pool / adders) rather
/// than each adder having its own default share.
#[derive(Debug, Clone, Copy)]
struct Layout {
    adders: usize,
    balanced: bool,
    split_writers: bool,
    databases: usize,
}

const fn layout(adders: usize, balanced: bool, split_writers: bool) -> Layout {
    Layout {
        adders,
        balanced,
        split_writers,
        databases: 1,
    }
}

/// The layouts of this run: [`LAYOUTS`], then with `--outboxes` K > 1 one
/// adder directly and two behind HAProxy on K databases.
fn layouts(config: &Config) -> Vec<Layout> {
    let mut layouts = LAYOUTS.to_vec();
    if config.outboxes > 1 {
        for base in [layout(1, false, false), layout(2, true, false)] {
            layouts.push(Layout {
                databases: usize::from(config.outboxes),
                ..base
            });
        }
    }
    layouts
}

const LAYOUTS: [Layout; 6] = [
    layout(1, false, false),
    layout(1, true, false),
    layout(2, true, false),
    layout(3, true, false),
    layout(2, true, true),
    layout(3, true, true),
];

/// The parts a row shows, as `cpu::PARTS` names them.
const PARTS: [&str; 6] = [
    "adder", "postgres", "rabbitmq", "totaler", "haproxy", "bench",
];

/// One layout's round: durable Adds/s and each part's cores.
#[derive(Debug, Clone)]
struct Measured {
    durable_per_s: f64,
    /// PostgreSQL commits per acknowledged Add (group commits and the relay's).
    commits_per_add: f64,
    cores: Vec<(&'static str, f64)>,
}

const READY: Duration = Duration::from_secs(60);

/// Runs every layout `config.repeats` times and prints the table.
pub async fn run(config: &Config, run_dir: &Path) -> anyhow::Result<()> {
    let layouts = layouts(config);
    let mut rounds: Vec<Vec<Measured>> = vec![Vec::new(); layouts.len()];
    for round in 1..=config.repeats {
        for (i, layout) in layouts.iter().enumerate() {
            progress(&format!("scale-out round {round}: {layout:?}"));
            let dir = run_dir.join(format!("scale-{round}-{i}"));
            std::fs::create_dir_all(dir.join("data"))?;
            rounds[i].push(measure(config, *layout, &dir).await?);
        }
    }
    let table = table(&layouts, &rounds);
    print!("{table}");
    let path = config.work_dir.join("scale.md");
    std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Starts the layout, warms it up, saturates it once and stops it.
async fn measure(config: &Config, layout: Layout, dir: &Path) -> anyhow::Result<Measured> {
    let mut dbs = Vec::new();
    for _ in 0..layout.databases {
        dbs.push(Fresh::create(config.database_url(), "tally_bench_scale").await?);
    }
    let urls: Vec<String> = dbs.iter().map(|db| db.url.clone()).collect();
    let queue = queue_name("bench", "scale");
    let broker = Broker::connect(config.amqp_url()).await?;
    broker.declare(&queue).await?;
    let log = dir.join("services.log");
    let mut adders = Vec::new();
    let mut backends = Vec::new();
    let writers = (config.db_pool as usize / 4).max(1);
    let writers = match layout.split_writers {
        true => (writers / layout.adders).max(1),
        false => writers,
    };
    for i in 0..layout.adders {
        let (grpc, http) = (free_addr()?, free_addr()?);
        let env = [
            ("ADDER_COMMIT_WRITERS", writers.to_string()),
            ("DATABASE_URL", urls.join(" ")),
            ("AMQP_URL", config.amqp_url().to_owned()),
            ("TALLY_QUEUE", queue.clone()),
            ("ADDER_GRPC_ADDR", grpc.to_string()),
            ("ADDER_HTTP_ADDR", http.to_string()),
            ("ADDER_DB_POOL", config.db_pool.to_string()),
            ("ADDER_RELAY_PACK", config.pack.to_string()),
            ("RUST_LOG", "warn".into()),
        ];
        let mut adder = Process::start(
            &format!("adder-{}", i + 1),
            &config.bin_dir.join("adder"),
            &[],
            &env,
            &log,
        )?;
        adder.wait_ready(http, "/readyz", READY).await?;
        adders.push(adder);
        backends.push(Backend { grpc, http });
    }
    let totaler_http = free_addr()?;
    let mut totaler = Process::start(
        "totaler",
        &config.bin_dir.join("totaler"),
        &[],
        &[
            ("AMQP_URL", config.amqp_url().to_owned()),
            ("TALLY_QUEUE", queue.clone()),
            ("SUM_FILE", dir.join("data/sum.txt").display().to_string()),
            ("TOTALER_HTTP_ADDR", totaler_http.to_string()),
            ("TOTALER_PREFETCH", config.prefetch.to_string()),
            ("TOTALER_BATCH_SIZE", config.batch_size.to_string()),
            ("RUST_LOG", "warn".into()),
        ],
        &log,
    )?;
    totaler.wait_ready(totaler_http, "/readyz", READY).await?;
    let balancer = match layout.balanced {
        true => Some(Balancer::start(dir, &backends).await?),
        false => None,
    };
    let target: SocketAddr = match &balancer {
        Some(balancer) => balancer.grpc().parse()?,
        None => backends[0].grpc,
    };
    let measured = saturate(config, target, totaler_http, &urls).await;
    drop(balancer);
    totaler.stop().await?;
    for adder in adders {
        adder.stop().await?;
    }
    broker.delete(&queue).await;
    for db in dbs {
        crate::drop_database(db).await;
    }
    measured
}

/// A warm-up, then the saturating window; durable Adds/s is timed to the
/// moment `GET /sum` counts every acknowledged Add.
async fn saturate(
    config: &Config,
    target: SocketAddr,
    totaler: SocketAddr,
    databases: &[String],
) -> anyhow::Result<Measured> {
    let clients = Clients::connect(target, config.grpc_connections).await?;
    let warm = grpc::saturate(&clients, 16, READY, 500, |_| (1, 0)).await;
    anyhow::ensure!(
        warm.failed == 0,
        "warm-up Adds failed: {:?}",
        warm.first_error
    );
    wait_total(totaler, warm.acked_sum, config.settle()).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let commits_before = commits(databases).await?;
    let before = cpu::Sample::take();
    let done = grpc::saturate(
        &clients,
        config.concurrency,
        config.duration(),
        50_000_000,
        |i| ((i % 100) as i64, 1),
    )
    .await;
    let cores = cpu::Sample::take().cores_since(&before);
    anyhow::ensure!(
        done.failed == 0,
        "{} Adds failed: {:?}",
        done.failed,
        done.first_error
    );
    let started = Instant::now() - done.elapsed;
    let counted = wait_total(totaler, warm.acked_sum + done.acked_sum, config.settle()).await?;
    // The statistics collector reports at most every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let commits = commits(databases).await? - commits_before;
    Ok(Measured {
        durable_per_s: done.ok as f64 / (counted - started).as_secs_f64(),
        commits_per_add: commits as f64 / done.ok.max(1) as f64,
        cores,
    })
}

/// Transactions committed so far in all of `databases`.
async fn commits(databases: &[String]) -> anyhow::Result<i64> {
    let mut total = 0;
    for url in databases {
        total += crate::database::commits(url).await?;
    }
    Ok(total)
}

/// The Markdown table: per layout the medians of Adds/s, and per part its
/// cores and µs per Add.
fn table(layouts: &[Layout], rounds: &[Vec<Measured>]) -> String {
    let mut text = String::from("| layout | durable Adds/s | commits per Add |");
    for part in PARTS {
        text.push_str(&format!(" {part} cores (µs/Add) |"));
    }
    text.push_str("\n|---|---|---|");
    text.push_str(&"---|".repeat(PARTS.len()));
    text.push('\n');
    for (layout, measured) in layouts.iter().zip(rounds) {
        let rate = median(measured.iter().map(|m| m.durable_per_s).collect());
        let name = match (layout.balanced, layout.split_writers) {
            (false, _) => "1 adder, direct".to_owned(),
            (true, false) => format!("{} adder(s) behind HAProxy", layout.adders),
            (true, true) => format!(
                "{} adders behind HAProxy, commit writers split",
                layout.adders
            ),
        };
        let name = match layout.databases {
            1 => name,
            k => format!("{name}, {k} outbox databases"),
        };
        let commits = median(measured.iter().map(|m| m.commits_per_add).collect());
        text.push_str(&format!("| {name} | {rate:.0} | {commits:.3} |"));
        for part in PARTS {
            let cores = median(
                measured
                    .iter()
                    .map(|m| {
                        m.cores
                            .iter()
                            .find(|(p, _)| *p == part)
                            .map_or(0.0, |c| c.1)
                    })
                    .collect(),
            );
            text.push_str(&format!(" {cores:.2} ({:.1}) |", cores / rate * 1e6));
        }
        text.push('\n');
    }
    text
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
