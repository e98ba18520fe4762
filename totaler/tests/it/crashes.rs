//! The real binary: killed between the durable rename and the ack (the
//! redelivery seen and counted once), started on a corrupt file, stopped
//! with SIGTERM under load within the grace period.

use std::time::Duration;

use testkit::{Broker, free_port, metrics::sample, process};
use uuid::Uuid;

use crate::support::{config, file_total, get, message, spawn_binary, spawn_totaler, temp_dir};

/// The documented shutdown grace (`TOTALER_SHUTDOWN_GRACE_MS`, 10 s) plus a
/// margin for a loaded 2-core machine.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(13);

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
    let (status, _) = process::exit_within(
        &mut crashing,
        Duration::from_secs(30),
        "the crashing totaler",
    )
    .await;
    assert!(!status.success(), "the hook aborts the process");
    assert_eq!(
        file_total(&path),
        42,
        "the update was durable before the crash"
    );

    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    // The evidence that both messages came back and were recognised: their
    // rows are counted as duplicates, none as applied.
    let metrics = testkit::eventually(
        Duration::from_secs(30),
        "both messages to be redelivered and recognised as duplicates",
        || async {
            let (_, metrics) = get(totaler.http, "/metrics").await?;
            (sample(&metrics, r#"totaler_sums_total{outcome="duplicate"}"#) == Some(2.0))
                .then_some(metrics)
        },
    )
    .await;
    assert_eq!(
        sample(&metrics, r#"totaler_sums_total{outcome="applied"}"#),
        Some(0.0),
        "a redelivered row is not applied again"
    );
    assert_eq!(
        sample(&metrics, r#"totaler_messages_total{outcome="consumed"}"#),
        Some(2.0),
        "both redeliveries are consumed"
    );
    assert_eq!(
        totaler.sum().await,
        42,
        "redelivered messages are not counted again"
    );
    assert_eq!(file_total(&path), 42);
    totaler.stop().await;
    assert_eq!(
        broker.count_settled(&queue).await,
        0,
        "the redeliveries are acked"
    );
    broker.delete().await;
}

#[tokio::test]
async fn corrupt_file_is_refused_and_left_as_it_was() {
    let queue = testkit::unique_queue("corrupt");
    let path = temp_dir("corrupt").join("sum.txt");
    let corrupt = "12x34\ntally-ledger v1\n";
    std::fs::write(&path, corrupt).expect("write");
    let child = spawn_binary(&queue, &path, free_port(), &[]);
    let (output, _) = process::output_within(
        child,
        Duration::from_secs(30),
        "the totaler on a corrupt file",
    )
    .await;
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
async fn sigterm_under_load_finishes_the_batch_in_hand_and_exits_zero_within_the_grace() {
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
    process::terminate(child.id());
    let (output, took) =
        process::output_within(child, SHUTDOWN_BOUND, "the totaler after SIGTERM").await;
    assert!(
        output.status.success(),
        "exit 0 on SIGTERM: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("the totaler exited {took:?} after SIGTERM");
    let applied = file_total(&path);
    assert_eq!(
        u32::try_from(applied).expect("small") + broker.count_settled(&queue).await,
        2000,
        "acked = applied: every message not in the file is back in the queue"
    );
    broker.delete().await;
}
