//! Request ids the outbox cannot store are refused before the group commit,
//! so one bad id never fails the good Adds committed beside it; the 256-byte
//! limit holds on gRPC and HTTP.

use futures_util::future::join_all;
use testkit::database;
use tonic::Code;

use crate::support::{call, config, http, outbox_counts, pool, spawn_adder};

#[tokio::test]
async fn nul_request_ids_are_invalid_argument_and_never_fail_the_good_adds_beside_them() {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("nul-id"),
    ))
    .await;
    let client = adder.client().await;
    let calls = (0..40).map(|i| {
        let mut client = client.clone();
        let id = if i % 2 == 0 {
            format!("good-{i}-\u{1F600}\u{7}")
        } else {
            format!("bad-{i}\0tail")
        };
        async move { (i, call(&mut client, i, 1, &id).await) }
    });
    let results = join_all(calls).await;
    for (i, result) in &results {
        if i % 2 == 0 {
            let response = result.as_ref().expect("a good Add succeeds");
            assert_eq!(response.sum, i + 1);
        } else {
            let status = result.as_ref().expect_err("a NUL id is refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("NUL"), "{}", status.message());
        }
    }
    let (rows, _, sum) = outbox_counts(&pool(&db).await).await;
    assert_eq!(rows, 20, "exactly the good Adds are recorded");
    assert_eq!(sum, (0..40).step_by(2).map(|i| i + 1).sum::<i64>());
    adder.stop().await;
}

#[tokio::test]
async fn http_nul_request_id_is_400_with_a_json_error() {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("nul-id-http"),
    ))
    .await;
    let (status, body) = http(
        adder.http,
        "POST",
        "/add",
        r#"{"a": 1, "b": 2, "request_id": "x\u0000y"}"#,
    )
    .await
    .expect("answer");
    assert_eq!(status, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert!(
        error["error"].as_str().is_some_and(|e| e.contains("NUL")),
        "{body}"
    );
    assert_eq!(outbox_counts(&pool(&db).await).await.0, 0);
    adder.stop().await;
}

#[tokio::test]
async fn request_ids_over_256_bytes_are_refused_on_grpc_and_http() {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("long-id"),
    ))
    .await;
    let mut client = adder.client().await;
    let longest = "g".repeat(256);
    let too_long = "g".repeat(257);
    // 'é' is two bytes: 129 of them are 258 bytes in 129 characters.
    let too_long_in_bytes = "é".repeat(129);
    call(&mut client, 1, 1, &longest)
        .await
        .expect("256 bytes is allowed");
    for id in [&too_long, &too_long_in_bytes] {
        let status = call(&mut client, 1, 1, id).await.expect_err("too long");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("256"), "{}", status.message());
    }
    let post = |id: &str| {
        let body = format!(r#"{{"a": 2, "b": 2, "request_id": "{id}"}}"#);
        async move { http(adder.http, "POST", "/add", &body).await }
    };
    let (status, body) = post(&"h".repeat(256)).await.expect("answer");
    assert_eq!(status, 200, "{body}");
    for id in [&"h".repeat(257), &too_long_in_bytes] {
        let (status, body) = post(id).await.expect("answer");
        assert_eq!(status, 400, "{body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains("256")),
            "{body}"
        );
    }
    assert_eq!(outbox_counts(&pool(&db).await).await.0, 2);
    adder.stop().await;
}
