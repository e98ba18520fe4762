//! The failover mode's faults: each kind injected under load, what it must
//! be followed by (a promotion, Adds and the relays resuming, the lost member
//! rejoining as a replica), and the cluster whole again before the next.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    DbFault, Failover, PROMOTION_LIMIT, REJOIN_LIMIT, RESUME_LIMIT, Timing,
    patroni::{MEMBERS, Patroni, Role},
};
use crate::{
    load::Tally,
    metrics::{PUBLISHED_ROWS, scrape, value},
};

impl Failover {
    /// Injects `fault`, waits until the cluster is whole again, and keeps
    /// what it took (the longest time no Add was acknowledged included).
    pub(super) async fn inject_and_time(&mut self, fault: DbFault) -> anyhow::Result<()> {
        let gap = GapWatch::start(self.journal.tally.clone());
        let mut timing = self.inject(fault).await?;
        self.wait_whole().await;
        timing.add_gap = gap.stop().await;
        eprintln!("faults failover:          {fault:?}: {timing:?}");
        self.timings.push(timing);
        Ok(())
    }

    async fn inject(&mut self, fault: DbFault) -> anyhow::Result<Timing> {
        let mut timing = Timing {
            fault,
            add_gap: Duration::ZERO,
            promoted_after: None,
            adds_resumed_after: None,
            relay_resumed_after: None,
            rejoined_after: None,
        };
        let Some(primary) = self.patroni.primary().await else {
            self.journal
                .fail(format!("{fault:?}: no single primary before the fault"));
            return Ok(timing);
        };
        let lost = match fault {
            DbFault::KillSyncStandby => {
                let Some(standby) = self.patroni.sync_standby().await else {
                    self.journal.fail(format!(
                        "{fault:?}: no synchronous standby before the fault"
                    ));
                    return Ok(timing);
                };
                self.blocking(|p| p.kill(standby))?;
                timing.adds_resumed_after = self.require_commits(fault).await;
                standby
            }
            DbFault::KillPrimary | DbFault::CrashPrimary => {
                let at = Instant::now();
                if fault == DbFault::KillPrimary {
                    self.blocking(|p| p.kill(primary))?;
                } else {
                    self.blocking(|p| p.crash_unmanaged(primary))?;
                }
                self.await_promotion(fault, primary, at, &mut timing).await;
                primary
            }
            DbFault::FreezePrimary => return self.freeze_primary(primary, timing).await,
            DbFault::CrashInPlace => return self.crash_in_place(primary, timing).await,
        };
        self.journal.pause(500, 1500).await;
        let start = Instant::now();
        self.blocking(|p| p.start_member(lost))?;
        if self.patroni.wait_replica(lost, REJOIN_LIMIT).await {
            timing.rejoined_after = Some(start.elapsed());
        } else {
            self.journal.fail(format!(
                "{fault:?}: {} did not rejoin as a replica {REJOIN_LIMIT:?} after its start",
                Patroni::name(lost)
            ));
        }
        Ok(timing)
    }

    /// Freezes the primary; another member must be promoted and Adds and
    /// the relays resume on it while the old one is frozen; then the old one
    /// thaws and must step down and rejoin.
    async fn freeze_primary(
        &mut self,
        primary: usize,
        mut timing: Timing,
    ) -> anyhow::Result<Timing> {
        let at = Instant::now();
        let frozen = self.blocking(|p| p.freeze(primary))?;
        self.await_promotion(timing.fault, primary, at, &mut timing)
            .await;
        frozen.thaw()?;
        let thawed = Instant::now();
        if self.patroni.wait_replica(primary, REJOIN_LIMIT).await {
            timing.rejoined_after = Some(thawed.elapsed());
        } else {
            self.journal.fail(format!(
                "{:?}: {} did not step down and rejoin as a replica {REJOIN_LIMIT:?} after it thawed",
                timing.fault,
                Patroni::name(primary)
            ));
        }
        Ok(timing)
    }

    /// Crashes the primary's PostgreSQL under its live Patroni; Adds must
    /// resume, on it restarted or on a promoted member.
    async fn crash_in_place(
        &mut self,
        primary: usize,
        mut timing: Timing,
    ) -> anyhow::Result<Timing> {
        // pg_ctl returns once the server is gone: Adds acknowledged after
        // that were committed by whichever server Patroni brought up (its
        // REST API may still say "primary" meanwhile).
        self.blocking(|p| p.crash(primary))?;
        timing.adds_resumed_after = self.require_commits(timing.fault).await;
        if self
            .patroni
            .wait_primary(None, PROMOTION_LIMIT)
            .await
            .is_some_and(|now| now != primary)
        {
            self.promotions += 1;
        }
        Ok(timing)
    }

