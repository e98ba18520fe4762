//! The figures a run measures, in one list: each a variant of [`Figure`]
//! with its JSON key, unit, label and target, so a figure can only be
//! recorded under a variant and every variant is reported. The ratios of
//! Tally's medians to the limits' are [`Ratio`]s over two figures. Nothing
//! here measures or renders.

/// A target of the issues for this 2-core machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// Met when the median is at least (`true`) or at most `value`.
    pub at_least: bool,
    pub value: f64,
}

const fn at_least(value: f64) -> Option<Target> {
    Some(Target {
        at_least: true,
        value,
    })
}

const fn at_most(value: f64) -> Option<Target> {
    Some(Target {
        at_least: false,
        value,
    })
}

impl Target {
    pub fn met(&self, value: f64) -> bool {
        if self.at_least {
            value >= self.value
        } else {
            value <= self.value
        }
    }
}

/// What the list says of one figure.
struct Row {
    key: &'static str,
    unit: &'static str,
    target: Option<Target>,
    label: &'static str,
}

impl Figure {
    /// The key of the figure in the JSON and the table.
    pub const fn key(self) -> &'static str {
        self.row().key
    }

    pub const fn unit(self) -> &'static str {
        self.row().unit
    }

    pub const fn label(self) -> &'static str {
        self.row().label
    }

    pub const fn target(self) -> Option<Target> {
        self.row().target
    }
}

/// Declares [`Figure`] and its rows from one list.
macro_rules! figures {
    ($($variant:ident => $key:literal, $unit:literal, $target:expr, $label:literal;)*) => {
        /// A figure the harness measures; limits first, in table order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Figure {
            $($variant,)*
        }

        impl Figure {
            /// Every figure, in table order.
            pub const ALL: &[Figure] = &[$(Figure::$variant,)*];

            /// The figure's row of the list.
            const fn row(self) -> Row {
                match self {
                    $(Figure::$variant => Row { key: $key, unit: $unit, target: $target, label: $label },)*
                }
            }
        }
    };
}

