//! The fault suite's failover mode in CI: the outbox on three PostgreSQL
//! members under Patroni, two adders behind HAProxy following the primary,
//! and the primary lost (SIGKILL, `pg_ctl -m immediate`) and promoted away
//! at least twice under retrying load (`faults::failover`).
//! `TALLY_FAULTS_FAILOVER_SECONDS` (default 30: the first round of every
//! kind runs however long it takes) sets how long faults run; the other
//! `TALLY_FAULTS_*` knobs apply as in the single-node suite.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_add_is_counted_once_while_the_database_fails_over() {
    let mut options = faults::Options::from_env();
    options.seconds = std::env::var("TALLY_FAULTS_FAILOVER_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    // Three PostgreSQL members share the two cores with the load.
    options.rate = options.rate.min(400);
    options.idless_rate = options.idless_rate.min(200);
    let limit = Duration::from_secs(options.seconds + options.settle_seconds + 600);
    let report = tokio::time::timeout(limit, faults::failover::run(options))
        .await
        .expect("the failover run finishes in bounded time")
        .expect("the failover run runs");
    eprintln!("{report}");
    let problems = report.problems();
    assert!(
        problems.is_empty(),
        "seed {}: {} problems:\n  - {}",
        report.seed,
        problems.len(),
        problems.join("\n  - ")
    );
}
