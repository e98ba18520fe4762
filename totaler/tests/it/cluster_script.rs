//! `scripts/cluster` end to end: three RabbitMQ nodes, two adders behind
//! HAProxy, two totalers on one `sum.txt`, all started by the script with
//! this build's binaries, in a temporary directory, on free ports and a node
//! name prefix of its own. Adds go through HAProxy on one gRPC connection;
//! both adders must have served some (per-request balancing, not per
//! connection) and both totalers must report the exact sum.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use proto::tally::v1::{AddRequest, adder_client::AdderClient};
use tonic::transport::Endpoint;

use crate::support::{sum_at, temp_dir};

/// How many Adds go through the balancer.
const ADDS: i64 = 40;
/// Ports the script uses above its base (see the header of scripts/cluster).
const PORT_SPAN: u16 = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_spreads_adds_over_both_adders_and_both_totalers_agree() {
    let database = testkit::database::Fresh::create(&testkit::database::base_url(), "tally_test")
        .await
        .expect("a fresh database");
    let cluster = Cluster::new(&database.url);
    cluster.run(&["up"], Duration::from_secs(300)).await;

    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", cluster.base))
        .expect("an endpoint")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect to HAProxy");
    let mut client = AdderClient::new(channel);
    let mut expected = 0i128;
    for a in 1..=ADDS {
        let request = AddRequest {
            a,
            b: 1000,
            request_id: String::new(),
        };
        let reply = client.add(request).await.expect("an Add through HAProxy");
        assert_eq!(reply.into_inner().sum, a + 1000);
        expected += i128::from(a + 1000);
    }

    let served = [
        served(cluster.addr(21)).await,
        served(cluster.addr(22)).await,
    ];
    eprintln!("adder-1 and adder-2 served {served:?} of {ADDS} Adds");
    assert_eq!(served.iter().sum::<u64>(), ADDS as u64, "{served:?}");
    assert!(
        served.iter().all(|&n| n >= ADDS as u64 / 4),
        "HAProxy should spread one connection's Adds over both adders, served {served:?}"
    );
    for totaler in [cluster.addr(31), cluster.addr(32)] {
        testkit::eventually(
            Duration::from_secs(30),
            "every totaler's GET /sum to equal the sum of the Adds",
            || async move { (sum_at(totaler).await == expected).then_some(()) },
        )
        .await;
    }
    cluster.run(&["down"], Duration::from_secs(120)).await;
    database.drop_now().await.expect("drop the test database");
}

/// The adder's count of gRPC Adds answered OK (no series yet: none).
async fn served(http: SocketAddr) -> u64 {
    let (_, text) = testkit::http::get(http, "/metrics")
        .await
        .expect("the adder's /metrics");
    testkit::metrics::sample(
        &text,
        r#"adder_requests_total{code="ok",method="grpc_add"}"#,
    )
    .unwrap_or(0.0) as u64
}

/// One run of the script, with its directory, ports and node names; brought
/// down (and its directory removed) when dropped, whatever the test did.
struct Cluster {
    dir: PathBuf,
    base: u16,
    name: String,
    database_url: String,
    bin_dir: PathBuf,
}

impl Cluster {
    fn new(database_url: &str) -> Self {
        Self {
            dir: temp_dir("cluster"),
            base: testkit::free_port_block(PORT_SPAN).expect("a block of free ports"),
            name: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            database_url: database_url.to_owned(),
            bin_dir: bin_dir(),
        }
    }

    fn addr(&self, offset: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + offset))
    }

    fn command(&self, args: &[&str]) -> Command {
        // Guarded: if this test process dies, the sentinel stops what the
        // script detached (the nodes, adders, totalers, HAProxy, Prometheus).
        let mut command = Command::new(repo_root().join("scripts/cluster"));
        testkit::sentinel::guard(&mut command)
            .args(args)
            .env("CLUSTER_DIR", &self.dir)
            .env("CLUSTER_NAME", &self.name)
            .env("CLUSTER_PORT_BASE", self.base.to_string())
            .env("DATABASE_URL", &self.database_url)
            .env("TALLY_BIN_DIR", &self.bin_dir)
            .env_remove("SUM_FILE")
            .env_remove("RABBITMQ_ERLANG_COOKIE_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `scripts/cluster ARGS` to success within `limit`.
    async fn run(&self, args: &[&str], limit: Duration) {
        let child = self.command(args).spawn().expect("start scripts/cluster");
        let what = format!("scripts/cluster {}", args.join(" "));
        let (output, took) = testkit::process::output_within(child, limit, &what).await;
        eprintln!("{what} took {took:?}");
        assert!(
            output.status.success(),
            "{what} failed ({}); logs in {}:\n{}{}",
            output.status,
            self.dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command(&["down"]).status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

/// This build's binaries: the totaler under test and, next to it, an adder
/// built by cargo now (a no-op when `cargo test --workspace` built it).
fn bin_dir() -> PathBuf {
    let totaler = Path::new(env!("CARGO_BIN_EXE_totaler"));
    let dir = totaler.parent().expect("a directory").to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--locked", "-p", "adder", "--bin", "adder"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p adder failed");
    assert!(
        dir.join("adder").is_file(),
        "no adder next to {}",
        totaler.display()
    );
    dir
}
