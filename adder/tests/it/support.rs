//! Starts adders for tests: in-process on `127.0.0.1:0` via `adder::run`, or
//! as the real binary; plus a raw HTTP/1.1 client and outbox queries.

use std::{net::SocketAddr, time::Duration};

use adder::{Config, Listeners, config::LogFormat};
use proto::tally::v1::{AddRequest, AddResponse, adder_client::AdderClient};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// An adder running inside the test process.
pub struct TestAdder {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A config for tests: everything explicit, nothing from the environment.
pub fn config(database_url: &str, amqp_url: &str, queue: &str) -> Config {
    Config {
        database_url: database_url.to_owned(),
        database_password_file: None,
        outbox_reshard: false,
        outbox_upgraded: false,
        amqp_url: amqp_url.parse().expect("a valid AMQP URL"),
        amqp_password_file: None,
        queue: queue.to_owned(),
        exchange: String::new(),
        grpc_addr: "127.0.0.1:0".parse().expect("an address"),
        http_addr: "127.0.0.1:0".parse().expect("an address"),
        db_pool: 4,
        db_statement_timeout_ms: 5_000,
        relay_batch: 100,
        commit_writers: None,
        relay_pack: 100,
        relay_linger_ms: 0,
        relay_pipeline_gap_ms: 50,
        relay_confirm_timeout_ms: 30_000,
        relay_poll_ms: 200,
        retention_hours: 168,
        shutdown_grace_ms: 5_000,
        limits: adder::config::Limits::default(),
        log_format: LogFormat::Text,
        otel: otel::Settings::default(),
    }
}

/// Starts an adder and waits until it serves HTTP.
pub async fn spawn_adder(config: Config) -> TestAdder {
    let adder = start_adder(config).await;
    wait_for_http(adder.http).await;
    adder
}

/// Starts an adder without waiting for it to serve anything.
pub async fn start_adder(config: Config) -> TestAdder {
    // TEST_LOG=1 shows the adders' warnings and errors.
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter("warn").try_init();
    }
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
    let (grpc_addr, http_addr) = (
        grpc.local_addr().expect("addr"),
        http.local_addr().expect("addr"),
    );
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(adder::run(config, Listeners { grpc, http }, async {
        let _ = stopped.await;
    }));
    TestAdder {
        grpc: grpc_addr,
        http: http_addr,
        stop: Some(stop),
        task,
    }
}

impl TestAdder {
    pub async fn client(&self) -> AdderClient<Channel> {
        AdderClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect gRPC")
    }

    /// Stops the adder and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("adder stops in time")
            .expect("adder task")
            .expect("adder run");
    }
}

/// Waits until the HTTP server answers (the outbox is migrated by then).
pub async fn wait_for_http(addr: SocketAddr) {
    testkit::eventually(
        Duration::from_secs(30),
        "the adder to serve HTTP with its outbox open",
        || async move {
            http(addr, "GET", "/readyz", "")
                .await
                .filter(|(_, body)| body.contains(r#""database":true"#))
        },
    )
    .await;
}

/// One HTTP/1.1 request; `None` if the connection fails.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    testkit::http::request(addr, method, path, body).await
}

pub fn add(a: i64, b: i64, request_id: &str) -> AddRequest {
    AddRequest {
        a,
        b,
        request_id: request_id.to_owned(),
    }
}

pub async fn call(
    client: &mut AdderClient<Channel>,
    a: i64,
    b: i64,
    request_id: &str,
) -> Result<AddResponse, tonic::Status> {
    client
        .add(add(a, b, request_id))
        .await
        .map(tonic::Response::into_inner)
}

/// The adder's `/metrics` exposition.
pub async fn metrics(addr: SocketAddr) -> String {
    let (status, text) = http(addr, "GET", "/metrics", "")
        .await
        .expect("GET /metrics answers");
    assert_eq!(status, 200, "{text}");
    text
}

pub async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("connect to the test database")
}

/// (rows, rows the broker has not confirmed, sum of all rows); a row is
/// confirmed when its batch is (or, a legacy row, when it is marked).
pub async fn outbox_counts(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) - (SELECT coalesce(sum(rows), 0)::bigint FROM outbox_batch \
         WHERE confirmed_at IS NOT NULL) - count(*) FILTER (WHERE xid IS NULL AND published_at IS NOT NULL), \
         coalesce(sum(sum), 0)::bigint FROM outbox",
    )
    .fetch_one(pool)
    .await
    .expect("count the outbox")
}

/// Decodes every message now in the queue.
pub async fn drain_messages(broker: &testkit::Broker) -> Vec<proto::SumMessage> {
    broker
        .drain(&broker.queue)
        .await
        .iter()
        .map(|body| proto::SumMessage::decode(body).expect("the relay publishes valid messages"))
        .collect()
}

/// Every row of `messages`, in order.
pub fn rows(messages: &[proto::SumMessage]) -> impl Iterator<Item = &proto::Sum> {
    messages.iter().flat_map(|m| m.sums.iter())
}
