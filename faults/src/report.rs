//! The end of a run: wait for the backlog to drain, then compare the total
//! (GET /sum, parsed exactly, and sum.txt's first line) with the sum of
//! acknowledged Adds (plus the uncertain ones the outbox holds), reconcile
//! the outbox, require exactly the hostile messages in the dead-letter queue,
//! run `totaler verify`, and require that the run saw what it must have seen
//! (duplicates applied once, republished rows, each broker fault, a SIGTERM
//! while consuming, an overlap of two totalers, enough Adds per second).
//! `Report` prints every count and lists every problem found.

use std::{
    collections::BTreeMap,
    fmt,
    path::Path,
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use lapin::{options::QueueDeclareOptions, types::FieldTable};

use crate::{
    FIRST_ROUND, Options,
    hostile::drain,
    inputs::exact_sum,
    load::Tally,
    metrics::{
        APPLIED_ROWS, CONSUMED, DEAD_LETTERED, DUPLICATE_ROWS, LEDGER_ERRORS, PUBLISHED_MESSAGES,
        PUBLISHED_ROWS,
    },
    outbox::{self, Outbox},
    process::{Resources, http_get},
    stack::Stack,
};

/// What the run did, fault by fault, and what each fault saw.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// How often each kind ran, by name.
    pub runs: BTreeMap<String, u32>,
    pub totaler_kills: u32,
    pub adder_kills: u32,
    pub broker_crashes: u32,
    pub broker_stops: u32,
    pub postgres_crashes: u32,
    pub two_totaler_periods: u32,
    pub two_totaler_overlaps: u32,
    pub sigterms: u32,
    pub sigterms_while_consuming: u32,
    pub crashes_after_apply: u32,
    pub forgotten_marks: u64,
    /// Batches whose confirmation was lost, seen published and confirmed again.
    pub republished_batches: u64,
    pub two_adder_periods: u32,
    pub acknowledged_during_two_adders: u64,
    pub confirm_partitions: u32,
    pub full_disk_sigterms: u32,
    pub full_disk_sigterm_exits: Vec<String>,
    pub full_disk_kills: u32,
    pub full_disk_ledger_errors: u32,
    pub sum_file_deletions: u32,
    pub sum_file_replacements: u32,
    pub sum_file_stops: u32,
    pub refused_starts: u32,
    pub slow_transactions: u32,
    pub slow_rows: usize,
    pub slow_gaps: usize,
    pub slow_others: i64,
    pub nul_rounds: u32,
    pub hostile_messages: u32,
    pub half_sent_rounds: u32,
    pub beyond_i64_rounds: u32,
    pub beyond_i64_seen: Vec<i128>,
    pub broker_crashes_during_totaler_kills: u32,
    pub postgres_crashes_during_adder_kills: u32,
    /// Rows committed straight to the outbox while the broker was down.
    pub backlog_rows: u64,
    /// Each outage's backlog (rows) and the rate it drained at (rows/s).
    pub backlogs_drained: Vec<(u64, f64)>,
    pub transactions_elsewhere: u32,
    pub silent_sockets: usize,
    pub silent_sockets_closed: usize,
    pub silent_postgres: u32,
    /// Each service's process at the first fault and at the end, by name.
    pub resources: BTreeMap<String, (Option<Resources>, Option<Resources>)>,
    /// The size of `sum.txt` at the end, in bytes.
    pub sum_file_bytes: Option<u64>,
    /// What went wrong while faults ran.
    pub failures: Vec<String>,
}

/// What the services' metrics say, summed over every process.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub applied_rows: f64,
    pub duplicate_rows: f64,
    pub consumed: f64,
    pub dead_lettered: f64,
    pub ledger_errors: f64,
    pub published_rows: f64,
    pub published_messages: f64,
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub counts: Counts,
    pub seen: Seen,
    pub acknowledged: u64,
    pub idless_acknowledged: u64,
    pub retries: u64,
    pub uncertain: usize,
    pub uncertain_committed: usize,
    pub expected: i128,
    pub served: Result<i128, String>,
    pub file: Option<i128>,
    pub outbox: Option<Outbox>,
    pub ready: u32,
    pub dead_letters: u32,
    /// Set at the end: the dead letters are exactly the hostile messages.
    pub dead_letter_problem: Option<String>,
    pub verify: Result<(), String>,
    pub min_ack_rate: u64,
    pub fault_time: Duration,
    pub settle: Duration,
    pub elapsed: Duration,
}

