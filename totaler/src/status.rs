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

/// The totaler's live status. The ledger is healthy when both its last
/// update (the consumer's, `set_ledger_ok`) and its last read (the
/// refresher's, `set_ledger_readable`) succeeded: each writer owns its own
/// flag and sets it back when it succeeds again, so a standby, which never
/// updates, is ready again after one good read.
#[derive(Debug, Default)]
pub struct Status {
    total: RwLock<i128>,
    ledger_ok: AtomicBool,
    ledger_readable: AtomicBool,
    broker_ok: AtomicBool,
}

impl Status {
    pub fn new(total: i128) -> Self {
        Self {
            total: RwLock::new(total),
            ledger_ok: AtomicBool::new(true),
            ledger_readable: AtomicBool::new(true),
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

    /// Whether the ledger's last update and its last read both succeeded.
    pub fn ledger_ok(&self) -> bool {
        self.ledger_ok.load(Ordering::Relaxed) && self.ledger_readable.load(Ordering::Relaxed)
    }

    /// What the refresher saw at its last read of the ledger.
    pub fn set_ledger_readable(&self, ok: bool) {
        self.ledger_readable.store(ok, Ordering::Relaxed);
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
                status.set_ledger_readable(true);
            }
            Ok(Err(e)) => {
                status.set_ledger_readable(false);
                tracing::error!(error = %e, elapsed = ?started.elapsed(), "cannot refresh the total from the ledger");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ledger::Create;

    /// Issue 21: one failed read left a standby unready for good (only an
    /// applied batch, which a standby never makes, set it back).
    #[tokio::test]
    async fn a_standby_is_ready_again_after_a_read_error_passes() {
        let dir = std::env::temp_dir().join(format!("tally-status-{}", std::process::id()));
        let path = dir.join("sum.txt");
        let (ledger, _) = Ledger::open(&path, Create::IfNew).unwrap();
        let status = Arc::new(Status::new(0));
        status.set_broker_ok(true);
        let shutdown = CancellationToken::new();
        let refresher = tokio::spawn(refresh(
            Arc::new(ledger),
            status.clone(),
            Gauge::new("test_total", "total").unwrap(),
            Duration::from_millis(20),
            shutdown.clone(),
        ));
        let becomes = |ready: bool| {
            let status = status.clone();
            async move {
                for _ in 0..250 {
                    if status.ready() == ready {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                false
            }
        };
        assert!(becomes(true).await, "ready with a readable ledger");
        // A read that fails (here: a directory where the file was), then
        // the file back as it was.
        let kept = dir.join("kept");
        std::fs::rename(&path, &kept).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(
            becomes(false).await,
            "unready while the ledger cannot be read"
        );
        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(&kept, &path).unwrap();
        assert!(becomes(true).await, "ready again once it can be read");
        shutdown.cancel();
        refresher.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