figures! {
    BrokerConfirmPerS => "broker_confirm_per_s", "msg/s", None,
        "RabbitMQ persistent publishes, pipelined confirms, quorum queue (one row a message)";
    RawConsumePerS => "raw_consume_per_s", "rows/s", None,
        "RabbitMQ raw consume of a backlog packed as the relay packs it (same prefetch, multiple-ack per batch)";
    PgInsertTps => "pg_insert_tps", "rows/s", None,
        "PostgreSQL single-row INSERT commits at the adder's pool size";
    PgCommitP50Ms => "pg_commit_p50_ms", "ms", None,
        "PostgreSQL single-row INSERT p50, one client (one WAL flush)";
    PgCommitP99Ms => "pg_commit_p99_ms", "ms", None,
        "PostgreSQL single-row INSERT p99, one client (one WAL flush)";
    FileUpdatesPerS => "file_updates_per_s", "updates/s", None,
        "atomic file updates (write, fsync, rename, fsync dir) in the sum file's dir";
    BareTonicCallsPerS => "bare_tonic_calls_per_s", "calls/s", None,
        "bare tonic unary server";
    BareWarpGetPerS => "bare_warp_get_per_s", "req/s", None,
        "bare warp server GET";
    E2eAddsPerS => "e2e_adds_per_s", "adds/s", at_least(8000.0),
        "Tally end-to-end durable Adds at saturation (exact total reached)";
    AddAcceptedPerS => "add_accepted_per_s", "adds/s", None,
        "Tally Add RPCs acknowledged at saturation";
    LatencyRatePerS => "latency_rate_per_s", "adds/s", None,
        "Tally fixed-rate load achieved";
    AddP50Ms => "add_p50_ms", "ms", None,
        "Tally Add RPC p50 at the fixed rate";
    AddP99Ms => "add_p99_ms", "ms", at_most(5.0),
        "Tally Add RPC p99 at the fixed rate";
    AddToCountedP50Ms => "add_to_counted_p50_ms", "ms", None,
        "Tally Add -> counted p50 at the fixed rate";
    AddToCountedP99Ms => "add_to_counted_p99_ms", "ms", at_most(50.0),
        "Tally Add -> counted p99 at the fixed rate";
    StageAddServerP50Ms => "stage_add_server_p50_ms", "ms", None,
        "stage at the fixed rate, p50 (Add inside the adder, group commit included)";
    StageAddServerP99Ms => "stage_add_server_p99_ms", "ms", None,
        "stage at the fixed rate, p99 (Add inside the adder, group commit included)";
    StageRelayConfirmP50Ms => "stage_relay_confirm_p50_ms", "ms", None,
        "stage at the fixed rate, p50 (relay batch: publish to its last confirm)";
    StageRelayConfirmP99Ms => "stage_relay_confirm_p99_ms", "ms", None,
        "stage at the fixed rate, p99 (relay batch: publish to its last confirm)";
    StageQueueTimeP50Ms => "stage_queue_time_p50_ms", "ms", None,
        "stage at the fixed rate, p50 (queue time: relay publish to delivery)";
    StageQueueTimeP99Ms => "stage_queue_time_p99_ms", "ms", None,
        "stage at the fixed rate, p99 (queue time: relay publish to delivery)";
    StageLedgerApplyP50Ms => "stage_ledger_apply_p50_ms", "ms", None,
        "stage at the fixed rate, p50 (ledger update: lock to fsynced rename)";
    StageLedgerApplyP99Ms => "stage_ledger_apply_p99_ms", "ms", None,
        "stage at the fixed rate, p99 (ledger update: lock to fsynced rename)";
    StageEndToEndP50Ms => "stage_end_to_end_p50_ms", "ms", None,
        "stage at the fixed rate, p50 (outbox commit to durable in sum.txt)";
    StageEndToEndP99Ms => "stage_end_to_end_p99_ms", "ms", None,
        "stage at the fixed rate, p99 (outbox commit to durable in sum.txt)";
    CpuSaturationAdder => "cpu_saturation_adder", "cores", None,
        "CPU at saturation: adder";
    CpuSaturationTotaler => "cpu_saturation_totaler", "cores", None,
        "CPU at saturation: totaler";
    CpuSaturationPostgres => "cpu_saturation_postgres", "cores", None,
        "CPU at saturation: PostgreSQL";
    CpuSaturationRabbitmq => "cpu_saturation_rabbitmq", "cores", None,
        "CPU at saturation: RabbitMQ";
    CpuSaturationBench => "cpu_saturation_bench", "cores", None,
        "CPU at saturation: the harness (load, polls)";
    CpuSaturationOther => "cpu_saturation_other", "cores", None,
        "CPU at saturation: everything else";
    CpuFixedRateAdder => "cpu_fixed_rate_adder", "cores", None,
        "CPU at the fixed rate: adder";
    CpuFixedRateTotaler => "cpu_fixed_rate_totaler", "cores", None,
        "CPU at the fixed rate: totaler";
    CpuFixedRatePostgres => "cpu_fixed_rate_postgres", "cores", None,
        "CPU at the fixed rate: PostgreSQL";
    CpuFixedRateRabbitmq => "cpu_fixed_rate_rabbitmq", "cores", None,
        "CPU at the fixed rate: RabbitMQ";
    CpuFixedRateBench => "cpu_fixed_rate_bench", "cores", None,
        "CPU at the fixed rate: the harness (load, polls)";
    CpuFixedRateOther => "cpu_fixed_rate_other", "cores", None,
        "CPU at the fixed rate: everything else";
    DrainPerS => "drain_per_s", "rows/s", None,
        "Tally backlog drain (totaler started on a queued backlog)";
    OutboxDrainSmallRows => "outbox_drain_small_rows", "rows", None,
        "outbox drain, smaller backlog: its rows (left in the outbox as a broker outage leaves them)";
    OutboxDrainSmallPerS => "outbox_drain_small_per_s", "rows/s", None,
        "Tally outbox drain, smaller backlog (from the relay's start after the outage until GET /sum counts every row)";
    OutboxDrainLargeRows => "outbox_drain_large_rows", "rows", None,
        "outbox drain, larger backlog: its rows (left in the outbox as a broker outage leaves them)";
    OutboxDrainLargePerS => "outbox_drain_large_per_s", "rows/s", None,
        "Tally outbox drain, larger backlog (from the relay's start after the outage until GET /sum counts every row)";
    SumGetPerS => "sum_get_per_s", "req/s", None,
        "Tally GET /sum";
    AdderRssMb => "adder_rss_mb", "MiB", at_most(64.0),
        "adder RSS under the fixed-rate load (highest sample)";
    TotalerRssMb => "totaler_rss_mb", "MiB", at_most(64.0),
        "totaler RSS under the fixed-rate load (highest sample)";
    AdderPeakRssMb => "adder_peak_rss_mb", "MiB", None,
        "adder peak RSS over the whole run (VmHWM)";
    TotalerPeakRssMb => "totaler_peak_rss_mb", "MiB", None,
        "totaler peak RSS over the whole run (VmHWM)";
    MemAdderKbPerConn => "mem_adder_kb_per_conn", "KiB", at_most(16.0),
        "adder RSS per idle gRPC connection (all open minus before, over the connections)";
    MemAdderReturnedPct => "mem_adder_returned_pct", "%", at_least(90.0),
        "adder RSS given back after those connections closed (share of the rise)";
    MemTotalerKbPerConn => "mem_totaler_kb_per_conn", "KiB", at_most(16.0),
        "totaler RSS per idle HTTP/1.1 keep-alive connection (all open minus before, over the connections)";
    MemTotalerReturnedPct => "mem_totaler_returned_pct", "%", at_least(90.0),
        "totaler RSS given back after those connections closed (share of the rise)";
}

