//! Starts totalers for tests, in-process on `127.0.0.1:0` via
//! `totaler::run` or as the real binary, and builds queue messages; starts
//! real adders in-process for them to count, and runs `totaler verify`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use clap::Parser;
use proto::{Sum, SumMessage, message::now_us};
use testkit::{amqp_url, eventually};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use totaler::{Config, config::LogFormat};
use uuid::Uuid;

/// A totaler running inside the test process.
pub struct TestTotaler {
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The workspace root, where the compose and Prometheus files are.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the totaler crate is in the workspace")
        .to_path_buf()
}

/// The text of a file of the workspace (or any path).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A fresh directory for a test's sum file.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tally-totaler-{test}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

/// A config for tests: everything explicit, nothing from the environment.
pub fn config(amqp_url: &str, queue: &str, sum_file: &Path) -> Config {
    Config {
        amqp_url: amqp_url.parse().expect("a valid AMQP URL"),
        amqp_password_file: None,
        queue: queue.to_owned(),
        sum_file: sum_file.to_path_buf(),
        http_addr: "127.0.0.1:0".parse().expect("an address"),
        prefetch: 500,
        batch_size: 200,
        batch_linger_ms: 2,
        refresh_ms: 50,
        shutdown_grace_ms: 5_000,
        log_format: LogFormat::Text,
        otel: otel::Settings::default(),
        limits: totaler::config::Limits::default(),
        crash_after_apply: false,
        // Test messages are published without a `user-id`; the
        // authenticity tests name their publisher.
        publishers: vec!["*".to_owned()],
        command: None,
        create_ledger: false,
    }
}

pub async fn spawn_totaler(config: Config) -> TestTotaler {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
    let http = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(totaler::run(config, listener, async {
        let _ = stopped.await;
    }));
    testkit::eventually(
        Duration::from_secs(20),
        "the totaler to serve HTTP",
        || async move {
            get(http, "/healthz")
                .await
                .filter(|(status, _)| *status == 200)
        },
    )
    .await;
    TestTotaler {
        http,
        stop: Some(stop),
        task,
    }
}

impl TestTotaler {
    /// The total GET /sum reports.
    pub async fn sum(&self) -> i128 {
        sum_at(self.http).await
    }

    /// Stops the totaler and waits for it to finish cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("totaler stops in time")
            .expect("totaler task")
            .expect("totaler run");
    }
}

pub async fn sum_at(http: SocketAddr) -> i128 {
    let (status, body) = get(http, "/sum").await.expect("GET /sum answers");
    assert_eq!(status, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    value["sum"].to_string().parse().expect("an integer sum")
}

/// One HTTP/1.1 GET; `None` if the connection fails.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    testkit::http::get(addr, path).await
}

/// A valid queue message: batch `batch` of one part, one row (seq `batch`).
pub fn message(source: Uuid, batch: i64, sum: i64) -> Vec<u8> {
    part_message(source, (batch, 0, 1), &[(batch, sum)])
}

/// Part `part` of `parts` of batch `batch`, carrying the rows `(seq, sum)`.
pub fn part_message(
    source: Uuid,
    (batch, part, parts): (i64, u32, u32),
    rows: &[(i64, i64)],
) -> Vec<u8> {
    encode(
        source,
        Some(proto::message::Part { batch, part, parts }),
        rows,
    )
}

/// A legacy message (no batch: rows deduplicated by seq) carrying the rows
/// `(seq, sum)`, as the relay packed them before snapshot batches.
pub fn pack(source: Uuid, rows: &[(i64, i64)]) -> Vec<u8> {
    encode(source, None, rows)
}

fn encode(source: Uuid, part: Option<proto::message::Part>, rows: &[(i64, i64)]) -> Vec<u8> {
    let now = now_us();
    SumMessage {
        source,
        part,
        published_us: now,
        sums: rows
            .iter()
            .map(|&(seq, sum)| Sum {
                seq,
                sum,
                created_us: now,
            })
            .collect(),
    }
    .encode()
}

/// The total on the first line of the sum file.
pub fn file_total(path: &Path) -> i128 {
    let text = std::fs::read_to_string(path).expect("read the sum file");
    text.lines()
        .next()
        .expect("a first line")
        .parse()
        .expect("a decimal total")
}

/// Starts the real totaler binary.
pub fn spawn_binary(queue: &str, sum_file: &Path, http_port: u16, extra: &[(&str, &str)]) -> Child {
    binary(queue, sum_file, http_port, extra)
        .spawn()
        .expect("start the totaler binary")
}

/// The command [`spawn_binary`] runs: logs (stdout) dropped, stderr piped.
pub fn binary(queue: &str, sum_file: &Path, http_port: u16, extra: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_totaler"));
    command
        .env("AMQP_URL", testkit::amqp_url())
        .env("TALLY_QUEUE", queue)
        .env("TOTALER_PUBLISHERS", "*")
        .env("SUM_FILE", sum_file)
        .env("TOTALER_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in extra {
        command.env(key, value);
    }
    command
}

/// Waits until the queue has no ready messages and `check` holds.
pub async fn settle(broker: &testkit::Broker, what: &str, check: impl AsyncFn() -> bool) {
    testkit::eventually(Duration::from_secs(30), what, || async {
        (broker.count(&broker.queue).await == 0 && check().await).then_some(())
    })
    .await;
}

/// An adder in this process on `url`, publishing to `queue`; stopped by
/// dropping the sender.
pub async fn spawn_adder(url: &str, queue: &str) -> (String, oneshot::Sender<()>) {
    let config = adder::Config::parse_from([
        "adder",
        "--database-url",
        url,
        "--amqp-url",
        &amqp_url(),
        "--queue",
        queue,
        "--db-pool",
        "4",
        "--relay-poll-ms",
        "200",
    ]);
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
    let endpoint = format!("http://{}", grpc.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(adder::run(config, adder::Listeners { grpc, http }, async {
        let _ = stopped.await;
    }));
    (endpoint, stop)
}

/// Sends Adds `a + 0` for each `a`, each retried (same request id) until
/// acknowledged; returns their sum.
pub async fn add_all(endpoint: &str, tag: &str, values: std::ops::Range<i64>) -> i128 {
    let client = eventually(Duration::from_secs(30), "the adder's gRPC", || async {
        proto::tally::v1::adder_client::AdderClient::connect(endpoint.to_owned())
            .await
            .ok()
    })
    .await;
    let mut sum = 0;
    for a in values {
        let request = |a| proto::tally::v1::AddRequest {
            a,
            b: 0,
            request_id: format!("{tag}-{a}"),
        };
        eventually(Duration::from_secs(60), "an Add acknowledged", || {
            let mut client = client.clone();
            async move { client.add(request(a)).await.ok() }
        })
        .await;
        sum += i128::from(a);
    }
    sum
}

pub async fn verify(sum_file: &Path, url: &str) -> totaler::verify::Findings {
    let args = totaler::verify::Args {
        sum_file: sum_file.to_path_buf(),
        database_urls: vec![url.to_owned()],
        in_flight_secs: 0,
    };
    totaler::verify::run(&args).await.expect("verify runs")
}

/// Waits until the totaler's total is `total`.
pub async fn wait_total(totaler: &TestTotaler, total: i128) {
    eventually(
        Duration::from_secs(30),
        "the totaler to count every acknowledged Add",
        || async { (totaler.sum().await == total).then_some(()) },
    )
    .await;
}