impl Report {
    /// Every way the run fell short of an exact total or of an honest run;
    /// empty when it passed.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.counts.failures.clone();
        problems.extend(self.total_problems());
        problems.extend(self.dead_letter_problem.clone());
        if let Err(e) = &self.verify {
            problems.push(e.clone());
        }
        problems.extend(self.honesty_problems());
        problems
    }

    fn expected_rows(&self) -> i64 {
        (self.acknowledged + self.uncertain_committed as u64 + self.counts.backlog_rows) as i64
    }

    fn total_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.served {
            Ok(served) if *served == self.expected => {}
            Ok(served) => problems.push(format!(
                "GET /sum is {served}, acknowledged Adds sum to {} (off by {})",
                self.expected,
                served - self.expected
            )),
            Err(e) => problems.push(format!(
                "GET /sum gave no exact total ({e}); acknowledged Adds sum to {}",
                self.expected
            )),
        }
        if self.file != self.served.clone().ok() {
            problems.push(format!(
                "sum.txt says {:?}, GET /sum {:?}",
                self.file, self.served
            ));
        }
        match self.outbox {
            Some(o) if o.sum == self.expected && o.rows == self.expected_rows() => {}
            Some(o) => problems.push(format!(
                "the outbox holds {} rows summing to {}, but {} Adds summing to {} were acknowledged or committed",
                o.rows, o.sum, self.expected_rows(), self.expected
            )),
            None => problems.push("the outbox could not be read".to_owned()),
        }
        let unpublished = self.outbox.map_or(-1, |o| o.unpublished);
        if unpublished != 0 || self.ready != 0 {
            problems.push(format!(
                "backlog left: {unpublished} unpublished rows, {} queued messages",
                self.ready
            ));
        }
        let expected_dead = self.counts.hostile_messages;
        if self.dead_letters != expected_dead {
            problems.push(format!(
                "{} messages in the dead-letter queue, expected exactly the {expected_dead} hostile ones",
                self.dead_letters
            ));
        }
        problems
    }

    /// What a run must have seen for its verdict to mean something.
    fn honesty_problems(&self) -> Vec<String> {
        let c = &self.counts;
        let mut problems = Vec::new();
        let mut require = |ok: bool, what: String| {
            if !ok {
                problems.push(format!("the run did not show {what}"));
            }
        };
        for fault in FIRST_ROUND {
            let name = format!("{fault:?}");
            require(
                c.runs.get(&name).is_some_and(|n| *n > 0),
                format!("the fault {name}"),
            );
        }
        let rate = self.acknowledged as f64 / self.fault_time.as_secs_f64().max(1.0);
        require(
            rate >= self.min_ack_rate as f64,
            format!(
                "{} acknowledged Adds per second (it had {rate:.0})",
                self.min_ack_rate
            ),
        );
        require(self.idless_acknowledged > 0, "an id-less Add".to_owned());
        require(
            self.seen.duplicate_rows >= 1.0,
            "a duplicate row applied once (totaler_sums_total{outcome=\"duplicate\"} is 0)"
                .to_owned(),
        );
        require(
            c.republished_batches > 0,
            "a republished batch (one whose confirmation was lost, confirmed again)".to_owned(),
        );
        require(
            c.broker_crashes + c.broker_crashes_during_totaler_kills > 0,
            "a broker SIGKILL".to_owned(),
        );
        require(c.broker_stops > 0, "a broker SIGTERM".to_owned());
        require(
            c.sigterms_while_consuming > 0,
            "a totaler SIGTERM while it consumed".to_owned(),
        );
        // The queue's single active consumer makes one of two totalers
        // apply at a time: what must be seen is the period itself (both
        // exact on one file), not an overlap.
        require(
            c.two_totaler_periods > 0,
            "a period with two totalers on one file".to_owned(),
        );
        require(
            c.crashes_after_apply > 0,
            "a totaler crash between update and ack".to_owned(),
        );
        require(
            c.acknowledged_during_two_adders > 0,
            "Adds acknowledged while two adders ran".to_owned(),
        );
        problems
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let s = &self.seen;
        writeln!(f, "fault suite report (seed {})", self.seed)?;
        writeln!(
            f,
            "  time                 {:.1?} ({:.1?} of faults, drain {:.1?})",
            self.elapsed, self.fault_time, self.settle
        )?;
        writeln!(
            f,
            "  adds acknowledged    {} ({:.0}/s; {} id-less; {} failed calls retried; {} uncertain, {} of them committed)",
            self.acknowledged,
            self.acknowledged as f64 / self.fault_time.as_secs_f64().max(1.0),
            self.idless_acknowledged,
            self.retries,
            self.uncertain,
            self.uncertain_committed
        )?;
        writeln!(f, "  faults run           {:?}", c.runs)?;
        writeln!(
            f,
            "  totaler SIGKILLs     {} (+{} with the broker)",
            c.totaler_kills, c.broker_crashes_during_totaler_kills
        )?;
        writeln!(
            f,
            "  adder SIGKILLs       {} (+{} with PostgreSQL)",
            c.adder_kills, c.postgres_crashes_during_adder_kills
        )?;
        writeln!(
            f,
            "  broker restarts      {} after SIGKILL (+{} during a totaler SIGKILL), {} after SIGTERM",
            c.broker_crashes, c.broker_crashes_during_totaler_kills, c.broker_stops
        )?;
        writeln!(
            f,
            "  postgres restarts    {} (immediate stop)",
            c.postgres_crashes
        )?;
        writeln!(
            f,
            "  two totalers         {} periods, {} with both applying",
            c.two_totaler_periods, c.two_totaler_overlaps
        )?;
        writeln!(
            f,
            "  two adders           {} periods, {} Adds acknowledged meanwhile",
            c.two_adder_periods, c.acknowledged_during_two_adders
        )?;
        writeln!(
            f,
            "  SIGTERMs             {} ({} of the totaler while it consumed)",
            c.sigterms, c.sigterms_while_consuming
        )?;
        writeln!(f, "  crash after apply    {}", c.crashes_after_apply)?;
        writeln!(
            f,
            "  lost confirmations   {} rows, {} batches republished and confirmed again",
            c.forgotten_marks, c.republished_batches
        )?;
        writeln!(f, "  confirm partitions   {}", c.confirm_partitions)?;
        writeln!(
            f,
            "  full disk            {} SIGTERM ({:?}), {} SIGKILL, {} with ledger errors seen",
            c.full_disk_sigterms,
            c.full_disk_sigterm_exits,
            c.full_disk_kills,
            c.full_disk_ledger_errors
        )?;
        writeln!(
            f,
            "  sum.txt              {} deleted, {} replaced, {} stops, {} refused starts",
            c.sum_file_deletions, c.sum_file_replacements, c.sum_file_stops, c.refused_starts
        )?;
        writeln!(
            f,
            "  slow transactions    {} ({} rows in {} gaps, {} other Adds meanwhile)",
            c.slow_transactions, c.slow_rows, c.slow_gaps, c.slow_others
        )?;
        let largest = c
            .backlogs_drained
            .iter()
            .copied()
            .max_by_key(|(rows, _)| *rows)
            .unwrap_or_default();
        writeln!(
            f,
            "  broker outages       {} backlogs, {} rows in all; the largest {} rows drained at {:.0} rows/s",
            c.backlogs_drained.len(),
            c.backlog_rows,
            largest.0,
            largest.1
        )?;
        writeln!(
            f,
            "  stalls               {} transactions held open elsewhere, {} of {} silent gRPC sockets closed, {} silent PostgreSQL periods",
            c.transactions_elsewhere, c.silent_sockets_closed, c.silent_sockets, c.silent_postgres
        )?;
        for (name, (first, last)) in &c.resources {
            let show = |r: &Option<Resources>| {
                r.map_or("not running".to_owned(), |r| {
                    format!("pid {} {} KiB {} fds", r.pid, r.rss_kb, r.fds)
                })
            };
            writeln!(
                f,
                "  {name:<20} first fault: {}; end: {}",
                show(first),
                show(last)
            )?;
        }
        writeln!(f, "  sum.txt size         {:?} bytes", c.sum_file_bytes)?;
        writeln!(
            f,
            "  hostile              {} NUL rounds, {} messages, {} half-sent rounds",
            c.nul_rounds, c.hostile_messages, c.half_sent_rounds
        )?;
        writeln!(
            f,
            "  beyond i64           {} rounds, GET /sum showed {:?}",
            c.beyond_i64_rounds, c.beyond_i64_seen
        )?;
        writeln!(
            f,
            "  metrics              {} rows applied, {} duplicates, {} messages consumed, {} dead-lettered, {} ledger errors; relays published {} rows in {} messages",
            s.applied_rows,
            s.duplicate_rows,
            s.consumed,
            s.dead_lettered,
            s.ledger_errors,
            s.published_rows,
            s.published_messages
        )?;
        writeln!(f, "  expected total       {}", self.expected)?;
        writeln!(f, "  GET /sum             {:?}", self.served)?;
        writeln!(f, "  sum.txt line 1       {:?}", self.file)?;
        writeln!(f, "  outbox               {:?}", self.outbox)?;
        writeln!(
            f,
            "  queue                {} ready, {} dead letters",
            self.ready, self.dead_letters
        )?;
        writeln!(f, "  totaler verify       {:?}", self.verify)?;
        let problems = self.problems();
        if problems.is_empty() {
            write!(f, "  verdict              EXACT")
        } else {
            writeln!(
                f,
                "  verdict              FAILED, {} problems:",
                problems.len()
            )?;
            for problem in &problems {
                writeln!(f, "    - {problem}")?;
            }
            Ok(())
        }
    }
}

