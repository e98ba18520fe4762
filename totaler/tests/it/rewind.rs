//! `totaler verify` against an outbox that went back in time: a standby
//! promoted after asynchronous replication, and a base backup restored,
//! each missing batches the ledger counted. Real adder (in-process, its
//! `DATABASE_URL` naming both servers), real totaler, private PostgreSQL
//! servers (`testkit::replicas`).

use testkit::{Broker, amqp_url, free_port, replicas::Servers, unique_queue};

use crate::support::{add_all, config, spawn_adder, spawn_totaler, temp_dir, verify, wait_total};

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
