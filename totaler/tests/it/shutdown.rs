//! Stopping: the totaler stops within its shutdown grace even when the batch
//! in hand cannot finish (its ledger update is stuck behind the file lock).

use std::{
    fs::File,
    time::{Duration, Instant},
};

use testkit::Broker;
use uuid::Uuid;

use crate::support::{config, message, spawn_totaler, temp_dir};

/// How long past the grace a stop may take (closing the servers, the task
/// wake-ups), far below a second grace period.
const MARGIN: Duration = Duration::from_millis(1_000);

#[tokio::test]
async fn a_stop_while_the_ledger_update_is_stuck_returns_within_one_grace_period() {
    let queue = testkit::unique_queue("stuck-stop");
    let broker = Broker::connect(&queue).await;
    let path = temp_dir("stuck-stop").join("sum.txt");
    let mut config = config(&testkit::amqp_url(), &queue, &path);
    config.shutdown_grace_ms = 2_000;
    let grace = config.shutdown_grace();
    let totaler = spawn_totaler(config).await;
    // Holding the ledger's lock, as another totaler on a hung disk would,
    // blocks every update of this one.
    let lock = File::open(path.with_file_name("sum.txt.lock")).expect("open the ledger lock");
    lock.lock().expect("take the ledger lock");
    broker.publish(&message(Uuid::new_v4(), 1, 4)).await;
    testkit::eventually(
        Duration::from_secs(20),
        "the message to be delivered",
        || async { (broker.count(&queue).await == 0).then_some(()) },
    )
    .await;
    let started = Instant::now();
    totaler.stop().await;
    let took = started.elapsed();
    lock.unlock().expect("release the ledger lock");
    assert!(
        took < grace + MARGIN,
        "stopping took {took:?}, more than the {grace:?} grace (+{MARGIN:?})"
    );
    broker.delete().await;
}
