//! What a run reports: the figures (one value per round, the median
//! reported), the ratios of Tally's medians to the limits' medians, and the
//! issue's targets. Renders a Markdown table for stdout and BENCHMARKS.md,
//! and the JSON document.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// One round's figures, by key.
pub type Round = BTreeMap<&'static str, f64>;

/// A figure the harness measures.
pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
}

/// A ratio of two medians.
pub struct Ratio {
    pub key: &'static str,
    pub label: &'static str,
    pub numerator: &'static str,
    pub denominator: &'static str,
}

/// A target of the issue.
pub struct Target {
    pub key: &'static str,
    pub at_least: bool,
    pub value: f64,
}

macro_rules! figure {
    ($key:literal, $label:literal, $unit:literal) => {
        Figure {
            key: $key,
            label: $label,
            unit: $unit,
        }
    };
}

/// Every figure, limits first, in table order.
pub const FIGURES: &[Figure] = &[
    figure!(
        "broker_confirm_per_s",
        "RabbitMQ persistent publishes, pipelined confirms, quorum queue (one row a message)",
        "msg/s"
    ),
    figure!(
        "raw_consume_per_s",
        "RabbitMQ raw consume of a backlog packed as the relay packs it (same prefetch, multiple-ack per batch)",
        "rows/s"
    ),
    figure!(
        "pg_insert_tps",
        "PostgreSQL single-row INSERT commits at the adder's pool size",
        "rows/s"
    ),
    figure!(
        "pg_commit_p50_ms",
        "PostgreSQL single-row INSERT p50, one client (one WAL flush)",
        "ms"
    ),
    figure!(
        "pg_commit_p99_ms",
        "PostgreSQL single-row INSERT p99, one client (one WAL flush)",
        "ms"
    ),
    figure!(
        "file_updates_per_s",
        "atomic file updates (write, fsync, rename, fsync dir) in the sum file's dir",
        "updates/s"
    ),
    figure!(
        "bare_tonic_calls_per_s",
        "bare tonic unary server",
        "calls/s"
    ),
    figure!("bare_warp_get_per_s", "bare warp server GET", "req/s"),
    figure!(
        "e2e_adds_per_s",
        "Tally end-to-end durable Adds at saturation (exact total reached)",
        "adds/s"
    ),
    figure!(
        "add_accepted_per_s",
        "Tally Add RPCs acknowledged at saturation",
        "adds/s"
    ),
    figure!(
        "latency_rate_per_s",
        "Tally fixed-rate load achieved",
        "adds/s"
    ),
    figure!("add_p50_ms", "Tally Add RPC p50 at the fixed rate", "ms"),
    figure!("add_p99_ms", "Tally Add RPC p99 at the fixed rate", "ms"),
    figure!(
        "add_to_counted_p50_ms",
        "Tally Add -> counted p50 at the fixed rate",
        "ms"
    ),
    figure!(
        "add_to_counted_p99_ms",
        "Tally Add -> counted p99 at the fixed rate",
        "ms"
    ),
    figure!(
        "stage_add_server_p50_ms",
        "stage at the fixed rate, p50 (Add inside the adder, group commit included)",
        "ms"
    ),
    figure!(
        "stage_add_server_p99_ms",
        "stage at the fixed rate, p99 (Add inside the adder, group commit included)",
        "ms"
    ),
    figure!(
        "stage_relay_confirm_p50_ms",
        "stage at the fixed rate, p50 (relay batch: publish to its last confirm)",
        "ms"
    ),
    figure!(
        "stage_relay_confirm_p99_ms",
        "stage at the fixed rate, p99 (relay batch: publish to its last confirm)",
        "ms"
    ),
    figure!(
        "stage_queue_time_p50_ms",
        "stage at the fixed rate, p50 (queue time: relay publish to delivery)",
        "ms"
    ),
    figure!(
        "stage_queue_time_p99_ms",
        "stage at the fixed rate, p99 (queue time: relay publish to delivery)",
        "ms"
    ),
    figure!(
        "stage_ledger_apply_p50_ms",
        "stage at the fixed rate, p50 (ledger update: lock to fsynced rename)",
        "ms"
    ),
    figure!(
        "stage_ledger_apply_p99_ms",
        "stage at the fixed rate, p99 (ledger update: lock to fsynced rename)",
        "ms"
    ),
    figure!(
        "stage_end_to_end_p50_ms",
        "stage at the fixed rate, p50 (outbox commit to durable in sum.txt)",
        "ms"
    ),
    figure!(
        "stage_end_to_end_p99_ms",
        "stage at the fixed rate, p99 (outbox commit to durable in sum.txt)",
        "ms"
    ),
    figure!("cpu_saturation_adder", "CPU at saturation: adder", "cores"),
    figure!(
        "cpu_saturation_totaler",
        "CPU at saturation: totaler",
        "cores"
    ),
    figure!(
        "cpu_saturation_postgres",
        "CPU at saturation: PostgreSQL",
        "cores"
    ),
    figure!(
        "cpu_saturation_rabbitmq",
        "CPU at saturation: RabbitMQ",
        "cores"
    ),
    figure!(
        "cpu_saturation_bench",
        "CPU at saturation: the harness (load, polls)",
        "cores"
    ),
    figure!(
        "cpu_saturation_other",
        "CPU at saturation: everything else",
        "cores"
    ),
    figure!(
        "cpu_fixed_rate_adder",
        "CPU at the fixed rate: adder",
        "cores"
    ),
    figure!(
        "cpu_fixed_rate_totaler",
        "CPU at the fixed rate: totaler",
        "cores"
    ),
    figure!(
        "cpu_fixed_rate_postgres",
        "CPU at the fixed rate: PostgreSQL",
        "cores"
    ),
    figure!(
        "cpu_fixed_rate_rabbitmq",
        "CPU at the fixed rate: RabbitMQ",
        "cores"
    ),
    figure!(
        "cpu_fixed_rate_bench",
        "CPU at the fixed rate: the harness (load, polls)",
        "cores"
    ),
    figure!(
        "cpu_fixed_rate_other",
        "CPU at the fixed rate: everything else",
        "cores"
    ),
    figure!(
        "drain_per_s",
        "Tally backlog drain (totaler started on a queued backlog)",
        "rows/s"
    ),
    figure!("sum_get_per_s", "Tally GET /sum", "req/s"),
    figure!(
        "adder_rss_mb",
        "adder RSS under the fixed-rate load (highest sample)",
        "MiB"
    ),
    figure!(
        "totaler_rss_mb",
        "totaler RSS under the fixed-rate load (highest sample)",
        "MiB"
    ),
    figure!(
        "adder_peak_rss_mb",
        "adder peak RSS over the whole run (VmHWM)",
        "MiB"
    ),
    figure!(
        "totaler_peak_rss_mb",
        "totaler peak RSS over the whole run (VmHWM)",
        "MiB"
    ),
];

