//! What the HTTP server reports, shared by the consumer and the refresher:
//! the current total (served from memory) and whether the ledger and the
//! broker are healthy. Writers set it; [`Status`] itself does no I/O. The
//! refresher ([`refresh`]) keeps the total, and the `totaler_sum` gauge, in
//! step with the file, which other totalers may write too.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::Gauge;
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;

/// The totaler's live status.
#[derive(Debug, Default)]
pub struct Status {
    total: RwLock<i128>,
    ledger_ok: AtomicBool,
    broker_ok: AtomicBool,
}

impl Status {
    pub fn new(total: i128) -> Self {
        Self {
            total: RwLock::new(total),
            ledger_ok: AtomicBool::new(true),
            broker_ok: AtomicBool::new(false),
        }
    }

    pub fn total(&self) -> i128 {
        *self
            .total
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_total(&self, total: i128) {
        *self
            .total
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = total;
    }

    pub fn ledger_ok(&self) -> bool {
        self.ledger_ok.load(Ordering::Relaxed)
    }

    pub fn set_ledger_ok(&self, ok: bool) {
        self.ledger_ok.store(ok, Ordering::Relaxed);
    }

    /// Ready to count: the ledger takes updates and the broker is consumed from.
    pub fn ready(&self) -> bool {
        self.ledger_ok() && self.broker_ok()
    }

    pub fn broker_ok(&self) -> bool {
        self.broker_ok.load(Ordering::Relaxed)
    }

    pub fn set_broker_ok(&self, ok: bool) {
        self.broker_ok.store(ok, Ordering::Relaxed);
    }
}

/// Keeps the shared status and the `totaler_sum` gauge (`total`) in step
/// with the file, so GET /sum and /metrics show updates written by other
/// totalers (a standby's too). Runs until `shutdown`.
pub async fn refresh(
    ledger: Arc<Ledger>,
    status: Arc<Status>,
    total: Gauge,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let reader = ledger.clone();
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || reader.read()).await {
            Ok(Ok(state)) => {
                status.set_total(state.total);
                total.set(state.total as f64);
            }
            Ok(Err(e)) => {
                status.set_ledger_ok(false);
                tracing::error!(error = %e, elapsed = ?started.elapsed(), "cannot refresh the total from the ledger");
            }
            Err(_) => {}
        }
    }
}
