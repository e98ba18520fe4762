//! `totaler dlq list|replay`, the real binary against a real RabbitMQ and a
//! real totaler: dead letters are listed with their reasons and left in
//! place; a replay moves them back and the ledger counts each once.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use lapin::BasicProperties;
use testkit::{Broker, metrics::sample};
use uuid::Uuid;

use crate::support::{
    TestTotaler, config, file_total, get, message, part_message, settle, spawn_totaler, temp_dir,
};

#[tokio::test]
async fn list_shows_malformed_and_refused_messages_with_their_reasons_and_keeps_them() {
    let queue = testkit::unique_queue("dlq_list");
    let broker = Broker::connect(&queue).await;
    let dead = proto::topology::dead_letter_queue(&queue);
    let path = temp_dir("dlq_list").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let forged = Uuid::new_v4();
    broker.publish(b"not json at all").await;
    broker
        .publish(&part_message(forged, (1, 0, 2), &[(1, 4)]))
        .await;
    // Contradicting the part count the ledger saw first.
    publish_with_id(
        &broker,
        &queue,
        &part_message(forged, (1, 1, 3), &[(2, 9)]),
        &format!("{forged}/1.1"),
    )
    .await;
    wait_for(&broker, &dead, 2, "both messages dead-lettered").await;
    totaler.stop().await;

    let listing = dlq(&queue, &["list", "--sum-file", &path.to_string_lossy()]);
    assert!(
        listing.contains(&format!("reason=rejected queue={queue} count=1")),
        "{listing}"
    );
    assert!(listing.contains("why: malformed: "), "{listing}");
    assert!(listing.contains(r#"body: "not json at all""#), "{listing}");
    assert!(
        listing.contains(&format!("id={forged}/1.1 size=")),
        "{listing}"
    );
    assert!(
        listing.contains("why: refused by the ledger: batch 1 has 2 parts, the message claims 3"),
        "{listing}"
    );
    assert!(
        listing.contains("2 message(s) listed, all left in place"),
        "{listing}"
    );
    let again = dlq(&queue, &["list", "--limit", "1"]);
    assert!(
        again.contains("#1 id=<none>") && !again.contains("#2"),
        "{again}"
    );
    // The returned messages are ready again once the broker has requeued them.
    wait_for(&broker, &dead, 2, "list to consume nothing").await;
    broker.delete().await;
}

#[tokio::test]
async fn replaying_a_dead_copy_of_an_applied_part_counts_it_once() {
    let queue = testkit::unique_queue("dlq_applied");
    let broker = Broker::connect(&queue).await;
    let dead = proto::topology::dead_letter_queue(&queue);
    let path = temp_dir("dlq_applied").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    let body = message(source, 1, 10);
    broker.publish(&body).await;
    settle(&broker, "the part applied", async || {
        totaler.sum().await == 10
    })
    .await;
    // A forged dead letter: the same part, as if dead-lettered after it was applied.
    publish_with_id(&broker, &dead, &body, &format!("{source}/1.0")).await;
    let listing = dlq(&queue, &["list", "--sum-file", &path.to_string_lossy()]);
    assert!(
        listing.contains("why: already applied: a replay counts nothing"),
        "{listing}"
    );

    let replayed = dlq(&queue, &["replay"]);
    assert!(replayed.contains("replayed 1 message(s)"), "{replayed}");
    wait_for_consumed(&broker, &totaler, 2).await;
    assert_eq!((totaler.sum().await, file_total(&path)), (10, 10));
    assert_eq!(broker.count(&dead).await, 0);
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn replaying_a_valid_dead_letter_counts_it_exactly_once() {
    let queue = testkit::unique_queue("dlq_valid");
    let broker = Broker::connect(&queue).await;
    let dead = proto::topology::dead_letter_queue(&queue);
    let path = temp_dir("dlq_valid").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 5)).await;
    settle(&broker, "the first part applied", async || {
        totaler.sum().await == 5
    })
    .await;
    // Part 2 was dead-lettered (a delivery limit, say) and never applied.
    publish_with_id(
        &broker,
        &dead,
        &message(source, 2, 7),
        &format!("{source}/2.0"),
    )
    .await;
    let listing = dlq(&queue, &["list", "--sum-file", &path.to_string_lossy()]);
    assert!(
        listing.contains("why: not applied: a replay adds 1 row(s)"),
        "{listing}"
    );

    let replayed = dlq(&queue, &["replay"]);
    assert!(replayed.contains("replayed 1 message(s)"), "{replayed}");
    wait_for_consumed(&broker, &totaler, 2).await;
    assert_eq!((totaler.sum().await, file_total(&path)), (12, 12));
    let nothing = dlq(&queue, &["replay"]);
    assert!(nothing.contains("replayed 0 message(s)"), "{nothing}");
    assert_eq!(totaler.sum().await, 12);
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn replay_moves_only_the_limit_or_the_id_asked_for() {
    let queue = testkit::unique_queue("dlq_limit");
    let broker = Broker::connect(&queue).await;
    let dead = proto::topology::dead_letter_queue(&queue);
    let source = Uuid::new_v4();
    let id = |batch: i64| format!("{source}/{batch}.0");
    for batch in 1..=5 {
        publish_with_id(
            &broker,
            &dead,
            &message(source, batch, batch * 100),
            &id(batch),
        )
        .await;
    }
    let replayed = dlq(&queue, &["replay", "--limit", "2"]);
    assert!(replayed.contains("replayed 2 message(s)"), "{replayed}");
    wait_for_counts(&broker, (2, 3)).await;
    let replayed = dlq(&queue, &["replay", "--id", &id(4)]);
    assert!(
        replayed.contains("replayed 1 message(s)") && replayed.contains("2 left"),
        "{replayed}"
    );
    wait_for_counts(&broker, (3, 2)).await;
    let listing = dlq(&queue, &["list"]);
    let listed: Vec<_> = [3, 5].iter().map(|&b| listing.find(&id(b))).collect();
    assert!(
        matches!(listed[..], [Some(a), Some(b)] if a < b),
        "3 and 5 stay, in order: {listing}"
    );
    assert!(!listing.contains(&id(4)), "{listing}");

    let path = temp_dir("dlq_limit").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    settle(&broker, "the replayed parts applied", async || {
        totaler.sum().await == 100 + 200 + 400
    })
    .await;
    assert_eq!(file_total(&path), 700);
    totaler.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn a_replay_killed_between_the_confirm_and_the_ack_still_counts_the_message_once() {
    let queue = testkit::unique_queue("dlq_killed");
    let broker = Broker::connect(&queue).await;
    let dead = proto::topology::dead_letter_queue(&queue);
    let path = temp_dir("dlq_killed").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 5)).await;
    settle(&broker, "the first part applied", async || {
        totaler.sum().await == 5
    })
    .await;
    publish_with_id(
        &broker,
        &dead,
        &message(source, 2, 7),
        &format!("{source}/2.0"),
    )
    .await;

    // The copy is in the queue, confirmed; the dead copy was never acked.
    let killed = run_dlq(
        &queue,
        &["replay"],
        &[("TOTALER_DLQ_CRASH_AFTER_CONFIRM", "true")],
    );
    assert!(
        !killed.status.success()
            && String::from_utf8_lossy(&killed.stderr).contains("TOTALER_DLQ_CRASH_AFTER_CONFIRM"),
        "the hook aborts the replay after the confirm: {killed:?}"
    );
    wait_for_consumed(&broker, &totaler, 2).await;
    wait_for(&broker, &dead, 1, "the unacked dead copy back in its queue").await;
    assert_eq!(totaler.sum().await, 12);

    // Replayed again, the same part is recognised and counted once.
    let replayed = dlq(&queue, &["replay"]);
    assert!(replayed.contains("replayed 1 message(s)"), "{replayed}");
    wait_for_consumed(&broker, &totaler, 3).await;
    wait_for(&broker, &dead, 0, "the dead-letter queue empty").await;
    assert_eq!((totaler.sum().await, file_total(&path)), (12, 12));
    totaler.stop().await;
    broker.delete().await;
}

/// Runs `totaler --queue <queue> dlq <args…>` (the real binary) and returns
/// its stdout, asserting it succeeded.
fn dlq(queue: &str, args: &[&str]) -> String {
    let output = run_dlq(queue, args, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "totaler dlq {args:?}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs `totaler --queue <queue> dlq <args…>` with `env` added; its output.
fn run_dlq(queue: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_totaler"))
        .env("AMQP_URL", testkit::amqp_url())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .args(["--queue", queue, "dlq"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run totaler dlq")
}

async fn publish_with_id(broker: &Broker, queue: &str, body: &[u8], id: &str) {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.into());
    assert!(
        broker.publish_to(queue, body, properties).await,
        "publish {id} to {queue}"
    );
}

async fn wait_for(broker: &Broker, queue: &str, count: u32, what: &str) {
    testkit::eventually(Duration::from_secs(30), what, || async {
        (broker.count(queue).await == count).then_some(())
    })
    .await;
}

/// Waits until the queue and its dead-letter queue hold `expected` ready
/// messages (returned ones are ready again only once the broker requeued them).
async fn wait_for_counts(broker: &Broker, expected: (u32, u32)) {
    let dead = proto::topology::dead_letter_queue(&broker.queue);
    let what = format!("{expected:?} messages in the queue and {dead}");
    testkit::eventually(Duration::from_secs(30), &what, || async {
        let counts = (broker.count(&broker.queue).await, broker.count(&dead).await);
        (counts == expected).then_some(())
    })
    .await;
}

/// Waits until the totaler has consumed (applied or skipped as applied)
/// `count` messages and the queue is empty.
async fn wait_for_consumed(broker: &Broker, totaler: &TestTotaler, count: u32) {
    let series = r#"totaler_messages_total{outcome="consumed"}"#;
    settle(broker, "the replayed message consumed", async || {
        let metrics = get(totaler.http, "/metrics").await.map(|(_, text)| text);
        metrics.and_then(|text| sample(&text, series)) == Some(f64::from(count))
    })
    .await;
}
