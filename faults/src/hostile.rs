//! Hostile inputs: Adds with NUL bytes in their request id beside good
//! Adds, messages published straight to the queue that no relay would send
//! (oversized, or forged with a seq or batch far beyond the outbox), and
//! HTTP requests to the totaler that never finish their headers. Each
//! returns what went wrong as sentences; an empty list is a pass.

use std::{net::SocketAddr, time::Duration};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
};
use proto::tally::v1::AddRequest;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use crate::load::{Tally, client, until_acknowledged};

/// Sends `nul` Adds whose request id holds a NUL byte at the same time as
/// `good` ordinary Adds (with request ids): every NUL one must be refused
/// with INVALID_ARGUMENT and every good one must succeed at once.
pub async fn nul_request_ids(
    grpc: &str,
    label: &str,
    tally: std::sync::Arc<Tally>,
) -> anyhow::Result<Vec<String>> {
    let mut calls = Vec::new();
    for k in 0..40i64 {
        let nul = k % 5 == 0;
        let request = AddRequest {
            a: 7_000 + k,
            b: 11,
            request_id: if nul {
                format!("{label}-nul\0{k}")
            } else {
                format!("{label}-good-{k}")
            },
        };
        let mut client = client(grpc)?;
        let tally = tally.clone();
        calls.push(tokio::spawn(async move {
            let answer = client.add(request.clone()).await;
            match (nul, answer) {
                (true, Err(status)) if status.code() == tonic::Code::InvalidArgument => None,
                (true, Err(status)) => Some(format!(
                    "an Add with a NUL byte in its request id was answered {:?} ({}), not INVALID_ARGUMENT",
                    status.code(),
                    status.message()
                )),
                (true, Ok(response)) => {
                    tally.acknowledge(response.into_inner().sum);
                    Some("an Add with a NUL byte in its request id was accepted".to_owned())
                }
                (false, Ok(response)) => {
                    tally.acknowledge(response.into_inner().sum);
                    None
                }
                (false, Err(status)) => {
                    // Keep the tally right, then report the failure.
                    until_acknowledged(&mut client, &request, &tally).await;
                    Some(format!(
                        "a good Add sent beside NUL request ids failed with {:?} ({})",
                        status.code(),
                        status.message()
                    ))
                }
            }
        }));
    }
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for call in calls {
        if let Some(problem) = call.await? {
            *seen.entry(problem).or_default() += 1;
        }
    }
    Ok(seen
        .into_iter()
        .map(|(problem, n)| format!("{problem} ({n} of 40 calls)"))
        .collect())
}

/// The hostile message bodies for outbox `source` whose highest id is
/// `top`: two forged (old format with a seq far beyond `top`, batch format
/// with a batch far beyond anything published) and one oversized (more
/// rows than a message may hold). All of them must be dead-lettered.
pub fn hostile_bodies(source: &str, top: i64, now_us: i64) -> Vec<(String, Vec<u8>)> {
    let far = top + 1_000_000_000_000;
    let forged_seq = format!(
        r#"{{"source": "{source}", "published_us": {now_us}, "sums": [[{far}, 1000000007, {now_us}]]}}"#
    );
    let forged_batch = format!(
        r#"{{"source": "{source}", "batch": {far}, "part": 0, "parts": 1, "published_us": {now_us}, "sums": [[{}, 1000000009, {now_us}]]}}"#,
        far + 1
    );
    let rows: Vec<String> = (0..10_001)
        .map(|i| format!("[{}, 1, {now_us}]", far + 10 + i))
        .collect();
    let oversized = format!(
        r#"{{"source": "{source}", "published_us": {now_us}, "sums": [{}]}}"#,
        rows.join(",")
    );
    vec![
        ("forged seq".to_owned(), forged_seq.into_bytes()),
        ("forged batch".to_owned(), forged_batch.into_bytes()),
        ("oversized".to_owned(), oversized.into_bytes()),
    ]
}

/// Publishes `bodies` to `queue` persistently, with confirms.
pub async fn publish(url: &str, queue: &str, bodies: &[Vec<u8>]) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for body in bodies {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        anyhow::ensure!(confirm.is_ack(), "the broker refused a hostile message");
    }
    let _ = connection.close(200, "published".into()).await;
    Ok(())
}

/// Takes every message out of `queue` and returns the bodies.
pub async fn drain(url: &str, queue: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let connecting = Connection::connect(url, ConnectionProperties::default());
    let connection = tokio::time::timeout(Duration::from_secs(5), connecting).await??;
    let channel = connection.create_channel().await?;
    let mut bodies = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await?
    {
        message.delivery.ack(BasicAckOptions::default()).await?;
        bodies.push(message.delivery.data);
    }
    let _ = connection.close(200, "drained".into()).await;
    Ok(bodies)
}

/// Opens connections to `addr` that send part of a request's headers and
/// then nothing: each must be closed by the server within `timeout` (plus
/// a little slack), while a complete `GET /sum` is still answered.
pub async fn half_sent_http(addr: SocketAddr, timeout: Duration) -> Vec<String> {
    let slack = Duration::from_secs(3);
    let partials = ["GET /sum HTTP/1.1\r\nHost: faults\r\n", "GE"];
    let mut waits = Vec::new();
    for partial in partials {
        waits.push(tokio::spawn(async move {
            let started = Instant::now();
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return Some(format!("could not connect to the totaler at {addr}"));
            };
            let _ = stream.write_all(partial.as_bytes()).await;
            let mut buffer = [0u8; 1024];
            loop {
                let read = tokio::time::timeout_at(started + timeout + slack, stream.read(&mut buffer));
                match read.await {
                    Err(_) => {
                        return Some(format!(
                            "a half-sent HTTP request ({partial:?}) to the totaler was still open after {:?} (the header-read timeout is {timeout:?})",
                            timeout + slack
                        ));
                    }
                    Ok(Ok(0) | Err(_)) => return None,
                    Ok(Ok(_)) => continue,
                }
            }
        }));
    }
    let mut problems = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let healthy = crate::process::http_get(addr, "/healthz").await;
    if healthy.is_none_or(|(status, _)| status != 200) {
        problems.push("GET /healthz failed while half-sent requests were open".to_owned());
    }
    for wait in waits {
        if let Ok(Some(problem)) = wait.await {
            problems.push(problem);
        }
    }
    problems
}
