//! Every metric docs/reference/http.md lists for the totaler is exported and moves when
//! it should: queue time and end to end per message and row, deliveries and
//! rows by outcome, the open batches of the dedupe state, batch size, apply
//! time, the total, ledger errors, and the HTTP requests and their latency.

use std::time::Duration;

use testkit::{Broker, metrics::require};
use uuid::Uuid;

use crate::support::{config, get, part_message, spawn_totaler, temp_dir};

async fn metrics(totaler: &crate::support::TestTotaler) -> String {
    let (status, text) = get(totaler.http, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    text
}

#[tokio::test]
async fn totaler_metrics_are_exported_and_move() {
    let queue = testkit::unique_queue("metrics");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("metrics").join("sum.txt");
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let start = metrics(&totaler).await;
    for series in [
        "totaler_queue_time_seconds_count",
        "totaler_end_to_end_seconds_count",
        r#"totaler_messages_total{outcome="consumed"}"#,
        r#"totaler_messages_total{outcome="dead_lettered"}"#,
        r#"totaler_sums_total{outcome="applied"}"#,
        r#"totaler_sums_total{outcome="duplicate"}"#,
        "totaler_open_batches",
        "totaler_batch_size_count",
        "totaler_apply_seconds_count",
        "totaler_sum",
        "totaler_ledger_errors_total",
    ] {
        assert_eq!(require(&start, series), 0.0, "{series} at start");
    }
    assert!(require(&start, "process_resident_memory_bytes") > 0.0);

    // Part 0 of a 2-part batch: the batch is open until part 1 arrives.
    let source = Uuid::new_v4();
    broker
        .publish(&part_message(source, (1, 0, 2), &[(1, 10), (2, 20)]))
        .await;
    let text = testkit::eventually(Duration::from_secs(20), "part 0 applied", || async {
        let text = metrics(&totaler).await;
        (require(&text, "totaler_sum") == 30.0).then_some(text)
    })
    .await;
    assert_eq!(require(&text, "totaler_open_batches"), 1.0);
    broker
        .publish(&part_message(source, (1, 1, 2), &[(3, 300)]))
        .await;
    broker
        .publish(&part_message(source, (1, 0, 2), &[(1, 10), (2, 20)]))
        .await;
    broker.publish(b"not a message").await;
    let text = testkit::eventually(Duration::from_secs(20), "the rest handled", || async {
        let text = metrics(&totaler).await;
        (require(&text, "totaler_sum") == 330.0
            && require(&text, r#"totaler_messages_total{outcome="dead_lettered"}"#) == 1.0
            && require(&text, r#"totaler_messages_total{outcome="consumed"}"#) == 3.0)
            .then_some(text)
    })
    .await;
    for (series, value) in [
        ("totaler_open_batches", 0.0),
        (r#"totaler_sums_total{outcome="applied"}"#, 3.0),
        (r#"totaler_sums_total{outcome="duplicate"}"#, 2.0),
        // Every decoded delivery, duplicate or not.
        ("totaler_queue_time_seconds_count", 3.0),
        // Every row applied (the duplicate part's rows are not).
        ("totaler_end_to_end_seconds_count", 3.0),
        ("totaler_batch_size_sum", 3.0),
        ("totaler_ledger_errors_total", 0.0),
    ] {
        assert_eq!(require(&text, series), value, "{series}");
    }
    let updates = require(&text, "totaler_batch_size_count");
    assert!((2.0..=3.0).contains(&updates), "ledger updates: {updates}");
    assert_eq!(require(&text, "totaler_apply_seconds_count"), updates);
    assert!(require(&text, "totaler_apply_seconds_sum") > 0.0);
    assert!(require(&text, "totaler_end_to_end_seconds_sum") > 0.0);

    for _ in 0..3 {
        assert_eq!(totaler.sum().await, 330);
    }
    let text = metrics(&totaler).await;
    assert!(
        require(
            &text,
            r#"totaler_http_requests_total{code="200",path="/sum"}"#
        ) >= 3.0
    );
    assert!(
        require(
            &text,
            r#"totaler_http_request_duration_seconds_count{path="/sum"}"#
        ) >= 3.0
    );
    assert!(
        require(
            &text,
            r#"totaler_http_requests_total{code="200",path="/metrics"}"#
        ) >= 1.0
    );
    let (status, _) = get(totaler.http, "/nope").await.expect("answer");
    assert_eq!(status, 404);
    let text = metrics(&totaler).await;
    assert_eq!(
        require(
            &text,
            r#"totaler_http_requests_total{code="404",path="other"}"#
        ),
        1.0
    );
    totaler.stop().await;
    broker.delete().await;
}
