//! The end of a main-mode run: wait for the backlog to drain, read the
//! run's end ([`Settled`]: the total on the totaler and in `sum.txt`
//! against the acknowledged Adds, the outbox, the queues, `totaler
//! verify`), require exactly the hostile messages in the dead-letter queue,
//! and require that the run saw what it must have seen (duplicates applied
//! once, republished rows, each broker fault, a SIGTERM while consuming,
//! two totalers on one file, enough Adds per second). `Report` lists every
//! problem found; `display` prints it.

mod display;

use std::time::{Duration, Instant};

use crate::{
    Fault, Options,
    counts::Counts,
    hostile::drain,
    load::Tally,
    metrics::{
        APPLIED_ROWS, CONSUMED, DEAD_LETTERED, DUPLICATE_ROWS, LEDGER_ERRORS, PUBLISHED_MESSAGES,
        PUBLISHED_ROWS,
    },
    readings::{Sources, Verify, wait_until_settled},
    run_dir::Verdict,
    settled::Settled,
    stack::Stack,
};

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
    pub settled: Settled,
    /// Set at the end: the dead letters are exactly the hostile messages.
    pub dead_letter_problem: Option<String>,
    pub min_ack_rate: u64,
    pub fault_time: Duration,
    pub settle: Duration,
    pub elapsed: Duration,
}

impl Verdict for Report {
    fn seed(&self) -> u64 {
        self.seed
    }

    /// Every way the run fell short of an exact total or of an honest run;
    /// empty when it passed.
    fn problems(&self) -> Vec<String> {
        let mut problems = self.counts.failures.clone();
        problems.extend(self.settled.total_problems());
        problems.extend(self.dead_letter_problem.clone());
        if let Err(e) = &self.settled.verify {
            problems.push(e.clone());
        }
        problems.extend(self.honesty_problems());
        problems
    }
}

impl Report {
    /// What a run must have seen for its verdict to mean something.
    fn honesty_problems(&self) -> Vec<String> {
        let c = &self.counts;
        let mut problems = Vec::new();
        let mut require = |ok: bool, what: String| {
            if !ok {
                problems.push(format!("the run did not show {what}"));
            }
        };
        for fault in Fault::first_round() {
            let name = format!("{fault:?}");
            require(
                c.runs.get(&name).is_some_and(|n| *n > 0),
                format!("the fault {name}"),
            );
        }
        let rate = self.settled.ack_rate(self.fault_time.as_secs_f64());
        require(
            rate >= self.min_ack_rate as f64,
            format!(
                "{} acknowledged Adds per second (it had {rate:.0})",
                self.min_ack_rate
            ),
        );
        require(
            self.settled.idless_acknowledged > 0,
            "an id-less Add".to_owned(),
        );
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
        require(
            c.lost_batches_repaired > 0,
            "a lost batch found by verify and repaired with adder republish".to_owned(),
        );
        require(
            c.batch_jumps
                .iter()
                .any(|(_, to)| *to >= crate::repair::FAR_BATCH - 1),
            "batch numbers beyond 10^9".to_owned(),
        );
        problems
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
) -> Report {
    let settling = Instant::now();
    let limit = Duration::from_secs(options.settle_seconds);
    wait_until_settled(limit, async || read(stack, tally).await).await;
    stack.sampler.sample_now().await;
    stack.record_resources(false);
    let mut settled = read(stack, tally).await;
    let (dead_letter_problem, copies) = dead_letter_problem(stack).await;
    settled.expected_dead += copies;
    stack.counts.dead_letter_copies = copies;
    settled.verify = Verify {
        binary: stack.totaler.binary().to_path_buf(),
        sum_file: stack.data.sum_file(),
        url: stack.postgres.url(),
    }
    .run();
    let total = |series| stack.sampler.total("", series);
    Report {
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
        settled,
        dead_letter_problem,
        min_ack_rate: options.min_ack_rate,
        fault_time,
        settle: settling.elapsed(),
        elapsed: started.elapsed(),
    }
}

async fn read(stack: &Stack, tally: &Tally) -> Settled {
    let sum_file = stack.data.sum_file();
    let sources = Sources {
        totalers: vec![&stack.totaler],
        sum_file: &sum_file,
        outbox: Some(stack.postgres.url()),
        amqp: Some(stack.rabbit.url()),
        backlog_rows: stack.counts.backlog_rows,
        expected_dead: stack.counts.hostile_messages,
    };
    Settled::read(&sources, tally).await
}

/// The dead-letter queue must hold the hostile messages, body for body, and
/// nothing else; also returns how many extra copies of them it holds.
///
/// A copy is the broker's, since nothing of Tally publishes to that queue:
/// seen once, with a broker SIGKILL (`BrokerCrashDuringTotalerKill`) 0.5 s
/// after `HostileMessages`, each of the three was there twice (a quorum
/// queue's dead-lettering is not exactly-once across a crash of its node).
/// A copy of a hostile body is not a problem; any other body is.
async fn dead_letter_problem(stack: &Stack) -> (Option<String>, u32) {
    let bodies = match drain(&stack.rabbit.url(), "tally.sums.dead").await {
        Ok(bodies) => bodies,
        Err(e) => return (Some(format!("reading the dead-letter queue: {e:#}")), 0),
    };
    let (missing, unexpected, copies) = classify(&stack.expected_dead, bodies);
    if missing.is_empty() && unexpected.is_empty() {
        return (None, copies);
    }
    let shown: Vec<String> = unexpected
        .iter()
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned())
        .collect();
    let problem = format!(
        "dead letters: the hostile messages {missing:?} were not dead-lettered (the totaler took them); {} unexpected ones: {shown:?}",
        unexpected.len()
    );
    (Some(problem), copies)
}

/// Of the dead letters `bodies`: the names of the `expected` ones missing,
/// the bodies expected nowhere, and how many are extra copies of expected
/// ones.
fn classify(
    expected: &[(String, Vec<u8>)],
    bodies: Vec<Vec<u8>>,
) -> (Vec<String>, Vec<Vec<u8>>, u32) {
    let mut unexpected = bodies;
    let mut missing = Vec::new();
    for (name, body) in expected {
        match unexpected.iter().position(|b| b == body) {
            Some(i) => {
                unexpected.swap_remove(i);
            }
            None => missing.push(name.clone()),
        }
    }
    let before = unexpected.len();
    unexpected.retain(|b| !expected.iter().any(|(_, body)| body == b));
    let copies = u32::try_from(before - unexpected.len()).unwrap_or(u32::MAX);
    (missing, unexpected, copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_hostile_dead_letters_are_counted_and_anything_else_is_unexpected() {
        let expected = vec![
            ("forged".to_owned(), b"f".to_vec()),
            ("big".to_owned(), b"b".to_vec()),
        ];
        let bodies = vec![b"f".to_vec(), b"b".to_vec(), b"f".to_vec(), b"x".to_vec()];
        let (missing, unexpected, copies) = classify(&expected, bodies);
        assert!(missing.is_empty());
        assert_eq!((unexpected, copies), (vec![b"x".to_vec()], 1));
        let (missing, unexpected, copies) = classify(&expected, vec![b"f".to_vec(), b"f".to_vec()]);
        assert_eq!(
            (missing, unexpected, copies),
            (vec!["big".to_owned()], vec![], 1)
        );
    }
}
