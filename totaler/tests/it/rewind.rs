//! `totaler verify` against an outbox that went back in time: a standby
//! promoted after asynchronous replication, and a base backup restored,
//! each missing batches the ledger counted. Real adder (in-process, its
//! `DATABASE_URL` naming both servers), real totaler, private PostgreSQL
//! servers (`testkit::replicas`).

use std::{path::Path, time::Duration};

use clap::Parser;
use testkit::{Broker, amqp_url, eventually, free_port, replicas::Servers, unique_queue};
use tokio::{net::TcpListener, sync::oneshot};

use crate::support::{config, spawn_totaler, temp_dir};

/// An adder in this process on `url`, publishing to `queue`; stopped by
/// dropping the sender.
async fn spawn_adder(url: &str, queue: &str) -> (String, oneshot::Sender<()>) {
    let config = adder::Config::parse_from([
        "adder",
        "--database-url",
        url,
        "--amqp-url",
        &amqp_url(),
        "--queue",
        queue,
        "--db-pool",
        "4",
        "--relay-poll-ms",
        "200",
    ]);
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
    let endpoint = format!("http://{}", grpc.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(adder::run(config, adder::Listeners { grpc, http }, async {
        let _ = stopped.await;
    }));
    (endpoint, stop)
}

/// Sends Adds `a + 0` for each `a`, each retried (same request id) until
/// acknowledged; returns their sum.
async fn add_all(endpoint: &str, tag: &str, values: std::ops::Range<i64>) -> i128 {
    let client = eventually(Duration::from_secs(30), "the adder's gRPC", || async {
        proto::tally::v1::adder_client::AdderClient::connect(endpoint.to_owned())
            .await
            .ok()
    })
    .await;
    let mut sum = 0;
    for a in values {
        let request = |a| proto::tally::v1::AddRequest {
            a,
            b: 0,
            request_id: format!("{tag}-{a}"),
        };
        eventually(Duration::from_secs(60), "an Add acknowledged", || {
            let mut client = client.clone();
            async move { client.add(request(a)).await.ok() }
        })
        .await;
        sum += i128::from(a);
    }
    sum
}

async fn verify(sum_file: &Path, url: &str) -> totaler::verify::Findings {
    let args = totaler::verify::Args {
        sum_file: sum_file.to_path_buf(),
        database_urls: vec![url.to_owned()],
        in_flight_secs: 0,
    };
    totaler::verify::run(&args).await.expect("verify runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_the_batches_an_asynchronously_promoted_standby_lost() {
    let mut servers = Servers::new("rewind-standby").expect("a directory for the servers");
    let primary = servers.primary("primary", &[]).expect("a primary");
    let standby = servers
        .standby("standby", &primary)
        .expect("an asynchronous standby");
    let url = format!(
        "postgres://tally@127.0.0.1:{},127.0.0.1:{}/postgres",
        primary.port, standby.port
    );
    let (queue, dir) = (unique_queue("rewind-standby"), temp_dir("rewind-standby"));
    let broker = Broker::connect(&queue).await;
    let sum_file = dir.join("sum.txt");
    let totaler = spawn_totaler(config(&amqp_url(), &queue, &sum_file)).await;
    let (endpoint, stop) = spawn_adder(&url, &queue).await;
    let mut counted = add_all(&endpoint, "replicated", 1..11).await;
    wait_total(&totaler, counted).await;
    tokio::task::block_in_place(|| standby.stop()).expect("stop the standby");
    counted += add_all(&endpoint, "lost", 100..110).await;
    wait_total(&totaler, counted).await;
    let before = verify(&sum_file, &url).await;
    assert_eq!(before.discrepancies, 0, "{}", before.report);

    tokio::task::block_in_place(|| {
        primary.crash()?;
        standby.start()?;
        standby.promote()
    })
    .expect("promote the standby that missed the last Adds");
    counted += add_all(&endpoint, "after", 1000..1005).await;
    wait_total(&totaler, counted).await;
    let after = verify(&sum_file, &url).await;
    assert!(after.report.contains("REWOUND source"), "{}", after.report);
    assert!(after.discrepancies >= 1, "{}", after.report);
    drop(stop);
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_the_batches_a_restored_base_backup_lost() {
    let mut servers = Servers::new("rewind-backup").expect("a directory for the servers");
    let primary = servers.primary("primary", &[]).expect("a primary");
    let restore_port = free_port();
    let url = format!(
        "postgres://tally@127.0.0.1:{},127.0.0.1:{restore_port}/postgres",
        primary.port
    );
    let (queue, dir) = (unique_queue("rewind-backup"), temp_dir("rewind-backup"));
    let broker = Broker::connect(&queue).await;
    let sum_file = dir.join("sum.txt");
    let totaler = spawn_totaler(config(&amqp_url(), &queue, &sum_file)).await;
    let (endpoint, stop) = spawn_adder(&url, &queue).await;
    let mut counted = add_all(&endpoint, "backed-up", 1..11).await;
    wait_total(&totaler, counted).await;
    let backup =
        tokio::task::block_in_place(|| servers.backup("backup", &primary)).expect("a base backup");
    counted += add_all(&endpoint, "lost", 100..110).await;
    wait_total(&totaler, counted).await;
    let before = verify(&sum_file, &url).await;
    assert_eq!(before.discrepancies, 0, "{}", before.report);

    tokio::task::block_in_place(|| {
        primary.crash()?;
        servers
            .restored("restored", &backup, restore_port)
            .map(drop)
    })
    .expect("restore the base backup");
    counted += add_all(&endpoint, "after", 1000..1005).await;
    wait_total(&totaler, counted).await;
    let after = verify(&sum_file, &url).await;
    assert!(after.report.contains("REWOUND source"), "{}", after.report);
    drop(stop);
    totaler.stop().await;
    broker.delete().await;
}

async fn wait_total(totaler: &crate::support::TestTotaler, total: i128) {
    eventually(
        Duration::from_secs(30),
        "the totaler to count every acknowledged Add",
        || async { (totaler.sum().await == total).then_some(()) },
    )
    .await;
}
