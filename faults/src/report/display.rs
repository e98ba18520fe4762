//! The main mode's report as text: the run's time, each fault's counts,
//! each service's resources, the metrics, the settled totals and the
//! verdict with every problem.

use std::fmt::{self, Formatter};

use super::Report;
use crate::{process::Resources, run_dir::Verdict};

impl fmt::Display for Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "fault suite report (seed {})", self.seed)?;
        writeln!(
            f,
            "  time                 {:.1?} ({:.1?} of faults, drain {:.1?}; {:.0} Adds acknowledged/s)",
            self.elapsed,
            self.fault_time,
            self.settle,
            self.settled.ack_rate(self.fault_time.as_secs_f64())
        )?;
        self.processes(f)?;
        self.files_and_inputs(f)?;
        self.resources(f)?;
        self.metrics(f)?;
        write!(f, "{}", self.settled)?;
        self.verdict(f)
    }
}

impl Report {
    /// The process, server and network faults.
    fn processes(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
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
        writeln!(f, "  confirm partitions   {}", c.confirm_partitions)
    }

    /// The disk, `sum.txt`, the slow transaction, the outages, the stalls
    /// and the hostile inputs.
    fn files_and_inputs(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
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
        writeln!(
            f,
            "  batch numbers        moved {:?}; {} lost batches found by verify and republished",
            c.batch_jumps, c.lost_batches_repaired
        )?;
        writeln!(
            f,
            "  hostile              {} NUL rounds, {} messages ({} dead-lettered twice by a broker that crashed), {} half-sent rounds",
            c.nul_rounds, c.hostile_messages, c.dead_letter_copies, c.half_sent_rounds
        )?;
        writeln!(
            f,
            "  beyond i64           {} rounds, GET /sum showed {:?}",
            c.beyond_i64_rounds, c.beyond_i64_seen
        )
    }

    /// Each service's memory and descriptors, and the size of `sum.txt`.
    fn resources(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let show = |r: &Option<Resources>| {
            r.map_or("not running".to_owned(), |r| {
                format!("pid {} {} KiB {} fds", r.pid, r.rss_kb, r.fds)
            })
        };
        for (name, (first, last)) in &self.counts.resources {
            writeln!(
                f,
                "  {name:<20} first fault: {}; end: {}",
                show(first),
                show(last)
            )?;
        }
        writeln!(
            f,
            "  sum.txt size         {:?} bytes",
            self.counts.sum_file_bytes
        )
    }

    fn metrics(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let s = &self.seen;
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
        )
    }

    fn verdict(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let problems = self.problems();
        if problems.is_empty() {
            return write!(f, "  verdict              EXACT");
        }
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