/// The ratios of Tally to the limits.
pub const RATIOS: &[Ratio] = &[
    Ratio {
        key: "ratio_e2e_to_broker",
        label: "e2e Adds / broker confirms",
        numerator: "e2e_adds_per_s",
        denominator: "broker_confirm_per_s",
    },
    Ratio {
        key: "ratio_e2e_to_pg_insert",
        label: "e2e Adds / PostgreSQL INSERTs",
        numerator: "e2e_adds_per_s",
        denominator: "pg_insert_tps",
    },
    Ratio {
        key: "ratio_accepted_to_tonic",
        label: "accepted Adds / bare tonic calls",
        numerator: "add_accepted_per_s",
        denominator: "bare_tonic_calls_per_s",
    },
    Ratio {
        key: "ratio_add_p99_to_pg_commit_p99",
        label: "Add p99 / one client's INSERT p99",
        numerator: "add_p99_ms",
        denominator: "pg_commit_p99_ms",
    },
    Ratio {
        key: "ratio_drain_to_consume",
        label: "backlog drain / raw consume",
        numerator: "drain_per_s",
        denominator: "raw_consume_per_s",
    },
    Ratio {
        key: "ratio_sum_to_warp",
        label: "GET /sum / bare warp GET",
        numerator: "sum_get_per_s",
        denominator: "bare_warp_get_per_s",
    },
];

/// The targets for this 2-core machine.
pub const TARGETS: &[Target] = &[
    Target {
        key: "e2e_adds_per_s",
        at_least: true,
        value: 8000.0,
    },
    Target {
        key: "ratio_e2e_to_broker",
        at_least: true,
        value: 0.5,
    },
    Target {
        key: "add_p99_ms",
        at_least: false,
        value: 5.0,
    },
    Target {
        key: "add_to_counted_p99_ms",
        at_least: false,
        value: 50.0,
    },
    Target {
        key: "ratio_drain_to_consume",
        at_least: true,
        value: 0.5,
    },
    Target {
        key: "ratio_sum_to_warp",
        at_least: true,
        value: 0.7,
    },
    Target {
        key: "adder_rss_mb",
        at_least: false,
        value: 64.0,
    },
    Target {
        key: "totaler_rss_mb",
        at_least: false,
        value: 64.0,
    },
];

