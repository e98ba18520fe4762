//! The end of a run: wait for the backlog to drain, then compare the total
//! (GET /sum and sum.txt's first line) with the sum of acknowledged Adds,
//! reconcile the outbox, and look for dead letters. `Report` prints the
//! counts of the run and lists every problem found.

use std::{
    fmt,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use lapin::{options::QueueDeclareOptions, types::FieldTable};
use sqlx::{Connection, PgConnection};

use crate::{Options, Stack, load::Tally, process::http_get};

/// How many faults of each kind a run injected.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub totaler_kills: u32,
    pub adder_kills: u32,
    pub broker_crashes: u32,
    pub broker_stops: u32,
    pub postgres_crashes: u32,
    pub two_totaler_periods: u32,
    pub totaler_sigterms: u32,
    pub sigterm_failures: Vec<String>,
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub counts: Counts,
    pub acknowledged: u64,
    pub retries: u64,
    pub expected: i128,
    pub served: Option<i128>,
    pub file: Option<i128>,
    pub outbox_sum: i128,
    pub outbox_rows: i64,
    pub unpublished: i64,
    pub ready: u32,
    pub dead_letters: u32,
    pub settle: Duration,
    pub elapsed: Duration,
}

impl Report {
    /// Every way the run fell short of an exact total; empty when it is exact.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.counts.sigterm_failures.clone();
        if self.served != Some(self.expected) {
            problems.push(format!(
                "GET /sum is {:?}, acknowledged Adds sum to {}",
                self.served, self.expected
            ));
        }
        if self.file != self.served {
            problems.push(format!(
                "sum.txt says {:?}, GET /sum {:?}",
                self.file, self.served
            ));
        }
        if self.outbox_sum != self.expected || self.outbox_rows != self.acknowledged as i64 {
            problems.push(format!(
                "the outbox holds {} rows summing to {}, but {} Adds summing to {} were acknowledged",
                self.outbox_rows, self.outbox_sum, self.acknowledged, self.expected
            ));
        }
        if self.unpublished != 0 || self.ready != 0 {
            problems.push(format!(
                "backlog left: {} unpublished rows, {} queued messages",
                self.unpublished, self.ready
            ));
        }
        if self.dead_letters != 0 {
            problems.push(format!(
                "{} messages in the dead-letter queue",
                self.dead_letters
            ));
        }
        problems
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(f, "fault suite report (seed {})", self.seed)?;
        writeln!(
            f,
            "  time                 {:.1?} (drain {:.1?})",
            self.elapsed, self.settle
        )?;
        writeln!(
            f,
            "  adds acknowledged    {} ({} failed calls retried)",
            self.acknowledged, self.retries
        )?;
        writeln!(f, "  totaler SIGKILLs     {}", c.totaler_kills)?;
        writeln!(f, "  adder SIGKILLs       {}", c.adder_kills)?;
        writeln!(
            f,
            "  broker restarts      {} after SIGKILL, {} after SIGTERM",
            c.broker_crashes, c.broker_stops
        )?;
        writeln!(
            f,
            "  postgres restarts    {} (immediate stop)",
            c.postgres_crashes
        )?;
        writeln!(f, "  two-totaler periods  {}", c.two_totaler_periods)?;
        writeln!(f, "  totaler SIGTERMs     {}", c.totaler_sigterms)?;
        writeln!(f, "  expected total       {}", self.expected)?;
        writeln!(f, "  GET /sum             {:?}", self.served)?;
        writeln!(f, "  sum.txt line 1       {:?}", self.file)?;
        writeln!(
            f,
            "  outbox               {} rows, sum {}, {} unpublished",
            self.outbox_rows, self.outbox_sum, self.unpublished
        )?;
        writeln!(
            f,
            "  queue                {} ready, {} dead letters",
            self.ready, self.dead_letters
        )?;
        let problems = self.problems();
        if problems.is_empty() {
            write!(f, "  verdict              EXACT")
        } else {
            write!(
                f,
                "  verdict              NOT EXACT: {}",
                problems.join("; ")
            )
        }
    }
}

/// Waits (bounded) until the total reaches the expected value and the
/// backlog is gone, then gathers the report.
pub(crate) async fn settle_and_check(
    stack: &Stack,
    tally: &Tally,
    options: &Options,
    started: Instant,
) -> anyhow::Result<Report> {
    let expected = *tally.sum.lock().expect("tally lock");
    let settling = Instant::now();
    let deadline = settling + Duration::from_secs(options.settle_seconds);
    let mut report = gather(stack, tally, options, expected).await?;
    while Instant::now() < deadline && !report.problems().is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        report = gather(stack, tally, options, expected).await?;
    }
    // Hold a moment longer: a total that is exact now must stay exact.
    tokio::time::sleep(Duration::from_secs(2)).await;
    report = gather(stack, tally, options, expected).await?;
    report.settle = settling.elapsed();
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn gather(
    stack: &Stack,
    tally: &Tally,
    options: &Options,
    expected: i128,
) -> anyhow::Result<Report> {
    let served = http_get(stack.totaler.http, "/sum")
        .await
        .and_then(|(_, body)| {
            let start = body.find("\"sum\":")? + 6;
            let digits: String = body[start..]
                .chars()
                .take_while(|c| *c == '-' || c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        });
    let file = std::fs::read_to_string(stack.root.join("data/sum.txt"))
        .ok()
        .and_then(|text| text.lines().next().and_then(|line| line.parse().ok()));
    let (outbox_sum, outbox_rows, unpublished) =
        outbox(&stack.postgres.url()).await.unwrap_or((0, -1, -1));
    let (ready, dead_letters) = queues(&stack.rabbit.url())
        .await
        .unwrap_or((u32::MAX, u32::MAX));
    Ok(Report {
        seed: options.seed,
        counts: stack.counts.clone(),
        acknowledged: tally.acknowledged.load(Ordering::Relaxed),
        retries: tally.retries.load(Ordering::Relaxed),
        expected,
        served,
        file,
        outbox_sum,
        outbox_rows,
        unpublished,
        ready,
        dead_letters,
        settle: Duration::ZERO,
        elapsed: Duration::ZERO,
    })
}

async fn outbox(url: &str) -> anyhow::Result<(i128, i64, i64)> {
    let mut connection = PgConnection::connect(url).await?;
    let (sum, rows, unpublished): (String, i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(sum), 0)::text, count(*), count(*) FILTER (WHERE published_at IS NULL) FROM outbox",
    )
    .fetch_one(&mut connection)
    .await?;
    Ok((sum.parse()?, rows, unpublished))
}

async fn queues(url: &str) -> anyhow::Result<(u32, u32)> {
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
