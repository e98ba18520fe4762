//! The fault suite in CI: a short run of the real binaries under every kind
//! of fault. Length, seed and the other knobs come from the `TALLY_FAULTS_*`
//! variables (see `faults::Options`). Every check, including "every kind of
//! fault ran and did what it must" and `totaler verify`, is in the report's
//! `problems`, so the soak binary applies the same ones.

use std::time::Duration;

use crate::support::require_exact;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_add_is_counted_exactly_once_whatever_fails() {
    let options = faults::Options::from_env();
    // Never hang CI: the whole run is bounded.
    let limit = Duration::from_secs(options.seconds + options.settle_seconds + 400);
    require_exact(&options, limit, faults::run(options.clone())).await;
}
