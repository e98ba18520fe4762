//! GET /sum renders the exact total at any `i128` size: past `u64::MAX`,
//! below `i64::MIN`, and at the extremes of `i128`, as a plain JSON number.

use testkit::http::get;

use crate::support::{config, spawn_totaler, temp_dir};

/// Starts a totaler on a ledger holding `total` and returns GET /sum's reply.
async fn sum_reply_for(test: &str, total: i128) -> (u16, String) {
    let path = temp_dir(test).join("sum.txt");
    std::fs::write(&path, format!("{total}\ntally-ledger v1\n")).expect("write the ledger");
    let queue = testkit::unique_queue(test);
    let totaler = spawn_totaler(config(&testkit::amqp_url(), &queue, &path)).await;
    let reply = get(totaler.http, "/sum").await.expect("GET /sum answers");
    totaler.stop().await;
    testkit::Broker::connect(&queue).await.delete().await;
    reply
}

#[tokio::test]
async fn sum_past_u64_is_rendered_exactly() {
    let total = 3 * i128::from(i64::MAX);
    assert_eq!(total.to_string(), "27670116110564327421");
    let (status, body) = sum_reply_for("sum-big", total).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"sum":27670116110564327421}"#);
}

#[tokio::test]
async fn sum_below_i64_min_is_rendered_exactly() {
    let total = -3 * i128::from(i64::MAX);
    let (status, body) = sum_reply_for("sum-negative", total).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"sum":-27670116110564327421}"#);
}

#[tokio::test]
async fn sum_at_the_ends_of_i128_is_rendered_exactly() {
    for (test, total) in [("sum-max", i128::MAX), ("sum-min", i128::MIN)] {
        let (status, body) = sum_reply_for(test, total).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!(r#"{{"sum":{total}}}"#));
        let parsed: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert!(parsed["sum"].is_number(), "{body}");
    }
}
