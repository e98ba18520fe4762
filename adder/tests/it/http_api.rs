//! The HTTP front end's documented answers: `POST /add` is 503 while
//! PostgreSQL is down and works again after, `replayed: true` on a retry
//! with the same request id, 413 past 4096 bytes, the exact 409 body; and
//! `/readyz` is 200 while the outbox answers, the broker down or not (its
//! body says which), and 503 while PostgreSQL is down.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{Proxy, database, proxy::target_of};

use crate::support::{config, http, outbox_counts, pool, spawn_adder};

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("a JSON body ({e}): {body}"))
}

#[tokio::test]
async fn http_add_replays_a_retry_refuses_a_reused_id_and_an_oversized_body() {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("http-api"),
    ))
    .await;
    let post = |body: String| async move { http(adder.http, "POST", "/add", &body).await };
    let (status, first) = post(r#"{"a": 5, "b": 6, "request_id": "h1"}"#.into())
        .await
        .expect("answer");
    assert_eq!(status, 200, "{first}");
    let first = parse(&first);
    assert_eq!(first["replayed"], json!(false), "{first}");
    let (status, again) = post(r#"{"a": 5, "b": 6, "request_id": "h1"}"#.into())
        .await
        .expect("answer");
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        parse(&again),
        json!({"sum": 11, "outbox_id": first["outbox_id"], "replayed": true}),
        "a retry returns the first answer"
    );

    let (status, conflict) = post(r#"{"a": 5, "b": 7, "request_id": "h1"}"#.into())
        .await
        .expect("answer");
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(
        parse(&conflict),
        json!({"error": r#"request_id "h1" was already used with other numbers (a = 5, b = 6)"#}),
    );

    let oversized = format!(
        r#"{{"a": 1, "b": 2, "request_id": "{}"}}"#,
        "x".repeat(4100)
    );
    let (status, body) = post(oversized).await.expect("answer");
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        parse(&body),
        json!({"error": "body larger than 4096 bytes"})
    );
    let (status, body) = post(format!(r#"{{"a": 1, "b": 2}}{}"#, " ".repeat(4080)))
        .await
        .expect("answer");
    assert_eq!(status, 200, "4096 bytes are accepted: {body}");
    assert_eq!(
        outbox_counts(&pool(&db).await).await.0,
        2,
        "the retry, the conflict and the oversized body wrote nothing"
    );
    adder.stop().await;
}

#[tokio::test]
async fn http_add_is_503_while_postgres_is_down_and_works_again_after() {
    let db = database::fresh().await;
    let proxy = Proxy::start(target_of(&db)).await;
    let adder = spawn_adder(config(
        &proxy.url(&db),
        &testkit::amqp_url(),
        &testkit::unique_queue("http-pgdown"),
    ))
    .await;
    let post = || http(adder.http, "POST", "/add", r#"{"a": 1, "b": 2}"#);
    assert_eq!(post().await.expect("answer").0, 200);
    proxy.cut();
    let (status, body) = post().await.expect("an answer while PostgreSQL is down");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        parse(&body),
        json!({"error": "the outbox database is unavailable, retry later"})
    );
    proxy.restore();
    testkit::eventually(
        Duration::from_secs(20),
        "POST /add to work again",
        || async { post().await.filter(|(status, _)| *status == 200) },
    )
    .await;
    assert_eq!(outbox_counts(&pool(&db).await).await.0, 2);
    adder.stop().await;
}

#[tokio::test]
async fn readyz_is_200_without_the_broker_and_says_so_and_503_without_the_database() {
    let db = database::fresh().await;
    let postgres = Proxy::start(target_of(&db)).await;
    let broker = Proxy::start(target_of(&testkit::amqp_url())).await;
    let adder = spawn_adder(config(
        &postgres.url(&db),
        &broker.url(&testkit::amqp_url()),
        &testkit::unique_queue("readyz-broker"),
    ))
    .await;
    let readyz = |want: Value| async move {
        http(adder.http, "GET", "/readyz", "")
            .await
            .map(|(status, body)| (status, parse(&body)))
            .filter(|(_, body)| *body == want)
    };
    let up = json!({"database": true, "broker": true});
    let broker_down = json!({"database": true, "broker": false});
    let database_down = json!({"database": false, "broker": true});
    let (status, _) =
        testkit::eventually(Duration::from_secs(20), "ready", || readyz(up.clone())).await;
    assert_eq!(status, 200);
    broker.cut();
    let (status, _) = testkit::eventually(
        Duration::from_secs(20),
        "the broker down in the body",
        || readyz(broker_down.clone()),
    )
    .await;
    assert_eq!(
        status, 200,
        "an adder whose outbox commits is ready without the broker"
    );
    let (status, body) = http(adder.http, "POST", "/add", r#"{"a": 1, "b": 2}"#)
        .await
        .expect("an answer");
    assert_eq!(
        status, 200,
        "Adds are taken while the broker is down: {body}"
    );
    broker.restore();
    let (status, _) = testkit::eventually(Duration::from_secs(20), "the broker back", || {
        readyz(up.clone())
    })
    .await;
    assert_eq!(status, 200);
    postgres.cut();
    let (status, _) = testkit::eventually(
        Duration::from_secs(20),
        "the database down in the body",
        || readyz(database_down.clone()),
    )
    .await;
    assert_eq!(
        status, 503,
        "an adder whose outbox cannot commit is not ready"
    );
    postgres.restore();
    let (status, _) = testkit::eventually(Duration::from_secs(20), "ready again", || {
        readyz(up.clone())
    })
    .await;
    assert_eq!(status, 200);
    adder.stop().await;
}
