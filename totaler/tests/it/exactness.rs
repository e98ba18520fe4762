//! The total stays exact whatever happens to the totaler's disk, file or
//! input: a stop while the disk refuses the ledger acks nothing, a ledger
//! that vanishes stops the totaler instead of restarting at 0, forged and
//! oversized messages are dead-lettered, and a version 1 ledger carries over.

use std::{process::Command, time::Duration};

use testkit::{Broker, free_port};
use uuid::Uuid;

use crate::support::{
    config, file_total, get, message, pack, part_message, settle, spawn_binary, spawn_totaler,
    temp_dir,
};

#[tokio::test]
async fn a_stop_while_the_disk_refuses_the_ledger_leaves_the_batch_unacked() {
    let queue = testkit::unique_queue("full-stop");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("full-stop").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    // A directory where the temp file must go fails every update, as a full
    // disk does.
    let blocker = path.with_file_name("sum.txt.tmp");
    std::fs::create_dir(&blocker).expect("create the blocker");
    broker.publish(&message(Uuid::new_v4(), 1, 9)).await;
    testkit::eventually(
        Duration::from_secs(20),
        "the ledger error to show",
        || async {
            let (_, metrics) = get(totaler.http, "/metrics").await?;
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("totaler_ledger_errors_total "))
                .filter(|n| *n != "0")
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(
        broker.count(&queue).await,
        0,
        "the message is delivered, unacked"
    );
    totaler.stop().await;
    testkit::eventually(
        Duration::from_secs(10),
        "the unacked message back in the queue",
        || async { (broker.count(&queue).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(file_total(&path), 0, "never applied");
    std::fs::remove_dir(&blocker).expect("remove the blocker");
    let again = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    settle(&broker, "the sum to be counted after all", async || {
        again.sum().await == 9
    })
    .await;
    again.stop().await;
    assert_eq!(broker.count(&queue).await, 0, "acked once applied");
    assert_eq!(file_total(&path), 9);
    broker.delete().await;
}

#[tokio::test]
async fn a_ledger_deleted_under_the_running_totaler_stops_it_naming_the_file() {
    let queue = testkit::unique_queue("vanish");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("vanish").join("sum.txt");
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 42)).await;
    let mut child = spawn_binary(&queue, &path, free_port(), &[]);
    testkit::eventually(Duration::from_secs(20), "the first sum on disk", || async {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|_| file_total(&path) == 42)
    })
    .await;
    std::fs::remove_file(&path).expect("delete the ledger");
    broker.publish(&message(source, 2, 1)).await;
    let mut exited = None;
    for _ in 0..200 {
        exited = child.try_wait().expect("poll the totaler");
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the totaler kept running for 20 s after its ledger was deleted");
    };
    assert!(!status.success(), "a non-zero exit");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(
        stderr.contains(&path.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(!path.exists(), "not started again from 0");
    testkit::eventually(
        Duration::from_secs(10),
        "the second sum back in the queue",
        || async { (broker.count(&queue).await == 1).then_some(()) },
    )
    .await;

    // Restarted as an orchestrator would: still refused, the lock file is there.
    let restarted = spawn_binary(&queue, &path, free_port(), &[]);
    let output = tokio::task::spawn_blocking(move || restarted.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--create-ledger"),
        "says how to go on: {stderr}"
    );
    assert!(!path.exists());
    broker.delete().await;
}

#[tokio::test]
async fn forged_and_oversized_messages_are_dead_lettered_and_move_nothing() {
    let queue = testkit::unique_queue("forged");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("forged").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 5)).await;
    // Contradicting the part count the ledger saw first.
    broker
        .publish(&part_message(source, (2, 0, 2), &[(2, 3)]))
        .await;
    broker
        .publish(&part_message(source, (2, 1, 3), &[(3, 700)]))
        .await;
    let mut huge = message(source, 3, 1);
    huge.resize(proto::message::MAX_BODY_BYTES + 1, b' ');
    broker.publish(&huge).await;
    broker
        .publish(&part_message(source, (2, 1, 2), &[(3, 4)]))
        .await;
    let dead = proto::topology::dead_letter_queue(&queue);
    settle(&broker, "the good parts counted", async || {
        totaler.sum().await == 12
    })
    .await;
    testkit::eventually(Duration::from_secs(10), "two dead letters", || async {
        (broker.count(&dead).await == 2).then_some(())
    })
    .await;
    let ledger = std::fs::read_to_string(&path).expect("ledger");
    assert!(
        ledger.contains(&format!("source {source} 1-2\n")),
        "horizon 2, nothing open: {ledger}"
    );
    totaler.stop().await;
    assert_eq!(file_total(&path), 12);
    broker.delete().await;
}

#[tokio::test]
async fn a_version_1_ledger_carries_over_with_its_rows() {
    let queue = testkit::unique_queue("upgrade");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("upgrade").join("sum.txt");
    let source = Uuid::new_v4();
    std::fs::write(
        &path,
        format!("1000\ntally-ledger v1\nsource {source} 3 5-5\n"),
    )
    .expect("a v1 ledger");
    // Legacy rows 2, 3 and 5 were counted; 4 and 6 were not. Then a batch.
    broker
        .publish(&pack(source, &[(2, 10), (3, 10), (4, 10)]))
        .await;
    broker.publish(&pack(source, &[(5, 10), (6, 10)])).await;
    broker.publish(&message(source, 1, 7)).await;
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    settle(&broker, "the new sums counted", async || {
        totaler.sum().await == 1027
    })
    .await;
    totaler.stop().await;
    let text = std::fs::read_to_string(&path).expect("ledger");
    assert!(text.contains("tally-ledger v3"), "{text}");
    assert!(text.contains(&format!("legacy {source} 1-6\n")), "{text}");
    assert_eq!(broker.count(&queue).await, 0);
}

#[tokio::test]
async fn sigkill_while_the_disk_refuses_the_ledger_loses_nothing() {
    let queue = testkit::unique_queue("full-kill");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("full-kill").join("sum.txt");
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 1)).await;
    let port = free_port();
    let child = spawn_binary(&queue, &path, port, &[]);
    testkit::eventually(Duration::from_secs(20), "the first sum on disk", || async {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|_| file_total(&path) == 1)
    })
    .await;
    let blocker = path.with_file_name("sum.txt.tmp");
    std::fs::create_dir(&blocker).expect("create the blocker");
    broker.publish(&message(source, 2, 2)).await;
    testkit::eventually(Duration::from_secs(20), "not ready", || async {
        let (status, _) = get(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "/readyz",
        )
        .await?;
        (status == 503).then_some(())
    })
    .await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let _ = tokio::task::spawn_blocking(move || child.wait_with_output()).await;
    std::fs::remove_dir(&blocker).expect("remove the blocker");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    settle(&broker, "the second sum counted", async || {
        totaler.sum().await == 3
    })
    .await;
    totaler.stop().await;
    assert_eq!(file_total(&path), 3);
    assert_eq!(broker.count(&queue).await, 0);
    broker.delete().await;
}
