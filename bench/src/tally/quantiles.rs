//! The latency maths of the fixed-rate phase: nearest-rank percentiles of
//! client-side samples, and when each Add was counted. Pure: no I/O.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::grpc::Sample;

/// Add -> counted for each sample. Every Add of the window adds 1 and
/// nothing else adds, so the total minus `base` is how many were counted;
/// the relay publishes in outbox id order and the totaler applies in queue
/// order, so the Add with the k-th smallest outbox id is counted when the
/// total first reaches `base + k`. (Exact but for rows whose commits finish
/// out of id order, which shifts a row by its neighbours' few microseconds.)
pub(super) fn counted_latencies(
    samples: &[Sample],
    seen: &[(Instant, i128)],
    base: i128,
) -> anyhow::Result<Vec<f64>> {
    let mut by_id: Vec<&Sample> = samples.iter().collect();
    by_id.sort_by_key(|s| s.outbox_id);
    by_id
        .iter()
        .enumerate()
        .map(|(k, sample)| {
            let target = base + k as i128 + 1;
            let at = seen.partition_point(|(_, total)| *total < target);
            let (when, _) = seen
                .get(at)
                .with_context(|| format!("no GET /sum observation reached {target}"))?;
            Ok(ms(when.saturating_duration_since(sample.sent)))
        })
        .collect()
}

pub(super) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The `q` quantile (nearest rank) of `values`, sorting them; 0 when empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut values, 0.99), 99.0);
        assert_eq!(percentile(&mut values, 0.50), 50.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn each_add_is_counted_when_the_total_reaches_its_rank() {
        let t0 = Instant::now();
        let sample = |ms_due: u64, outbox_id| Sample {
            sent: t0 + Duration::from_millis(ms_due),
            latency: Duration::ZERO,
            outbox_id,
        };
        let samples = [sample(0, 10), sample(1, 11)];
        let seen = [
            (t0 + Duration::from_millis(5), 100),
            (t0 + Duration::from_millis(7), 101),
            (t0 + Duration::from_millis(9), 102),
        ];
        assert_eq!(
            counted_latencies(&samples, &seen, 100).unwrap(),
            vec![7.0, 8.0]
        );
    }
}