/// The medians of every figure measured at least once, then the ratios.
pub fn medians(rounds: &[Round]) -> BTreeMap<&'static str, f64> {
    let mut medians = BTreeMap::new();
    for figure in FIGURES {
        let mut values: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.get(figure.key).copied())
            .collect();
        if let Some(median) = median(&mut values) {
            medians.insert(figure.key, median);
        }
    }
    for ratio in RATIOS {
        if let (Some(n), Some(d)) = (medians.get(ratio.numerator), medians.get(ratio.denominator))
            && *d > 0.0
        {
            medians.insert(ratio.key, n / d);
        }
    }
    medians
}

/// The median (mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The Markdown table: every figure with its median and rounds, the ratios,
/// and each target with whether it is met.
pub fn table(rounds: &[Round], medians: &BTreeMap<&'static str, f64>) -> String {
    let mut out =
        String::from("| figure | key | median | per round | target |\n|---|---|---:|---|---|\n");
    for figure in FIGURES {
        let per_round: Vec<String> = rounds
            .iter()
            .map(|r| r.get(figure.key).map_or("-".into(), |v| number(*v)))
            .collect();
        out.push_str(&format!(
            "| {} | `{}` | {} {} | {} | {} |\n",
            figure.label,
            figure.key,
            medians.get(figure.key).map_or("-".into(), |v| number(*v)),
            figure.unit,
            per_round.join(", "),
            target_cell(figure.key, medians),
        ));
    }
    for ratio in RATIOS {
        out.push_str(&format!(
            "| {} | `{}` | {} | (of medians) | {} |\n",
            ratio.label,
            ratio.key,
            medians
                .get(ratio.key)
                .map_or("-".into(), |v| format!("{v:.2}")),
            target_cell(ratio.key, medians),
        ));
    }
    out
}

/// The JSON document: every median at the top level under its key, then
/// the rounds, the targets and what the caller adds to `meta`.
pub fn json(rounds: &[Round], medians: &BTreeMap<&'static str, f64>, meta: Value) -> Value {
    let mut document = Map::new();
    for (key, value) in medians {
        document.insert((*key).to_owned(), json!(value));
    }
    let targets: Vec<Value> = TARGETS
        .iter()
        .map(|t| {
            json!({
                "key": t.key,
                "at_least": t.at_least,
                "value": t.value,
                "met": medians.get(t.key).map(|v| met(t, *v)),
            })
        })
        .collect();
    document.insert("targets".into(), Value::Array(targets));
    document.insert("rounds".into(), json!(rounds));
    document.insert("meta".into(), meta);
    Value::Object(document)
}

fn target_cell(key: &str, medians: &BTreeMap<&'static str, f64>) -> String {
    let Some(target) = TARGETS.iter().find(|t| t.key == key) else {
        return String::new();
    };
    let sign = if target.at_least { "≥" } else { "≤" };
    let verdict = match medians.get(key) {
        Some(v) if met(target, *v) => "met",
        Some(_) => "**missed**",
        None => "not measured",
    };
    format!("{sign} {} — {verdict}", number(target.value))
}

fn met(target: &Target, value: f64) -> bool {
    if target.at_least {
        value >= target.value
    } else {
        value <= target.value
    }
}

/// Three significant-ish digits for small values, whole numbers with
/// thousands separators for large ones.
pub fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        let whole = value.round() as i64;
        let digits = whole.abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if whole < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn ratios_come_from_medians() {
        let rounds = vec![
            Round::from([
                ("e2e_adds_per_s", 4000.0),
                ("broker_confirm_per_s", 10000.0),
            ]),
            Round::from([
                ("e2e_adds_per_s", 6000.0),
                ("broker_confirm_per_s", 10000.0),
            ]),
        ];
        let medians = medians(&rounds);
        assert_eq!(medians["ratio_e2e_to_broker"], 0.5);
        assert!(table(&rounds, &medians).contains("≥ 0.50 — met"));
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(number(12345.6), "12,346");
        assert_eq!(number(999.0), "999");
        assert_eq!(number(4.321), "4.32");
    }
}
