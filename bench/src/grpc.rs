//! The gRPC load: `tally.v1.Adder/Add` from a Rust tonic client, either
//! closed-loop at saturation (a fixed number of calls in flight) or
//! open-loop at a fixed rate (each call sent on schedule from its own task,
//! so a slow server cannot slow the load down and hide its latency; each
//! call is timed from when it was sent, so the timer's millisecond
//! granularity is not counted as the server's latency). The same
//! load drives the adder and the bare tonic server.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use proto::tally::v1::{AddRequest, adder_client::AdderClient};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Clients over separate HTTP/2 connections, used round-robin.
#[derive(Clone)]
pub struct Clients(Vec<AdderClient<Channel>>);

/// What a closed-loop load did.
#[derive(Debug, Default)]
pub struct Saturation {
    pub ok: u64,
    pub failed: u64,
    /// Sum of the sums the server acknowledged.
    pub acked_sum: i128,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

/// One call of an open-loop load.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the call was sent.
    pub sent: Instant,
    /// From sent to answered.
    pub latency: Duration,
    pub outbox_id: i64,
}

/// What an open-loop load did.
#[derive(Debug, Default)]
pub struct Paced {
    pub samples: Vec<Sample>,
    pub failed: u64,
    pub elapsed: Duration,
}

/// The numbers of the `i`-th Add of a load.
pub type Numbers = fn(u64) -> (i64, i64);

impl Clients {
    pub async fn connect(addr: SocketAddr, connections: usize) -> anyhow::Result<Self> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let channel = Channel::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting gRPC to {addr}"))?;
            clients.push(AdderClient::new(channel));
        }
        Ok(Self(clients))
    }

    fn get(&self, i: usize) -> AdderClient<Channel> {
        self.0[i % self.0.len()].clone()
    }
}

/// Keeps `concurrency` Adds in flight until `duration` has passed or
/// `max_calls` were sent.
pub async fn saturate(
    clients: &Clients,
    concurrency: usize,
    duration: Duration,
    max_calls: u64,
    numbers: Numbers,
) -> Saturation {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let mut client = clients.get(worker);
        let next = next.clone();
        workers.spawn(async move {
            let mut done = Saturation::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_calls || Instant::now() >= deadline {
                    return done;
                }
                let (a, b) = numbers(i);
                let request = AddRequest {
                    a,
                    b,
                    request_id: String::new(),
                };
                match client.add(request).await {
                    Ok(response) => {
                        done.ok += 1;
                        done.acked_sum += i128::from(response.into_inner().sum);
                    }
                    Err(status) => {
                        done.failed += 1;
                        done.first_error.get_or_insert_with(|| status.to_string());
                    }
                }
            }
        });
    }
    let mut total = Saturation::default();
    while let Some(Ok(done)) = workers.join_next().await {
        total.ok += done.ok;
        total.failed += done.failed;
        total.acked_sum += done.acked_sum;
        if total.first_error.is_none() {
            total.first_error = done.first_error;
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Sends `rate` Adds of `1 + 0` per second for `window`, each on schedule.
pub async fn paced(clients: &Clients, rate: u64, window: Duration) -> Paced {
    let count = rate.saturating_mul(window.as_secs()).max(1);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut calls = JoinSet::new();
    for i in 0..count {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let mut client = clients.get(i as usize);
        calls.spawn(async move {
            let request = AddRequest {
                a: 1,
                b: 0,
                request_id: String::new(),
            };
            let sent = Instant::now();
            let result = client.add(request).await;
            (
                sent,
                sent.elapsed(),
                result.map(|r| r.into_inner().outbox_id),
            )
        });
    }
    let mut paced = Paced::default();
    while let Some(Ok((sent, latency, result))) = calls.join_next().await {
        match result {
            Ok(outbox_id) => paced.samples.push(Sample {
                sent,
                latency,
                outbox_id,
            }),
            Err(_) => paced.failed += 1,
        }
    }
    paced.elapsed = started.elapsed();
    paced
}
