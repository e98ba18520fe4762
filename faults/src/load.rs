//! The load: workers that call `Add` through a real gRPC client at a bounded
//! rate. Retrying workers send a `request_id` and retry a failed call with
//! the same id until it is acknowledged, so each Add acknowledged once is
//! meant once. Id-less workers send no request id (the group-commit path most
//! Adds take) and never retry: an id-less Add counts when it returned OK, and
//! one whose outcome is unknown (an error, a timeout) is remembered by its
//! unique `a` so the final check can ask the outbox whether it was committed.
//! The sum of the acknowledged (and committed) Adds is what the total must equal.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use proto::tally::v1::{AddRequest, adder_client::AdderClient};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::rng::Rng;

/// The `a` of id-less Adds starts here: each one's `a` is unique in the run
/// and far from every other Add's, so the outbox can be asked about it.
pub const IDLESS_BASE: i64 = 1 << 50;

/// The next id-less worker number, unique across every load of the run, so
/// no two id-less Adds share an `a` (the final check finds uncertain ones by it).
static NEXT_IDLESS_WORKER: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// What the load has had acknowledged so far.
#[derive(Debug, Default)]
pub struct Tally {
    pub sum: Mutex<i128>,
    pub acknowledged: AtomicU64,
    pub retries: AtomicU64,
    /// Id-less Adds that returned OK (also in `acknowledged`).
    pub idless_acknowledged: AtomicU64,
    /// Adds whose outcome is unknown, as `(a, sum)`: committed or not, the
    /// outbox decides.
    pub uncertain: Mutex<Vec<(i64, i64)>>,
}

impl Tally {
    /// Counts one acknowledged Add.
    pub fn acknowledge(&self, sum: i64) {
        *self.sum.lock().expect("tally lock") += i128::from(sum);
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds rows committed straight to the outbox (a backlog) to the
    /// expected total; their count is kept by the fault that wrote them.
    pub fn add_backlog(&self, sum: i128) {
        *self.sum.lock().expect("tally lock") += sum;
    }

    /// The acknowledged sum so far.
    pub fn sum(&self) -> i128 {
        *self.sum.lock().expect("tally lock")
    }
}

/// How much load, of which kind.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Retrying workers (with request ids) and their Adds/s in all.
    pub workers: usize,
    pub rate: u64,
    /// Id-less workers and their Adds/s in all (0 workers: none).
    pub idless_workers: usize,
    pub idless_rate: u64,
}

/// Running workers.
pub struct Load {
    pub tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// A lazily connecting client of the adder at `grpc`.
pub fn client(grpc: &str) -> anyhow::Result<AdderClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{grpc}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5));
    Ok(AdderClient::new(endpoint.connect_lazy()))
}

impl Load {
    /// Starts the workers of `shape` against `grpc`, counting into `tally`;
    /// `label` keeps their request ids apart from other loads of the run.
    pub fn start(
        grpc: &str,
        shape: Shape,
        rng: &mut Rng,
        label: &str,
        tally: Arc<Tally>,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = |workers: usize, rate: u64| {
            Duration::from_secs_f64(workers as f64 / rate.max(1) as f64)
        };
        let mut workers = Vec::new();
        for (count, idless) in [(shape.workers, false), (shape.idless_workers, true)] {
            for id in 0..count {
                let worker = Worker {
                    label: format!("{label}-{}{id}", if idless { "n" } else { "r" }),
                    idless: idless.then(|| NEXT_IDLESS_WORKER.fetch_add(1, Ordering::Relaxed)),
                    client: client(grpc)?,
                    rng: rng.fork(),
                    pause: if idless {
                        pause(shape.idless_workers, shape.idless_rate)
                    } else {
                        pause(shape.workers, shape.rate)
                    },
                };
                workers.push(tokio::spawn(worker.run(tally.clone(), stop.clone())));
            }
        }
        Ok(Self {
            tally,
            stop,
            workers,
        })
    }

    /// Stops sending new Adds and waits until every started one is acknowledged.
    pub async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
        self.tally
    }
}

struct Worker {
    label: String,
    /// The worker's number among the id-less ones; `None` for a retrying one.
    idless: Option<i64>,
    client: AdderClient<Channel>,
    rng: Rng,
    pause: Duration,
}

impl Worker {
    async fn run(mut self, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
        let mut n = 0i64;
        while !stop.load(Ordering::Relaxed) {
            match self.idless {
                Some(worker) => {
                    let a = IDLESS_BASE + (worker << 32) + n;
                    let request = AddRequest {
                        a,
                        b: -a + self.rng.signed(-1_000, 1_000),
                        request_id: String::new(),
                    };
                    add_once(&mut self.client, &request, &tally).await;
                }
                None => {
                    let request = AddRequest {
                        a: self.rng.signed(-1_000_000, 1_000_000),
                        b: self.rng.signed(-1_000, 2_000),
                        request_id: format!("{}-{n}", self.label),
                    };
                    until_acknowledged(&mut self.client, &request, &tally).await;
                }
            }
            n += 1;
            tokio::time::sleep(self.pause).await;
        }
    }
}

/// Calls Add with the same request until the adder acknowledges it.
pub async fn until_acknowledged(
    client: &mut AdderClient<Channel>,
    request: &AddRequest,
    tally: &Tally,
) {
    let mut backoff = Duration::from_millis(20);
    loop {
        match client.add(request.clone()).await {
            Ok(response) => {
                let sum = response.into_inner().sum;
                assert_eq!(sum, request.a + request.b, "the adder returned a wrong sum");
                tally.acknowledge(sum);
                return;
            }
            Err(status) => {
                assert_ne!(
                    status.code(),
                    tonic::Code::AlreadyExists,
                    "a retry was refused: {status:?}"
                );
                tally.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Calls an id-less Add once: OK counts it, anything else leaves it uncertain.
async fn add_once(client: &mut AdderClient<Channel>, request: &AddRequest, tally: &Tally) {
    let sum = request.a + request.b;
    match client.add(request.clone()).await {
        Ok(response) => {
            assert_eq!(
                response.into_inner().sum,
                sum,
                "the adder returned a wrong sum"
            );
            tally.acknowledge(sum);
            tally.idless_acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => tally
            .uncertain
            .lock()
            .expect("tally lock")
            .push((request.a, sum)),
    }
}
