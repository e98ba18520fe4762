//! One round of measurements: every phase in turn, the outbox drain last
//! (but the memory per connection, measured once after the rounds), each
//! figure recorded under its [`Figure`] into the round, a failed phase
//! logged and the stack resynced so later phases still check exactly. Also
//! the stage distributions the round saw, for the charts.

use std::{future::Future, path::Path};

use crate::{
    config::Config,
    figure::Figure,
    limits, progress,
    report::{self, Round},
    stages::Distribution,
    tally::Stack,
};

/// What one round measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub round: Round,
    /// What each stage observed in the fixed-rate window.
    pub distributions: Vec<Distribution>,
}

/// Measures the limits (unless skipped) and Tally once.
pub async fn measure(config: &Config, stack: &mut Stack, run_dir: &Path, round: usize) -> Measured {
    let label = format!("{round}/{}", config.repeats);
    let mut measured = Measured::default();
    if !config.skip_limits {
        measure_limits(config, stack, run_dir, &label, &mut measured.round).await;
    }
    measure_tally(stack, &label, &mut measured).await;
    measure_outbox_drains(config, stack, &label, &mut measured.round).await;
    measured
}

async fn measure_limits(
    config: &Config,
    stack: &Stack,
    run_dir: &Path,
    label: &str,
    r: &mut Round,
) {
    let log = run_dir.join("bare.log");
    record(
        r,
        label,
        Figure::BrokerConfirmPerS,
        limits::broker_confirms(config),
    )
    .await;
    record(
        r,
        label,
        Figure::RawConsumePerS,
        limits::raw_consume(config),
    )
    .await;
    progress(&format!("[{label}] measuring pg_insert_tps"));
    match limits::pg_inserts(config).await {
        Ok(pg) => {
            r.insert(Figure::PgInsertTps, pg.tps);
            r.insert(Figure::PgCommitP50Ms, pg.single_p50_ms);
            r.insert(Figure::PgCommitP99Ms, pg.single_p99_ms);
            progress(&format!(
                "[{label}] pg_insert_tps: {:.0}; one client's INSERT p50 {:.2} ms p99 {:.2} ms",
                pg.tps, pg.single_p50_ms, pg.single_p99_ms
            ));
        }
        Err(e) => progress(&format!("[{label}] pg_insert_tps FAILED: {e:#}")),
    }
    let sum_dir = stack.sum_dir();
    let file = limits::file_updates(&sum_dir, config.duration());
    record(r, label, Figure::FileUpdatesPerS, file).await;
    record(
        r,
        label,
        Figure::BareTonicCallsPerS,
        limits::bare_tonic(config, &log),
    )
    .await;
    record(
        r,
        label,
        Figure::BareWarpGetPerS,
        limits::bare_warp(config, &log),
    )
    .await;
}

