//! The fault suite's failover mode in CI: the outbox on three PostgreSQL
//! members under Patroni, two adders behind HAProxy following the primary,
//! and the primary lost (SIGKILL, `pg_ctl -m immediate`) and promoted away
//! at least twice under retrying load (`faults::failover`).
//! `TALLY_FAULTS_FAILOVER_SECONDS` (default 30: the first round of every
//! kind runs however long it takes) sets how long faults run; the other
//! `TALLY_FAULTS_*` knobs apply as in the single-node suite.

use std::time::Duration;

use crate::support::{fleet_options, require_exact};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_add_is_counted_once_while_the_database_fails_over() {
    let options = fleet_options("TALLY_FAULTS_FAILOVER_SECONDS");
    let limit = Duration::from_secs(options.seconds + options.settle_seconds + 600);
    require_exact(&options, limit, faults::failover::run(options.clone())).await;
}