/// A ratio of two medians.
#[derive(Clone, Copy, Debug)]
pub struct Ratio {
    pub key: &'static str,
    pub label: &'static str,
    pub numerator: Figure,
    pub denominator: Figure,
    pub target: Option<Target>,
}

/// The ratios of Tally to the limits, and of one Tally figure to the same
/// at another size, in table order.
pub const RATIOS: &[Ratio] = &[
    Ratio {
        key: "ratio_e2e_to_broker",
        label: "e2e Adds / broker confirms",
        numerator: Figure::E2eAddsPerS,
        denominator: Figure::BrokerConfirmPerS,
        target: at_least(0.5),
    },
    Ratio {
        key: "ratio_e2e_to_pg_insert",
        label: "e2e Adds / PostgreSQL INSERTs",
        numerator: Figure::E2eAddsPerS,
        denominator: Figure::PgInsertTps,
        target: None,
    },
    Ratio {
        key: "ratio_accepted_to_tonic",
        label: "accepted Adds / bare tonic calls",
        numerator: Figure::AddAcceptedPerS,
        denominator: Figure::BareTonicCallsPerS,
        target: None,
    },
    Ratio {
        key: "ratio_add_p99_to_pg_commit_p99",
        label: "Add p99 / one client's INSERT p99",
        numerator: Figure::AddP99Ms,
        denominator: Figure::PgCommitP99Ms,
        target: None,
    },
    Ratio {
        key: "ratio_drain_to_consume",
        label: "backlog drain / raw consume",
        numerator: Figure::DrainPerS,
        denominator: Figure::RawConsumePerS,
        target: at_least(0.5),
    },
    Ratio {
        key: "ratio_outbox_drain_large_to_small",
        label: "outbox drain, larger backlog / smaller (issue 21: 1M rows / 100k)",
        numerator: Figure::OutboxDrainLargePerS,
        denominator: Figure::OutboxDrainSmallPerS,
        target: at_least(0.5),
    },
    Ratio {
        key: "ratio_sum_to_warp",
        label: "GET /sum / bare warp GET",
        numerator: Figure::SumGetPerS,
        denominator: Figure::BareWarpGetPerS,
        target: at_least(0.7),
    },
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_key_is_unique_and_lower_snake_case() {
        let keys: Vec<&str> = Figure::ALL
            .iter()
            .map(|f| f.key())
            .chain(RATIOS.iter().map(|r| r.key))
            .collect();
        let unique: HashSet<&str> = keys.iter().copied().collect();
        assert_eq!(unique.len(), keys.len(), "a key is listed twice");
        for key in keys {
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{key}"
            );
        }
    }

    #[test]
    fn targets_compare_in_their_direction() {
        let most = Figure::AddP99Ms.target().expect("Add p99 has a target");
        assert!(most.met(5.0) && !most.met(5.1));
        let least = Figure::E2eAddsPerS.target().expect("e2e has a target");
        assert!(least.met(8000.0) && !least.met(7999.0));
    }
}