/// Waits (bounded) until the total reaches the expected value and the
/// backlog is gone, then gathers the report.
pub(crate) async fn settle_and_check(
    stack: &mut Stack,
    tally: &Tally,
    options: &Options,
    started: Instant,
    fault_time: Duration,
) -> anyhow::Result<Report> {
    let settling = Instant::now();
    let deadline = settling + Duration::from_secs(options.settle_seconds);
    let mut report = gather(stack, tally, options).await?;
    // Stop waiting early once the backlog is gone and the total has not
    // moved for 10 s: a wrong total then stays wrong.
    let mut still = (report.served.clone(), Instant::now());
    while Instant::now() < deadline && !report.total_problems().is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        report = gather(stack, tally, options).await?;
        let drained = report.ready == 0 && report.outbox.is_some_and(|o| o.unpublished == 0);
        if report.served != still.0 {
            still = (report.served.clone(), Instant::now());
        } else if drained && still.1.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    // Hold a moment longer: a total that is exact now must stay exact.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.sampler.sample_now().await;
    stack.record_resources(false);
    report = gather(stack, tally, options).await?;
    report.dead_letter_problem = dead_letter_problem(stack).await;
    report.verify = verify(stack);
    report.fault_time = fault_time;
    report.settle = settling.elapsed();
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn gather(stack: &Stack, tally: &Tally, options: &Options) -> anyhow::Result<Report> {
    let served = served(stack.totaler.http).await;
    let file = file_total(&stack.data.sum_file());
    let url = stack.postgres.url();
    let (uncertain, committed, expected) = expected(tally, &url).await;
    let (ready, dead_letters) = queues(&stack.rabbit.url())
        .await
        .unwrap_or((u32::MAX, u32::MAX));
    let total = |series| stack.sampler.total("", series);
    Ok(Report {
        seed: options.seed,
        counts: stack.counts.clone(),
        seen: Seen {
            applied_rows: total(APPLIED_ROWS),
            duplicate_rows: total(DUPLICATE_ROWS),
            consumed: total(CONSUMED),
            dead_lettered: total(DEAD_LETTERED),
            ledger_errors: total(LEDGER_ERRORS),
            published_rows: total(PUBLISHED_ROWS),
            published_messages: total(PUBLISHED_MESSAGES),
        },
        acknowledged: tally.acknowledged.load(Ordering::Relaxed),
        idless_acknowledged: tally.idless_acknowledged.load(Ordering::Relaxed),
        retries: tally.retries.load(Ordering::Relaxed),
        uncertain: uncertain.len(),
        uncertain_committed: committed.len(),
        expected,
        served,
        file,
        outbox: outbox::reconcile(&url).await.ok(),
        ready,
        dead_letters,
        dead_letter_problem: None,
        verify: Ok(()),
        min_ack_rate: options.min_ack_rate,
        fault_time: Duration::ZERO,
        settle: Duration::ZERO,
        elapsed: Duration::ZERO,
    })
}

/// `GET /sum` of the totaler at `addr`, parsed as an exact integer.
pub async fn served(addr: std::net::SocketAddr) -> Result<i128, String> {
    match http_get(addr, "/sum").await {
        Some((200, body)) => exact_sum(&body).ok_or_else(|| format!("body {body:?}")),
        Some((status, body)) => Err(format!("{status} {body:?}")),
        None => Err("no answer".to_owned()),
    }
}

/// What a settled cluster or failover run is checked against: each
/// totaler's `GET /sum`, `sum.txt`, the outbox and the queues.
pub struct Settled<'a> {
    /// `GET /sum` of each totaler, by name.
    pub served: &'a [(String, Result<i128, String>)],
    pub file: Option<i128>,
    pub expected: i128,
    pub outbox: Option<Outbox>,
    /// The Adds acknowledged, plus the uncertain ones the outbox committed.
    pub rows: i64,
    pub ready: u32,
    pub dead_letters: u32,
}

