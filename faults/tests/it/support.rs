//! The real adder and totaler binaries as a pair on the test PostgreSQL and
//! RabbitMQ, for the end-to-end tests beside the fault suite, and the real
//! `totaler verify`; the options of a fault-suite mode's test, and its
//! verdict, which names the seed and where the failed run's logs are.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use faults::{
    Finished, Options, Verdict,
    process::{Service, binary},
};
use proto::tally::v1::adder_client::AdderClient;
use tonic::transport::Channel;

/// An adder and a totaler on one database, queue and sum file.
pub struct Pair {
    pub adder: Service,
    pub totaler: Service,
    grpc: SocketAddr,
}

impl Pair {
    /// Both services, not started; `adder_env` is added to the adder's
    /// environment. Logs go to `dir`.
    pub fn new(
        database: &str,
        queue: &str,
        sum_file: &Path,
        dir: &Path,
        adder_env: &[(&str, &str)],
    ) -> Self {
        let [grpc, adder_http, totaler_http] = [(); 3].map(|()| local(testkit::free_port()));
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database.to_owned()),
            ("AMQP_URL".into(), testkit::amqp_url()),
            ("TALLY_QUEUE".into(), queue.to_owned()),
            ("ADDER_GRPC_ADDR".into(), grpc.to_string()),
            ("ADDER_HTTP_ADDR".into(), adder_http.to_string()),
        ];
        env.extend(
            adder_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let adder = Service::new("adder", bin("adder"), env, dir, adder_http);
        let totaler = Service::new(
            "totaler",
            bin("totaler"),
            vec![
                ("AMQP_URL".into(), testkit::amqp_url()),
                ("TALLY_QUEUE".into(), queue.to_owned()),
                ("SUM_FILE".into(), sum_file.display().to_string()),
                ("TOTALER_HTTP_ADDR".into(), totaler_http.to_string()),
                // The upgrade test queues a message as a relay from before
                // the user-id check did (none): the upgrade's setting.
                ("TOTALER_PUBLISHERS".into(), "*".to_owned()),
            ],
            dir,
            totaler_http,
        );
        Self {
            adder,
            totaler,
            grpc,
        }
    }

    /// Starts the adder and waits until it is ready (its outbox open), so
    /// its first Add cannot be UNAVAILABLE.
    pub async fn start_adder(&mut self) {
        self.adder.start().await.expect("start the adder");
        let http = self.adder.http;
        testkit::eventually(Duration::from_secs(30), "the adder ready", || async move {
            testkit::http::get(http, "/readyz")
                .await
                .filter(|(status, _)| *status == 200)
        })
        .await;
    }

    pub async fn client(&self) -> AdderClient<Channel> {
        AdderClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect gRPC")
    }
}

/// A fresh directory for one test's sum file and logs.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tally-{test}-{}-{}",
        std::process::id(),
        testkit::free_port()
    ));
    std::fs::create_dir_all(&dir).expect("a directory");
    dir
}

/// Runs `totaler verify --in-flight-secs 0`; whether it passed, and what it printed.
pub fn verify(sum_file: &Path, database: &str) -> (bool, String) {
    let output = Command::new(bin("totaler"))
        .args(["verify", "--in-flight-secs", "0", "--sum-file"])
        .arg(sum_file)
        .args(["--database-url", database])
        .output()
        .expect("run totaler verify");
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    println!("--- totaler verify, {}:\n{report}", output.status);
    (output.status.success(), report)
}

fn bin(name: &str) -> PathBuf {
    binary(name).unwrap_or_else(|e| panic!("the {name} binary: {e:#}"))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The options of a fleet mode's test: `TALLY_FAULTS_*`, faults for
/// `$seconds_variable` seconds (default 30: the first round of every kind
/// runs however long it takes), and a lighter load (three servers of a
/// cluster share the two cores with it).
pub fn fleet_options(seconds_variable: &str) -> Options {
    let mut options = Options::from_env();
    options.seconds = std::env::var(seconds_variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    options.rate = options.rate.min(400);
    options.idless_rate = options.idless_rate.min(200);
    options
}

/// One mode runs at a time: each loads the machine alone, as when each was
/// a test binary of its own (tests of one binary run in parallel).
static ONE_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a mode within `limit` (once no other mode runs) and requires an
/// exact, honest run; a failure names the seed and where the run's logs
/// were kept.
pub async fn require_exact<R: Verdict>(
    options: &Options,
    limit: Duration,
    run: impl Future<Output = anyhow::Result<Finished<R>>>,
) {
    let _alone = ONE_RUN.lock().await;
    let seed = options.seed;
    let finished = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "seed {seed}: the run did not finish within {limit:?}; its logs are under {}",
                faults::run_dir::target_dir()
                    .join("faults-failed")
                    .display()
            )
        })
        .unwrap_or_else(|e| panic!("the run failed: {e:#}"));
    eprintln!("{}", finished.report);
    if let Some(failure) = finished.failure() {
        panic!("{failure}");
    }
}
