//! Starting while a server is away, and secrets in logs: an adder started
//! while PostgreSQL is unreachable works once it is reachable (and should
//! serve health and answer UNAVAILABLE meanwhile: see the ignored bug test);
//! the real binary, at RUST_LOG=debug through failures that log, never
//! writes the password of DATABASE_URL or AMQP_URL.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use testkit::{Proxy, database, free_port, process, proxy::target_of};
use tonic::Code;

use crate::support::{TestAdder, call, config, http, start_adder, wait_for_http};

#[tokio::test]
async fn adder_started_while_postgres_is_unreachable_works_once_it_is_reachable() {
    let (proxy, adder) = adder_with_postgres_cut("start-pgdown").await;
    testkit::eventually(
        Duration::from_secs(20),
        "the adder to try PostgreSQL while it is unreachable",
        || async { (proxy.refused() >= 2).then_some(()) },
    )
    .await;
    proxy.restore();
    wait_for_http(adder.http).await;
    let response = call(&mut adder.client().await, 20, 22, "")
        .await
        .expect("Add once PostgreSQL is reachable");
    assert_eq!(response.sum, 42);
    adder.stop().await;
}

#[tokio::test]
async fn adder_started_while_postgres_is_unreachable_serves_health_and_answers_unavailable() {
    let (proxy, adder) = adder_with_postgres_cut("start-pgdown-health").await;
    let (status, body) = http(adder.http, "GET", "/healthz", "")
        .await
        .expect("/healthz answers while PostgreSQL is unreachable");
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(adder.http, "GET", "/readyz", "")
        .await
        .expect("/readyz answers");
    assert_eq!(status, 503);
    let mut client = tokio::time::timeout(Duration::from_secs(5), adder.client())
        .await
        .expect("gRPC accepts a connection");
    let status = tokio::time::timeout(Duration::from_secs(5), call(&mut client, 1, 1, ""))
        .await
        .expect("Add answers within 5 s")
        .expect_err("no outbox, no Add");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    proxy.restore();
    adder.stop().await;
}

/// Runs the adder binary with `database_url` and `amqp_url` at RUST_LOG=debug
/// for `settle` (long enough for a failure to be logged), then SIGTERM;
/// returns everything it wrote.
async fn logs_of_adder(database_url: &str, amqp_url: &str, settle: Duration) -> String {
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_adder"))
        .env("DATABASE_URL", database_url)
        .env("AMQP_URL", amqp_url)
        .env("TALLY_QUEUE", testkit::unique_queue("secret"))
        .env("ADDER_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("ADDER_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the adder binary");
    tokio::time::sleep(settle).await;
    process::terminate(child.id());
    let (output, _) =
        process::output_within(child, Duration::from_secs(15), "the adder after SIGTERM").await;
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn the_adder_never_logs_the_passwords_of_its_urls() {
    let db = database::fresh().await;
    // A wrong PostgreSQL password: the outbox cannot open, and says so.
    let db_secret = "Db-Secret-7f3a9";
    let wrong_db = db.replacen("tally:tally@", &format!("tally:{db_secret}@"), 1);
    assert_ne!(wrong_db, db, "TEST_DATABASE_URL has the user tally:tally");
    let logs = logs_of_adder(&wrong_db, &testkit::amqp_url(), Duration::from_secs(2)).await;
    assert!(
        logs.contains("outbox database not ready"),
        "the failure is logged: {logs}"
    );
    assert!(!logs.contains(db_secret), "the password is logged: {logs}");

    // A wrong broker password: the relay cannot connect, and says so.
    let amqp_secret = "Amqp-Secret-9c1e4";
    let wrong_amqp = testkit::amqp_url().replacen(":guest@", &format!(":{amqp_secret}@"), 1);
    assert_ne!(
        wrong_amqp,
        testkit::amqp_url(),
        "TEST_AMQP_URL has guest:guest"
    );
    let logs = logs_of_adder(&db, &wrong_amqp, Duration::from_secs(3)).await;
    assert!(
        logs.contains("relay cannot reach the broker"),
        "the failure is logged: {logs}"
    );
    assert!(
        !logs.contains(amqp_secret),
        "the password is logged: {logs}"
    );
    let (_, db_password) = db
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo.split_once(':').unwrap_or((userinfo, "")))
        .expect("a URL with a user");
    assert!(
        !logs.contains(&format!(":{db_password}@")),
        "the database URL is logged: {logs}"
    );
}

/// An adder on a fresh database reached only through a proxy that is cut:
/// PostgreSQL is unreachable from the start.
async fn adder_with_postgres_cut(queue: &str) -> (Proxy, TestAdder) {
    let db = database::fresh().await;
    let proxy = Proxy::start(target_of(&db)).await;
    proxy.cut();
    let adder = start_adder(config(
        &proxy.url(&db),
        &testkit::amqp_url(),
        &testkit::unique_queue(queue),
    ))
    .await;
    (proxy, adder)
}
