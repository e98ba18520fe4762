//! Traces across the queue, from the totaler's side, with the real binary
//! exporting to a real OTLP receiver: each consumed batch's span links to
//! the publish span named in every message's `traceparent` AMQP header, and
//! log lines inside it carry its `trace_id`.

use std::{process::Stdio, time::Duration};

use lapin::BasicProperties;
use testkit::{Broker, free_port, otlp, process};
use uuid::Uuid;

use crate::support::{binary, message, sum_at, temp_dir};

/// Two relays' publish spans, as the adder would send them.
const PUBLISHES: [(&str, &str); 2] = [
    ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
    ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
];
const WAIT: Duration = Duration::from_secs(30);

fn with_traceparent((trace, span): (&str, &str)) -> BasicProperties {
    let properties = BasicProperties::default().with_delivery_mode(2);
    otel::context::to_amqp(properties, &format!("00-{trace}-{span}-01"))
}

#[tokio::test]
async fn a_consumed_batch_links_to_each_messages_publish_span_and_logs_its_trace_id() {
    let receiver = otlp::Receiver::start().await;
    let queue = testkit::unique_queue("traced");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("traced").join("sum.txt");
    let source = Uuid::new_v4();
    // Batch 1 twice: the repeat is a duplicate, logged inside the batch span.
    for (batch, publish) in [(1, PUBLISHES[0]), (2, PUBLISHES[1]), (1, PUBLISHES[0])] {
        let sent = broker
            .publish_with(&message(source, batch, 21), with_traceparent(publish))
            .await;
        assert!(sent, "the broker takes the test message");
    }
    let port = free_port();
    let endpoint = receiver.endpoint();
    let child = binary(
        &queue,
        &path,
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "info"),
            ("LOG_FORMAT", "json"),
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("start the totaler binary");
    let http = format!("127.0.0.1:{port}").parse().expect("addr");
    testkit::eventually(WAIT, "the total of both batches", || async {
        (testkit::http::get(http, "/sum").await.is_some() && sum_at(http).await == 42).then_some(())
    })
    .await;
    for (trace, span) in PUBLISHES {
        let consumed = receiver
            .wait_for(WAIT, "a batch span linked to the publish span", |s| {
                s.name == "consume batch" && s.links_to(trace, span)
            })
            .await;
        assert_eq!(consumed.service, "totaler");
        assert_ne!(
            consumed.trace_id, trace,
            "a batch is its own trace, linked to its parts"
        );
    }
    let batch_traces: Vec<String> = receiver
        .named("consume batch")
        .into_iter()
        .map(|s| s.trace_id)
        .collect();

    process::terminate(child.id());
    let (output, _) = process::output_within(child, Duration::from_secs(15), "the totaler").await;
    assert!(output.status.success(), "the totaler exits cleanly");
    let logs = String::from_utf8_lossy(&output.stdout);
    let skipped = logs
        .lines()
        .find(|line| line.contains("skipped redelivered sums"))
        .unwrap_or_else(|| panic!("the duplicate is logged: {logs}"));
    let line: serde_json::Value = serde_json::from_str(skipped).expect("a JSON log line");
    let trace_id = line["span"]["trace_id"]
        .as_str()
        .expect("the line carries trace_id");
    assert!(
        batch_traces.iter().any(|t| t == trace_id),
        "{trace_id} is a batch span's trace"
    );
    broker.delete().await;
}
