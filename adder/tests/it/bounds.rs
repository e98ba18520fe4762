//! No wait on PostgreSQL is unbounded, against a real server: a commit
//! stuck behind someone's row lock holds no other Add back and ends with a
//! clear error at the statement timeout; a server that stops answering
//! (the proxy holds its replies, the connection stays open) fails the Adds
//! waiting on it within the bound, saying they may have been recorded, and
//! the pool goes on with fresh connections; an Add whose caller has gone
//! before its group starts is not written.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use testkit::{Proxy, database, proxy::target_of};

use adder::outbox::{Bounds, Error, Outbox, Recorded, Settings};
use tokio::task::JoinHandle;

/// An outbox of `max_connections` and `writers` whose statements may take
/// `statement_ms`.
async fn open(
    url: &str,
    max_connections: u32,
    writers: usize,
    statement_ms: u64,
) -> Result<Outbox, Error> {
    let settings = Settings {
        max_connections,
        writers,
        bounds: Bounds {
            statement: Duration::from_millis(statement_ms),
        },
        upgraded: false,
    };
    Outbox::open_with(url, settings).await
}

/// A transaction of the test's own that inserted the request id `id` and
/// stays open: an Add with that id waits on its row lock.
async fn hold_request_id(db: &str, id: &str) -> PgConnection {
    let mut holder = PgConnection::connect(db).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sqlx::query("INSERT INTO outbox (a, b, sum, request_id) VALUES (0, 0, 0, $1)")
        .bind(id)
        .execute(&mut holder)
        .await
        .expect("insert the held id");
    holder
}

/// An Add with the request id "held", which the returned connection holds
/// locked: it waits on that lock, and so does the writer committing it.
async fn stuck_on_a_held_id(
    db: &str,
    outbox: &Outbox,
) -> (PgConnection, JoinHandle<Result<Recorded, Error>>) {
    let holder = hold_request_id(db, "held").await;
    let stuck = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.record(1, 1, 2, Some("held")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    (holder, stuck)
}

async fn rows(db: &str) -> i64 {
    let mut connection = PgConnection::connect(db).await.expect("connect");
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut connection)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_commit_stuck_on_a_row_lock_holds_no_other_add_back() {
    let db = database::fresh().await;
    let outbox = open(&db, 8, 2, 30_000).await.expect("open");
    let (mut holder, stuck) = stuck_on_a_held_id(&db, &outbox).await;
    for i in 0..5 {
        let recorded =
            tokio::time::timeout(Duration::from_secs(5), outbox.record(i, 1, i + 1, None))
                .await
                .unwrap_or_else(|_| panic!("Add {i} waited on the stuck commit"))
                .expect("Add");
        assert_eq!(recorded.sum, i + 1);
    }
    assert!(!stuck.is_finished(), "the held Add still waits on its lock");
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("rollback");
    let held = stuck
        .await
        .expect("join")
        .expect("the held Add, once the lock is gone");
    assert!(!held.replayed);
    assert_eq!(rows(&db).await, 6);
}

#[tokio::test]
async fn a_commit_past_the_statement_timeout_fails_clearly_and_writes_nothing() {
    let db = database::fresh().await;
    let outbox = open(&db, 8, 2, 1_000).await.expect("open");
    let mut holder = hold_request_id(&db, "held").await;
    let failed = tokio::time::timeout(
        Duration::from_secs(10),
        outbox.record(1, 1, 2, Some("held")),
    )
    .await
    .expect("an answer within the bound");
    let error = failed.expect_err("the lock outlived the statement timeout");
    assert!(
        !error.outcome_unknown(),
        "a statement cancelled by its timeout wrote nothing: {error:?}"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("rollback");
    let retried = outbox
        .record(1, 1, 2, Some("held"))
        .await
        .expect("the retry");
    assert!(!retried.replayed, "the failed attempt wrote nothing");
    assert_eq!(rows(&db).await, 1);
}

#[tokio::test]
async fn a_server_that_stops_answering_fails_its_adds_within_the_bound_and_the_pool_recovers() {
    let db = database::fresh().await;
    let proxy = Proxy::start(target_of(&db)).await;
    let outbox = open(&proxy.url(&db), 2, 1, 1_000).await.expect("open");
    outbox.record(1, 1, 2, None).await.expect("a first Add");
    for round in 0..3 {
        proxy.hold_replies();
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            outbox.record(round, 0, round, None),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: the Add waited past its bound"));
        // The pool's check of its connection gets no answer either: the
        // Add was never sent (`Unreached`), or it was and got none.
        let error = waited.expect_err("no reply came");
        assert!(
            matches!(error, Error::Unreached(_) | Error::Unanswered(_)),
            "round {round}: {error:?}"
        );
        proxy.release_replies();
        let recorded = tokio::time::timeout(Duration::from_secs(10), outbox.record(7, 7, 14, None))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no Add after the replies came back"))
            .expect("an Add on a fresh connection");
        assert_eq!(recorded.sum, 14);
    }
}

#[tokio::test]
async fn a_commit_whose_reply_never_comes_may_have_been_recorded_and_its_retry_replays() {
    let db = database::fresh().await;
    let proxy = Proxy::start(target_of(&db)).await;
    let outbox = open(&proxy.url(&db), 2, 1, 1_000).await.expect("open");
    outbox.record(1, 1, 2, None).await.expect("a first Add");
    // The Add's INSERT is sent and waits on the lock; its reply is held,
    // then the lock goes, and the server commits the Add unheard.
    let mut holder = hold_request_id(&db, "unheard").await;
    let add = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.record(2, 3, 5, Some("unheard")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.hold_replies();
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("rollback");
    let error = tokio::time::timeout(Duration::from_secs(10), add)
        .await
        .expect("an answer within the bound")
        .expect("join")
        .expect_err("no reply came");
    assert!(matches!(error, Error::Unanswered(_)), "{error:?}");
    assert!(error.outcome_unknown(), "it may have been recorded");
    proxy.release_replies();
    let retried = outbox
        .record(2, 3, 5, Some("unheard"))
        .await
        .expect("the retry");
    assert!(
        retried.replayed,
        "the unheard Add was recorded: the retry replays it"
    );
    assert_eq!(rows(&db).await, 2);
}

#[tokio::test]
async fn an_add_whose_caller_left_before_its_group_started_is_not_written() {
    let db = database::fresh().await;
    let outbox = open(&db, 8, 1, 30_000).await.expect("open");
    // The one writer is stuck on the held id; what queues behind it waits.
    let (mut holder, stuck) = stuck_on_a_held_id(&db, &outbox).await;
    for i in 0..5 {
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), outbox.record(i, 0, i, None)).await;
        assert!(
            gave_up.is_err(),
            "Add {i} cannot commit while the writer is stuck"
        );
    }
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("rollback");
    stuck.await.expect("join").expect("the held Add");
    outbox.record(9, 9, 18, None).await.expect("a later Add");
    assert_eq!(rows(&db).await, 2, "the five abandoned Adds wrote nothing");
}
