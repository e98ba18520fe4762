//! The load: workers that call `Add` through a real gRPC client at a bounded
//! rate and retry a failed call with the same `request_id` until it is
//! acknowledged, so each Add acknowledged once is meant once. The sum of the
//! acknowledged Adds is what the total must equal.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use proto::tally::v1::{AddRequest, adder_client::AdderClient};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

use crate::rng::Rng;

/// What the load has had acknowledged so far.
#[derive(Debug, Default)]
pub struct Tally {
    pub sum: Mutex<i128>,
    pub acknowledged: AtomicU64,
    pub retries: AtomicU64,
}

/// Running workers.
pub struct Load {
    pub tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` workers sending about `rate` Adds/s in all to `grpc`.
    pub fn start(
        grpc: &str,
        workers: usize,
        rate: u64,
        rng: &mut Rng,
        run_id: u64,
    ) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{grpc}"))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5));
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Duration::from_secs_f64(workers as f64 / rate.max(1) as f64);
        let workers = (0..workers)
            .map(|worker| {
                let client = AdderClient::new(endpoint.connect_lazy());
                let worker = Worker {
                    id: worker,
                    run_id,
                    client,
                    rng: rng.fork(),
                    pause,
                };
                tokio::spawn(worker.run(tally.clone(), stop.clone()))
            })
            .collect();
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
    id: usize,
    run_id: u64,
    client: AdderClient<tonic::transport::Channel>,
    rng: Rng,
    pause: Duration,
}

impl Worker {
    async fn run(mut self, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let request = AddRequest {
                a: self.rng.signed(-1_000_000, 1_000_000),
                b: self.rng.signed(-1_000, 2_000),
                request_id: format!("{}-{}-{n}", self.run_id, self.id),
            };
            self.until_acknowledged(&request, &tally).await;
            n += 1;
            tokio::time::sleep(self.pause).await;
        }
    }

    /// Calls Add with the same request until the adder acknowledges it.
    async fn until_acknowledged(&mut self, request: &AddRequest, tally: &Tally) {
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.client.add(request.clone()).await {
                Ok(response) => {
                    let sum = response.into_inner().sum;
                    assert_eq!(sum, request.a + request.b, "the adder returned a wrong sum");
                    *tally.sum.lock().expect("tally lock") += i128::from(sum);
                    tally.acknowledged.fetch_add(1, Ordering::Relaxed);
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
}
