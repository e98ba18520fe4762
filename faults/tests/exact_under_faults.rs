//! The fault suite in CI: a short run of the real binaries under faults.
//! Length and seed come from `TALLY_FAULTS_SECONDS` / `TALLY_FAULTS_SEED`.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_add_is_counted_exactly_once_whatever_fails() {
    let options = faults::Options::from_env();
    // Never hang CI: the whole run is bounded.
    let limit = Duration::from_secs(options.seconds + options.settle_seconds + 300);
    let report = tokio::time::timeout(limit, faults::run(options))
        .await
        .expect("the suite finishes in bounded time")
        .expect("the suite runs");
    eprintln!("{report}");
    let problems = report.problems();
    assert!(
        problems.is_empty(),
        "seed {}: {}",
        report.seed,
        problems.join("; ")
    );
    let c = &report.counts;
    let every_kind = [
        c.totaler_kills,
        c.adder_kills,
        c.broker_crashes + c.broker_stops,
        c.postgres_crashes,
        c.two_totaler_periods,
        c.totaler_sigterms,
    ];
    assert!(
        every_kind.iter().all(|n| *n > 0),
        "every kind of fault ran: {c:?}"
    );
    assert!(report.acknowledged > 0, "the load ran");
}
