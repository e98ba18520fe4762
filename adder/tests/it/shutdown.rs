//! SIGTERM on the real binary under load: it exits 0 within the grace
//! period, every Add it acknowledged is in the outbox, and the Adds that
//! failed failed only after the SIGTERM, as UNAVAILABLE (a server that no
//! longer accepts calls), at most one per client.

use std::{
    collections::HashSet,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use proto::tally::v1::adder_client::AdderClient;
use testkit::{database, free_port, process};
use tonic::Code;

use crate::support::{call, pool, wait_for_http};

/// The documented shutdown grace (`ADDER_SHUTDOWN_GRACE_MS`, 10 s) plus a
/// margin for a loaded 2-core machine.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(13);
const WORKERS: i64 = 8;

/// What the load saw: acknowledged request ids, and each failure with when
/// it came.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    failed: Vec<(String, tonic::Status, Instant)>,
}

#[tokio::test]
async fn sigterm_under_load_exits_within_the_grace_and_loses_no_acknowledged_add() {
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

    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut load = Vec::new();
    for worker in 0..WORKERS {
        let seen = seen.clone();
        let mut client = AdderClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .expect("connect");
        load.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{worker}-{i}");
                let result = call(&mut client, i, worker, &id).await;
                let mut seen = seen.lock().expect("lock");
                match result {
                    Ok(response) => {
                        assert_eq!(response.sum, i + worker, "the sum of {id}");
                        seen.acknowledged.push(id);
                    }
                    Err(status) => {
                        seen.failed.push((id, status, Instant::now()));
                        break;
                    }
                }
            }
        }));
    }
    testkit::eventually(Duration::from_secs(60), "200 acknowledged Adds", || {
        let seen = seen.clone();
        async move { (seen.lock().expect("lock").acknowledged.len() >= 200).then_some(()) }
    })
    .await;
    let terminated = Instant::now();
    process::terminate(child.id());
    let (status, took) =
        process::exit_within(&mut child, SHUTDOWN_BOUND, "the adder after SIGTERM").await;
    assert!(
        status.success(),
        "the adder exits 0 on SIGTERM, got {status:?}"
    );
    println!("the adder exited {took:?} after SIGTERM");
    for task in load {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a load task ends once the adder is gone")
            .expect("a load task does not panic");
    }

    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    assert!(
        seen.acknowledged.len() > 100,
        "the load ran ({} Adds)",
        seen.acknowledged.len()
    );
    assert_eq!(
        seen.failed.len(),
        WORKERS as usize,
        "each client stops at its first failure, once the adder is gone"
    );
    for (id, status, when) in &seen.failed {
        assert!(
            *when >= terminated,
            "Add {id} failed before the SIGTERM: {status:?}"
        );
        // A stopping server fails a call as UNAVAILABLE, or, for a call
        // sent as its graceful GOAWAY (NO_ERROR) crossed it, the client's
        // HTTP/2 layer reports that GOAWAY (tonic: INTERNAL): a call the
        // server never took. Seen once in a run of this suite.
        let refused_by_goaway = status.code() == Code::Internal
            && format!("{status:?}").contains("GoAway(b\"\", NO_ERROR, Remote)");
        assert!(
            status.code() == Code::Unavailable || refused_by_goaway,
            "Add {id} failed as a stopping server fails a call: {status:?}"
        );
    }
    let recorded: Vec<String> = sqlx::query_scalar("SELECT request_id FROM outbox")
        .fetch_all(&pool(&db).await)
        .await
        .expect("read the outbox");
    let recorded: HashSet<String> = recorded.into_iter().collect();
    let lost: Vec<&String> = seen
        .acknowledged
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not recorded: {lost:?}");
}
