//! SIGTERM on the real binary under load: it exits 0 in bounded time and
//! every Add it acknowledged is in the outbox.

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use proto::tally::v1::adder_client::AdderClient;
use testkit::{database, free_port};

use crate::support::{call, pool, wait_for_http};

#[tokio::test]
async fn sigterm_under_load_loses_no_acknowledged_add() {
    let db = database::fresh().await;
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_adder"))
        .env("DATABASE_URL", &db)
        .env("AMQP_URL", testkit::amqp_url())
        .env("TALLY_QUEUE", testkit::unique_queue("sigterm"))
        .env("ADDER_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("ADDER_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the adder binary");
    wait_for_http(format!("127.0.0.1:{http}").parse().expect("addr")).await;

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for worker in 0..8 {
        let acknowledged = acknowledged.clone();
        let mut client = AdderClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .expect("connect");
        load.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{worker}-{i}");
                match call(&mut client, i, worker, &id).await {
                    Ok(_) => acknowledged.lock().expect("lock").push(id),
                    Err(_) => break,
                }
            }
        }));
    }
    testkit::eventually(Duration::from_secs(60), "200 acknowledged Adds", || {
        let acknowledged = acknowledged.clone();
        async move { (acknowledged.lock().expect("lock").len() >= 200).then_some(()) }
    })
    .await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        status.success(),
        "the adder exits 0 on SIGTERM, got {status:?}"
    );
    for task in load {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }

    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() > 100,
        "the load ran ({} Adds)",
        acknowledged.len()
    );
    let recorded: Vec<String> = sqlx::query_scalar("SELECT request_id FROM outbox")
        .fetch_all(&pool(&db).await)
        .await
        .expect("read the outbox");
    let recorded: std::collections::HashSet<String> = recorded.into_iter().collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not recorded: {lost:?}");
}
