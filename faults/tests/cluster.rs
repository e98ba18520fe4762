//! The fault suite's cluster mode in CI: three RabbitMQ nodes, two adders
//! behind HAProxy, two totalers on one file, and a node, an adder or the
//! active totaler lost at a time under retrying load (`faults::cluster`).
//! `TALLY_FAULTS_CLUSTER_SECONDS` (default 30: the first round of every kind runs however long it takes) sets how long faults run;
//! the other `TALLY_FAULTS_*` knobs apply as in the single-node suite.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_add_is_counted_once_while_cluster_nodes_fail() {
    let mut options = faults::Options::from_env();
    options.seconds = std::env::var("TALLY_FAULTS_CLUSTER_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    // Three broker nodes share the two cores with the load: a lighter load.
    options.rate = options.rate.min(400);
    options.idless_rate = options.idless_rate.min(200);
    let limit = Duration::from_secs(options.seconds + options.settle_seconds + 400);
    let report = tokio::time::timeout(limit, faults::cluster::run(options))
        .await
        .expect("the cluster run finishes in bounded time")
        .expect("the cluster run runs");
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
