//! Upgrades against a real PostgreSQL: an adder older than its database's
//! schema stops with an error that says so (it used to retry forever,
//! answering only UNAVAILABLE), and a snapshot pair half cut by the
//! previous `tally_cut` is finished by the linear one with every row once.

use std::path::PathBuf;

use sqlx::{Connection, PgConnection, migrate::Migrator};
use testkit::database;

use adder::outbox::{Active, Outbox, Standby};

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