impl Settled<'_> {
    /// Whether the total is exact and everything drained.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, served) in self.served {
            match served {
                Ok(sum) if *sum == self.expected => {}
                Ok(sum) => problems.push(format!(
                    "{name}: GET /sum is {sum}, acknowledged Adds sum to {} (off by {})",
                    self.expected,
                    sum - self.expected
                )),
                Err(e) => problems.push(format!("{name}: GET /sum gave no exact total ({e})")),
            }
        }
        if self.file != Some(self.expected) {
            problems.push(format!(
                "sum.txt says {:?}, expected {}",
                self.file, self.expected
            ));
        }
        let rows = self.rows;
        match self.outbox {
            Some(o) if o.sum == self.expected && o.rows == rows && o.unpublished == 0 => {}
            Some(o) => problems.push(format!(
                "the outbox holds {} rows summing to {} ({} unpublished); {rows} Adds summing to {} were acknowledged or committed",
                o.rows, o.sum, o.unpublished, self.expected
            )),
            None => problems.push("the outbox could not be read".to_owned()),
        }
        if self.ready != 0 || self.dead_letters != 0 {
            problems.push(format!(
                "{} messages left in the queue, {} dead-lettered",
                self.ready, self.dead_letters
            ));
        }
        problems
    }
}

/// The total on the first line of the ledger at `path`.
pub fn file_total(path: &Path) -> Option<i128> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.lines().next().and_then(|line| line.parse().ok()))
}

