//! Upgrades against a real PostgreSQL: an adder older than its database's
//! schema stops with an error that says so (it used to retry forever,
//! answering only UNAVAILABLE), and a snapshot pair half cut by the
//! previous `tally_cut` is finished by the linear one with every row once,
//! legacy rows keep the source they were recorded under after a promotion
//! (under a new source they would count twice), and a database that went
//! through pg_upgrade (a new system identifier, its transaction ids kept)
//! continues under a new source when the operator says so, with nothing
//! stranded, while a copy is still refused.

use std::{path::PathBuf, time::Duration};

use sqlx::{Connection, PgConnection, migrate::Migrator};
use testkit::{Broker, database};

use adder::outbox::{Active, Bounds, Outbox, Settings, Standby};

use crate::support::{config, drain_messages, outbox_counts, pool, spawn_adder};

/// The migration the linear cut follows.
const BEFORE_LINEAR_CUT: &str = "20261203000001";

#[tokio::test]
async fn an_adder_older_than_its_database_stops_with_a_clear_error() {
    let db = database::fresh().await;
    drop(Outbox::open(&db, 2, 1).await.expect("migrate"));
    let mut connection = PgConnection::connect(&db).await.expect("connect");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29991231000001, 'from a newer adder', true, '\\x00', 1)",
    )
    .execute(&mut connection)
    .await
    .expect("a migration this binary does not know");
    let error = match Outbox::open(&db, 2, 1).await {
        Ok(_) => panic!("an older adder opened a newer schema"),
        Err(error) => error,
    };
    assert!(error.is_fatal(), "retrying cannot help: {error:?}");
    let message = error.to_string();
    assert!(
        message.contains("newer adder") && message.contains("29991231000001"),
        "{message}"
    );
}

#[tokio::test]
async fn a_pair_half_cut_before_the_linear_cut_is_finished_with_every_row_once() {
    let db = database::fresh().await;
    let mut connection = PgConnection::connect(&db).await.expect("connect");
    migrate_through(&mut connection, BEFORE_LINEAR_CUT).await;
    sqlx::query("INSERT INTO outbox (a, b, sum) SELECT g, 0, g FROM generate_series(1, 2500) g")
        .execute(&mut connection)
        .await
        .expect("a backlog");
    let first: Vec<i64> = sqlx::query_scalar("SELECT unnest(r_ids) FROM tally_cut(1000, 100)")
        .fetch_all(&mut connection)
        .await
        .expect("the old cut");
    assert_eq!(first, (1..=1000).collect::<Vec<_>>());

    let outbox = Outbox::open(&db, 2, 1).await.expect("the upgrade");
    let mut active = Active::try_acquire(&outbox, &mut Standby::default())
        .await
        .expect("the relay lock")
        .expect("no other relay");
    let mut rest = Vec::new();
    let mut numbers = Vec::new();
    while let Some(cut) = active.cut(1000, 100).await.expect("cut") {
        numbers.push(cut.claim.id);
        assert_eq!(active.rows(&cut.claim).await.expect("read again"), cut.rows);
        rest.extend(cut.rows.iter().map(|row| row.id));
    }
    assert_eq!(numbers, vec![2, 3], "dense after the upgrade");
    assert_eq!(
        rest,
        (1001..=2500).collect::<Vec<_>>(),
        "the rest of the pair, once"
    );
}

