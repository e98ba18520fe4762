//! Add: the sum, its outbox row, idempotency, overflow, outages, HTTP,
//! health and reflection.

use std::time::Duration;

use testkit::{Proxy, database, proxy::target_of};
use tonic::Code;

use crate::support::{call, config, http, outbox_counts, pool, spawn_adder};

#[tokio::test]
async fn add_returns_the_sum_and_commits_its_row() {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("add"),
    ))
    .await;
    let response = call(&mut adder.client().await, 40, 2, "")
        .await
        .expect("Add");
    assert_eq!(response.sum, 42);
    let row: (i64, i64, i64) = sqlx::query_as("SELECT a, b, sum FROM outbox WHERE id = $1")
        .bind(response.outbox_id)
        .fetch_one(&pool(&db).await)
        .await
        .expect("the row is committed before the answer");
    assert_eq!(row, (40, 2, 42));
    adder.stop().await;
}

#[tokio::test]
async fn overflow_is_invalid_argument_and_writes_nothing() {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("overflow"),
    ))
    .await;
    let mut client = adder.client().await;
    for (a, b) in [(i64::MAX, 1), (i64::MIN, -1)] {
        let status = call(&mut client, a, b, "").await.expect_err("overflow");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("overflows"),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        call(&mut client, i64::MAX, i64::MIN, "")
            .await
            .expect("fits")
            .sum,
        -1
    );
    assert_eq!(outbox_counts(&pool(&db).await).await.0, 1);
    adder.stop().await;
}

#[tokio::test]
async fn retry_with_the_same_request_id_records_once() {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("retry"),
    ))
    .await;
    let mut client = adder.client().await;
    let first = call(&mut client, 2, 3, "req-1").await.expect("first");
    let again = call(&mut client, 2, 3, "req-1").await.expect("retry");
    assert_eq!((first.sum, first.replayed), (5, false));
    assert_eq!(
        (again.sum, again.outbox_id, again.replayed),
        (5, first.outbox_id, true)
    );
    call(&mut client, 2, 3, "").await.expect("no id");
    call(&mut client, 2, 3, "").await.expect("no id again");
    assert_eq!(
        outbox_counts(&pool(&db).await).await.0,
        3,
        "an empty id counts every call"
    );
    adder.stop().await;
}

#[tokio::test]
async fn request_id_reused_with_other_numbers_is_already_exists() {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("conflict"),
    ))
    .await;
    let mut client = adder.client().await;
    call(&mut client, 2, 3, "req-2").await.expect("first");
    let status = call(&mut client, 2, 4, "req-2")
        .await
        .expect_err("conflict");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("req-2"), "{}", status.message());
    assert_eq!(outbox_counts(&pool(&db).await).await.0, 1);
    adder.stop().await;
}

#[tokio::test]
async fn postgres_down_is_unavailable_then_recovers() {
    let db = database::fresh().await;
    let proxy = Proxy::start(target_of(&db)).await;
    let adder = spawn_adder(config(
        &proxy.url(&db),
        &testkit::amqp_url(),
        &testkit::unique_queue("pgdown"),
    ))
    .await;
    let mut client = adder.client().await;
    call(&mut client, 1, 1, "").await.expect("up");
    proxy.cut();
    let status = call(&mut client, 1, 2, "").await.expect_err("down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let (code, _) = http(adder.http, "GET", "/readyz", "")
        .await
        .expect("readyz answers");
    assert_eq!(code, 503);
    proxy.restore();
    let sum = testkit::eventually(Duration::from_secs(20), "Adds to succeed again", || {
        let mut client = client.clone();
        async move { call(&mut client, 1, 3, "").await.ok() }
    })
    .await;
    assert_eq!(sum.sum, 4);
    adder.stop().await;
}

#[tokio::test]
async fn http_add_follows_the_same_rules() {
    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("http"),
    ))
    .await;
    let post = |body: &'static str| http(adder.http, "POST", "/add", body);
    let (status, body) = post(r#"{"a": 5, "b": 6, "request_id": "h1"}"#)
        .await
        .expect("answer");
    assert_eq!(status, 200);
    assert!(body.contains(r#""sum":11"#), "{body}");
    assert_eq!(
        post(r#"{"a": 5, "b": 7, "request_id": "h1"}"#)
            .await
            .expect("answer")
            .0,
        409
    );
    let (status, body) = post(r#"{"a": 5"#).await.expect("answer");
    assert_eq!(status, 400);
    assert!(body.contains(r#""error""#), "{body}");
    let (status, body) = post(r#"{"a": 9223372036854775807, "b": 1}"#)
        .await
        .expect("answer");
    assert_eq!(status, 400);
    assert!(body.contains("overflows"), "{body}");
    assert_eq!(
        http(adder.http, "GET", "/nope", "")
            .await
            .expect("answer")
            .0,
        404
    );
    let (status, metrics) = http(adder.http, "GET", "/metrics", "")
        .await
        .expect("answer");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"adder_requests_total{code="ok",method="http_add"} 1"#),
        "{metrics}"
    );
    assert_eq!(outbox_counts(&pool(&db).await).await.0, 1);
    adder.stop().await;
}

#[tokio::test]
async fn grpc_health_and_reflection_answer() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let db = database::fresh().await;
    let adder = spawn_adder(config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("health"),
    ))
    .await;
    let endpoint = format!("http://{}", adder.grpc);
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "tally.v1.Adder".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a response")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    assert!(
        list.service.iter().any(|s| s.name == "tally.v1.Adder"),
        "{list:?}"
    );
    adder.stop().await;
}
