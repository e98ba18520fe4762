//! Where the time of the fixed-rate load goes: the services' own latency
//! histograms, scraped from `/metrics` before and after the load, and the
//! quantiles of the difference (interpolated inside a bucket, as
//! Prometheus' `histogram_quantile` does). Coarser than the client's
//! figures, but it splits an Add and its way to the ledger into stages.

use std::{collections::HashMap, net::SocketAddr};

use anyhow::Context;

use crate::{figure::Figure, http};

/// The histograms of one `/metrics` page: series (name and labels without
/// `le`) -> cumulative buckets `(le, count)` in page order.
#[derive(Debug, Default, Clone)]
pub struct Snapshot(HashMap<String, Vec<(f64, f64)>>);

/// A stage, the series measuring it, and the figures its p50 and p99 go under.
#[derive(Debug)]
pub struct Stage {
    pub series: &'static str,
    pub p50: Figure,
    pub p99: Figure,
    pub label: &'static str,
}

/// What one stage observed over a window: cumulative counts by upper
/// bound in milliseconds (the last bound infinite), as the histogram has them.
#[derive(Debug, Clone)]
pub struct Distribution {
    pub stage: &'static Stage,
    pub buckets: Vec<(f64, f64)>,
}

/// The adder's stages, in the order an Add goes through them.
pub const ADDER: &[Stage] = &[
    Stage {
        series: r#"adder_request_duration_seconds{method="grpc_add"}"#,
        p50: Figure::StageAddServerP50Ms,
        p99: Figure::StageAddServerP99Ms,
        label: "Add in the adder (group commit included)",
    },
    Stage {
        series: "adder_relay_confirm_seconds",
        p50: Figure::StageRelayConfirmP50Ms,
        p99: Figure::StageRelayConfirmP99Ms,
        label: "relay: publish to last confirm of a batch",
    },
];

/// The totaler's stages.
pub const TOTALER: &[Stage] = &[
    Stage {
        series: "totaler_queue_time_seconds",
        p50: Figure::StageQueueTimeP50Ms,
        p99: Figure::StageQueueTimeP99Ms,
        label: "queue: relay publish to delivery",
    },
    Stage {
        series: "totaler_apply_seconds",
        p50: Figure::StageLedgerApplyP50Ms,
        p99: Figure::StageLedgerApplyP99Ms,
        label: "ledger update: lock to fsynced rename",
    },
    Stage {
        series: "totaler_end_to_end_seconds",
        p50: Figure::StageEndToEndP50Ms,
        p99: Figure::StageEndToEndP99Ms,
        label: "outbox commit to durable in sum.txt",
    },
];

impl Snapshot {
    /// Scrapes `GET /metrics` at `addr`.
    pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut connection = http::Connection::open(addr, "/metrics").await?;
        let (status, body) = connection.get().await?;
        anyhow::ensure!(status == 200, "GET /metrics on {addr} answered {status}");
        let text = String::from_utf8(body).context("/metrics is not UTF-8")?;
        Ok(Self::parse(&text))
    }

    /// Reads the `_bucket` lines of a text exposition page.
    pub fn parse(text: &str) -> Self {
        let mut series: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for line in text.lines() {
            let Some((name, rest)) = line.split_once("_bucket{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let mut le = None;
            let mut others = Vec::new();
            for label in labels.split(',').filter(|l| !l.is_empty()) {
                match label.strip_prefix("le=") {
                    Some(bound) => le = Some(bound.trim_matches('"')),
                    None => others.push(label),
                }
            }
            let (Some(le), Ok(count)) = (le, value.trim().parse::<f64>()) else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse() {
                    Ok(bound) => bound,
                    Err(_) => continue,
                }
            };
            let key = if others.is_empty() {
                name.to_owned()
            } else {
                format!("{name}{{{}}}", others.join(","))
            };
            series.entry(key).or_default().push((bound, count));
        }
        Self(series)
    }

    /// The `q` quantile, in milliseconds, of what `series` observed between
    /// `before` and `self`; `None` when it observed nothing.
    pub fn quantile_ms_since(&self, before: &Snapshot, series: &str, q: f64) -> Option<f64> {
        quantile(&self.buckets_ms_since(before, series)?, q)
    }

    /// What `series` observed between `before` and `self`: cumulative
    /// counts by upper bound in milliseconds; `None` for an unknown series.
    pub fn buckets_ms_since(&self, before: &Snapshot, series: &str) -> Option<Vec<(f64, f64)>> {
        let after = self.0.get(series)?;
        let earlier = before.0.get(series);
        Some(
            after
                .iter()
                .map(|&(le, count)| {
                    let was = earlier
                        .and_then(|b| b.iter().find(|(l, _)| *l == le))
                        .map_or(0.0, |(_, c)| *c);
                    (le * 1000.0, count - was)
                })
                .collect(),
        )
    }
}

impl Distribution {
    /// Adds `other`'s counts (the same stage in another round) bound by bound.
    pub fn merge(&mut self, other: &Distribution) {
        for (le, count) in &mut self.buckets {
            if let Some((_, more)) = other.buckets.iter().find(|(l, _)| l == le) {
                *count += more;
            }
        }
    }

    /// How many observations the window saw.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |(_, count)| *count)
    }
}

/// Prometheus' `histogram_quantile` over cumulative buckets: linear inside
/// the bucket the rank falls in; the highest finite bound when it falls in
/// `+Inf`.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = count - lower.1;
            let within = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# TYPE x histogram
x_bucket{method="grpc",le="0.001"} 10
x_bucket{method="grpc",le="0.002"} 90
x_bucket{method="grpc",le="+Inf"} 100
x_sum{method="grpc"} 0.1
x_count{method="grpc"} 100
y_bucket{le="0.5"} 3
y_bucket{le="+Inf"} 3
"#;

    #[test]
    fn quantiles_interpolate_inside_the_bucket_of_the_difference() {
        let after = Snapshot::parse(PAGE);
        let before = Snapshot::parse(
            "x_bucket{method=\"grpc\",le=\"0.001\"} 10\nx_bucket{method=\"grpc\",le=\"0.002\"} 10\nx_bucket{method=\"grpc\",le=\"+Inf\"} 10\n",
        );
        // The difference: 0 below 1 ms, 80 in (1, 2] ms, 10 above; rank 45
        // of 90 is the 45th of the 80 in (1, 2].
        let p50 = after
            .quantile_ms_since(&before, r#"x{method="grpc"}"#, 0.5)
            .unwrap();
        assert!((p50 - (1.0 + 45.0 / 80.0)).abs() < 1e-9, "{p50}");
        let p99 = after
            .quantile_ms_since(&before, r#"x{method="grpc"}"#, 0.99)
            .unwrap();
        assert!(
            (p99 - 2.0).abs() < 1e-9,
            "in +Inf: the highest bound, {p99}"
        );
    }

    #[test]
    fn series_without_labels_and_unobserved_series() {
        let page = Snapshot::parse(PAGE);
        let p50 = page.quantile_ms_since(&Snapshot::default(), "y", 0.5);
        assert!((p50.unwrap() - 250.0).abs() < 1e-9);
        assert_eq!(page.quantile_ms_since(&page, "y", 0.5), None);
        assert_eq!(page.quantile_ms_since(&page, "z", 0.5), None);
    }
}
