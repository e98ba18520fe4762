//! What a cut costs as the outbox grows, against a real PostgreSQL: a batch
//! of a large snapshot pair (a broker outage's backlog) reads that batch,
//! not the whole pair again, and a transaction left open in another
//! database of the server does not make a cut read every row inserted since
//! it began. Work is counted in heap tuples PostgreSQL fetched for the cut's
//! transaction (`pg_stat_xact_user_tables`), not timed; `pending()` sees the
//! rows of a pair not cut yet.

use sqlx::{Connection, PgConnection};
use testkit::database;

use adder::outbox::Outbox;

const BATCH: i64 = 1_000;

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect")
}

/// An outbox database holding `rows` rows committed in one transaction.
async fn backlog(rows: i64) -> (String, Outbox) {
    let db = database::fresh().await;
    let outbox = Outbox::open(&db, 4, 2).await.expect("open the outbox");
    insert(&db, rows).await;
    (db, outbox)
}

async fn insert(db: &str, rows: i64) {
    sqlx::query("INSERT INTO outbox (a, b, sum) SELECT g, 0, g FROM generate_series(1, $1) g")
        .bind(rows)
        .execute(&mut connect(db).await)
        .await
        .expect("insert the backlog");
}

/// Cuts one batch of at most [`BATCH`] rows in a transaction of its own;
/// returns its row count (0: nothing new) and the heap tuples of `outbox`
/// the cut fetched (the view's counts before and after it: a backend may
/// hold earlier transactions' counts until it reports them).
async fn cut(connection: &mut PgConnection) -> (i64, i64) {
    let mut tx = connection.begin().await.expect("begin");
    let before = fetched(&mut tx).await;
    let rows: Option<i64> = sqlx::query_scalar("SELECT b_rows FROM tally_cut($1, 100)")
        .bind(BATCH)
        .fetch_one(&mut *tx)
        .await
        .expect("cut");
    let after = fetched(&mut tx).await;
    tx.commit().await.expect("commit the cut");
    (rows.unwrap_or(0), after - before)
}

async fn fetched(connection: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables \
         WHERE relname = 'outbox'",
    )
    .fetch_one(connection)
    .await
    .expect("the transaction's table statistics")
}

async fn drain(connection: &mut PgConnection) -> i64 {
    let mut total = 0;
    loop {
        match cut(connection).await {
            (0, _) => return total,
            (rows, _) => total += rows,
        }
    }
}

#[tokio::test]
async fn a_batch_of_a_large_pair_reads_the_batch_not_the_pair() {
    let (db, _outbox) = backlog(30 * BATCH).await;
    let mut connection = connect(&db).await;
    // The first cut opens the pair and learns its span, once.
    assert_eq!(cut(&mut connection).await.0, BATCH);
    for batch in 2..=5 {
        let (rows, fetched) = cut(&mut connection).await;
        assert_eq!(rows, BATCH);
        assert!(
            fetched <= 2 * BATCH,
            "batch {batch} of a 30,000-row pair fetched {fetched} tuples for {BATCH} rows"
        );
    }
    assert_eq!(drain(&mut connection).await, 25 * BATCH, "the rest, once");
}

#[tokio::test]
async fn a_transaction_open_in_another_database_does_not_make_cuts_read_old_rows() {
    let elsewhere = database::fresh().await;
    let mut holder = connect(&elsewhere).await;
    let mut open = holder.begin().await.expect("begin elsewhere");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .expect("take a transaction id");

    let (db, _outbox) = backlog(20 * BATCH).await;
    let mut connection = connect(&db).await;
    assert_eq!(drain(&mut connection).await, 20 * BATCH);
    for round in 1..=3 {
        insert(&db, 1).await;
        let (rows, fetched) = cut(&mut connection).await;
        assert_eq!(rows, 1, "round {round}");
        assert!(
            fetched <= 10,
            "round {round}: a 1-row cut fetched {fetched} tuples while a transaction was open elsewhere"
        );
        let (rows, fetched) = cut(&mut connection).await;
        assert_eq!(rows, 0);
        assert!(
            fetched <= 10,
            "round {round}: an empty cut fetched {fetched} tuples"
        );
    }
    open.rollback()
        .await
        .expect("end the transaction elsewhere");
}

#[tokio::test]
async fn pending_counts_the_rows_of_a_pair_not_cut_yet() {
    let (db, outbox) = backlog(2_500).await;
    assert_eq!(outbox.pending().await.expect("pending"), 2_500);
    let mut connection = connect(&db).await;
    assert_eq!(cut(&mut connection).await.0, BATCH);
    assert_eq!(
        outbox.pending().await.expect("pending"),
        2_500,
        "1,000 rows in an unconfirmed batch and 1,500 of the pair not cut yet"
    );
    insert(&db, 10).await;
    assert_eq!(outbox.pending().await.expect("pending"), 2_510);
}