/// Runs the adder's migrations up to and including `last`.
async fn migrate_through(connection: &mut PgConnection, last: &str) {
    let dir = std::env::temp_dir().join(format!("tally-migrations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&source).expect("the migrations") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() <= format!("{last}_~").as_str() {
            std::fs::copy(&path, dir.join(&name)).expect("copy");
        }
    }
    let migrator = Migrator::new(dir.as_path())
        .await
        .expect("the older migrations");
    migrator
        .run(connection)
        .await
        .expect("migrate through {last}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn legacy_rows_keep_their_source_after_a_promotion() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("legacy-promoted");
    let broker = Broker::connect(&queue).await;
    let outbox = Outbox::open(&db, 2, 1).await.expect("migrate");
    let recorded_under = outbox.source().await.expect("the source");
    drop(outbox);
    let sql = pool(&db).await;
    sqlx::query(
        "INSERT INTO outbox (a, b, sum, xid) SELECT i, 0, i, NULL FROM generate_series(1, 4) i",
    )
    .execute(&sql)
    .await
    .expect("legacy rows");
    // As a promotion leaves it: the stored timeline is not the server's.
    sqlx::query("UPDATE outbox_source SET timeline = timeline + 1")
        .execute(&sql)
        .await
        .expect("a new timeline");
    let adder = spawn_adder(config(&db, &testkit::amqp_url(), &queue)).await;
    testkit::eventually(Duration::from_secs(20), "everything confirmed", || async {
        (outbox_counts(&sql).await.1 == 0).then_some(())
    })
    .await;
    let now: uuid::Uuid = sqlx::query_scalar("SELECT source FROM outbox_source")
        .fetch_one(&sql)
        .await
        .expect("the source now");
    assert_ne!(now, recorded_under, "the promotion started a new source");
    let legacy: Vec<_> = drain_messages(&broker)
        .await
        .into_iter()
        .filter(|m| m.part.is_none())
        .collect();
    assert!(!legacy.is_empty(), "the legacy rows were published");
    for message in legacy {
        assert_eq!(
            message.source, recorded_under,
            "legacy rows keep their source"
        );
    }
    adder.stop().await;
    broker.delete().await;
}

fn settings(upgraded: bool) -> Settings {
    Settings {
        max_connections: 2,
        writers: 1,
        bounds: Bounds::default(),
        upgraded,
    }
}

#[tokio::test]
async fn a_database_upgraded_with_pg_upgrade_continues_under_a_new_source_when_told() {
    let db = database::fresh().await;
    let outbox = Outbox::open(&db, 2, 1).await.expect("migrate");
    let before = outbox.source().await.expect("the source");
    for i in 0..5 {
        outbox.record(i, 1, i + 1, None).await.expect("an Add");
    }
    drop(outbox);
    // As pg_upgrade leaves it: another system identifier, the same xids.
    let sql = pool(&db).await;
    sqlx::query("UPDATE outbox_source SET system_id = '1'")
        .execute(&sql)
        .await
        .expect("another system");
    let error = match Outbox::open_with(&db, settings(false)).await {
        Ok(_) => panic!("a new system identifier was taken without being told"),
        Err(error) => error,
    };
    assert!(error.is_fatal());
    assert!(error.to_string().contains("--outbox-upgraded"), "{error}");

    let outbox = Outbox::open_with(&db, settings(true))
        .await
        .expect("told it was upgraded");
    let after = outbox.source().await.expect("the source");
    assert_ne!(after, before, "new batches go under a new source");
    let mut active = Active::try_acquire(&outbox, &mut Standby::default())
        .await
        .expect("the relay lock")
        .expect("no other relay");
    let cut = active
        .cut(100, 100)
        .await
        .expect("cut")
        .expect("the rows recorded before");
    assert_eq!(
        (cut.claim.source, cut.claim.id, cut.rows.len()),
        (after, 1, 5)
    );
    drop(active);
    drop(outbox);
    // Settled: the next start needs no flag.
    Outbox::open(&db, 2, 1)
        .await
        .expect("open again without the flag");
}

#[tokio::test]
async fn a_copy_whose_transaction_ids_are_behind_is_refused_even_when_told_upgraded() {
    let db = database::fresh().await;
    let outbox = Outbox::open(&db, 2, 1).await.expect("migrate");
    outbox.record(1, 1, 2, None).await.expect("an Add");
    drop(outbox);
    let sql = pool(&db).await;
    // Its recorded transaction ids are far ahead of the server's.
    for statement in [
        "UPDATE outbox_source SET system_id = '1'",
        "UPDATE outbox_cursor SET hi = '4000000000:4000000000:'",
    ] {
        sqlx::query(statement)
            .execute(&sql)
            .await
            .expect("a copy's identity");
    }
    let error = match Outbox::open_with(&db, settings(true)).await {
        Ok(_) => panic!("a copy was taken for an upgrade"),
        Err(error) => error,
    };
    assert!(error.is_fatal(), "{error:?}");
}
