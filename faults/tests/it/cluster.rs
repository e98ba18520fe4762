//! The fault suite's cluster mode in CI: three RabbitMQ nodes
//! (`scripts/cluster brokers`), two adders behind HAProxy, two totalers on
//! one file, and a node, an adder or the active totaler lost at a time
//! under retrying load (`faults::cluster`). `TALLY_FAULTS_CLUSTER_SECONDS`
//! (default 30: the first round of every kind runs however long it takes)
//! sets how long faults run; the other `TALLY_FAULTS_*` knobs apply as in
//! the single-node suite.

use std::time::Duration;

use crate::support::{fleet_options, require_exact};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_add_is_counted_once_while_cluster_nodes_fail() {
    let options = fleet_options("TALLY_FAULTS_CLUSTER_SECONDS");
    let limit = Duration::from_secs(options.seconds + options.settle_seconds + 400);
    require_exact(&options, limit, faults::cluster::run(options.clone())).await;
}
