//! Traces across the queue, with the real binary exporting to a real OTLP
//! receiver (the exporter is process-global, so never in-process): an Add's
//! `traceparent` (gRPC metadata, HTTP header) is continued by its request
//! span, stored with its row, linked from the relay's `publish batch` span,
//! whose own context is stored with the batch and sent in every part's AMQP
//! header, the same one when the batch is published again. With tracing
//! off, nothing is stored and no header is sent.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use sqlx::PgPool;
use testkit::{Broker, database, free_port, otlp, process};
use tonic::metadata::MetadataValue;

use crate::support::{add, config, pool, spawn_adder, wait_for_http};

const GRPC_PARENT: (&str, &str) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
const HTTP_PARENT: (&str, &str) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
const WAIT: Duration = Duration::from_secs(30);

/// What each traced test starts with: a receiver, a fresh database, a test queue.
struct Stage {
    receiver: otlp::Receiver,
    db: String,
    queue: String,
    broker: Broker,
}

impl Stage {
    async fn new(test: &str) -> Self {
        let queue = testkit::unique_queue(test);
        Self {
            receiver: otlp::Receiver::start().await,
            db: database::fresh().await,
            broker: Broker::connect(&queue).await,
            queue,
        }
    }
}

/// A running adder binary exporting to `receiver`.
struct TracedAdder {
    child: Child,
    grpc: u16,
    http: u16,
}

fn traceparent((trace, span): (&str, &str)) -> String {
    format!("00-{trace}-{span}-01")
}

/// Exports every 100 ms, so a test sees spans soon.
async fn spawn_traced(db: &str, queue: &str, receiver: &otlp::Receiver) -> TracedAdder {
    spawn_exporting(db, queue, receiver, "100").await
}

/// An adder exporting every `delay_ms` (`OTEL_BSP_SCHEDULE_DELAY`).
async fn spawn_exporting(
    db: &str,
    queue: &str,
    receiver: &otlp::Receiver,
    delay_ms: &str,
) -> TracedAdder {
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_adder"))
        .env("DATABASE_URL", db)
        .env("AMQP_URL", testkit::amqp_url())
        .env("TALLY_QUEUE", queue)
        .env("ADDER_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("ADDER_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("ADDER_DB_POOL", "4")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", delay_ms)
        .env(
            "RUST_LOG",
            std::env::var("TEST_ADDER_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start the adder binary");
    wait_for_http(format!("127.0.0.1:{http}").parse().expect("addr")).await;
    TracedAdder { child, grpc, http }
}

impl Drop for TracedAdder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TracedAdder {
    /// SIGTERM, which flushes the exporter, and the exit within its grace.
    async fn stop(mut self) {
        process::terminate(self.child.id());
        let (status, _) =
            process::exit_within(&mut self.child, Duration::from_secs(15), "the adder").await;
        assert!(status.success(), "the adder exits cleanly: {status}");
    }
}

/// One gRPC Add carrying `traceparent` metadata.
async fn grpc_add(port: u16, a: i64, traceparent: &str) {
    let mut client =
        proto::tally::v1::adder_client::AdderClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect gRPC");
    let mut request = tonic::Request::new(add(a, 1, ""));
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent).expect("ascii"),
    );
    client.add(request).await.expect("the Add succeeds");
}

/// Waits for messages in the test queue and takes them all.
async fn delivered(broker: &Broker) -> Vec<lapin::message::Delivery> {
    testkit::eventually(WAIT, "published parts", || async {
        let deliveries = broker.drain_deliveries(&broker.queue).await;
        (!deliveries.is_empty()).then_some(deliveries)
    })
    .await
}

