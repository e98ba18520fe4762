//! The one check of every mode's end: the total is exact and everything
//! drained. [`Settled`] holds what a settled run shows (each totaler's
//! `GET /sum`, `sum.txt`'s first line, the outbox, the queues, `totaler
//! verify`) and what it must show (the acknowledged Adds, plus the
//! uncertain ones the outbox committed); `readings` fills it in. Pure: no
//! I/O here.

use std::fmt;

use crate::outbox::Outbox;

/// What a run shows at its end, and what it must show.
#[derive(Debug, Clone)]
pub struct Settled {
    /// `GET /sum` of each totaler, by name, parsed exactly.
    pub served: Vec<(String, Result<i128, String>)>,
    /// The first line of `sum.txt`.
    pub file: Option<i128>,
    pub acknowledged: u64,
    pub idless_acknowledged: u64,
    pub retries: u64,
    pub uncertain: usize,
    pub uncertain_committed: usize,
    /// Rows the suite committed straight to the outbox (a broker outage's
    /// backlog): each must be counted.
    pub backlog_rows: u64,
    /// The sum of the acknowledged Adds, the committed uncertain ones and
    /// the backlog.
    pub expected: i128,
    pub outbox: Option<Outbox>,
    /// Messages left in `tally.sums`.
    pub ready: u32,
    /// Messages in `tally.sums.dead`.
    pub dead_letters: u32,
    /// The dead letters there must be (the hostile messages published).
    pub expected_dead: u32,
    pub verify: Result<(), String>,
}

/// Nothing read yet: no totaler, no file, no outbox, `verify` not run.
impl Default for Settled {
    fn default() -> Self {
        Self {
            served: Vec::new(),
            file: None,
            acknowledged: 0,
            idless_acknowledged: 0,
            retries: 0,
            uncertain: 0,
            uncertain_committed: 0,
            backlog_rows: 0,
            expected: 0,
            outbox: None,
            ready: 0,
            dead_letters: 0,
            expected_dead: 0,
            verify: Ok(()),
        }
    }
}

impl Settled {
    /// The outbox rows there must be.
    pub fn expected_rows(&self) -> i64 {
        (self.acknowledged + self.uncertain_committed as u64 + self.backlog_rows) as i64
    }

    /// Whether the total is exact everywhere and everything drained (what
    /// settling waits for); empty when it is.
    pub fn total_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, served) in &self.served {
            match served {
                Ok(sum) if *sum == self.expected => {}
                Ok(sum) => problems.push(format!(
                    "{name}: GET /sum is {sum}, acknowledged Adds sum to {} (off by {})",
                    self.expected,
                    sum - self.expected
                )),
                Err(e) => problems.push(format!(
                    "{name}: GET /sum gave no exact total ({e}); acknowledged Adds sum to {}",
                    self.expected
                )),
            }
        }
        if self.file != Some(self.expected) {
            problems.push(format!(
                "sum.txt says {:?}, expected {}",
                self.file, self.expected
            ));
        }
        let rows = self.expected_rows();
        match self.outbox {
            Some(o) if o.sum == self.expected && o.rows == rows => {}
            Some(o) => problems.push(format!(
                "the outbox holds {} rows summing to {}, but {rows} Adds summing to {} were acknowledged or committed",
                o.rows, o.sum, self.expected
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
        if self.dead_letters != self.expected_dead {
            problems.push(format!(
                "{} messages in the dead-letter queue, expected exactly the {} hostile ones",
                self.dead_letters, self.expected_dead
            ));
        }
        problems
    }

    /// [`Settled::total_problems`] and what `totaler verify` found.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.total_problems();
        if let Err(e) = &self.verify {
            problems.push(e.clone());
        }
        problems
    }

    /// Whether nothing is left to publish or consume.
    pub fn drained(&self) -> bool {
        self.ready == 0 && self.outbox.is_some_and(|o| o.unpublished == 0)
    }

    /// The Adds acknowledged per second of `seconds`.
    pub fn ack_rate(&self, seconds: f64) -> f64 {
        self.acknowledged as f64 / seconds.max(1.0)
    }
}

/// The report lines every mode prints: the Adds, the totals, the outbox,
/// the queues and `verify`.
impl fmt::Display for Settled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  adds acknowledged    {} ({} id-less; {} failed calls retried; {} uncertain, {} of them committed; {} backlog rows)",
            self.acknowledged,
            self.idless_acknowledged,
            self.retries,
            self.uncertain,
            self.uncertain_committed,
            self.backlog_rows
        )?;
        writeln!(f, "  expected total       {}", self.expected)?;
        writeln!(f, "  GET /sum             {:?}", self.served)?;
        writeln!(f, "  sum.txt line 1       {:?}", self.file)?;
        writeln!(f, "  outbox               {:?}", self.outbox)?;
        writeln!(
            f,
            "  queue                {} ready, {} dead letters ({} expected)",
            self.ready, self.dead_letters, self.expected_dead
        )?;
        writeln!(f, "  totaler verify       {:?}", self.verify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact() -> Settled {
        Settled {
            served: vec![("totaler".to_owned(), Ok(30))],
            file: Some(30),
            acknowledged: 2,
            uncertain_committed: 1,
            expected: 30,
            outbox: Some(Outbox {
                rows: 3,
                sum: 30,
                unpublished: 0,
            }),
            ..Settled::default()
        }
    }

    #[test]
    fn a_settled_run_is_exact_only_when_every_total_and_the_outbox_agree() {
        assert!(exact().problems().is_empty());
        let mut off = exact();
        off.served.push(("totaler-2".to_owned(), Ok(29)));
        assert_eq!(off.problems().len(), 1, "{:?}", off.problems());
        let mut file = exact();
        file.file = Some(31);
        assert_eq!(file.problems().len(), 1);
        let mut rows = exact();
        rows.backlog_rows = 1;
        assert_eq!(rows.problems().len(), 1);
        let mut dead = exact();
        dead.dead_letters = 1;
        assert_eq!(dead.problems().len(), 1);
        dead.expected_dead = 1;
        assert!(dead.problems().is_empty());
        let mut queued = exact();
        queued.ready = 1;
        assert_eq!(queued.problems().len(), 1);
        let mut verify = exact();
        verify.verify = Err("totaler verify exited with 1".to_owned());
        assert_eq!(verify.total_problems().len(), 0);
        assert_eq!(verify.problems().len(), 1);
    }
}
