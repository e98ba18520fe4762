//! Several outbox databases (`DATABASE_URL` listing two fresh databases on
//! the test server): request ids routed by their hash, the same in every
//! adder; a list in another order refused; Adds without a request id spread
//! over both and kept going while one database refuses connections.

use std::time::Duration;

use adder::{Listeners, home};
use sqlx::{Connection, PgConnection, PgPool};
use testkit::{database, eventually, unique_queue};
use tokio::net::TcpListener;
use tonic::Code;

use crate::support::{TestAdder, call, config, http, pool, spawn_adder};

/// Two fresh databases, and the URL list naming them in that order.
async fn two_databases() -> ([String; 2], String) {
    let urls = [database::fresh().await, database::fresh().await];
    let list = format!("{} {}", urls[0], urls[1]);
    (urls, list)
}

/// Starts an adder on `list` and waits until both its databases are open.
async fn spawn_on_both(list: &str, queue: &str) -> TestAdder {
    spawn_open(config(list, &testkit::amqp_url(), queue)).await
}

/// Starts an adder of two databases and waits until both are open.
async fn spawn_open(config: adder::Config) -> TestAdder {
    let adder = spawn_adder(config).await;
    eventually(Duration::from_secs(30), "both databases open", || async {
        http(adder.http, "GET", "/readyz", "")
            .await
            .filter(|(_, body)| body.contains(r#""databases":[true,true]"#))
    })
    .await;
    adder
}

/// The request ids (of `prefix-0..`) whose home of two is `index`.
fn ids_homed_at(prefix: &str, index: usize, count: usize) -> Vec<String> {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .filter(|id| home(id, 2) == index)
        .take(count)
        .collect()
}

async fn rows_with_id(pool: &PgPool, request_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE request_id = $1")
        .bind(request_id)
        .fetch_one(pool)
        .await
        .expect("count the request id's rows")
}

async fn rows_without_id(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE request_id IS NULL")
        .fetch_one(pool)
        .await
        .expect("count the id-less rows")
}

#[tokio::test]
async fn a_request_id_lands_on_its_home_database_and_its_retry_through_another_adder_is_replayed() {
    let (urls, list) = two_databases().await;
    let queue = unique_queue("outboxes-home");
    let first = spawn_on_both(&list, &queue).await;
    let second = spawn_on_both(&list, &queue).await;
    let pools = [pool(&urls[0]).await, pool(&urls[1]).await];
    let (mut a, mut b) = (first.client().await, second.client().await);
    for n in 0..12 {
        let id = format!("home-{n}");
        let recorded = call(&mut a, n, 1, &id).await.expect("the first attempt");
        let retried = call(&mut b, n, 1, &id).await.expect("the retry");
        assert!(!recorded.replayed && retried.replayed, "{id}");
        assert_eq!(recorded.outbox_id, retried.outbox_id, "{id}");
        let at = home(&id, 2);
        assert_eq!(rows_with_id(&pools[at], &id).await, 1, "{id} on its home");
        assert_eq!(rows_with_id(&pools[1 - at], &id).await, 0, "{id} elsewhere");
    }
    for (index, pool) in pools.iter().enumerate() {
        let ids: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await
            .expect("count");
        assert!(ids > 0, "database {} got some of the ids", index + 1);
    }
    first.stop().await;
    second.stop().await;
}

/// Runs an adder on `list` until it fails (or 30 s pass); its error.
async fn refusal(list: &str, reshard: bool) -> Option<String> {
    let mut config = config(list, &testkit::amqp_url(), &unique_queue("outboxes-order"));
    config.outbox_reshard = reshard;
    let listeners = Listeners {
        grpc: TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC"),
        http: TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP"),
    };
    let run = adder::run(
        config,
        listeners,
        tokio::time::sleep(Duration::from_secs(30)),
    );
    run.await.err().map(|e| format!("{e:#}"))
}

#[tokio::test]
async fn a_list_in_another_order_or_of_another_length_is_refused_naming_both_places() {
    let (urls, list) = two_databases().await;
    spawn_on_both(&list, &unique_queue("outboxes-order"))
        .await
        .stop()
        .await;

    let swapped = format!("{} {}", urls[1], urls[0]);
    let error = refusal(&swapped, false)
        .await
        .expect("another order is refused");
    assert!(swapped_places(&error), "{error}");
    let error = refusal(&urls[1], false)
        .await
        .expect("another count is refused");
    assert!(
        error.contains("recorded as database 2 of 2") && error.contains("makes it database 1 of 1"),
        "{error}"
    );
    let twice = format!("{} {}", urls[0], urls[0]);
    let error = refusal(&twice, false)
        .await
        .expect("a database listed twice is refused");
    assert!(error.contains("database 2 of 2"), "{error}");

    // Resharding on purpose records the new order; then it is the one kept.
    let resharded = spawn_open({
        let mut config = config(
            &swapped,
            &testkit::amqp_url(),
            &unique_queue("outboxes-order"),
        );
        config.outbox_reshard = true;
        config
    })
    .await;
    resharded.stop().await;
    let error = refusal(&list, false)
        .await
        .expect("the old order is now refused");
    assert!(swapped_places(&error), "{error}");
}

#[tokio::test]
async fn another_database_at_a_listed_place_is_refused_though_place_and_count_agree() {
    let (urls, list) = two_databases().await;
    spawn_on_both(&list, &unique_queue("outboxes-members"))
        .await
        .stop()
        .await;
    // A fresh database in the second place: position 2 of 2 is new to it,
    // and the first database is still position 1 of 2.
    let other = database::fresh().await;
    let error = refusal(&format!("{} {other}", urls[0]), false)
        .await
        .expect("another database in the second place is refused");
    assert!(error.contains("DATABASE_URL lists"), "{error}");
}

#[tokio::test]
async fn an_adder_forgotten_during_a_reshard_refuses_request_ids_and_leaves_readiness() {
    let (urls, list) = two_databases().await;
    let queue = unique_queue("outboxes-forgotten");
    let forgotten = spawn_on_both(&list, &queue).await;
    let client = forgotten.client().await;
    call(&mut client.clone(), 1, 1, "before-the-reshard")
        .await
        .expect("a request id is taken before the reshard");
    let resharded = spawn_open({
        let mut config = config(
            &format!("{} {}", urls[1], urls[0]),
            &testkit::amqp_url(),
            &queue,
        );
        config.outbox_reshard = true;
        config
    })
    .await;
    let mut n = 0;
    let refused = eventually(
        Duration::from_secs(30),
        "the forgotten adder refuses request ids",
        || {
            n += 1;
            let mut client = client.clone();
            async move {
                call(&mut client, n, 1, &format!("after-the-reshard-{n}"))
                    .await
                    .err()
            }
        },
    )
    .await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("disagrees"), "{refused:?}");
    let (status, body) = http(forgotten.http, "GET", "/readyz", "")
        .await
        .expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("DATABASE_URL lists"), "{body}");
    // Adds without a request id need no list: still taken.
    call(&mut client.clone(), 1, 2, "")
        .await
        .expect("an Add without a request id is still taken");
    // The resharding adder takes request ids under the new list.
    call(&mut resharded.client().await, 1, 3, "after-the-reshard")
        .await
        .expect("the resharded adder takes request ids");
    forgotten.stop().await;
    resharded.stop().await;
}