    /// After the primary was lost at `at`: another member must be promoted,
    /// and the relays must publish again from it.
    async fn await_promotion(
        &mut self,
        fault: DbFault,
        old: usize,
        at: Instant,
        timing: &mut Timing,
    ) {
        let Some(new) = self.patroni.wait_primary(Some(old), PROMOTION_LIMIT).await else {
            self.journal.fail(format!(
                "{fault:?}: no other member was promoted {PROMOTION_LIMIT:?} after {} was lost",
                Patroni::name(old)
            ));
            return;
        };
        self.promotions += 1;
        timing.promoted_after = Some(at.elapsed());
        eprintln!(
            "faults failover:          {} promoted after {:.1?}",
            Patroni::name(new),
            at.elapsed()
        );
        let promoted = Instant::now();
        let acknowledged = self.journal.tally.acknowledged.load(Ordering::Relaxed);
        while self.journal.tally.acknowledged.load(Ordering::Relaxed) <= acknowledged {
            if promoted.elapsed() > RESUME_LIMIT {
                self.journal.fail(format!(
                    "{fault:?}: no Add was acknowledged {RESUME_LIMIT:?} after {} was promoted",
                    Patroni::name(new)
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        timing.adds_resumed_after = Some(promoted.elapsed());
        // Rows committed on the new primary must be published from it.
        let first_add = Instant::now();
        let published = self.published().await;
        while self.published().await <= published {
            if first_add.elapsed() > RESUME_LIMIT {
                self.journal.fail(format!(
                    "{fault:?}: no relay published {RESUME_LIMIT:?} after Adds resumed on {}",
                    Patroni::name(new)
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        timing.relay_resumed_after = Some(first_add.elapsed());
    }

    /// After `fault`, Adds must be acknowledged again (while the
    /// synchronous standby is lost: the other replica becomes synchronous;
    /// after a crash in place: once Patroni restarted the server); how long
    /// that took.
    async fn require_commits(&mut self, fault: DbFault) -> Option<Duration> {
        let before = self.journal.tally.acknowledged.load(Ordering::Relaxed);
        let lost = Instant::now();
        while lost.elapsed() < PROMOTION_LIMIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // A few answers to commits made before the fault may still arrive.
            if self.journal.tally.acknowledged.load(Ordering::Relaxed) > before + 10 {
                return Some(lost.elapsed());
            }
        }
        self.journal.fail(format!(
            "{fault:?}: no Add was acknowledged in the {PROMOTION_LIMIT:?} after the fault"
        ));
        None
    }

    /// Waits until every member runs again, one primary and two replicas,
    /// one of them synchronous: the state the next fault needs.
    async fn wait_whole(&mut self) {
        let deadline = Instant::now() + REJOIN_LIMIT;
        loop {
            let mut roles = Vec::new();
            for i in 0..MEMBERS {
                roles.push(self.patroni.role(i).await);
            }
            let primaries = roles.iter().filter(|r| **r == Role::Primary).count();
            let sync = roles.contains(&Role::Replica { sync: true });
            let replicas = roles
                .iter()
                .filter(|r| matches!(r, Role::Replica { .. }))
                .count();
            if primaries == 1 && replicas == MEMBERS - 1 && sync {
                return;
            }
            if Instant::now() > deadline {
                self.journal.fail(format!(
                    "the cluster was not whole again {REJOIN_LIMIT:?} after a fault: {roles:?}"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Rows the adders' relays published so far (neither adder restarts).
    async fn published(&self) -> f64 {
        let mut sum = 0.0;
        for adder in &self.fleet.adders {
            sum += value(&scrape(adder.http).await, PUBLISHED_ROWS);
        }
        sum
    }

    fn blocking<T>(&self, f: impl FnOnce(&Patroni) -> anyhow::Result<T>) -> anyhow::Result<T> {
        tokio::task::block_in_place(|| f(&self.patroni))
    }
}

/// Watches the load's acknowledged count and keeps the longest time it
/// stood still.
struct GapWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl GapWatch {
    fn start(tally: Arc<Tally>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut last = tally.acknowledged.load(Ordering::Relaxed);
            let mut since = Instant::now();
            let mut longest = Duration::ZERO;
            while !stopping.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = tally.acknowledged.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                }
                longest = longest.max(since.elapsed());
            }
            longest
        });
        Self { stop, task }
    }

    async fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}
