//! The adder across a PostgreSQL failover: `DATABASE_URL` names a primary
//! and its synchronous standby (private servers, `testkit::replicas`); the
//! primary crashes, the standby is promoted, and the adder moves to it by
//! itself. Adds in between fail with UNAVAILABLE only, retries with their
//! request ids are recognised, and the relay publishes every acknowledged
//! Add from the new primary; and the same when the primary does not crash
//! but hangs (SIGSTOP), its connections open and silent.

use std::{collections::BTreeSet, time::Duration};

use testkit::{
    Broker, amqp_url,
    replicas::{Server, Servers},
    unique_queue,
};
use tonic::Code;

use crate::support::{call, config, drain_messages, rows, spawn_adder};

/// A primary with `standby` as its synchronous standby, and the URL naming
/// both (the standby second).
fn synchronous_pair(servers: &mut Servers) -> (Server, Server, String) {
    let primary = servers.primary("primary", &[]).expect("a primary");
    let standby = servers.standby("standby", &primary).expect("a standby");
    primary
        .configure(&["synchronous_standby_names = 'standby'"])
        .expect("configure the primary");
    primary.reload().expect("reload the primary");
    let url = format!(
        "postgres://tally@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );
    (primary, standby, url)
}

/// Retries an Add with the same request id until it succeeds; every
/// failure on the way must be UNAVAILABLE.
async fn add_until_ok(
    client: &mut proto::tally::v1::adder_client::AdderClient<tonic::transport::Channel>,
    a: i64,
    request_id: &str,
) -> proto::tally::v1::AddResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match call(client, a, 1, request_id).await {
            Ok(response) => return response,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no primary within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// [`add_until_ok`] for `tag-0` .. `tag-{n-1}` (a = 0 .. n-1); their
/// outbox ids.
async fn add_all_until_ok(
    client: &mut proto::tally::v1::adder_client::AdderClient<tonic::transport::Channel>,
    tag: &str,
    n: i64,
) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        ids.insert(
            add_until_ok(client, i, &format!("{tag}-{i}"))
                .await
                .outbox_id,
        );
    }
    ids
}

/// What the relay published: row ids and sources.
#[derive(Default)]
struct Published {
    rows: BTreeSet<i64>,
    sources: BTreeSet<uuid::Uuid>,
}

/// Drains the queue into `seen` until it holds every id of `ids`.
async fn wait_published(broker: &Broker, seen: &mut Published, ids: &BTreeSet<i64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ids.is_subset(&seen.rows) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged Adds not published within 30 s"
        );
        for message in drain_messages(broker).await {
            seen.sources.insert(message.source);
            seen.rows
                .extend(rows(std::slice::from_ref(&message)).map(|row| row.seq));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adder_follows_a_promoted_standby_and_every_acknowledged_add_is_published() {
    let mut servers = Servers::new("failover").expect("a directory for the servers");
    let (primary, standby, url) = synchronous_pair(&mut servers);
    let queue = unique_queue("failover");
    let broker = Broker::connect(&queue).await;
    let adder = spawn_adder(config(&url, &amqp_url(), &queue)).await;
    let mut client = adder.client().await;
    let mut acknowledged = add_all_until_ok(&mut client, "before", 20).await;
    let mut seen = Published::default();
    wait_published(&broker, &mut seen, &acknowledged).await;

    tokio::task::block_in_place(|| primary.crash()).expect("crash the primary");
    let failed = call(&mut client, 100, 1, "during").await;
    assert_eq!(failed.map_err(|s| s.code()).err(), Some(Code::Unavailable));
    tokio::task::block_in_place(|| standby.promote()).expect("promote the standby");

    acknowledged.insert(add_until_ok(&mut client, 100, "during").await.outbox_id);
    for i in 0..20 {
        let replayed = add_until_ok(&mut client, i, &format!("before-{i}")).await;
        assert!(
            replayed.replayed,
            "request id before-{i} is known on the new primary"
        );
        assert!(acknowledged.contains(&replayed.outbox_id));
    }
    acknowledged.extend(add_all_until_ok(&mut client, "after", 20).await);
    assert_eq!(acknowledged.len(), 41);

    wait_published(&broker, &mut seen, &acknowledged).await;
    assert_eq!(
        seen.rows, acknowledged,
        "nothing but acknowledged Adds is published"
    );
    assert_eq!(
        seen.sources.len(),
        2,
        "the promoted standby cuts under a new source"
    );
    adder.stop().await;
    broker.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adder_leaves_a_primary_that_hangs_for_the_promoted_standby() {
    let mut servers = Servers::new("failover-hang").expect("a directory for the servers");
    let (primary, standby, url) = synchronous_pair(&mut servers);
    let queue = unique_queue("failover-hang");
    let broker = Broker::connect(&queue).await;
    let adder = spawn_adder(config(&url, &amqp_url(), &queue)).await;
    let mut client = adder.client().await;
    let mut acknowledged = add_all_until_ok(&mut client, "before", 10).await;
    let mut seen = Published::default();
    wait_published(&broker, &mut seen, &acknowledged).await;

    // The primary hangs: its connections stay open and nothing answers, so
    // nothing the adder waits on there fails by itself.
    let frozen = tokio::task::block_in_place(|| primary.freeze()).expect("freeze the primary");
    let mut stuck_client = client.clone();
    let stuck = tokio::spawn(async move { call(&mut stuck_client, 100, 1, "stuck").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| standby.promote()).expect("promote the standby");

    // While the old primary is still frozen, Adds must succeed on the new one.
    acknowledged.extend(add_all_until_ok(&mut client, "after", 10).await);
    let stuck = tokio::time::timeout(Duration::from_secs(30), stuck)
        .await
        .expect("the Add waiting on the hung primary is answered once the adder moved")
        .expect("join");
    match stuck {
        Ok(response) => {
            acknowledged.insert(response.outbox_id);
        }
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
    }
    // Its retry is answered by the new primary, once.
    acknowledged.insert(add_until_ok(&mut client, 100, "stuck").await.outbox_id);
    wait_published(&broker, &mut seen, &acknowledged).await;
    assert_eq!(
        seen.rows, acknowledged,
        "nothing but acknowledged Adds is published"
    );
    frozen.thaw().expect("thaw the old primary");
    adder.stop().await;
    broker.delete().await;
}