/// Whether `error` names a database recorded at one place of two and
/// listed at the other (either database of a swapped pair may be refused
/// first).
fn swapped_places(error: &str) -> bool {
    let names = |stored: u32, listed: u32| {
        error.contains(&format!("recorded as database {stored} of 2"))
            && error.contains(&format!("makes it database {listed} of 2"))
    };
    names(2, 1) || names(1, 2)
}

/// Makes `url`'s database refuse new connections and closes those open:
/// what a lost database looks like to the adder. Undone by `restore`.
async fn take_away(url: &str) {
    let name = url.rsplit('/').next().expect("a database name");
    let mut admin = PgConnection::connect(&database::base_url())
        .await
        .expect("connect to the server's own database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )))
    .execute(&mut admin)
    .await
    .expect("take the database away");
}

async fn restore(url: &str) {
    let name = url.rsplit('/').next().expect("a database name");
    let mut admin = PgConnection::connect(&database::base_url())
        .await
        .expect("connect to the server's own database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .expect("give the database back");
}

#[tokio::test]
async fn adds_without_a_request_id_reach_both_databases_and_keep_succeeding_while_one_is_gone() {
    let (urls, list) = two_databases().await;
    let adder = spawn_on_both(&list, &unique_queue("outboxes-gone")).await;
    let pools = [pool(&urls[0]).await, pool(&urls[1]).await];
    let mut client = adder.client().await;
    for n in 0..20 {
        call(&mut client, n, 0, "").await.expect("an id-less Add");
    }
    let before = [
        rows_without_id(&pools[0]).await,
        rows_without_id(&pools[1]).await,
    ];
    assert_eq!(before, [10, 10], "round robin over both databases");

    take_away(&urls[1]).await;
    // An Add in flight when the connections died may fail (it may or may
    // not have committed); once the adder sees the database gone, every
    // id-less Add goes to the other one.
    eventually(
        Duration::from_secs(30),
        "id-less Adds to succeed again",
        || {
            let mut client = client.clone();
            async move {
                for n in 0..5 {
                    call(&mut client, n, 0, "").await.ok()?;
                }
                Some(())
            }
        },
    )
    .await;
    let on_first = rows_without_id(&pools[0]).await;
    for n in 0..20 {
        call(&mut client, n, 0, "")
            .await
            .expect("an id-less Add while database 2 is gone");
    }
    assert_eq!(rows_without_id(&pools[0]).await, on_first + 20);
    for id in ids_homed_at("gone", 1, 3) {
        let refused = call(&mut client, 1, 1, &id)
            .await
            .expect_err("its home is gone");
        assert_eq!(refused.code(), Code::Unavailable, "{id}: {refused:?}");
    }
    for id in ids_homed_at("gone", 0, 3) {
        call(&mut client, 1, 1, &id).await.expect("its home is up");
    }

    restore(&urls[1]).await;
    eventually(
        Duration::from_secs(30),
        "database 2 to take Adds again",
        || {
            let mut client = client.clone();
            let id = ids_homed_at("back", 1, 1).remove(0);
            async move { call(&mut client, 1, 1, &id).await.ok() }
        },
    )
    .await;
    adder.stop().await;
}