/// One HTTP `POST /add` carrying a `traceparent` header.
async fn http_add(port: u16, a: i64, traceparent: &str) {
    let http = format!("127.0.0.1:{port}").parse().expect("addr");
    let body = format!(r#"{{"a": {a}, "b": 1}}"#);
    let headers = [("traceparent", traceparent)];
    let (status, reply) = testkit::http::request_with(http, "POST", "/add", &headers, &body)
        .await
        .expect("POST /add answers");
    assert_eq!(status, 200, "{reply}");
}

/// The stored context of each outbox row, by id.
const ROWS: &str = "SELECT traceparent FROM outbox ORDER BY id";
/// The stored context of each batch, by number.
const BATCHES: &str = "SELECT traceparent FROM outbox_batch ORDER BY id";

async fn stored(pool: &PgPool, query: &'static str) -> Vec<Option<String>> {
    sqlx::query_scalar(query)
        .fetch_all(pool)
        .await
        .expect("read the stored contexts")
}

#[tokio::test]
async fn an_adds_trace_reaches_the_relays_publish_span_and_every_parts_amqp_header() {
    let Stage {
        receiver,
        db,
        queue,
        broker,
    } = Stage::new("traced").await;
    let adder = spawn_traced(&db, &queue, &receiver).await;

    grpc_add(adder.grpc, 1, &traceparent(GRPC_PARENT)).await;
    http_add(adder.http, 2, &traceparent(HTTP_PARENT)).await;
    for ((trace, parent), name) in [
        (GRPC_PARENT, "tally.v1.Adder/Add"),
        (HTTP_PARENT, "POST /add"),
    ] {
        let request = receiver
            .wait_for(WAIT, name, |s| s.name == name && s.trace_id == trace)
            .await;
        assert_eq!(
            request.parent_span_id, parent,
            "{name} continues the caller's span"
        );
        assert_eq!(request.service, "adder");
        let add = receiver
            .wait_for(WAIT, "the add span", |s| {
                s.name == "add" && s.parent_span_id == request.span_id
            })
            .await;
        let publish = receiver
            .wait_for(WAIT, "a publish span linked to the Add", |s| {
                s.name == "publish batch" && s.links_to(trace, &add.span_id)
            })
            .await;
        assert_ne!(
            publish.trace_id, trace,
            "a batch is its own trace, linked to its Adds"
        );
    }
    let publishes: Vec<String> = receiver
        .named("publish batch")
        .iter()
        .map(otlp::Span::traceparent)
        .collect();
    let deliveries = broker.drain_deliveries(&queue).await;
    assert!(!deliveries.is_empty());
    for delivery in &deliveries {
        let header = otel::context::from_amqp(&delivery.properties).expect("a traceparent header");
        assert!(
            publishes.contains(&header),
            "{header} is a publish span's context"
        );
    }
    let pool = pool(&db).await;
    let rows = stored(&pool, ROWS).await;
    assert_eq!(rows.len(), 2);
    for (row, (trace, _)) in rows.iter().zip([GRPC_PARENT, HTTP_PARENT]) {
        let row = row.as_deref().expect("each row stores its Add's context");
        assert!(row.contains(trace), "{row} belongs to trace {trace}");
    }
    for batch in stored(&pool, BATCHES).await {
        let batch = batch.expect("each batch stores its publish span's context");
        assert!(
            publishes.contains(&batch),
            "{batch} is a publish span's context"
        );
    }
    adder.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn a_batch_published_again_sends_the_context_it_was_first_published_under() {
    let Stage {
        receiver,
        db,
        queue,
        broker,
    } = Stage::new("retraced").await;
    let adder = spawn_traced(&db, &queue, &receiver).await;
    grpc_add(adder.grpc, 1, &traceparent(GRPC_PARENT)).await;
    let first = receiver
        .wait_for(WAIT, "the first publish span", |s| {
            s.name == "publish batch"
        })
        .await;
    adder.stop().await;
    assert_eq!(broker.drain_deliveries(&queue).await.len(), 1);

    // The confirmation commits asynchronously: a crash may lose it, and
    // the next relay publishes the batch again.
    let pool = pool(&db).await;
    sqlx::query("UPDATE outbox_batch SET confirmed_at = NULL")
        .execute(&pool)
        .await
        .expect("forget the confirmation");
    let adder = spawn_traced(&db, &queue, &receiver).await;
    let again = receiver
        .wait_for(WAIT, "a republish span linked to the first", |s| {
            s.name == "publish batch" && s.links_to(&first.trace_id, &first.span_id)
        })
        .await;
    assert_ne!(again.span_id, first.span_id);
    let deliveries = delivered(&broker).await;
    for delivery in &deliveries {
        assert_eq!(
            otel::context::from_amqp(&delivery.properties),
            Some(first.traceparent()),
            "the republished part carries the first publication's context"
        );
    }
    assert_eq!(
        stored(&pool, BATCHES).await,
        vec![Some(first.traceparent())]
    );
    adder.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn spans_still_buffered_at_sigterm_are_exported_before_the_adder_exits() {
    let Stage {
        receiver,
        db,
        queue,
        broker,
    } = Stage::new("flushed").await;
    // No scheduled export within the test: only the shutdown flush sends.
    let adder = spawn_exporting(&db, &queue, &receiver, "600000").await;
    grpc_add(adder.grpc, 1, &traceparent(GRPC_PARENT)).await;
    delivered(&broker).await;
    assert!(
        receiver.spans().is_empty(),
        "nothing exported before the flush"
    );
    adder.stop().await;
    let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    for name in ["tally.v1.Adder/Add", "add", "publish batch"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    broker.delete().await;
}

#[tokio::test]
async fn a_publish_span_links_to_at_most_128_adds_and_counts_the_rest() {
    let Stage {
        receiver,
        db,
        queue,
        broker,
    } = Stage::new("manylinks").await;
    // Migrate, then record 130 traced rows at once, so one batch takes them.
    spawn_traced(&db, &queue, &receiver).await.stop().await;
    let pool = pool(&db).await;
    sqlx::query(
        "INSERT INTO outbox (a, b, sum, traceparent) SELECT i, 0, i, \
         '00-' || lpad(to_hex(i), 32, '0') || '-00f067aa0ba902b7-01' FROM generate_series(1, 130) i",
    )
    .execute(&pool)
    .await
    .expect("insert traced rows");
    let adder = spawn_traced(&db, &queue, &receiver).await;
    let publish = receiver
        .wait_for(WAIT, "the batch's publish span", |s| {
            s.name == "publish batch"
        })
        .await;
    assert_eq!(publish.attribute("rows"), Some("130"), "one batch");
    assert_eq!(publish.links.len(), 128);
    assert!(publish.links_to(&format!("{:032x}", 128), "00f067aa0ba902b7"));
    assert_eq!(publish.attribute("links.dropped"), Some("2"));
    adder.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn with_tracing_off_no_context_is_stored_and_no_header_is_sent() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("untraced");
    let broker = Broker::connect(&queue).await;
    let adder = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    grpc_add(adder.grpc.port(), 1, &traceparent(GRPC_PARENT)).await;
    let deliveries = delivered(&broker).await;
    for delivery in &deliveries {
        assert_eq!(otel::context::from_amqp(&delivery.properties), None);
    }
    let pool = pool(&db).await;
    assert_eq!(stored(&pool, ROWS).await, vec![None]);
    assert_eq!(stored(&pool, BATCHES).await, vec![None]);
    adder.stop().await;
    broker.delete().await;
}
