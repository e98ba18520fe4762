//! What the cluster and failover modes share: their services (two adders
//! behind HAProxy, requests spread over them, and one or two totalers on
//! one `sum.txt`, started in order: the first adder migrates the schema),
//! their bookkeeping ([`Journal`]: the seeded generator, the faults run,
//! the problems seen), their fault schedule (every kind once, then random
//! kinds until the time is up) and the run itself ([`run`]: start, load,
//! faults, settle, report, keep the directory of a failed run).

use std::{
    collections::BTreeMap,
    fmt::Debug,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use testkit::{
    balancer::{Backend, Balancer},
    free_port,
};

use crate::{
    Options,
    load::{Load, Tally},
    metrics::Sampler,
    process::{Service, adder_env, binary, service_env},
    readings::Sources,
    rng::Rng,
    run_dir::{Finished, RunDir, Verdict},
};

/// The queue of the cluster and failover runs.
pub const QUEUE: &str = "tally.sums";

/// The adders behind the balancer and the totalers on one file; fields
/// drop in order (processes first).
pub struct Fleet {
    pub adders: Vec<Service>,
    pub totalers: Vec<Service>,
    pub balancer: Balancer,
    pub sampler: Sampler,
    pub sum_file: PathBuf,
}

/// What a run did: its generator, the faults run, the problems seen.
pub struct Journal {
    /// How its lines start (`faults cluster`).
    pub who: &'static str,
    pub rng: Rng,
    /// Fault kind → rounds run.
    pub runs: BTreeMap<String, u32>,
    /// What the load has had acknowledged, and its failed calls.
    pub tally: Arc<Tally>,
    pub failures: Vec<String>,
}

/// A mode that runs on a [`Fleet`]: how it starts, injects and settles.
pub(crate) trait Mode: Sized {
    type Fault: Copy + Debug + 'static;
    type Report: Verdict;
    /// `cluster`, `failover`: its directory's and its lines' name.
    const NAME: &'static str;
    /// Every kind, in the order of the first round.
    const FAULTS: &'static [Self::Fault];
    /// The pause before each fault, in milliseconds.
    const PAUSE_MS: (u64, u64);

    /// Starts the servers and the fleet under `root`.
    async fn start(root: &Path, options: &Options) -> anyhow::Result<Self>;
    fn fleet(&self) -> &Fleet;
    fn journal(&mut self) -> &mut Journal;
    /// Injects one fault and waits for what must follow it.
    async fn inject(&mut self, fault: Self::Fault) -> anyhow::Result<()>;
    /// Waits for the total to settle and checks it.
    async fn settle(&mut self, options: &Options, fault_time: Duration) -> Self::Report;
}

/// Runs `M` for `options.seconds` and reports what it saw.
pub(crate) async fn run<M: Mode>(options: Options) -> anyhow::Result<Finished<M::Report>> {
    let dir = RunDir::create(M::NAME, options.seed)?;
    match run_in::<M>(dir.path(), &options).await {
        Ok(report) => Ok(dir.finish(report)),
        Err(e) => Err(dir.failed(e)),
    }
}

async fn run_in<M: Mode>(root: &Path, options: &Options) -> anyhow::Result<M::Report> {
    let who = format!("faults {}", M::NAME);
    eprintln!("{who}: seed {}", options.seed);
    let started = Instant::now();
    let mut mode = M::start(root, options).await?;
    eprintln!(
        "{who}: servers and services up in {:.1?}; logs in {}",
        started.elapsed(),
        root.display()
    );
    let journal = mode.journal();
    let mut rng = journal.rng.fork();
    let load = Load::start(
        &mode.fleet().balancer.grpc(),
        options.shape(),
        &mut rng,
        M::NAME,
        mode.journal().tally.clone(),
    )?;
    let faulting = Instant::now();
    let injected = inject_faults(&mut mode, Duration::from_secs(options.seconds), started).await;
    let fault_time = faulting.elapsed();
    eprintln!("{who}: load stopping; waiting for every started Add");
    load.finish().await;
    injected?;
    Ok(mode.settle(options, fault_time).await)
}

/// Every kind once (the first round), then random kinds until `duration`.
async fn inject_faults<M: Mode>(
    mode: &mut M,
    duration: Duration,
    started: Instant,
) -> anyhow::Result<()> {
    let until = Instant::now() + duration;
    let mut first = M::FAULTS.iter().copied();
    loop {
        let journal = mode.journal();
        let fault = match first.next() {
            Some(fault) => fault,
            None if Instant::now() < until => {
                M::FAULTS[journal.rng.range(0, M::FAULTS.len() as u64) as usize]
            }
            None => return Ok(()),
        };
        journal.pause(M::PAUSE_MS.0, M::PAUSE_MS.1).await;
        let who = journal.who;
        eprintln!(
            "{who}: t={:>6.1}s {fault:?}",
            started.elapsed().as_secs_f64()
        );
        let at = Instant::now();
        mode.inject(fault).await?;
        *mode.journal().runs.entry(format!("{fault:?}")).or_default() += 1;
        eprintln!("{who}:          {fault:?} took {:.1?}", at.elapsed());
    }
}

impl Fleet {
    /// Two adders on `database_url` behind HAProxy and `totalers` totalers
    /// on `root/data/sum.txt`, every service given `amqp_url`; started.
    pub async fn start(
        root: &Path,
        options: &Options,
        amqp_url: &str,
        database_url: &str,
        totalers: usize,
    ) -> anyhow::Result<Self> {
        let data = root.join("data");
        std::fs::create_dir_all(&data)?;
        let sum_file = data.join("sum.txt");
        let local = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
        let mut adders = Vec::new();
        let mut backends = Vec::new();
        for i in 1..=2 {
            let (grpc, http) = (local(free_port()), local(free_port()));
            let name = format!("adder-{i}");
            let mut env = service_env(&name, amqp_url, QUEUE);
            env.extend(adder_env(database_url, grpc, http, options));
            adders.push(Service::new(&name, binary("adder")?, env, root, http));
            backends.push(Backend { grpc, http });
        }
        let mut totaler_services = Vec::new();
        for i in 1..=totalers {
            let http = local(free_port());
            let name = if totalers == 1 {
                "totaler".to_owned()
            } else {
                format!("totaler-{i}")
            };
            let mut env = service_env(&name, amqp_url, QUEUE);
            env.extend([
                ("SUM_FILE".to_owned(), sum_file.display().to_string()),
                ("TOTALER_HTTP_ADDR".to_owned(), http.to_string()),
            ]);
            totaler_services.push(Service::new(&name, binary("totaler")?, env, root, http));
        }
        let balancer = Balancer::start(root, &backends).await?;
        let sampler = Sampler::start(
            adders
                .iter()
                .chain(&totaler_services)
                .map(|s| (s.name.clone(), s.http))
                .collect(),
        );
        let mut fleet = Self {
            adders,
            totalers: totaler_services,
            balancer,
            sampler,
            sum_file,
        };
        // The first adder migrates the schema; then the rest start.
        fleet.ensure_running().await?;
        Ok(fleet)
    }

    /// Starts, in order, every service that is not running.
    pub async fn ensure_running(&mut self) -> anyhow::Result<()> {
        for service in self.adders.iter_mut().chain(&mut self.totalers) {
            if !service.is_running() {
                service.start().await?;
            }
        }
        Ok(())
    }

    /// Where the run's end is read: every totaler and `sum.txt`.
    pub fn sources(&self, outbox: Option<String>, amqp: Option<String>) -> Sources<'_> {
        Sources {
            totalers: self.totalers.iter().collect(),
            sum_file: &self.sum_file,
            outbox,
            amqp,
            backlog_rows: 0,
            expected_dead: 0,
        }
    }

    /// What each of `services` counted of `series`, over its restarts.
    pub fn per(&self, services: &[Service], series: &str) -> Vec<(String, f64)> {
        services
            .iter()
            .map(|s| (s.name.clone(), self.sampler.total(&s.name, series)))
            .collect()
    }
}

impl Journal {
    pub fn new(who: &'static str, seed: u64) -> Self {
        Self {
            who,
            rng: Rng::new(seed),
            runs: BTreeMap::new(),
            tally: Arc::default(),
            failures: Vec::new(),
        }
    }

    /// Records a problem a fault saw (the run then fails).
    pub fn fail(&mut self, problem: String) {
        eprintln!("{}:          PROBLEM: {problem}", self.who);
        self.failures.push(problem);
    }

    pub async fn pause(&mut self, low_ms: u64, high_ms: u64) {
        tokio::time::sleep(Duration::from_millis(self.rng.range(low_ms, high_ms + 1))).await;
    }

    /// The problems every fleet mode checks beside the total: the
    /// failures seen, every kind run, an Add acknowledged.
    pub fn problems<F: Debug>(&self, kinds: &[F], acknowledged: u64) -> Vec<String> {
        let mut problems = self.failures.clone();
        for fault in kinds {
            if !self.runs.contains_key(&format!("{fault:?}")) {
                problems.push(format!("{fault:?} never ran"));
            }
        }
        if acknowledged == 0 {
            problems.push("no Add was acknowledged".to_owned());
        }
        problems
    }
}
