//! What the main mode's faults did and saw, fault by fault: the counts
//! each fault adds to as it runs, which the report prints and checks.

use std::collections::BTreeMap;

use crate::process::Resources;

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
    /// Each move of the source's batch numbers: from, to.
    pub batch_jumps: Vec<(i64, i64)>,
    /// Batches lost from the queue that `verify` found and republish repaired.
    pub lost_batches_repaired: u64,
    /// Extra copies of hostile messages in the dead-letter queue: the
    /// broker's at-most-once dead-lettering replayed after a crash.
    pub dead_letter_copies: u32,
    /// Each service's process at the first fault and at the end, by name.
    pub resources: BTreeMap<String, (Option<Resources>, Option<Resources>)>,
    /// The size of `sum.txt` at the end, in bytes.
    pub sum_file_bytes: Option<u64>,
    /// What went wrong while faults ran.
    pub failures: Vec<String>,
}
