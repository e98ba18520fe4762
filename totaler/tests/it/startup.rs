//! Starting while the broker is away, and secrets in logs: a totaler
//! started while RabbitMQ is unreachable serves HTTP, is not ready, and
//! consumes once the broker is reachable; the real binary, at RUST_LOG=debug
//! through a failure that logs, never writes the password of AMQP_URL.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use testkit::{Broker, Proxy, free_port, process, proxy::target_of};
use uuid::Uuid;

use crate::support::{config, file_total, get, message, spawn_totaler, temp_dir};

#[tokio::test]
async fn totaler_started_while_the_broker_is_unreachable_consumes_once_it_is_reachable() {
    let queue = testkit::unique_queue("start-down");
    let broker = Broker::connect(&queue).await;
    broker.publish(&message(Uuid::new_v4(), 1, 33)).await;
    let proxy = Proxy::start(target_of(&testkit::amqp_url())).await;
    proxy.cut();
    let path = temp_dir("start-down").join("sum.txt");
    let totaler = spawn_totaler(config(&proxy.url(&testkit::amqp_url()), &queue, &path)).await;
    testkit::eventually(
        Duration::from_secs(20),
        "the totaler to try the broker while it is unreachable",
        || async { (proxy.refused() >= 2).then_some(()) },
    )
    .await;
    let (status, body) = get(totaler.http, "/readyz").await.expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body, serde_json::json!({"broker": false, "ledger": true}));
    assert_eq!(totaler.sum().await, 0);
    proxy.restore();
    testkit::eventually(Duration::from_secs(30), "the message consumed", || async {
        (totaler.sum().await == 33).then_some(())
    })
    .await;
    testkit::eventually(Duration::from_secs(10), "ready", || async {
        get(totaler.http, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!(file_total(&path), 33);
    totaler.stop().await;
    assert_eq!(broker.count_settled(&queue).await, 0, "acked");
    broker.delete().await;
}

#[tokio::test]
async fn the_totaler_never_logs_the_password_of_its_amqp_url() {
    let queue = testkit::unique_queue("secret");
    let path = temp_dir("secret").join("sum.txt");
    let secret = "Amqp-Secret-41d7c";
    let wrong = testkit::amqp_url().replacen(":guest@", &format!(":{secret}@"), 1);
    assert_ne!(wrong, testkit::amqp_url(), "TEST_AMQP_URL has guest:guest");
    let child = Command::new(env!("CARGO_BIN_EXE_totaler"))
        .env("AMQP_URL", &wrong)
        .env("TALLY_QUEUE", &queue)
        .env("SUM_FILE", &path)
        .env("TOTALER_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the totaler binary");
    tokio::time::sleep(Duration::from_secs(3)).await;
    process::terminate(child.id());
    let (output, _) =
        process::output_within(child, Duration::from_secs(15), "the totaler after SIGTERM").await;
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        logs.contains("consumer cannot reach the broker"),
        "the failure is logged: {logs}"
    );
    assert!(!logs.contains(secret), "the password is logged: {logs}");
}