async fn measure_tally(stack: &mut Stack, label: &str, measured: &mut Measured) {
    let r = &mut measured.round;
    match stack.saturation().await {
        Ok(s) => {
            r.insert(Figure::E2eAddsPerS, s.durable_per_s);
            r.insert(Figure::AddAcceptedPerS, s.accepted_per_s);
            r.extend(s.cpu.iter().copied());
            progress(&format!(
                "[{label}] e2e_adds_per_s: {:.0} (accepted {:.0}/s)",
                s.durable_per_s, s.accepted_per_s
            ));
        }
        Err(e) => failed(stack, label, Figure::E2eAddsPerS.key(), e).await,
    }
    match stack.latency().await {
        Ok(l) => {
            r.extend([
                (Figure::LatencyRatePerS, l.achieved_per_s),
                (Figure::AddP50Ms, l.add_p50_ms),
                (Figure::AddP99Ms, l.add_p99_ms),
                (Figure::AddToCountedP50Ms, l.counted_p50_ms),
                (Figure::AddToCountedP99Ms, l.counted_p99_ms),
                (Figure::AdderRssMb, l.rss_mb.0),
                (Figure::TotalerRssMb, l.rss_mb.1),
            ]);
            r.extend(l.stages.iter().chain(&l.cpu).copied());
            progress(&format!(
                "[{label}] at {:.0}/s: Add p50 {:.2} ms p99 {:.2} ms; Add->counted p50 {:.2} ms p99 {:.2} ms; RSS adder {:.1} MiB totaler {:.1} MiB",
                l.achieved_per_s,
                l.add_p50_ms,
                l.add_p99_ms,
                l.counted_p50_ms,
                l.counted_p99_ms,
                l.rss_mb.0,
                l.rss_mb.1
            ));
            measured.distributions = l.distributions;
            progress(&format!(
                "[{label}] stages: {}",
                l.stages
                    .iter()
                    .map(|(figure, ms)| format!("{} {ms:.2}", figure.key()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Err(e) => failed(stack, label, "latency", e).await,
    }
    match stack.drain().await {
        Ok(rate) => {
            r.insert(Figure::DrainPerS, rate);
            progress(&format!("[{label}] drain_per_s: {rate:.0}"));
        }
        Err(e) => failed(stack, label, Figure::DrainPerS.key(), e).await,
    }
    record(r, label, Figure::SumGetPerS, stack.sum_gets()).await;
}

/// The outbox drain at both backlogs, smaller first (none when skipped).
async fn measure_outbox_drains(config: &Config, stack: &mut Stack, label: &str, r: &mut Round) {
    let Some((smaller, larger)) = config.outbox_drain_rows.0 else {
        return;
    };
    let sizes = [
        (
            smaller,
            Figure::OutboxDrainSmallRows,
            Figure::OutboxDrainSmallPerS,
        ),
        (
            larger,
            Figure::OutboxDrainLargeRows,
            Figure::OutboxDrainLargePerS,
        ),
    ];
    for (rows, rows_figure, rate_figure) in sizes {
        let key = rate_figure.key();
        progress(&format!("[{label}] measuring {key} ({rows} rows)"));
        match stack.outbox_drain(rows).await {
            Ok(d) => {
                r.insert(rows_figure, rows as f64);
                r.insert(rate_figure, d.per_s);
                progress(&format!(
                    "[{label}] {key}: {:.0} ({rows} rows, left in {:.1} s; the relay started {:.0} ms after the adder, cut its first batch {} ms after its start)",
                    d.per_s,
                    d.left_secs,
                    d.start_up_ms,
                    d.first_cut_ms.map_or("-".into(), |ms| format!("{ms:.0}")),
                ));
            }
            Err(e) => failed(stack, label, key, e).await,
        }
    }
}

/// The memory-per-connection phase, once a run after every round: the
/// memory the services keep from it (they do not all give it back) must
/// not reach the other figures of any round.
pub async fn measure_connections(stack: &mut Stack, label: &str, r: &mut Round) {
    progress(&format!("[{label}] measuring memory per idle connection"));
    match stack.connections().await {
        Ok(c) => {
            r.extend([
                (Figure::MemAdderKbPerConn, c.adder.kb_per_conn),
                (Figure::MemAdderReturnedPct, c.adder.returned_pct),
                (Figure::MemTotalerKbPerConn, c.totaler.kb_per_conn),
                (Figure::MemTotalerReturnedPct, c.totaler.returned_pct),
            ]);
            progress(&format!(
                "[{label}] per idle connection: adder {:.1} KiB ({:.0} % given back), totaler {:.1} KiB ({:.0} % given back)",
                c.adder.kb_per_conn,
                c.adder.returned_pct,
                c.totaler.kb_per_conn,
                c.totaler.returned_pct
            ));
        }
        Err(e) => failed(stack, label, "memory per connection", e).await,
    }
}

async fn record(
    round: &mut Round,
    label: &str,
    figure: Figure,
    measured: impl Future<Output = anyhow::Result<f64>>,
) {
    let key = figure.key();
    progress(&format!("[{label}] measuring {key}"));
    match measured.await {
        Ok(value) => {
            round.insert(figure, value);
            progress(&format!("[{label}] {key}: {}", report::number(value)));
        }
        Err(e) => progress(&format!("[{label}] {key} FAILED: {e:#}")),
    }
}

async fn failed(stack: &mut Stack, label: &str, what: &str, error: anyhow::Error) {
    progress(&format!("[{label}] {what} FAILED (not counted): {error:#}"));
    if let Err(e) = stack.resync().await {
        progress(&format!("[{label}] resync failed: {e:#}"));
    }
}
