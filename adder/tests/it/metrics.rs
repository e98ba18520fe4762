//! Every metric docs/reference/http.md lists for the adder is exported and moves when
//! it should: requests and their latency by front end and outcome, the
//! pending gauge (refreshed by housekeeping), the relay's rows, messages,
//! batch sizes and confirm times, the broker gauge through an outage, and
//! the active gauge on the active relay and a standby.

use std::time::Duration;

use testkit::{Proxy, database, metrics::require, proxy::target_of};

use crate::support::{call, config, http, metrics, spawn_adder};

#[tokio::test]
async fn adder_metrics_are_exported_and_move() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("metrics");
    let broker = testkit::Broker::connect(&queue).await;
    let proxy = Proxy::start(target_of(&testkit::amqp_url())).await;
    let mut settings = config(&db, &proxy.url(&testkit::amqp_url()), &queue);
    settings.relay_pack = 2;
    let adder = spawn_adder(settings).await;
    let start = testkit::eventually(
        Duration::from_secs(20),
        "the relay to be active",
        || async {
            let text = metrics(adder.http).await;
            (require(&text, "adder_relay_active") == 1.0).then_some(text)
        },
    )
    .await;
    for series in [
        "adder_outbox_pending",
        "adder_relay_published_total",
        "adder_relay_messages_total",
        "adder_relay_batch_size_count",
        "adder_relay_confirm_seconds_count",
    ] {
        assert_eq!(require(&start, series), 0.0, "{series} at start");
    }
    assert_eq!(require(&start, "adder_relay_broker_up"), 1.0);
    assert!(require(&start, "process_resident_memory_bytes") > 0.0);

    let mut client = adder.client().await;
    for i in 0..3 {
        call(&mut client, i, 1, "").await.expect("Add");
    }
    call(&mut client, i64::MAX, 1, "")
        .await
        .expect_err("overflow");
    let (status, _) = http(adder.http, "POST", "/add", r#"{"a": 1, "b": 1}"#)
        .await
        .expect("answer");
    assert_eq!(status, 200);
    let text = testkit::eventually(Duration::from_secs(20), "4 rows published", || async {
        let text = metrics(adder.http).await;
        (require(&text, "adder_relay_published_total") == 4.0).then_some(text)
    })
    .await;
    for (series, value) in [
        (r#"adder_requests_total{code="ok",method="grpc_add"}"#, 3.0),
        (
            r#"adder_requests_total{code="invalid_argument",method="grpc_add"}"#,
            1.0,
        ),
        (r#"adder_requests_total{code="ok",method="http_add"}"#, 1.0),
        (
            r#"adder_request_duration_seconds_count{method="grpc_add"}"#,
            4.0,
        ),
        (
            r#"adder_request_duration_seconds_count{method="http_add"}"#,
            1.0,
        ),
        ("adder_relay_batch_size_sum", 4.0),
    ] {
        assert_eq!(require(&text, series), value, "{series}");
    }
    assert!(
        require(
            &text,
            r#"adder_request_duration_seconds_sum{method="grpc_add"}"#
        ) > 0.0
    );
    let batches = require(&text, "adder_relay_batch_size_count");
    let messages = require(&text, "adder_relay_messages_total");
    assert!(batches >= 1.0, "batches: {batches}");
    assert!(
        (2.0..=4.0).contains(&messages) && messages >= batches,
        "4 rows in parts of at most 2 rows in {batches} batches: {messages} messages"
    );
    assert_eq!(
        require(&text, "adder_relay_confirm_seconds_count"),
        batches,
        "every batch published was confirmed, and timed"
    );
    assert!(require(&text, "adder_relay_confirm_seconds_sum") > 0.0);

    // The broker goes away: the gauges drop, the backlog shows as pending.
    proxy.cut();
    for i in 0..2 {
        call(&mut client, i, 2, "").await.expect("Add");
    }
    testkit::eventually(
        Duration::from_secs(20),
        "2 pending rows and the broker down",
        || async {
            let text = metrics(adder.http).await;
            (require(&text, "adder_outbox_pending") == 2.0
                && require(&text, "adder_relay_broker_up") == 0.0
                && require(&text, "adder_relay_active") == 0.0)
                .then_some(())
        },
    )
    .await;
    proxy.restore();
    testkit::eventually(
        Duration::from_secs(30),
        "the backlog published and nothing pending",
        || async {
            let text = metrics(adder.http).await;
            (require(&text, "adder_relay_published_total") == 6.0
                && require(&text, "adder_outbox_pending") == 0.0
                && require(&text, "adder_relay_broker_up") == 1.0
                && require(&text, "adder_relay_active") == 1.0)
                .then_some(())
        },
    )
    .await;

    // A second adder on the same database stands by.
    let standby = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    testkit::eventually(
        Duration::from_secs(20),
        "the second relay to stand by",
        || async {
            let text = metrics(standby.http).await;
            (require(&text, "adder_relay_broker_up") == 1.0).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        require(&metrics(standby.http).await, "adder_relay_active"),
        0.0
    );
    assert_eq!(
        require(&metrics(adder.http).await, "adder_relay_active"),
        1.0
    );
    standby.stop().await;
    adder.stop().await;
    broker.delete().await;
}
