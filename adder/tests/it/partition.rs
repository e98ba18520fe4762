//! A real network partition between the active relay and its database: the
//! relay lock's connection loses every packet both ways (nftables rules on
//! loopback, not a proxy: a proxy's kernel would keep answering the
//! server's keepalives). The server's TCP keepalives end that session within
//! the bound, the lock passes to the other adder's relay, and every row is
//! published. Needs root and nftables (`scripts/test` installs it).

use std::{collections::BTreeSet, io::Write, process::Stdio, time::Duration};

use sqlx::PgPool;
use testkit::{Broker, database, eventually};

use crate::support::{call, config, drain_messages, outbox_counts, pool, rows, spawn_adder};

/// Drops every packet to or from one local TCP port while it lives.
struct Partition {
    table: String,
}

impl Partition {
    fn of_port(port: u16) -> Self {
        let table = format!("tally_partition_{port}");
        nft(&format!(
            "table inet {table} {{\n chain input {{ type filter hook input priority 0; policy accept;\n  tcp sport {port} drop\n  tcp dport {port} drop\n }}\n}}\n"
        ));
        Self { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        nft(&format!("delete table inet {}\n", self.table));
    }
}

fn nft(script: &str) {
    let nft = if std::path::Path::new("/usr/sbin/nft").exists() {
        "/usr/sbin/nft"
    } else {
        "nft"
    };
    let mut child = std::process::Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run nft (nftables; scripts/test installs it, and it needs root)");
    child
        .stdin
        .take()
        .expect("nft's stdin")
        .write_all(script.as_bytes())
        .expect("write the nft rules");
    assert!(
        child.wait().expect("nft runs").success(),
        "nft refused:\n{script}"
    );
}

/// The client port of the session holding this database's relay lock.
async fn lock_holder_port(pool: &PgPool) -> Option<u16> {
    let port: Option<i32> = sqlx::query_scalar(
        "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = \
         (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_optional(pool)
    .await
    .expect("read the relay lock's holder");
    port.and_then(|p| u16::try_from(p).ok())
}

#[tokio::test]
async fn a_partition_between_the_active_relay_and_its_database_hands_the_lock_over() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("partition");
    let broker = Broker::connect(&queue).await;
    let outbox = pool(&db).await;
    let first = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    let partitioned = eventually(Duration::from_secs(30), "a relay holding the lock", || {
        lock_holder_port(&outbox)
    })
    .await;
    let second = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    let mut client = second.client().await;
    for i in 0..20 {
        call(&mut client, i, 1, "")
            .await
            .expect("an Add before the partition");
    }
    let partition = Partition::of_port(partitioned);
    for i in 20..60 {
        call(&mut client, i, 1, "")
            .await
            .expect("an Add during the partition");
    }
    let holder = eventually(
        Duration::from_secs(90),
        "the lock on another session",
        || async {
            lock_holder_port(&outbox)
                .await
                .filter(|port| *port != partitioned)
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "every row to be published",
        || async { (outbox_counts(&outbox).await.1 == 0).then_some(()) },
    )
    .await;
    drop(partition);
    let seqs: BTreeSet<i64> = rows(&drain_messages(&broker).await)
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=60).collect(),
        "every row published (new holder port {holder})"
    );
    first.stop().await;
    second.stop().await;
    broker.delete().await;
}
