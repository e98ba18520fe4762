//! A gap never stops a source: batches far beyond one (a fresh ledger, a
//! restored backup, a batch lost with a purged queue) are counted, and the
//! ledger stays a few lines long however many batches follow the gap.

use uuid::Uuid;

use crate::support::{config, file_total, message, settle, spawn_totaler, temp_dir};

#[tokio::test]
async fn batches_far_beyond_a_gap_are_counted_and_nothing_is_dead_lettered() {
    let queue = testkit::unique_queue("far_gap");
    let broker = testkit::Broker::connect(&queue).await;
    let path = temp_dir("far_gap").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let source = Uuid::new_v4();
    broker.publish(&message(source, 1, 1)).await;
    // Batch 2 never comes; the source runs on 200,000 and 10^9 batches later.
    let mut expected = 1i128;
    for batch in (200_000..200_010).chain(1_000_000_000..1_000_000_005) {
        broker.publish(&message(source, batch, 10)).await;
        expected += 10;
    }
    settle(&broker, "every batch beyond the gap counted", async || {
        totaler.sum().await == expected
    })
    .await;
    let dead = proto::topology::dead_letter_queue(&queue);
    assert_eq!(broker.count(&dead).await, 0, "nothing dead-lettered");
    assert_eq!(file_total(&path), expected);
    let text = std::fs::read_to_string(&path).expect("the ledger");
    assert!(text.lines().count() <= 3, "a few lines: {text}");
    totaler.stop().await;
    broker.delete().await;
}
