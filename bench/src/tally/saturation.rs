//! The saturation phase: Adds with `concurrency` calls in flight for the
//! window, then the wait until the total counts every acknowledged one;
//! durable Adds/s is timed to that moment.

use std::time::Instant;

use crate::{cpu, figure::Figure, grpc};

use super::Stack;

/// Saturation figures.
#[derive(Debug, Clone)]
pub struct Saturation {
    /// Acknowledged Adds per second of load.
    pub accepted_per_s: f64,
    /// Acknowledged Adds per second until the total reached them.
    pub durable_per_s: f64,
    /// Cores each part kept busy during the load (`cpu::figures`).
    pub cpu: Vec<(Figure, f64)>,
}

/// Most Adds one saturation window sends.
const MAX_CALLS: u64 = 50_000_000;

impl Stack {
    /// Adds at saturation for the configured window, then waits until every
    /// acknowledged Add is counted.
    pub async fn saturation(&mut self) -> anyhow::Result<Saturation> {
        let cpu_before = cpu::Sample::take();
        let done = grpc::saturate(
            &self.clients,
            self.config.concurrency,
            self.config.duration(),
            MAX_CALLS,
            |i| ((i % 100) as i64, 1),
        )
        .await;
        let cpu = cpu::figures(&cpu::Sample::take().cores_since(&cpu_before), false);
        let started = Instant::now() - done.elapsed;
        let counted_at = self.settle(&done).await?;
        self.sample_memory();
        Ok(Saturation {
            accepted_per_s: done.ok as f64 / done.elapsed.as_secs_f64(),
            durable_per_s: done.ok as f64 / (counted_at - started).as_secs_f64(),
            cpu,
        })
    }
}