/// The uncertain Adds, those of them the outbox at `url` committed, and
/// the total they and the acknowledged ones make.
pub async fn expected(tally: &Tally, url: &str) -> (Vec<(i64, i64)>, Vec<(i64, i64)>, i128) {
    let uncertain = tally.uncertain.lock().expect("tally lock").clone();
    let committed = outbox::committed_of(url, &uncertain)
        .await
        .unwrap_or_default();
    let expected = tally.sum() + committed.iter().map(|(_, s)| i128::from(*s)).sum::<i128>();
    (uncertain, committed, expected)
}

/// The dead-letter queue must hold exactly the hostile messages, body for body.
async fn dead_letter_problem(stack: &Stack) -> Option<String> {
    let bodies = match drain(&stack.rabbit.url(), "tally.sums.dead").await {
        Ok(bodies) => bodies,
        Err(e) => return Some(format!("reading the dead-letter queue: {e:#}")),
    };
    let mut unexpected = bodies.clone();
    let mut missing = Vec::new();
    for (name, body) in &stack.expected_dead {
        match unexpected.iter().position(|b| b == body) {
            Some(i) => {
                unexpected.swap_remove(i);
            }
            None => missing.push(name.clone()),
        }
    }
    if missing.is_empty() && unexpected.is_empty() {
        return None;
    }
    let shown: Vec<String> = unexpected
        .iter()
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned())
        .collect();
    Some(format!(
        "dead letters: the hostile messages {missing:?} were not dead-lettered (the totaler took them); {} unexpected ones: {shown:?}",
        unexpected.len()
    ))
}

/// `totaler verify --sum-file F --database-url URL` must exist and exit 0.
fn verify(stack: &Stack) -> Result<(), String> {
    run_verify(
        stack.totaler.binary(),
        &stack.data.sum_file(),
        &stack.postgres.url(),
    )
}

/// Runs `binary verify --sum-file SUM_FILE --database-url URL`: Ok when it
/// exists and exits 0, else what it said.
pub fn run_verify(binary: &Path, sum_file: &Path, url: &str) -> Result<(), String> {
    let help = Command::new(binary).args(["verify", "--help"]).output();
    if !help.as_ref().is_ok_and(|o| o.status.success()) {
        let status = help.map_or_else(|e| e.to_string(), |o| o.status.to_string());
        return Err(format!(
            "totaler verify is missing (`totaler verify --help` exited with {status})"
        ));
    }
    let output = Command::new(binary)
        .arg("verify")
        .arg("--sum-file")
        .arg(sum_file)
        .args(["--database-url", url])
        .output()
        .map_err(|e| format!("running totaler verify: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "totaler verify exited with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// Messages ready in `tally.sums` and in `tally.sums.dead`.
pub async fn queues(url: &str) -> anyhow::Result<(u32, u32)> {
    let connecting = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    let connection = tokio::time::timeout(Duration::from_secs(5), connecting).await??;
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let ready = channel
        .queue_declare("tally.sums".into(), passive, FieldTable::default())
        .await?
        .message_count();
    let dead = channel
        .queue_declare("tally.sums.dead".into(), passive, FieldTable::default())
        .await?
        .message_count();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(200, "checked".into()),
    )
    .await;
    Ok((ready, dead))
}
