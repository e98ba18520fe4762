//! How a Tally service stops: the trigger its `main` passes to `run`
//! ([`signal`]: SIGINT or SIGTERM) and the one bounded wait of `run`'s
//! drain ([`drain`]: every task, at most the grace period). Starting and
//! cancelling the tasks stays in each service's `run`.

use std::time::Duration;

use tokio_util::task::TaskTracker;

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Closes `tracker` and waits for every task it tracks, at most `grace`;
/// false (and a warning) if some were still running when it elapsed. Waited
/// once: whatever still runs after it is abandoned to the process exit.
pub async fn drain(tracker: TaskTracker, grace: Duration) -> bool {
    tracker.close();
    let drained = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
    if !drained {
        tracing::warn!(
            ?grace,
            "shutdown grace period elapsed with work still running"
        );
    }
    drained
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_finished_work_and_gives_up_on_stuck_work_after_the_grace() {
        let tracker = TaskTracker::new();
        tracker.spawn(async {});
        assert!(drain(tracker, Duration::from_secs(5)).await);
        let tracker = TaskTracker::new();
        tracker.spawn(std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        assert!(!drain(tracker, Duration::from_millis(200)).await);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
