//! The drain phase (the totaler started on a queued backlog, rows counted
//! per second from its start) and the `GET /sum` load.

use std::time::Instant;

use crate::{broker::Bound, grpc, http};

use super::Stack;

impl Stack {
    /// With the totaler stopped, queues a backlog of `drain_rows` rows (sum
    /// 1 each, of a source of its own), packed `pack` to a message as the
    /// relay packs a backlog, exactly as `limits::raw_consume` does; then
    /// starts the totaler and returns rows counted per second from its start.
    pub async fn drain(&mut self) -> anyhow::Result<f64> {
        self.stop_totaler().await?;
        let rows = self.config.drain_rows;
        let pack = self.config.pack as u64;
        let bound = Bound {
            messages: rows.div_ceil(pack),
            duration: self.config.settle(),
        };
        let queued = self
            .broker
            .publish(
                &self.queue,
                self.config.confirm_window,
                self.config.pack,
                bound,
            )
            .await;
        let (messages, _) = match queued {
            Ok(queued) => queued,
            Err(e) => {
                self.start_totaler().await?;
                return Err(e.context("queueing the backlog"));
            }
        };
        let done = grpc::Saturation {
            ok: messages * pack,
            acked_sum: i128::from(messages * pack),
            ..grpc::Saturation::default()
        };
        let started = Instant::now();
        self.start_totaler().await?;
        let counted_at = self.settle(&done).await?;
        Ok(done.ok as f64 / (counted_at - started).as_secs_f64())
    }

    /// `GET /sum` requests per second at the totaler, idle otherwise.
    pub async fn sum_gets(&mut self) -> anyhow::Result<f64> {
        let rate = http::load(
            self.totaler_http,
            "/sum",
            self.config.http_connections,
            self.config.duration(),
        )
        .await?;
        self.sample_memory();
        Ok(rate)
    }
}
