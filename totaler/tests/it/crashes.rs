//! The real binary: killed between the durable rename and the ack, started
//! on a corrupt file, stopped with SIGTERM.

use std::{process::Command, time::Duration};

use testkit::{Broker, free_port};
use uuid::Uuid;

use crate::support::{config, file_total, message, settle, spawn_binary, spawn_totaler, temp_dir};

#[tokio::test]
async fn redelivered_message_after_a_crash_between_rename_and_ack_is_counted_once() {
    let queue = testkit::unique_queue("crash");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("crash").join("sum.txt");
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 21)).await;
    broker.publish(&message(source, 2, 21)).await;

    let mut crashing = spawn_binary(
        &queue,
        &path,
        free_port(),
        &[("TOTALER_CRASH_AFTER_APPLY", "true")],
    );
    let status = tokio::task::spawn_blocking(move || crashing.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(!status.success(), "the hook aborts the process");
    assert_eq!(
        file_total(&path),
        42,
        "the update was durable before the crash"
    );

    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    settle(&broker, "the redeliveries to be acked", async || true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        totaler.sum().await,
        42,
        "redelivered messages are not counted again"
    );
    assert_eq!(file_total(&path), 42);
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn corrupt_file_is_refused_and_left_as_it_was() {
    let queue = testkit::unique_queue("corrupt");
    let path = temp_dir("corrupt").join("sum.txt");
    let corrupt = "12x34\ntally-ledger v1\n";
    std::fs::write(&path, corrupt).expect("write");
    let child = spawn_binary(&queue, &path, free_port(), &[]);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        !output.status.success(),
        "a corrupt ledger stops the totaler"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&path.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("line 1"), "names the problem: {stderr}");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        corrupt,
        "the file is left as it was"
    );
}

#[tokio::test]
async fn sigterm_finishes_the_batch_in_hand_and_exits_zero() {
    let queue = testkit::unique_queue("sigterm");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("sigterm").join("sum.txt");
    let source = Uuid::new_v4();
    for seq in 1..=2000 {
        broker.publish(&message(source, seq, 1)).await;
    }
    let port = free_port();
    let child = spawn_binary(&queue, &path, port, &[]);
    testkit::eventually(
        Duration::from_secs(20),
        "the totaler to apply something",
        || async {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|_| file_total(&path) > 0)
        },
    )
    .await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        output.status.success(),
        "exit 0 on SIGTERM: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let applied = file_total(&path);
    assert_eq!(
        u32::try_from(applied).expect("small") + broker.count(&queue).await,
        2000,
        "acked = applied"
    );
    broker.delete().await;
}
